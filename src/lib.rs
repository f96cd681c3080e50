//! deckhand: a Raft-coordinated housekeeper cluster for Deckard priority queues.
//!
//! See `README.md` for what it does and `docs/` for the design. Modules, in
//! dependency order: [`cluster`] (pure replicated state), [`raft`] (openraft,
//! sled storage, node-to-node transport), [`admin`] (public gRPC API and its
//! client), [`node`] (wiring one node together), [`config`].

pub mod admin;
pub mod baseline;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod leader;
pub mod load;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod raft;
pub mod shutdown;
pub mod store;
pub mod testing;
pub mod tls;
pub mod worker;
