//! Generated protobuf and gRPC code (see `proto/` and `build.rs`).

/// Internal node-to-node service (`raft_addr`).
pub mod raft {
    tonic::include_proto!("deckhand.raft.v1");
}

/// Internal worker coordination (`raft_addr`).
pub mod worker {
    tonic::include_proto!("deckhand.worker.v1");
}

/// Public admin service (`admin_addr`).
pub mod admin {
    tonic::include_proto!("deckhand.admin.v1");
}

/// Encoded descriptors of both services, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("deckhand_descriptor");
