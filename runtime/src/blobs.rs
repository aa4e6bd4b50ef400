//! The content-addressed blob store: every blob (manifest, config, layer) lives at
//! `<root>/blobs/sha256/<hex>`, written first to `<root>/ingest/` while its digest is
//! computed, and moved into place only when the digest (and, when known, the expected
//! one) matches. A half-written or corrupt blob is therefore never visible.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestingReader};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file system failed at `path`.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The content does not have the digest it was announced with.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Mismatch {
        /// The announced digest.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The content is larger than allowed.
    #[error("content is larger than the {limit} byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No blob has this digest.
    #[error("blob {digest} is not in the store")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The blob store of one node.
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl BlobStore {
    /// Opens (creating its directories) the store under `root`, and clears what an
    /// interrupted ingest left behind.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(io_at(&ingest))?;
        }
        std::fs::create_dir_all(&ingest).map_err(io_at(&ingest))?;
        Ok(Self { blobs, ingest })
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is in the store.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Streams `content` into the store, refusing it if it is over `limit` bytes or
    /// does not match `expected`. Returns its digest and size.
    pub fn put(
        &self,
        content: impl Read,
        expected: Option<&Digest>,
        limit: u64,
    ) -> Result<(Digest, u64), BlobError> {
        let mut staged = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.ingest)
            .map_err(io_at(&self.ingest))?;
        let mut reader = DigestingReader::new(content.take(limit.saturating_add(1)));
        let copied =
            std::io::copy(&mut reader, staged.as_file_mut()).map_err(io_at(staged.path()))?;
        if copied > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let (digest, size) = reader.finish();
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(BlobError::Mismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        staged.as_file().sync_all().map_err(io_at(staged.path()))?;
        let path = self.path(&digest);
        staged.persist(&path).map_err(|e| BlobError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok((digest, size))
    }

    /// Stores `bytes` (manifests, configs).
    pub fn put_bytes(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, BlobError> {
        self.put(bytes, expected, bytes.len() as u64)
            .map(|(d, _)| d)
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BlobError::NotFound {
                digest: digest.clone(),
            },
            _ => BlobError::Io { path, source },
        })
    }

    /// Reads a small blob whole (at most `limit` bytes), checking its digest again.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, BlobError> {
        let mut bytes = Vec::new();
        let path = self.path(digest);
        self.open_blob(digest)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_at(&path))?;
        if bytes.len() as u64 > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(BlobError::Mismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let mut digests = Vec::new();
        for entry in std::fs::read_dir(&self.blobs).map_err(io_at(&self.blobs))? {
            let entry = entry.map_err(io_at(&self.blobs))?;
            let name = entry.file_name();
            if let Some(Ok(digest)) = name.to_str().map(|n| Digest::parse(&format!("sha256:{n}"))) {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Garbage collection: removes every blob not in `keep`; returns what went.
    pub fn retain(&self, keep: &BTreeSet<Digest>) -> Result<Vec<Digest>, BlobError> {
        let mut removed = Vec::new();
        for digest in self.list()? {
            if !keep.contains(&digest) {
                let path = self.path(&digest);
                std::fs::remove_file(&path).map_err(io_at(&path))?;
                removed.push(digest);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_by_digest_and_mismatches_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = store.put_bytes(b"layer", None).unwrap();
        assert_eq!(digest, Digest::of(b"layer"));
        assert!(store.contains(&digest));
        assert_eq!(store.read(&digest, 100).unwrap(), b"layer");

        let wrong = Digest::of(b"other");
        let err = store.put_bytes(b"tampered", Some(&wrong)).unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&Digest::of(b"tampered")));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );

        let err = store.put(&[0u8; 100][..], None, 99).unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 99 }));

        // A blob corrupted on disk is caught when read.
        std::fs::write(store.path(&digest), b"rotten").unwrap();
        assert!(matches!(
            store.read(&digest, 100),
            Err(BlobError::Mismatch { .. })
        ));
    }

    #[test]
    fn garbage_collection_keeps_only_what_is_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = store.put_bytes(b"kept", None).unwrap();
        let dropped = store.put_bytes(b"dropped", None).unwrap();
        let removed = store.retain(&BTreeSet::from([kept.clone()])).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dropped));
        assert_eq!(store.list().unwrap(), [kept]);
        assert!(matches!(
            store.open_blob(&dropped),
            Err(BlobError::NotFound { .. })
        ));
    }
}
