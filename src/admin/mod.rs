//! The public admin API (`admin_addr`) and its `deckhand ctl` client.
//!
//! - [`service`]: the gRPC server; thin handlers that read node state.
//! - [`status`]: builds status and member messages from Raft metrics.
//! - [`client`]: `deckhand ctl`, with [`view`] rendering tables and JSON.
//!
//! Reads are answered by any node from its own view. Mutations (added by
//! later issues) are forwarded to the leader.

pub mod client;
pub mod service;
pub mod status;
pub mod tasks;
pub mod view;
