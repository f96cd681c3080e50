//! openraft's storage test suite against the sled store.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::{open, LogStore, StateMachineStore};
use crate::raft::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm) = open(&dir.path().join("raft")).expect("open sled store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledBuilder)
        .await
        .expect("openraft storage suite");
}
