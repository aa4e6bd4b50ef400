//! What the store stores and what clients ask of it: keys and values are bytes; every
//! write transaction gets the next revision (Kubernetes' `resourceVersion`).

use serde::{Deserialize, Serialize};

/// A key with its value and revisions, as reads and watches return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in delete events).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation (1 after the create).
    pub version: u64,
}

/// A write request, replicated through Raft and applied in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Compare, then apply `success` or `failure` atomically.
    Txn(Txn),
    /// Forget history before `revision`.
    Compact {
        /// The oldest revision reads and watches may still ask for.
        revision: u64,
    },
    /// Writes the leader proposes together as one log entry (one append and one fsync
    /// for all): applied in order, each as if proposed alone, each answered alone.
    Batch(Vec<Request>),
}

impl Request {
    /// Roughly how many bytes it takes in the log (keys and values).
    pub fn weight(&self) -> usize {
        let op = |op: &Op| match op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        };
        match self {
            Request::Txn(t) => {
                t.compare.iter().map(|c| c.key.len()).sum::<usize>()
                    + t.success.iter().map(op).sum::<usize>()
                    + t.failure.iter().map(op).sum::<usize>()
            }
            Request::Compact { .. } => 8,
            Request::Batch(requests) => requests.iter().map(Request::weight).sum(),
        }
    }
}

/// An atomic compare-and-apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// All must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Applied when every comparison holds.
    pub success: Vec<Op>,
    /// Applied otherwise.
    pub failure: Vec<Op>,
}

impl Txn {
    /// A plain put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }],
            ..Default::default()
        }
    }

    /// Create only if absent.
    pub fn create(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        let key = key.into();
        Txn {
            compare: vec![Compare {
                key: key.clone(),
                target: CompareTarget::ModRevision(0),
                result: CompareResult::Equal,
            }],
            success: vec![Op::Put {
                key,
                value: value.into(),
            }],
            failure: Vec::new(),
        }
    }

    /// Write only if the key's last write was at `mod_revision` (optimistic concurrency).
    pub fn update(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, mod_revision: u64) -> Self {
        let key = key.into();
        Txn {
            compare: vec![Compare {
                key: key.clone(),
                target: CompareTarget::ModRevision(mod_revision),
                result: CompareResult::Equal,
            }],
            success: vec![Op::Put {
                key,
                value: value.into(),
            }],
            failure: Vec::new(),
        }
    }

    /// A plain delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::Delete { key: key.into() }],
            ..Default::default()
        }
    }
}

/// One comparison of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// What of it is compared, and against what (an absent key has revisions and
    /// version 0 and no value).
    pub target: CompareTarget,
    /// How.
    pub result: CompareResult,
}

/// The attribute a comparison looks at, with the value it is compared to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The last write's revision.
    ModRevision(u64),
    /// The creating write's revision.
    CreateRevision(u64),
    /// The number of writes since creation.
    Version(u64),
    /// The value.
    Value(Vec<u8>),
}

/// The comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key starting with a prefix.
    DeletePrefix {
        /// The prefix.
        prefix: Vec<u8>,
    },
}

/// The answer to a write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A transaction's outcome.
    Txn(TxnResponse),
    /// A compaction's outcome.
    Compacted {
        /// The revision history now starts at.
        revision: u64,
    },
    /// The answers to a [`Request::Batch`], in its order.
    Batch(Vec<Response>),
    /// Nothing to answer (Raft's own entries).
    #[default]
    None,
}

/// A transaction's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every comparison held (so `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: u64,
    /// One result per operation that ran.
    pub results: Vec<OpResult>,
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A put, with the value it replaced.
    Put {
        /// The previous key-value, if any.
        prev: Option<KeyValue>,
    },
    /// A delete, with what it removed.
    Delete {
        /// The removed key-value, if any.
        prev: Option<KeyValue>,
    },
    /// A prefix delete, with what it removed.
    DeletePrefix {
        /// The removed key-values.
        deleted: Vec<KeyValue>,
    },
}

/// A read of one key or a key range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The key, or the first key of the range.
    pub start: Vec<u8>,
    /// End of the range (exclusive; empty: to the end of the key space); `None` reads
    /// the single key `start`.
    pub end: Option<Vec<u8>>,
    /// Read as of this revision (`None`: the latest).
    pub revision: Option<u64>,
    /// At most this many keys (`None`: all).
    pub limit: Option<usize>,
}

impl RangeRequest {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            start: key.into(),
            ..Default::default()
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Self {
            start,
            end: Some(end),
            ..Default::default()
        }
    }
}

/// A read's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys found, in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched beyond `limit` (continue after the last key).
    pub more: bool,
    /// The revision the read saw.
    pub revision: u64,
}

/// What happened to a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Removed.
    Delete,
}

/// A change, as watches deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change (for a delete: the key, empty value, and the
    /// deleting revision as `mod_revision`).
    pub kv: KeyValue,
    /// The key-value before the change, if the key existed.
    pub prev: Option<KeyValue>,
}

/// The smallest key after every key starting with `prefix` (for prefix ranges).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space, which an empty end means.
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/pods/"), b"/pods0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert!(prefix_end(b"").is_empty());
    }
}
