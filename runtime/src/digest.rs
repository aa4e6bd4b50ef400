//! Content digests as OCI writes them (`sha256:<64 hex>`): parsing, computing while
//! bytes stream through, and verifying.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A `sha256` content digest (the only algorithm OCI images use in practice).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a text is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `algorithm:hex`, or the hex part is not 64 lowercase hex digits.
    #[error("{text:?} is not a digest like sha256:<64 hex digits>: {reason}")]
    Malformed {
        /// The text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An algorithm other than sha256.
    #[error("digest algorithm {algorithm:?} is not supported (only sha256)")]
    UnsupportedAlgorithm {
        /// The algorithm named.
        algorithm: String,
    },
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let malformed = |reason| DigestError::Malformed {
            text: text.to_owned(),
            reason,
        };
        let (algorithm, hex) = text.split_once(':').ok_or(malformed("no ':'"))?;
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: algorithm.to_owned(),
            });
        }
        if hex.len() != 64 {
            return Err(malformed("the hex part is not 64 characters"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(malformed("the hex part has characters other than 0-9a-f"));
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::default();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The 64 hex digits (the blob's file name).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Computes a digest over bytes fed in pieces.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    bytes: u64,
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    /// How many bytes were fed.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let sum = self.sha.finalize();
        let mut hex = String::with_capacity(64);
        for byte in sum {
            use std::fmt::Write as _;
            let _ = write!(hex, "{byte:02x}");
        }
        Digest { hex }
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that digests what is read through it.
pub struct DigestingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> DigestingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// The digest and length of what was read so far.
    pub fn finish(self) -> (Digest, u64) {
        let bytes = self.hasher.len();
        (self.hasher.finish(), bytes)
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_print_and_match_sha256() {
        let empty = Digest::of(b"");
        assert_eq!(
            empty.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&empty.to_string()).unwrap(), empty);
        let mut reader = DigestingReader::new(&b"abc"[..]);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert_eq!(reader.finish(), (Digest::of(b"abc"), 3));
    }

    #[test]
    fn malformed_digests_say_what_is_wrong() {
        for (text, needle) in [
            ("sha256", "no ':'"),
            ("sha256:abc", "64 characters"),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "0-9a-f",
            ),
        ] {
            let err = Digest::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
    }
}
