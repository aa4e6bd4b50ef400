//! Cairn's replicated store: an MVCC key space (every write gets a revision, reads at
//! a revision, watches from a revision, compaction) on redb, replicated with openraft.
//!
//! - [`types`]: requests, answers, key-values and events;
//! - [`mvcc`]: the key space on redb tables (pure storage logic, unit-tested alone);
//! - [`raft_types`], [`log_store`], [`state_machine`]: openraft's storage on redb;
//! - [`node`]: a running node (writes through the leader, reads, watches, membership);
//! - [`protocol`]: the messages between nodes and clients, framed;
//! - [`tcp`]: the real network, frames over TCP with mutual TLS, and a client;
//!   forwarded requests share one multiplexed connection per peer (`mux`);
//! - [`memnet`]: an in-memory network for in-process tests.

pub mod log_store;
pub mod memnet;
mod mux;
pub mod mvcc;
pub mod node;
pub mod protocol;
pub mod raft_types;
pub mod state_machine;
pub mod tcp;
pub mod types;

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    /// The database failed (I/O, corruption).
    #[error("storage: {0}")]
    Storage(String),
    /// A stored value could not be (de)serialised.
    #[error("encoding: {0}")]
    Encoding(String),
    /// The revision asked for is before the compaction point.
    #[error("revision {requested} is compacted (history starts at {compacted})")]
    Compacted {
        /// What was asked for.
        requested: u64,
        /// The compaction point.
        compacted: u64,
    },
    /// The revision asked for is not written yet.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision {
        /// What was asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
}
