//! The Raft type configuration: what entries carry and how nodes are addressed.

use std::io::Cursor;

use crate::types::{Request, Response};

openraft::declare_raft_types!(
    /// Cairn's Raft: [`Request`]s in, [`Response`]s out, nodes by address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's id in the Raft group.
pub type NodeId = u64;
/// Raft's storage error, as the storage traits return it.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A position in the log.
pub type LogId = openraft::LogId<NodeId>;
/// A membership as stored with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// The handle of a running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

#[cfg(test)]
mod tests {
    #[test]
    fn log_ids_round_trip_through_postcard() {
        let id = openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), 0);
        let bytes = postcard::to_allocvec(&Some(id)).unwrap();
        let back: Option<super::LogId> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, Some(id), "{bytes:?}");
    }
}
