//! The MVCC key space on redb: the latest value of every key, every earlier version
//! back to the compaction point, and the events of every revision for watches.
//!
//! Tables:
//! - `kv`: key → latest record;
//! - `history`: (key, revision) → record, or a tombstone for a deletion;
//! - `events`: revision → the events of that revision;
//! - `mvcc_meta`: `revision`, `compact_revision`.
//!
//! Writes happen inside a redb write transaction the caller owns, so that applying a
//! Raft entry and recording it as applied commit together.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::types::{
    CompareResult, CompareTarget, Event, EventKind, KeyValue, Op, OpResult, RangeRequest,
    RangeResponse, Request, Response, Txn, TxnResponse,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("mvcc_meta");

/// A key's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

impl Record {
    fn key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// The whole key space at one revision, as snapshots carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpaceImage {
    /// The revision of the image.
    pub revision: u64,
    /// Every live key with its latest record.
    pub kvs: Vec<KeyValue>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Encoding(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Encoding(e.to_string()))
}

fn storage(err: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(err.to_string())
}

/// The current revision and the compaction point, as kept in the meta table.
fn revisions_in(table: &impl ReadableTable<&'static str, u64>) -> Result<(u64, u64), StoreError> {
    let get = |name| -> Result<u64, StoreError> {
        Ok(table
            .get(name)
            .map_err(storage)?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    Ok((get("revision")?, get("compact_revision")?))
}

/// Creates the tables if they do not exist.
pub fn init(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(KV).map_err(storage)?;
    txn.open_table(HISTORY).map_err(storage)?;
    txn.open_table(EVENTS).map_err(storage)?;
    txn.open_table(META).map_err(storage)?;
    Ok(())
}

fn meta(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    let table = txn.open_table(META).map_err(storage)?;
    Ok(table
        .get(name)
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn set_meta(txn: &WriteTransaction, name: &str, value: u64) -> Result<(), StoreError> {
    let mut table = txn.open_table(META).map_err(storage)?;
    table.insert(name, value).map_err(storage)?;
    Ok(())
}

fn latest(txn: &WriteTransaction, key: &[u8]) -> Result<Option<Record>, StoreError> {
    let table = txn.open_table(KV).map_err(storage)?;
    let found = table.get(key).map_err(storage)?;
    found.map(|v| decode(v.value())).transpose()
}

fn holds(record: Option<&Record>, target: &CompareTarget, result: CompareResult) -> bool {
    use std::cmp::Ordering;
    let ordering = match target {
        CompareTarget::ModRevision(r) => record.map_or(0, |x| x.mod_revision).cmp(r),
        CompareTarget::CreateRevision(r) => record.map_or(0, |x| x.create_revision).cmp(r),
        CompareTarget::Version(v) => record.map_or(0, |x| x.version).cmp(v),
        CompareTarget::Value(value) => match record {
            Some(x) => x.value.as_slice().cmp(value.as_slice()),
            // An absent key has no value: only NotEqual holds.
            None => return result == CompareResult::NotEqual,
        },
    };
    match result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::Greater => ordering == Ordering::Greater,
    }
}

/// The events of each revision a request made, in order.
pub type Revisions = Vec<(u64, Vec<Event>)>;

/// Applies one write request inside `txn`; returns the answer and, for each revision
/// it made, that revision's events (a batch makes one per write that changed something).
pub fn apply(
    txn: &WriteTransaction,
    request: &Request,
) -> Result<(Response, Revisions), StoreError> {
    match request {
        Request::Txn(t) => {
            let (response, events) = apply_txn(txn, t)?;
            let revisions = match (&response, events.is_empty()) {
                (Response::Txn(t), false) => vec![(t.revision, events)],
                _ => Vec::new(),
            };
            Ok((response, revisions))
        }
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            let mut revisions = Vec::new();
            for request in requests {
                let (response, made) = apply(txn, request)?;
                responses.push(response);
                revisions.extend(made);
            }
            Ok((Response::Batch(responses), revisions))
        }
        Request::Compact { revision } => {
            let compacted = compact(txn, *revision)?;
            Ok((
                Response::Compacted {
                    revision: compacted,
                },
                Vec::new(),
            ))
        }
    }
}

fn apply_txn(txn: &WriteTransaction, request: &Txn) -> Result<(Response, Vec<Event>), StoreError> {
    let mut succeeded = true;
    for compare in &request.compare {
        let record = latest(txn, &compare.key)?;
        if !holds(record.as_ref(), &compare.target, compare.result) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let current = meta(txn, "revision")?;
    let revision = current + 1;
    let mut events = Vec::new();
    let mut results = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let prev = latest(txn, key)?;
                let record = Record {
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                };
                write(txn, key, Some(&record), revision)?;
                let prev = prev.map(|p| p.key_value(key));
                events.push(Event {
                    kind: EventKind::Put,
                    kv: record.key_value(key),
                    prev: prev.clone(),
                });
                results.push(OpResult::Put { prev });
            }
            Op::Delete { key } => {
                let prev = delete(txn, key, revision, &mut events)?;
                results.push(OpResult::Delete { prev });
            }
            Op::DeletePrefix { prefix } => {
                let end = crate::types::prefix_end(prefix);
                let keys: Vec<Vec<u8>> = {
                    let table = txn.open_table(KV).map_err(storage)?;
                    let upper = if end.is_empty() {
                        Bound::Unbounded
                    } else {
                        Bound::Excluded(end.as_slice())
                    };
                    let mut keys = Vec::new();
                    for entry in table
                        .range::<&[u8]>((Bound::Included(prefix.as_slice()), upper))
                        .map_err(storage)?
                    {
                        let (key, _) = entry.map_err(storage)?;
                        keys.push(key.value().to_vec());
                    }
                    keys
                };
                let mut deleted = Vec::new();
                for key in keys {
                    if let Some(prev) = delete(txn, &key, revision, &mut events)? {
                        deleted.push(prev);
                    }
                }
                results.push(OpResult::DeletePrefix { deleted });
            }
        }
    }
    let revision = if events.is_empty() {
        current
    } else {
        set_meta(txn, "revision", revision)?;
        let mut table = txn.open_table(EVENTS).map_err(storage)?;
        table
            .insert(revision, encode(&events)?.as_slice())
            .map_err(storage)?;
        revision
    };
    Ok((
        Response::Txn(TxnResponse {
            succeeded,
            revision,
            results,
        }),
        events,
    ))
}

fn delete(
    txn: &WriteTransaction,
    key: &[u8],
    revision: u64,
    events: &mut Vec<Event>,
) -> Result<Option<KeyValue>, StoreError> {
    let Some(prev) = latest(txn, key)? else {
        return Ok(None);
    };
    write(txn, key, None, revision)?;
    let prev = prev.key_value(key);
    events.push(Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
        prev: Some(prev.clone()),
    });
    Ok(Some(prev))
}

fn write(
    txn: &WriteTransaction,
    key: &[u8],
    record: Option<&Record>,
    revision: u64,
) -> Result<(), StoreError> {
    let mut kv = txn.open_table(KV).map_err(storage)?;
    match record {
        Some(record) => {
            kv.insert(key, encode(record)?.as_slice())
                .map_err(storage)?;
        }
        None => {
            kv.remove(key).map_err(storage)?;
        }
    }
    let mut history = txn.open_table(HISTORY).map_err(storage)?;
    history
        .insert((key, revision), encode(&record)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Drops history before `revision` (keeping, per key, the version valid at it) and the
/// events before it. Returns the compaction point now in force.
fn compact(txn: &WriteTransaction, revision: u64) -> Result<u64, StoreError> {
    let current = meta(txn, "revision")?;
    let previous = meta(txn, "compact_revision")?;
    let target = revision.min(current);
    if target <= previous {
        return Ok(previous);
    }
    {
        let mut history = txn.open_table(HISTORY).map_err(storage)?;
        let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut last: Option<(Vec<u8>, u64, bool)> = None; // newest entry < target of the current key
        for entry in history.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let (k, rev) = key.value();
            let is_tombstone = decode::<Option<Record>>(value.value())?.is_none();
            if rev > target {
                continue;
            }
            if let Some((prev_key, prev_rev, _)) = &last
                && prev_key.as_slice() == k
            {
                // An older entry of the same key is superseded at `target`.
                doomed.push((prev_key.clone(), *prev_rev));
            } else if let Some((prev_key, prev_rev, true)) = &last {
                // The previous key's newest entry before `target` is a deletion.
                doomed.push((prev_key.clone(), *prev_rev));
            }
            last = Some((k.to_vec(), rev, is_tombstone));
        }
        if let Some((key, rev, true)) = last {
            doomed.push((key, rev));
        }
        for (key, rev) in doomed {
            history.remove((key.as_slice(), rev)).map_err(storage)?;
        }
    }
    {
        let mut events = txn.open_table(EVENTS).map_err(storage)?;
        events.retain_in(..target, |_, _| false).map_err(storage)?;
    }
    set_meta(txn, "compact_revision", target)?;
    Ok(target)
}

/// A read-only view of the key space.
pub struct Reader<'a> {
    db: &'a redb::Database,
}

impl<'a> Reader<'a> {
    /// A view of `db`.
    pub fn new(db: &'a redb::Database) -> Self {
        Self { db }
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(storage)
    }

    /// The current revision and the compaction point.
    pub fn revisions(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.read()?;
        match txn.open_table(META) {
            Ok(table) => revisions_in(&table),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok((0, 0)),
            Err(err) => Err(storage(err)),
        }
    }

    /// Reads a key or a range, at the latest revision or an older one.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let txn = self.read()?;
        let (current, compacted) = revisions_in(&txn.open_table(META).map_err(storage)?)?;
        let at = request.revision.unwrap_or(current);
        if at > current {
            return Err(StoreError::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted,
            });
        }
        let limit = request.limit.unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        let mut more = false;
        let single = request.end.is_none();
        let upper = match &request.end {
            None => Bound::Included(request.start.as_slice()),
            Some(end) if end.is_empty() => Bound::Unbounded,
            Some(end) => Bound::Excluded(end.as_slice()),
        };
        if at == current {
            let table = txn.open_table(KV).map_err(storage)?;
            for entry in table
                .range::<&[u8]>((Bound::Included(request.start.as_slice()), upper))
                .map_err(storage)?
            {
                let (key, value) = entry.map_err(storage)?;
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(decode::<Record>(value.value())?.key_value(key.value()));
            }
        } else {
            let table = txn.open_table(HISTORY).map_err(storage)?;
            let lower = (request.start.as_slice(), 0u64);
            let mut candidate: Option<(Vec<u8>, Option<Record>)> = None;
            let flush = |candidate: Option<(Vec<u8>, Option<Record>)>,
                         kvs: &mut Vec<KeyValue>,
                         more: &mut bool| {
                if let Some((key, Some(record))) = candidate {
                    if kvs.len() == limit {
                        *more = true;
                    } else {
                        kvs.push(record.key_value(&key));
                    }
                }
            };
            for entry in table.range(lower..).map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let (k, rev) = key.value();
                let in_range = match upper {
                    Bound::Included(end) => k <= end,
                    Bound::Excluded(end) => k < end,
                    Bound::Unbounded => true,
                };
                if !in_range {
                    break;
                }
                if candidate.as_ref().is_some_and(|(ck, _)| ck.as_slice() != k) {
                    flush(candidate.take(), &mut kvs, &mut more);
                    if more {
                        break;
                    }
                }
                if rev <= at {
                    candidate = Some((k.to_vec(), decode(value.value())?));
                } else if candidate.is_none() {
                    // Only newer versions of this key so far: it did not exist at `at`.
                    continue;
                }
            }
            if !more {
                flush(candidate, &mut kvs, &mut more);
            }
        }
        if single {
            kvs.truncate(1);
        }
        Ok(RangeResponse {
            kvs,
            more,
            revision: at,
        })
    }

    /// The events of revisions `from..` (at most `max_revisions` of them), or
    /// `Compacted` when `from` is before the compaction point.
    pub fn events_since(
        &self,
        from: u64,
        max_revisions: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, StoreError> {
        let (_, compacted) = self.revisions()?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let txn = self.read()?;
        let table = match txn.open_table(EVENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(storage(err)),
        };
        let mut out = Vec::new();
        for entry in table.range(from..).map_err(storage)? {
            if out.len() == max_revisions {
                break;
            }
            let (revision, events) = entry.map_err(storage)?;
            out.push((revision.value(), decode(events.value())?));
        }
        Ok(out)
    }

    /// The whole key space at the latest revision.
    pub fn image(&self) -> Result<KeySpaceImage, StoreError> {
        let (revision, _) = self.revisions()?;
        let response = self.range(&RangeRequest {
            start: Vec::new(),
            end: Some(Vec::new()),
            revision: None,
            limit: None,
        })?;
        Ok(KeySpaceImage {
            revision,
            kvs: response.kvs,
        })
    }
}

/// Replaces the whole key space with an image (snapshot installation). History before
/// the image is gone: the image's revision becomes the compaction point.
pub fn install(txn: &WriteTransaction, image: &KeySpaceImage) -> Result<(), StoreError> {
    txn.delete_table(KV).map_err(storage)?;
    txn.delete_table(HISTORY).map_err(storage)?;
    txn.delete_table(EVENTS).map_err(storage)?;
    init(txn)?;
    {
        let mut kv = txn.open_table(KV).map_err(storage)?;
        let mut history = txn.open_table(HISTORY).map_err(storage)?;
        for item in &image.kvs {
            let record = Record {
                value: item.value.clone(),
                create_revision: item.create_revision,
                mod_revision: item.mod_revision,
                version: item.version,
            };
            let bytes = encode(&record)?;
            kv.insert(item.key.as_slice(), bytes.as_slice())
                .map_err(storage)?;
            history
                .insert(
                    (item.key.as_slice(), item.mod_revision),
                    encode(&Some(record))?.as_slice(),
                )
                .map_err(storage)?;
        }
    }
    set_meta(txn, "revision", image.revision)?;
    set_meta(txn, "compact_revision", image.revision)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Compare, RangeRequest};

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        init(&txn).unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    fn run(db: &redb::Database, request: Request) -> Response {
        let txn = db.begin_write().unwrap();
        let (response, _) = apply(&txn, &request).unwrap();
        txn.commit().unwrap();
        response
    }

    fn txn_response(response: Response) -> TxnResponse {
        match response {
            Response::Txn(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_applies_each_write_as_if_alone_with_its_own_revision() {
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let batch = Request::Batch(vec![
            Request::Txn(Txn::create("/a", "1")),
            // Refused: /a now exists. Makes no revision, changes nothing.
            Request::Txn(Txn::create("/a", "2")),
            Request::Txn(Txn::put("/b", "3")),
        ]);
        let (response, revisions) = apply(&txn, &batch).unwrap();
        txn.commit().unwrap();
        let Response::Batch(answers) = response else {
            panic!("a batch is answered by a batch");
        };
        let answers: Vec<TxnResponse> = answers.into_iter().map(txn_response).collect();
        assert_eq!(
            answers
                .iter()
                .map(|a| (a.succeeded, a.revision))
                .collect::<Vec<_>>(),
            [(true, 1), (false, 1), (true, 2)]
        );
        let made: Vec<u64> = revisions.iter().map(|(r, _)| *r).collect();
        assert_eq!(made, [1, 2], "one event group per revision made");
        let read = Reader::new(&db).range(&RangeRequest::key("/a")).unwrap();
        assert_eq!(read.kvs[0].value, b"1");
    }

    #[test]
    fn every_write_gets_the_next_revision_and_keys_track_versions() {
        let (_dir, db) = db();
        assert_eq!(
            txn_response(run(&db, Request::Txn(Txn::put("a", "1")))).revision,
            1
        );
        assert_eq!(
            txn_response(run(&db, Request::Txn(Txn::put("a", "2")))).revision,
            2
        );
        assert_eq!(
            txn_response(run(&db, Request::Txn(Txn::put("b", "1")))).revision,
            3
        );
        let a = Reader::new(&db).range(&RangeRequest::key("a")).unwrap();
        assert_eq!(a.kvs[0].value, b"2");
        assert_eq!(
            (
                a.kvs[0].create_revision,
                a.kvs[0].mod_revision,
                a.kvs[0].version
            ),
            (1, 2, 2)
        );
        assert_eq!(a.revision, 3);
        // A transaction that changes nothing does not move the revision.
        let noop = txn_response(run(&db, Request::Txn(Txn::delete("zzz"))));
        assert_eq!(noop.revision, 3);
    }

    #[test]
    fn compare_on_mod_revision_gives_create_if_absent_and_optimistic_updates() {
        let (_dir, db) = db();
        assert!(txn_response(run(&db, Request::Txn(Txn::create("k", "v1")))).succeeded);
        assert!(!txn_response(run(&db, Request::Txn(Txn::create("k", "v2")))).succeeded);
        assert!(!txn_response(run(&db, Request::Txn(Txn::update("k", "v3", 7)))).succeeded);
        let updated = txn_response(run(&db, Request::Txn(Txn::update("k", "v3", 1))));
        assert!(updated.succeeded);
        assert_eq!(updated.revision, 2);
        let value = Txn {
            compare: vec![Compare {
                key: b"k".to_vec(),
                target: CompareTarget::Value(b"v3".to_vec()),
                result: CompareResult::Equal,
            }],
            success: vec![Op::Delete { key: b"k".to_vec() }],
            failure: vec![],
        };
        let deleted = txn_response(run(&db, Request::Txn(value)));
        assert!(deleted.succeeded);
        assert!(
            matches!(&deleted.results[0], OpResult::Delete { prev: Some(kv) } if kv.value == b"v3")
        );
        assert!(
            Reader::new(&db)
                .range(&RangeRequest::key("k"))
                .unwrap()
                .kvs
                .is_empty()
        );
    }

    #[test]
    fn ranges_read_old_revisions_with_limits_and_prefixes() {
        let (_dir, db) = db();
        for (key, value) in [("/p/a", "1"), ("/p/b", "1"), ("/q/a", "1"), ("/p/a", "2")] {
            run(&db, Request::Txn(Txn::put(key, value)));
        }
        run(&db, Request::Txn(Txn::delete("/p/b")));
        let reader = Reader::new(&db);
        let now = reader.range(&RangeRequest::prefix("/p/")).unwrap();
        assert_eq!(now.kvs.len(), 1);
        assert_eq!(now.kvs[0].value, b"2");
        let mut at3 = RangeRequest::prefix("/p/");
        at3.revision = Some(3);
        let old = reader.range(&at3).unwrap();
        let keys: Vec<_> = old
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (b"/p/a".to_vec(), b"1".to_vec()),
                (b"/p/b".to_vec(), b"1".to_vec())
            ]
        );
        let mut limited = RangeRequest::prefix("/");
        limited.limit = Some(1);
        let page = reader.range(&limited).unwrap();
        assert_eq!(page.kvs.len(), 1);
        assert!(page.more);
        let mut future = RangeRequest::key("/p/a");
        future.revision = Some(99);
        assert!(matches!(
            reader.range(&future),
            Err(StoreError::FutureRevision { .. })
        ));
    }

    #[test]
    fn compaction_keeps_what_is_valid_at_the_point_and_refuses_older_reads() {
        let (_dir, db) = db();
        run(&db, Request::Txn(Txn::put("a", "1"))); // 1
        run(&db, Request::Txn(Txn::put("a", "2"))); // 2
        run(&db, Request::Txn(Txn::put("b", "1"))); // 3
        run(&db, Request::Txn(Txn::delete("b"))); // 4
        run(&db, Request::Txn(Txn::put("a", "3"))); // 5
        assert_eq!(
            run(&db, Request::Compact { revision: 4 }),
            Response::Compacted { revision: 4 }
        );
        let reader = Reader::new(&db);
        let mut at4 = RangeRequest::prefix("");
        at4.revision = Some(4);
        let kvs = reader.range(&at4).unwrap().kvs;
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].value, b"2");
        let mut at3 = at4.clone();
        at3.revision = Some(3);
        assert!(matches!(
            reader.range(&at3),
            Err(StoreError::Compacted { compacted: 4, .. })
        ));
        assert!(matches!(
            reader.events_since(2, 10),
            Err(StoreError::Compacted { .. })
        ));
        let events = reader.events_since(4, 10).unwrap();
        assert_eq!(events.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [4, 5]);
        // Compacting backwards changes nothing.
        assert_eq!(
            run(&db, Request::Compact { revision: 2 }),
            Response::Compacted { revision: 4 }
        );
    }

    #[test]
    fn events_describe_each_revision_with_previous_values() {
        let (_dir, db) = db();
        run(&db, Request::Txn(Txn::put("/x/1", "a")));
        run(&db, Request::Txn(Txn::put("/x/2", "b")));
        run(
            &db,
            Request::Txn(Txn {
                success: vec![Op::DeletePrefix {
                    prefix: b"/x/".to_vec(),
                }],
                ..Default::default()
            }),
        );
        let events = Reader::new(&db).events_since(1, 10).unwrap();
        assert_eq!(events.len(), 3);
        let (revision, deletes) = &events[2];
        assert_eq!(*revision, 3);
        assert_eq!(deletes.len(), 2);
        assert!(
            deletes
                .iter()
                .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 3)
        );
        assert_eq!(deletes[0].prev.as_ref().unwrap().value, b"a");
    }

    #[test]
    fn an_installed_image_replaces_everything() {
        let (_dir, db) = db();
        run(&db, Request::Txn(Txn::put("old", "x")));
        let (_dir2, source) = self::db();
        run(&source, Request::Txn(Txn::put("a", "1")));
        run(&source, Request::Txn(Txn::put("b", "2")));
        let image = Reader::new(&source).image().unwrap();
        let txn = db.begin_write().unwrap();
        install(&txn, &image).unwrap();
        txn.commit().unwrap();
        let reader = Reader::new(&db);
        assert_eq!(reader.revisions().unwrap(), (2, 2));
        assert_eq!(reader.image().unwrap(), image);
        assert_eq!(
            txn_response(run(&db, Request::Txn(Txn::put("c", "3")))).revision,
            3
        );
    }
}
