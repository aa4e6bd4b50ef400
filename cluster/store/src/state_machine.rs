//! The Raft state machine: the MVCC key space (`state.redb`), the last applied log id
//! and membership committed in the same transaction as each batch of entries, the
//! current snapshot (`snapshot.bin`, beside the database so that writing one never
//! holds up applying entries), and the feed of applied revisions that watches follow.
//!
//! Durability: every entry is durable in the Raft log (fsynced) before it commits, so
//! the state machine need not fsync each batch it applies, as etcd's backend does not.
//! Batches are committed durably at least every [`DURABLE_INTERVAL`], whenever they
//! carry a membership change, and before a snapshot is saved (after which the log
//! behind it may be purged). After a crash the state machine may be a little behind
//! its log; Raft applies the rest again, and applying is deterministic.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::mvcc::{self, KeySpaceImage};
use crate::raft_types::{Entry, LogId, StorageError, StoredMembership, TypeConfig};
use crate::types::{Event, Response};

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// How much lower than the other threads' the snapshot builder's priority is.
const SNAPSHOT_NICENESS: i32 = 10;

/// The longest time applied entries may stay not yet durable in the state machine.
pub const DURABLE_INTERVAL: Duration = Duration::from_millis(200);

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
    /// Where the current snapshot lives.
    snapshot_path: PathBuf,
    /// When a commit was last made durable.
    last_durable: Mutex<Instant>,
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
    /// Opens (or creates) `dir/state.redb` and `dir/snapshot.bin`. A snapshot that was
    /// received and saved but whose installation did not commit (a crash in between) is
    /// installed now, so the key space is never behind the snapshot Raft is told about.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        let db = Database::create(dir.join("state.redb")).map_err(io)?;
        let txn = db.begin_write().map_err(io)?;
        mvcc::init(&txn).map_err(io)?;
        txn.open_table(SM_META).map_err(io)?;
        txn.commit().map_err(io)?;
        let this = Self {
            inner: Arc::new(Inner {
                db,
                snapshot_path: dir.join("snapshot.bin"),
                last_durable: Mutex::new(Instant::now()),
                feed: broadcast::channel(1024).0,
            }),
        };
        if let Some(bytes) = this.read_snapshot()? {
            let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(io)?;
            let applied: Option<LogId> = this.meta::<Option<LogId>>("last_applied")?.flatten();
            if file.meta.last_log_id > applied {
                this.install_image(&file)?;
            }
        }
        Ok(this)
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

    /// Saves `bytes` as the current snapshot: written to a temporary file, synced, then
    /// renamed over the old one and the directory synced, so a crash leaves either.
    fn store_snapshot(&self, bytes: &[u8]) -> Result<(), std::io::Error> {
        let path = &self.inner.snapshot_path;
        let partial = path.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&partial, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn durable_due(&self) -> bool {
        let last = self
            .inner
            .last_durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.elapsed() >= DURABLE_INTERVAL
    }

    fn mark_durable(&self) {
        *self
            .inner
            .last_durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Makes every applied batch durable (an empty durable commit carries the earlier
    /// non-durable ones to disk).
    fn flush(&self) -> Result<(), std::io::Error> {
        let txn = self.inner.db.begin_write().map_err(io)?;
        txn.commit().map_err(io)?;
        self.mark_durable();
        Ok(())
    }

    /// Builds, saves and returns the snapshot of the current state.
    fn build_snapshot_file(&self) -> Result<(SnapshotFile, Vec<u8>), std::io::Error> {
        let started = Instant::now();
        let file = self.snapshot_file()?;
        // What the snapshot holds must be durable here too before the log behind it
        // may go.
        self.flush()?;
        let bytes = postcard::to_allocvec(&file).map_err(io)?;
        self.store_snapshot(&bytes)?;
        tracing::info!(
            id = %file.meta.snapshot_id,
            keys = file.image.kvs.len(),
            bytes = bytes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "store snapshot built"
        );
        Ok((file, bytes))
    }

    /// The current snapshot's bytes, if one was saved.
    fn read_snapshot(&self) -> Result<Option<Vec<u8>>, std::io::Error> {
        match std::fs::read(&self.inner.snapshot_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Replaces the key space, applied id and membership with a snapshot's.
    fn install_image(&self, file: &SnapshotFile) -> Result<(), std::io::Error> {
        let txn = self.inner.db.begin_write().map_err(io)?;
        mvcc::install(&txn, &file.image).map_err(io)?;
        {
            let mut table = txn.open_table(SM_META).map_err(io)?;
            let applied = postcard::to_allocvec(&file.meta.last_log_id).map_err(io)?;
            table
                .insert("last_applied", applied.as_slice())
                .map_err(io)?;
            let membership = postcard::to_allocvec(&file.meta.last_membership).map_err(io)?;
            table
                .insert("membership", membership.as_slice())
                .map_err(io)?;
        }
        txn.commit().map_err(io)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        // A thread of low priority: building a snapshot must not starve the threads
        // that replicate and apply entries.
        std::thread::Builder::new()
            .name("store-snapshot".into())
            .spawn(move || {
                if let Err(err) = rustix::process::nice(SNAPSHOT_NICENESS) {
                    tracing::debug!(error = %err, "snapshot thread keeps its priority");
                }
                let _ = done.send(this.build_snapshot_file());
            })
            .map_err(|e| write_error(&e))?;
        let (file, bytes) = result
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
                let mut txn = this.inner.db.begin_write().map_err(io)?;
                let durable = this.durable_due()
                    || entries
                        .iter()
                        .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
                if !durable {
                    txn.set_durability(Durability::None).map_err(io)?;
                }
                let mut responses = Vec::with_capacity(entries.len());
                let mut applied = Vec::new();
                let mut last = None;
                for entry in &entries {
                    last = Some(entry.log_id);
                    match &entry.payload {
                        EntryPayload::Blank => responses.push(Response::None),
                        EntryPayload::Normal(request) => {
                            let (response, revisions) = mvcc::apply(&txn, request).map_err(io)?;
                            applied.extend(
                                revisions
                                    .into_iter()
                                    .map(|(revision, events)| Applied { revision, events }),
                            );
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
                if durable {
                    this.mark_durable();
                }
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
            let received: SnapshotFile = postcard::from_bytes(&bytes).map_err(io)?;
            // Keep it as the current snapshot with the meta Raft gave us; saved before
            // the key space is replaced, so `open` can finish the job after a crash.
            let file = SnapshotFile {
                meta,
                image: received.image,
            };
            this.store_snapshot(&postcard::to_allocvec(&file).map_err(io)?)?;
            this.install_image(&file)
        })
        .await
        .map_err(|e| write_error(&io(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let this = self.clone();
        let bytes = tokio::task::spawn_blocking(move || this.read_snapshot())
            .await
            .map_err(|e| read_error(&io(e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::KeyValue;

    #[tokio::test]
    async fn a_saved_snapshot_whose_installation_did_not_commit_is_installed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let machine = StateMachine::open(dir.path()).unwrap();
        let file = SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(2, 1),
                    40,
                )),
                last_membership: StoredMembership::default(),
                snapshot_id: "40-7".into(),
            },
            image: KeySpaceImage {
                revision: 7,
                kvs: vec![KeyValue {
                    key: b"/a".to_vec(),
                    value: b"from the snapshot".to_vec(),
                    create_revision: 3,
                    mod_revision: 7,
                    version: 2,
                }],
            },
        };
        // A crash right after the received snapshot was saved, before it was installed.
        machine
            .store_snapshot(&postcard::to_allocvec(&file).unwrap())
            .unwrap();
        drop(machine);

        let mut machine = StateMachine::open(dir.path()).unwrap();
        let (applied, _) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(40));
        let read = machine
            .reader()
            .range(&crate::types::RangeRequest::key("/a"))
            .unwrap();
        assert_eq!(read.kvs[0].value, b"from the snapshot");
        let current = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, "40-7");
    }
}
