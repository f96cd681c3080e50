//! openraft messages <-> the `RaftPayload` protobuf envelope.
//!
//! The envelope carries serde-JSON. Decoding failures become
//! `INVALID_ARGUMENT` on the server and a network error on the client, never
//! a panic: the bytes come from another process.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::proto::raft::RaftPayload;
use crate::raft::{Snapshot, SnapshotMeta, Vote};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {what}: {source}")]
pub struct CodecError {
    action: &'static str,
    what: &'static str,
    source: serde_json::Error,
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<RaftPayload, CodecError> {
    serde_json::to_vec(value)
        .map(|data| RaftPayload { data, seq: 0 })
        .map_err(|source| CodecError {
            action: "encode",
            what,
            source,
        })
}

pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    payload: &RaftPayload,
) -> Result<T, CodecError> {
    serde_json::from_slice(&payload.data).map_err(|source| CodecError {
        action: "decode",
        what,
        source,
    })
}

/// A whole snapshot as sent by `InstallSnapshot`.
#[derive(Serialize, Deserialize)]
pub struct SnapshotTransfer {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

impl SnapshotTransfer {
    pub fn new(vote: Vote, snapshot: Snapshot) -> Self {
        Self {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        }
    }

    pub fn into_parts(self) -> (Vote, Snapshot) {
        (
            self.vote,
            Snapshot {
                meta: self.meta,
                snapshot: self.data,
            },
        )
    }
}

impl From<CodecError> for tonic::Status {
    fn from(e: CodecError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
