//! The public admin API (`admin_addr`) and its `deckhand ctl` client.
//!
//! - [`service`]: the gRPC server; thin handlers that read node state.
//! - [`status`]: builds status and member messages from Raft metrics.
//! - [`client`]: `deckhand ctl`, with [`view`] rendering tables and JSON.
//! - [`membership`]: add and remove nodes, move the leadership (leader side).
//! - [`auth`]: the optional bearer token every mutation must carry.
//! - [`grpc_errors`]: undecodable requests become `INVALID_ARGUMENT`.
//!
//! Reads are answered by any node from its own view (`Shards` and `Tasks`
//! by the leader). Mutations are checked against the token where they
//! arrive, then forwarded to the leader with it.

pub mod auth;
pub mod client;
pub mod grpc_errors;
pub mod membership;
pub mod service;
pub mod status;
pub mod tasks;
pub mod view;
