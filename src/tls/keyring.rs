//! Private keys stored encrypted: `enc:v1:<base64(nonce ‖ ciphertext ‖ tag)>`
//! under AES-256-GCM with one of `tls.key_encryption_keys`.
//!
//! The first key encrypts; every key is tried to decrypt (the tag tells a
//! wrong key apart), so keys rotate by putting a new one first, re-running
//! `tollgate encrypt-key` for each stored key, then dropping the old one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// What marks an encrypted key (and its format version).
pub const PREFIX: &str = "enc:v1:";

/// Binds ciphertexts to their use: a value encrypted for something else
/// with the same key does not decrypt as a private key.
const AAD: &[u8] = b"tollgate private key v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "tls.key_encryption_keys[{0}]: must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)"
    )]
    BadKey(usize),
    #[error("the key is encrypted (enc:v1:) but tls.key_encryption_keys is empty")]
    NoKeys,
    #[error("the encrypted key is not valid base64 or too short")]
    Malformed,
    #[error("no key in tls.key_encryption_keys decrypts it (wrong key, or the value was altered)")]
    NoMatch,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key-encryption keys, in order.
pub struct KeyRing {
    keys: Vec<LessSafeKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

impl KeyRing {
    /// No keys: encrypted values cannot be read, none are written.
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    pub fn new(encoded: &[String]) -> Result<Self, KeyError> {
        let keys = encoded
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let raw = B64.decode(k.trim()).map_err(|_| KeyError::BadKey(i))?;
                let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| KeyError::BadKey(i))?;
                Ok(LessSafeKey::new(key))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// Whether keys should be stored encrypted (some key is configured).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// `enc:v1:…` of `plain` under the first key.
    pub fn encrypt(&self, plain: &[u8]) -> Result<String, KeyError> {
        let key = self.keys.first().ok_or(KeyError::NoKeys)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Random)?;
        let mut buf = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut buf,
        )
        .map_err(|_| KeyError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    /// The plaintext of an `enc:v1:` value (without the prefix check).
    pub fn decrypt(&self, value: &str) -> Result<Vec<u8>, KeyError> {
        let body = value.strip_prefix(PREFIX).unwrap_or(value);
        if self.keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let raw = B64.decode(body.trim()).map_err(|_| KeyError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(KeyError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut buf = sealed.to_vec();
            let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else {
                return Err(KeyError::Malformed);
            };
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(AAD), &mut buf) {
                let n = plain.len();
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(KeyError::NoMatch)
    }
}

/// Whether a stored key is encrypted.
pub fn is_encrypted(key: &str) -> bool {
    key.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[u8]) -> KeyRing {
        KeyRing::new(
            &keys
                .iter()
                .map(|b| B64.encode([*b; 32]))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_any_listed_key_decrypts() {
        let old = ring(&[1]);
        let sealed = old.encrypt(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(sealed.starts_with(PREFIX));
        let rotated = ring(&[2, 1]);
        assert_eq!(
            rotated.decrypt(&sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert_eq!(ring(&[2]).decrypt(&sealed), Err(KeyError::NoMatch));
    }

    #[test]
    fn tampering_and_bad_config_are_named() {
        let r = ring(&[1]);
        let mut sealed = r.encrypt(b"k").unwrap();
        sealed.pop();
        sealed.push('A');
        assert!(r.decrypt(&sealed).is_err());
        assert_eq!(r.decrypt("enc:v1:!!"), Err(KeyError::Malformed));
        assert_eq!(
            KeyRing::new(&[]).unwrap().decrypt("enc:v1:AAAA"),
            Err(KeyError::NoKeys)
        );
        assert_eq!(
            KeyRing::new(&["c2hvcnQ=".into()]).unwrap_err(),
            KeyError::BadKey(0)
        );
    }
}
