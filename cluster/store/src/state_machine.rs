//! The Raft state machine: the MVCC key space (`state.redb`), the last applied log id
//! and membership committed in the same transaction as each batch of entries, the
//! current snapshot, and the feed of applied revisions that watches follow.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::mvcc::{self, KeySpaceImage};
use crate::raft_types::{Entry, LogId, StorageError, StoredMembership, TypeConfig};
use crate::types::{Event, Response};

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// The events of one applied revision, as watches receive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The revision.
    pub revision: u64,
    /// What changed at it.
    pub events: Vec<Event>,
}

/// What a snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    image: KeySpaceImage,
}

struct Inner {
    db: Database,
    feed: broadcast::Sender<Arc<Applied>>,
}

/// The state machine; clones share it (readers, watches, snapshot builders).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

fn io(err: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(err)
}

fn read_error(err: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_state_machine(err).into()
}

fn write_error(err: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_state_machine(err).into()
}

impl StateMachine {
    /// Opens (or creates) `dir/state.redb`.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        let db = Database::create(dir.join("state.redb")).map_err(io)?;
        let txn = db.begin_write().map_err(io)?;
        mvcc::init(&txn).map_err(io)?;
        txn.open_table(SM_META).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                feed: broadcast::channel(1024).0,
            }),
        })
    }

    /// Reads of the key space.
    pub fn reader(&self) -> mvcc::Reader<'_> {
        mvcc::Reader::new(&self.inner.db)
    }

    /// The feed of revisions as they are applied (watches subscribe before replaying).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.inner.feed.subscribe()
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, std::io::Error> {
        let txn = self.inner.db.begin_read().map_err(io)?;
        let table = txn.open_table(SM_META).map_err(io)?;
        let value = table.get(name).map_err(io)?;
        value
            .map(|v| postcard::from_bytes(v.value()).map_err(io))
            .transpose()
    }

    fn snapshot_file(&self) -> Result<SnapshotFile, std::io::Error> {
        // One read transaction: the image, applied id and membership agree.
        let txn = self.inner.db.begin_read().map_err(io)?;
        let table = txn.open_table(SM_META).map_err(io)?;
        let get = |name: &str| -> Result<Option<Vec<u8>>, std::io::Error> {
            Ok(table.get(name).map_err(io)?.map(|v| v.value().to_vec()))
        };
        let last_applied: Option<LogId> = get("last_applied")?
            .map(|b| postcard::from_bytes::<Option<LogId>>(&b).map_err(io))
            .transpose()?
            .flatten();
        let membership: StoredMembership = get("membership")?
            .map(|b| postcard::from_bytes(&b).map_err(io))
            .transpose()?
            .unwrap_or_default();
        drop(table);
        drop(txn);
        let image = self.reader().image().map_err(io)?;
        let snapshot_id = format!(
            "{}-{}",
            last_applied.map(|l| l.index).unwrap_or(0),
            image.revision
        );
        Ok(SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            image,
        })
    }

    fn store_snapshot(&self, bytes: &[u8]) -> Result<(), std::io::Error> {
        let txn = self.inner.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(SM_META).map_err(io)?;
            table.insert("snapshot", bytes).map_err(io)?;
        }
        txn.commit().map_err(io)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let (file, bytes) = tokio::task::spawn_blocking(move || -> Result<_, std::io::Error> {
            let file = this.snapshot_file()?;
            let bytes = postcard::to_allocvec(&file).map_err(io)?;
            this.store_snapshot(&bytes)?;
            Ok((file, bytes))
        })
        .await
        .map_err(|e| write_error(&io(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied: Option<LogId> = self
            .meta::<Option<LogId>>("last_applied")
            .map_err(|e| read_error(&e))?
            .flatten();
        let membership: StoredMembership = self
            .meta("membership")
            .map_err(|e| read_error(&e))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let (responses, applied) =
            tokio::task::spawn_blocking(move || -> Result<_, std::io::Error> {
                let txn = this.inner.db.begin_write().map_err(io)?;
                let mut responses = Vec::with_capacity(entries.len());
                let mut applied = Vec::new();
                let mut last = None;
                for entry in &entries {
                    last = Some(entry.log_id);
                    match &entry.payload {
                        EntryPayload::Blank => responses.push(Response::None),
                        EntryPayload::Normal(request) => {
                            let (response, events) = mvcc::apply(&txn, request).map_err(io)?;
                            if let (Response::Txn(t), false) = (&response, events.is_empty()) {
                                applied.push(Applied {
                                    revision: t.revision,
                                    events,
                                });
                            }
                            responses.push(response);
                        }
                        EntryPayload::Membership(membership) => {
                            let stored =
                                StoredMembership::new(Some(entry.log_id), membership.clone());
                            let mut table = txn.open_table(SM_META).map_err(io)?;
                            let bytes = postcard::to_allocvec(&stored).map_err(io)?;
                            table.insert("membership", bytes.as_slice()).map_err(io)?;
                            responses.push(Response::None);
                        }
                    }
                }
                {
                    let mut table = txn.open_table(SM_META).map_err(io)?;
                    let bytes = postcard::to_allocvec(&last).map_err(io)?;
                    table.insert("last_applied", bytes.as_slice()).map_err(io)?;
                }
                txn.commit().map_err(io)?;
                Ok((responses, applied))
            })
            .await
            .map_err(|e| write_error(&io(e)))?
            .map_err(|e| write_error(&e))?;
        for revision in applied {
            // Nobody watching is fine.
            let _ = self.inner.feed.send(Arc::new(revision));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let meta = meta.clone();
        let this = self.clone();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(io)?;
            let txn = this.inner.db.begin_write().map_err(io)?;
            mvcc::install(&txn, &file.image).map_err(io)?;
            {
                let mut table = txn.open_table(SM_META).map_err(io)?;
                let applied = postcard::to_allocvec(&meta.last_log_id).map_err(io)?;
                table
                    .insert("last_applied", applied.as_slice())
                    .map_err(io)?;
                let membership = postcard::to_allocvec(&meta.last_membership).map_err(io)?;
                table
                    .insert("membership", membership.as_slice())
                    .map_err(io)?;
                // Keep it as the current snapshot, with the meta Raft gave us.
                let stored = postcard::to_allocvec(&SnapshotFile {
                    meta,
                    image: file.image,
                })
                .map_err(io)?;
                table.insert("snapshot", stored.as_slice()).map_err(io)?;
            }
            txn.commit().map_err(io)
        })
        .await
        .map_err(|e| write_error(&io(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes: Option<Vec<u8>> = {
            let txn = self.inner.db.begin_read().map_err(|e| read_error(&e))?;
            let table = txn.open_table(SM_META).map_err(|e| read_error(&e))?;
            table
                .get("snapshot")
                .map_err(|e| read_error(&e))?
                .map(|v| v.value().to_vec())
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(|e| read_error(&e))?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
