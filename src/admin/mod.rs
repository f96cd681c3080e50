//! The public admin API (`admin_addr`) and its `deckhand ctl` client.
//!
//! - [`service`]: the gRPC server; thin handlers that read node state.
//! - [`status`]: builds status and member messages from Raft metrics.
//! - [`client`]: `deckhand ctl`, with [`view`] rendering tables and JSON.
//! - [`membership`]: add and remove nodes, move the leadership (leader side).
//!
//! Reads are answered by any node from its own view. Mutations (added by
//! later issues) are forwarded to the leader.

pub mod auth;
pub mod client;
pub mod grpc_errors;
pub mod membership;
pub mod service;
pub mod status;
pub mod tasks;
pub mod view;
