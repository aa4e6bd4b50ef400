//! Objects in the replicated store. Keys are `/registry/<group>/<plural>/[<ns>/]<name>`
//! (as kube-apiserver lays out etcd), values the object's JSON (Secrets encrypted), and
//! an object's `resourceVersion` is the store revision of its last write: it is not
//! stored, but set on every read. Writes are compare-and-set transactions, so a write
//! either lands whole at a new revision or not at all, and optimistic concurrency is
//! the store's own.

use std::borrow::Cow;
use std::sync::Arc;

use cairn_store::node::{StoreNode, Watch};
use cairn_store::types::{
    Compare, CompareResult, CompareTarget, KeyValue, Op, OpResult, RangeRequest, Request, Response,
    Txn,
};
use serde_json::Value;

use crate::encryption::{Encryption, is_encrypted};
use crate::error::ApiError;
use crate::registry::{Kind, ResourceType};

/// An object as read from the store, with its revisions.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object, `metadata.resourceVersion` set.
    pub object: Value,
    /// The revision of its last write (its resourceVersion).
    pub revision: u64,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    /// The objects, in key order.
    pub items: Vec<Stored>,
    /// The revision the list was read at.
    pub revision: u64,
    /// More keys follow the last one returned.
    pub more: bool,
    /// The store key of the last object returned.
    pub last_key: Option<String>,
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// Create: the key exists.
    Exists,
    /// Update or delete: the object is gone.
    Missing,
    /// Update or delete: the object changed since the revision given.
    Changed,
    /// Create: the namespace it names does not exist.
    NoNamespace,
    /// The store failed.
    Api(ApiError),
}

impl From<ApiError> for WriteError {
    fn from(err: ApiError) -> Self {
        WriteError::Api(err)
    }
}

/// The API server's access to the store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<StoreNode>,
    encryption: Option<Arc<Encryption>>,
}

fn range_end(prefix: &str) -> Vec<u8> {
    cairn_store::types::prefix_end(prefix.as_bytes())
}

impl Storage {
    /// Storage over `store`, encrypting Secrets with `encryption` when given.
    pub fn new(store: Arc<StoreNode>, encryption: Option<Arc<Encryption>>) -> Self {
        Self { store, encryption }
    }

    /// The store node.
    pub fn node(&self) -> &Arc<StoreNode> {
        &self.store
    }

    fn encrypts(resource: &ResourceType) -> bool {
        resource.builtin == Some(Kind::Secret)
    }

    /// The bytes stored for `object` under `key`: JSON without `resourceVersion`,
    /// sealed for Secrets.
    pub fn encode(
        &self,
        resource: &ResourceType,
        key: &str,
        object: &Value,
    ) -> Result<Vec<u8>, ApiError> {
        let mut object = object.clone();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::Internal(e.to_string()))?;
        match (&self.encryption, Self::encrypts(resource)) {
            (Some(crypt), true) => crypt
                .seal(&bytes, key.as_bytes())
                .map_err(|e| ApiError::Internal(e.to_string())),
            _ => Ok(bytes),
        }
    }

    /// The JSON bytes stored in `kv`, unsealed when sealed (without resourceVersion).
    fn plaintext<'a>(&self, kv: &'a KeyValue) -> Result<Cow<'a, [u8]>, ApiError> {
        if !is_encrypted(&kv.value) {
            return Ok(Cow::Borrowed(&kv.value));
        }
        let crypt = self.encryption.as_ref().ok_or_else(|| {
            ApiError::Internal(
                "a stored secret is encrypted but no secretsEncryption keys are configured".into(),
            )
        })?;
        crypt
            .open(&kv.value, &kv.key)
            .map(|(plain, _)| Cow::Owned(plain))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The object stored in `kv` as JSON bytes with its resourceVersion set, without
    /// parsing it (lists of thousands of objects are answered from these).
    pub fn decode_raw(&self, kv: &KeyValue) -> Result<Vec<u8>, ApiError> {
        let plain = self.plaintext(kv)?;
        match with_resource_version(&plain, kv.mod_revision) {
            Some(bytes) => Ok(bytes),
            // Not laid out as this server writes objects: take the slow, sure way.
            None => serde_json::to_vec(&self.decode(kv, kv.mod_revision)?)
                .map_err(|e| ApiError::Internal(e.to_string())),
        }
    }

    /// The object stored in `kv`, with its resourceVersion set.
    pub fn decode(&self, kv: &KeyValue, revision: u64) -> Result<Value, ApiError> {
        let plain = self.plaintext(kv)?;
        let mut object: Value = serde_json::from_slice(&plain).map_err(|e| {
            ApiError::Internal(format!(
                "{} in the store is not a JSON object: {e}",
                String::from_utf8_lossy(&kv.key)
            ))
        })?;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
        Ok(object)
    }

    /// Whether a stored value needs writing again (sealed with an older key, or
    /// unsealed where it should be sealed).
    pub fn needs_reseal(&self, resource: &ResourceType, kv: &KeyValue) -> bool {
        let Some(crypt) = &self.encryption else {
            return false;
        };
        if !Self::encrypts(resource) {
            return false;
        }
        if !is_encrypted(&kv.value) {
            return true;
        }
        crypt
            .open(&kv.value, &kv.key)
            .is_ok_and(|(_, key)| key != crypt.primary())
    }

    /// One object; `consistent` reads through the leader (the latest), else this
    /// node's copy.
    pub async fn get(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        consistent: bool,
    ) -> Result<Option<Stored>, ApiError> {
        let key = resource.key(namespace, name);
        let response = self.store.read(RangeRequest::key(key), consistent).await?;
        match response.kvs.first() {
            Some(kv) => Ok(Some(Stored {
                object: self.decode(kv, kv.mod_revision)?,
                revision: kv.mod_revision,
            })),
            None => Ok(None),
        }
    }

    /// The raw key-values under `prefix` from `start` on (at `revision`, at most
    /// `limit`).
    pub async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: Option<u64>,
        limit: Option<usize>,
        consistent: bool,
    ) -> Result<(Vec<KeyValue>, bool, u64), ApiError> {
        let range = RangeRequest {
            start: start.unwrap_or(prefix).as_bytes().to_vec(),
            end: Some(range_end(prefix)),
            revision,
            limit,
        };
        let response = self.store.read(range, consistent).await?;
        Ok((response.kvs, response.more, response.revision))
    }

    /// A page of the objects under `prefix`, starting at the key `start` (inclusive),
    /// at `revision` (the latest when `None`).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: Option<u64>,
        limit: Option<usize>,
        consistent: bool,
    ) -> Result<Page, ApiError> {
        let (kvs, more, revision) = self
            .range(prefix, start, revision, limit, consistent)
            .await?;
        let last_key = kvs
            .last()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned());
        let mut items = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            items.push(Stored {
                object: self.decode(kv, kv.mod_revision)?,
                revision: kv.mod_revision,
            });
        }
        Ok(Page {
            items,
            revision,
            more,
            last_key,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<cairn_store::types::TxnResponse, ApiError> {
        match self.store.write(Request::Txn(txn)).await? {
            Response::Txn(response) => Ok(response),
            other => Err(ApiError::Internal(format!(
                "the store answered a transaction with {other:?}"
            ))),
        }
    }

    /// Creates `object` at `key` if the key is free (and, when `namespace_key` is
    /// given, that namespace exists); the new revision.
    pub async fn create(
        &self,
        resource: &ResourceType,
        key: &str,
        object: &Value,
        namespace_key: Option<&str>,
    ) -> Result<u64, WriteError> {
        let value = self.encode(resource, key, object)?;
        let mut compare = vec![Compare {
            key: key.as_bytes().to_vec(),
            target: CompareTarget::ModRevision(0),
            result: CompareResult::Equal,
        }];
        if let Some(ns) = namespace_key {
            compare.push(Compare {
                key: ns.as_bytes().to_vec(),
                target: CompareTarget::CreateRevision(0),
                result: CompareResult::Greater,
            });
        }
        let response = self
            .txn(Txn {
                compare,
                success: vec![Op::Put {
                    key: key.as_bytes().to_vec(),
                    value,
                }],
                failure: Vec::new(),
            })
            .await?;
        if response.succeeded {
            return Ok(response.revision);
        }
        // Which comparison failed? The key first: an existing object is the answer
        // whatever its namespace is doing.
        let exists = !self
            .store
            .read(RangeRequest::key(key.to_owned()), true)
            .await
            .map_err(ApiError::from)?
            .kvs
            .is_empty();
        Err(if exists {
            WriteError::Exists
        } else {
            WriteError::NoNamespace
        })
    }

    /// Replaces the object at `key` if its last write was at `expected`; the new
    /// revision.
    pub async fn update(
        &self,
        resource: &ResourceType,
        key: &str,
        object: &Value,
        expected: u64,
    ) -> Result<u64, WriteError> {
        let value = self.encode(resource, key, object)?;
        let response = self
            .txn(Txn::update(key.as_bytes().to_vec(), value, expected))
            .await?;
        if response.succeeded {
            return Ok(response.revision);
        }
        self.missing_or_changed(key).await
    }

    /// Deletes the object at `key` if its last write was at `expected`; the delete's
    /// revision.
    pub async fn delete(&self, key: &str, expected: u64) -> Result<u64, WriteError> {
        let response = self
            .txn(Txn {
                compare: vec![Compare {
                    key: key.as_bytes().to_vec(),
                    target: CompareTarget::ModRevision(expected),
                    result: CompareResult::Equal,
                }],
                success: vec![Op::Delete {
                    key: key.as_bytes().to_vec(),
                }],
                failure: Vec::new(),
            })
            .await?;
        if response.succeeded {
            let deleted = response
                .results
                .iter()
                .any(|r| matches!(r, OpResult::Delete { prev: Some(_) }));
            return if deleted {
                Ok(response.revision)
            } else {
                Err(WriteError::Missing)
            };
        }
        self.missing_or_changed(key).await
    }

    async fn missing_or_changed<T>(&self, key: &str) -> Result<T, WriteError> {
        let present = self
            .store
            .read(RangeRequest::key(key.to_owned()), true)
            .await
            .map_err(ApiError::from)?;
        Err(if present.kvs.is_empty() {
            WriteError::Missing
        } else {
            WriteError::Changed
        })
    }

    /// The latest revision (through the leader), for lists and watches that start now.
    pub async fn current_revision(&self) -> Result<u64, ApiError> {
        // A read of a key nobody writes returns the revision it saw.
        let response = self
            .store
            .read(
                RangeRequest::key(b"/cairn/apiserver/revision".to_vec()),
                true,
            )
            .await?;
        Ok(response.revision)
    }

    /// This node's oldest revision still held (history before it is compacted).
    pub fn compacted_revision(&self) -> u64 {
        self.store
            .revisions()
            .map(|(_, compacted)| compacted)
            .unwrap_or(0)
    }

    /// Follows the keys under `prefix` from revision `from` on, on this node's copy.
    pub fn watch(&self, prefix: &str, from: u64) -> Result<Watch, ApiError> {
        self.store
            .watch(prefix.as_bytes().to_vec(), Some(range_end(prefix)), from)
            .map_err(|err| match err {
                cairn_store::StoreError::Compacted {
                    requested,
                    compacted,
                } => ApiError::Expired(format!(
                    "too old resource version: {requested} ({})",
                    compacted.saturating_sub(1)
                )),
                other => ApiError::Internal(other.to_string()),
            })
    }
}

/// `object` (a JSON object as stored: without `metadata.resourceVersion`) with
/// `"resourceVersion":"<revision>"` put first in its top-level `metadata`; `None` when
/// the bytes are not an object with a `metadata` object.
pub fn with_resource_version(object: &[u8], revision: u64) -> Option<Vec<u8>> {
    let open = metadata_open_brace(object)?;
    let rest = &object[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let field = format!(
        "\"resourceVersion\":\"{revision}\"{}",
        if empty { "" } else { "," }
    );
    let mut out = Vec::with_capacity(object.len() + field.len());
    out.extend_from_slice(&object[..=open]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

/// The offset of the `{` that opens the top-level `"metadata"` value of `object`.
fn metadata_open_brace(object: &[u8]) -> Option<usize> {
    let mut at = skip_space(object, 0);
    if object.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_space(object, at);
        match object.get(at)? {
            b'}' => return None,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(object, at)?;
        let key = &object[at + 1..key_end - 1];
        at = skip_space(object, key_end);
        if object.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(object, at + 1);
        if key == b"metadata" {
            return (object.get(at) == Some(&b'{')).then_some(at);
        }
        at = skip_value(object, at)?;
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The offset just past the string that starts (with `"`) at `at`.
fn skip_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The offset just past the JSON value that starts at `at`.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::with_resource_version;

    fn spliced(object: &Value, revision: u64) -> Value {
        let bytes = serde_json::to_vec(object).unwrap();
        serde_json::from_slice(&with_resource_version(&bytes, revision).unwrap()).unwrap()
    }

    #[test]
    fn the_resource_version_lands_in_the_top_level_metadata_only() {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "a": {"metadata": {"x": "}\"{"}, "list": [1, {"k": "]"}], "n": null},
            "b": -1.5e3,
            "metadata": {"name": "web", "labels": {"metadata": "yes"}},
            "spec": {"template": {"metadata": {}}},
        });
        let mut expected = object.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(spliced(&object, 42), expected);
    }

    #[test]
    fn empty_metadata_and_whitespace_are_handled() {
        let text = br#" { "kind" : "X" , "metadata" : { } } "#;
        let out: Value = serde_json::from_slice(&with_resource_version(text, 7).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"kind": "X", "metadata": {"resourceVersion": "7"}})
        );
    }

    #[test]
    fn objects_without_a_metadata_object_are_refused() {
        assert!(with_resource_version(br#"{"kind":"X"}"#, 1).is_none());
        assert!(with_resource_version(br#"{"metadata":"x"}"#, 1).is_none());
        assert!(with_resource_version(br#"[{"metadata":{}}]"#, 1).is_none());
        assert!(with_resource_version(br#"{"kind":"unterminated"#, 1).is_none());
    }
}
