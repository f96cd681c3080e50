//! Which node and cluster a `data_dir` belongs to.
//!
//! A data dir holds one node's Raft vote and log. Starting node 2 on node 1's
//! data, or a node of cluster B on cluster A's data, would let one process
//! vote twice or mix two logs. So the first start writes an identity file,
//! and every later start checks it *before* opening anything else there.
//!
//! Invariant: a data dir that is not empty and has no identity file is never
//! used (it may be someone else's data), and an identity never changes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the identity record inside `data_dir`.
pub const IDENTITY_FILE: &str = "deckhand-node.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    pub cluster_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{dir} belongs to node {found_node} of cluster {found_cluster:?} (see {file}), not node {node_id} of cluster {cluster_name:?}; refusing to touch it")]
    OwnedByOther {
        dir: PathBuf,
        file: PathBuf,
        found_node: u64,
        found_cluster: String,
        node_id: u64,
        cluster_name: String,
    },
    #[error("{dir} is not empty and has no {IDENTITY_FILE}; refusing to use a directory that may hold other data")]
    Foreign { dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `dir` belongs to `expected`, claiming it if it is new or empty.
pub fn claim(dir: &Path, expected: &Identity) -> Result<(), IdentityError> {
    let file = dir.join(IDENTITY_FILE);
    match fs::read(&file) {
        Ok(bytes) => {
            let found: Identity =
                serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
                    path: file.clone(),
                    reason: e.to_string(),
                })?;
            if &found != expected {
                return Err(IdentityError::OwnedByOther {
                    dir: dir.to_path_buf(),
                    file,
                    found_node: found.node_id,
                    found_cluster: found.cluster_name,
                    node_id: expected.node_id,
                    cluster_name: expected.cluster_name.clone(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let mut entries = fs::read_dir(dir).map_err(io_err(dir))?;
            if entries.next().is_some() {
                return Err(IdentityError::Foreign {
                    dir: dir.to_path_buf(),
                });
            }
            write_durably(
                &file,
                &serde_json::to_vec_pretty(expected).unwrap_or_default(),
            )
            .map_err(io_err(&file))
        }
        Err(e) => Err(io_err(&file)(e)),
    }
}

/// Writes `bytes` to `path` via a synced temp file and rename, then syncs the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node_id: u64, cluster: &str) -> Identity {
        Identity {
            node_id,
            cluster_name: cluster.into(),
        }
    }

    #[test]
    fn first_claim_writes_and_later_claims_match() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("node1");
        claim(&dir, &id(1, "a")).expect("claim new dir");
        claim(&dir, &id(1, "a")).expect("same identity again");
    }

    #[test]
    fn other_node_or_cluster_is_refused_and_nothing_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("node1");
        claim(&dir, &id(1, "a")).expect("claim");
        let before = fs::read(dir.join(IDENTITY_FILE)).expect("read");
        let e = claim(&dir, &id(2, "a")).expect_err("other node");
        assert!(e.to_string().contains("belongs to node 1"), "{e}");
        let e = claim(&dir, &id(1, "b")).expect_err("other cluster");
        assert!(e.to_string().contains("cluster \"a\""), "{e}");
        assert_eq!(before, fs::read(dir.join(IDENTITY_FILE)).expect("read"));
    }

    #[test]
    fn non_empty_dir_without_identity_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("something"), b"x").expect("write");
        let e = claim(tmp.path(), &id(1, "a")).expect_err("foreign");
        assert!(e.to_string().contains("not empty"), "{e}");
        assert!(!tmp.path().join(IDENTITY_FILE).exists());
    }
}
