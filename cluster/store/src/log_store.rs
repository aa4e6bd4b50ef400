//! The Raft log and vote on redb (`log.redb`): every append, truncate, purge and vote
//! is committed with fsync before Raft is told it is done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::raft_types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

/// The log store; clones share the database (readers for replication tasks).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
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

impl LogStore {
    /// Opens (or creates) `dir/log.redb`.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        let db = Database::create(dir.join("log.redb")).map_err(io)?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(LOG).map_err(io)?;
        txn.open_table(LOG_META).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Self { db: Arc::new(db) })
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

    /// Runs a write transaction on a blocking thread (it fsyncs on commit).
    async fn write<F>(&self, work: F) -> Result<(), std::io::Error>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), std::io::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(io)?;
            work(&txn)?;
            txn.commit().map_err(io)
        })
        .await
        .map_err(io)?
    }

    async fn set_meta<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> Result<(), std::io::Error> {
        let bytes = postcard::to_allocvec(value).map_err(io)?;
        self.write(move |txn| {
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
        let txn = self.db.begin_read().map_err(|e| read_error(&e))?;
        let table = txn.open_table(LOG).map_err(|e| read_error(&e))?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut entries = Vec::new();
        for item in table.range(bounds).map_err(|e| read_error(&e))? {
            let (_, value) = item.map_err(|e| read_error(&e))?;
            entries.push(postcard::from_bytes(value.value()).map_err(|e| read_error(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta("last_purged").map_err(|e| read_error(&e))?;
        let txn = self.db.begin_read().map_err(|e| read_error(&e))?;
        let table = txn.open_table(LOG).map_err(|e| read_error(&e))?;
        let last = match table.last().map_err(|e| read_error(&e))? {
            Some((_, value)) => {
                let entry: Entry =
                    postcard::from_bytes(value.value()).map_err(|e| read_error(&e))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
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

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_meta("committed", &committed)
            .await
            .map_err(|e| write_error(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .meta::<Option<LogId>>("committed")
            .map_err(|e| read_error(&e))?
            .flatten())
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
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry).map_err(|e| write_error(&e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let result = self
            .write(move |txn| {
                let mut table = txn.open_table(LOG).map_err(io)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io)?;
                }
                Ok(())
            })
            .await;
        let failed = result
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(err) => Err(write_error(&err)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(move |txn| {
            let mut table = txn.open_table(LOG).map_err(io)?;
            table.retain_in(log_id.index.., |_, _| false).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| write_error(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(&log_id).map_err(|e| write_error(&e))?;
        self.write(move |txn| {
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
