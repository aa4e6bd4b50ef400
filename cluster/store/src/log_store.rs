//! The Raft log and vote on redb (`log.redb`), with group commit.
//!
//! One writer thread owns every write to `log.redb`. It takes all operations queued
//! since its last commit (appends, truncations, purges, votes), applies them in order
//! in one transaction and commits it with fsync; only then are the appends reported
//! flushed to Raft and the other operations answered. An append returns at once: its
//! entries wait in memory (`pending`), where readers see them, until their commit.
//! Under load one fsync thus covers many entries instead of each paying its own.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::raft_types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

/// A change to the log's tables, run by the writer inside its next transaction.
type Work = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), std::io::Error> + Send>;

/// What the writer thread is asked to do.
enum Op {
    /// Write these entries; report them flushed once committed.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Run this change; answer once committed.
    Change {
        work: Work,
        done: oneshot::Sender<Result<(), std::io::Error>>,
    },
}

/// The log store; clones share the database, the pending entries and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appended entries not yet committed to `log.redb`, by index.
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    writer: mpsc::Sender<Op>,
}

fn io(err: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(err)
}

fn read_error(err: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_logs(err).into()
}

fn write_error(err: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_logs(err).into()
}

fn lock(pending: &Mutex<BTreeMap<u64, Entry>>) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
    // The map holds plain data: a panic while it was locked cannot leave it torn.
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: one transaction and one fsync per batch of queued operations.
fn run_writer(
    db: Arc<Database>,
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    ops: mpsc::Receiver<Op>,
) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        batch.extend(ops.try_iter());
        let mut written: Vec<LogId> = Vec::new();
        let result = (|| {
            let txn = db.begin_write().map_err(io)?;
            for op in &mut batch {
                match op {
                    Op::Append { entries, .. } => {
                        let mut table = txn.open_table(LOG).map_err(io)?;
                        for (log_id, bytes) in entries.iter() {
                            table.insert(log_id.index, bytes.as_slice()).map_err(io)?;
                            written.push(*log_id);
                        }
                    }
                    Op::Change { work, .. } => {
                        let work = std::mem::replace(work, Box::new(|_| Ok(())));
                        work(&txn)?;
                    }
                }
            }
            txn.commit().map_err(io)
        })();
        if result.is_ok() {
            // Entries now on disk leave memory, unless a truncation replaced one with
            // a different entry at the same index meanwhile.
            let mut pending = lock(&pending);
            for log_id in &written {
                if pending
                    .get(&log_id.index)
                    .is_some_and(|e| e.log_id == *log_id)
                {
                    pending.remove(&log_id.index);
                }
            }
        }
        for op in batch {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(std::io::Error::new(err.kind(), err.to_string())),
            };
            match op {
                Op::Append { flushed, .. } => flushed.log_io_completed(outcome),
                Op::Change { done, .. } => {
                    let _ = done.send(outcome);
                }
            }
        }
    }
}

impl LogStore {
    /// Opens (or creates) `dir/log.redb` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        let db = Database::create(dir.join("log.redb")).map_err(io)?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(LOG).map_err(io)?;
        txn.open_table(LOG_META).map_err(io)?;
        txn.commit().map_err(io)?;
        let db = Arc::new(db);
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, ops) = mpsc::channel();
        let (thread_db, thread_pending) = (Arc::clone(&db), Arc::clone(&pending));
        std::thread::Builder::new()
            .name("store-log-writer".into())
            .spawn(move || run_writer(thread_db, thread_pending, ops))?;
        Ok(Self {
            db,
            pending,
            writer,
        })
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(LOG_META).map_err(io)?;
        let value = table.get(name).map_err(io)?;
        value
            .map(|v| postcard::from_bytes(v.value()).map_err(io))
            .transpose()
    }

    /// Has the writer run `work` in its next transaction and waits for the commit.
    async fn change<F>(&self, work: F) -> Result<(), std::io::Error>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), std::io::Error> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(Op::Change {
                work: Box::new(work),
                done,
            })
            .map_err(|_| std::io::Error::other("the log writer has stopped"))?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the log writer has stopped"))?
    }

    async fn set_meta<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> Result<(), std::io::Error> {
        let bytes = postcard::to_allocvec(value).map_err(io)?;
        self.change(move |txn| {
            let mut table = txn.open_table(LOG_META).map_err(io)?;
            table.insert(name, bytes.as_slice()).map_err(io)?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // Pending entries first: one committed meanwhile leaves `pending` only after it
        // is in the database, so the read below finds it.
        let mut entries: BTreeMap<u64, Entry> = lock(&self.pending)
            .range(bounds)
            .map(|(index, entry)| (*index, entry.clone()))
            .collect();
        let txn = self.db.begin_read().map_err(|e| read_error(&e))?;
        let table = txn.open_table(LOG).map_err(|e| read_error(&e))?;
        for item in table.range(bounds).map_err(|e| read_error(&e))? {
            let (index, value) = item.map_err(|e| read_error(&e))?;
            if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(index.value()) {
                slot.insert(postcard::from_bytes(value.value()).map_err(|e| read_error(&e))?);
            }
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta("last_purged").map_err(|e| read_error(&e))?;
        let last_pending = lock(&self.pending).values().next_back().map(|e| e.log_id);
        let txn = self.db.begin_read().map_err(|e| read_error(&e))?;
        let table = txn.open_table(LOG).map_err(|e| read_error(&e))?;
        let last_stored = match table.last().map_err(|e| read_error(&e))? {
            Some((_, value)) => {
                let entry: Entry =
                    postcard::from_bytes(value.value()).map_err(|e| read_error(&e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_pending.max(last_stored).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.set_meta("vote", vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta("vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut pending = lock(&self.pending);
            for entry in entries {
                let bytes = postcard::to_allocvec(&entry).map_err(|e| write_error(&e))?;
                encoded.push((entry.log_id, bytes));
                pending.insert(entry.log_id.index, entry);
            }
        }
        self.writer
            .send(Op::Append {
                entries: encoded,
                flushed: callback,
            })
            .map_err(|_| write_error(&std::io::Error::other("the log writer has stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.pending).retain(|index, _| *index < log_id.index);
        self.change(move |txn| {
            let mut table = txn.open_table(LOG).map_err(io)?;
            table.retain_in(log_id.index.., |_, _| false).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| write_error(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.pending).retain(|index, _| *index > log_id.index);
        let bytes = postcard::to_allocvec(&log_id).map_err(|e| write_error(&e))?;
        self.change(move |txn| {
            let mut meta = txn.open_table(LOG_META).map_err(io)?;
            meta.insert("last_purged", bytes.as_slice()).map_err(io)?;
            let mut table = txn.open_table(LOG).map_err(io)?;
            table.retain_in(..=log_id.index, |_, _| false).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| write_error(&e))
    }
}
