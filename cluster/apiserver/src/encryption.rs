//! Encryption at rest for Secrets: AES-256-GCM with keys from the machine config
//! (`cluster.secretsEncryption.keys`). The first key encrypts; every key decrypts, so
//! a key is rotated by putting a new one first, keeping the old one until every
//! Secret has been written again (the server rewrites them at start). The stored form
//! names its key, like kube-apiserver's `k8s:enc:aesgcm:v1:<name>:` envelope.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of an encrypted value; the key's name and a `:` follow.
pub const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Why a key or a value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// A key is not 32 bytes of base64.
    #[error("secrets encryption key {name:?} is not 32 bytes of base64")]
    BadKey {
        /// The key's name.
        name: String,
    },
    /// A stored value names a key the server does not have.
    #[error("a stored secret is encrypted with key {0:?}, which is not configured")]
    UnknownKey(String),
    /// A stored value does not decrypt (corrupt, or the key is wrong).
    #[error("a stored secret does not decrypt with key {0:?}")]
    Corrupt(String),
    /// The system random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// The configured keys.
pub struct Encryption {
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Encryption").field("keys", &names).finish()
    }
}

impl Encryption {
    /// Keys as `(name, base64 secret)`, the encrypting one first; `None` when empty.
    pub fn new(keys: &[(String, String)]) -> Result<Option<Self>, EncryptionError> {
        use base64::Engine;
        if keys.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (name, secret) in keys {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .map_err(|_| EncryptionError::BadKey { name: name.clone() })?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| EncryptionError::BadKey { name: name.clone() })?;
            out.push((name.clone(), LessSafeKey::new(key)));
        }
        Ok(Some(Self {
            keys: out,
            random: SystemRandom::new(),
        }))
    }

    /// The name of the encrypting key.
    pub fn primary(&self) -> &str {
        self.keys.first().map_or("", |(n, _)| n.as_str())
    }

    /// Encrypts `plain` with the first key; `aad` binds it to its store key, so a
    /// value copied under another key does not decrypt.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let Some((name, key)) = self.keys.first() else {
            return Ok(plain.to_vec());
        };
        let mut nonce = [0u8; 12];
        self.random
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| EncryptionError::Corrupt(name.clone()))?;
        let mut out = PREFIX.to_vec();
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypts a value [`Encryption::seal`] made; the key it used is also returned.
    pub fn open(&self, stored: &[u8], aad: &[u8]) -> Result<(Vec<u8>, String), EncryptionError> {
        let rest = stored.strip_prefix(PREFIX).unwrap_or(stored);
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| EncryptionError::Corrupt(String::new()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let body = &rest[colon + 1..];
        let Some((_, key)) = self.keys.iter().find(|(n, _)| *n == name) else {
            return Err(EncryptionError::UnknownKey(name));
        };
        if body.len() < 12 + 16 {
            return Err(EncryptionError::Corrupt(name));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&body[..12]);
        let mut data = body[12..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| EncryptionError::Corrupt(name.clone()))?;
        Ok((plain.to_vec(), name))
    }
}

/// Whether a stored value is encrypted.
pub fn is_encrypted(stored: &[u8]) -> bool {
    stored.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn secrets_round_trip_and_rotate_to_a_new_first_key() {
        let old = Encryption::new(&[("k1".into(), key(1))]).unwrap().unwrap();
        let sealed = old
            .seal(b"{\"data\":1}", b"/registry/core/secrets/a/b")
            .unwrap();
        assert!(is_encrypted(&sealed));
        assert!(!sealed.windows(8).any(|w| w == b"\"data\":1"));
        assert_eq!(
            old.open(&sealed, b"/registry/core/secrets/a/b").unwrap().0,
            b"{\"data\":1}"
        );
        assert!(
            old.open(&sealed, b"/registry/core/secrets/a/c").is_err(),
            "bound to its key"
        );
        let rotated = Encryption::new(&[("k2".into(), key(2)), ("k1".into(), key(1))])
            .unwrap()
            .unwrap();
        let (plain, with) = rotated
            .open(&sealed, b"/registry/core/secrets/a/b")
            .unwrap();
        assert_eq!(
            (plain.as_slice(), with.as_str()),
            (&b"{\"data\":1}"[..], "k1")
        );
        let resealed = rotated.seal(&plain, b"x").unwrap();
        assert_eq!(rotated.open(&resealed, b"x").unwrap().1, "k2");
        let only_new = Encryption::new(&[("k2".into(), key(2))]).unwrap().unwrap();
        assert!(matches!(
            only_new.open(&sealed, b"/registry/core/secrets/a/b"),
            Err(EncryptionError::UnknownKey(k)) if k == "k1"
        ));
        assert!(Encryption::new(&[("short".into(), "AAAA".into())]).is_err());
    }
}
