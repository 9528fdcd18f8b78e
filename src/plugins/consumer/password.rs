//! A consumer's basic-auth credential: a username and an argon2id hash of
//! its password (PHC string, as `tollgate hash-secret --password` prints).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::field_error::{field, FieldError};

/// `{"username": "alice", "password_hash": "$argon2id$v=19$..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    pub username: String,
    pub password_hash: String,
}

/// The most memory one check may take (KiB): a hash asking for more is
/// refused, so a typo in etcd cannot make each login allocate gigabytes.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// The most passes one check may take.
pub const MAX_PASSES: u32 = 16;

/// A checked basic-auth credential.
#[derive(Debug, Clone)]
pub struct Password {
    pub username: Arc<str>,
    /// The PHC string, parsed again per check (cheap beside argon2 itself).
    pub phc: Arc<str>,
}

impl BasicAuthSpec {
    pub fn compile(&self, at: &str) -> Result<Password, FieldError> {
        if self.username.is_empty() || self.username.contains(':') || self.username.len() > 256 {
            return Err(FieldError::new(
                field(at, "username"),
                "1 to 256 characters, no ':'",
            ));
        }
        let at_hash = field(at, "password_hash");
        let hash = PasswordHash::new(&self.password_hash).map_err(|_| {
            FieldError::new(
                &at_hash,
                "must be an argon2id hash ($argon2id$...; tollgate hash-secret --password prints it), not the password",
            )
        })?;
        if hash.algorithm.as_str() != "argon2id" || hash.hash.is_none() {
            return Err(FieldError::new(
                at_hash,
                format!("must be argon2id, not {}", hash.algorithm),
            ));
        }
        let params = Params::try_from(&hash)
            .map_err(|e| FieldError::new(&at_hash, format!("bad argon2 parameters: {e}")))?;
        if params.m_cost() > MAX_MEMORY_KIB || params.t_cost() > MAX_PASSES {
            return Err(FieldError::new(
                at_hash,
                format!("at most m={MAX_MEMORY_KIB} (KiB) and t={MAX_PASSES}"),
            ));
        }
        Ok(Password {
            username: self.username.as_str().into(),
            phc: self.password_hash.as_str().into(),
        })
    }
}

impl Password {
    /// Whether `password` is this credential's (argon2: slow on purpose;
    /// run it off the request threads).
    pub fn verify(&self, password: &[u8]) -> bool {
        match PasswordHash::new(&self.phc) {
            Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
            Err(_) => false,
        }
    }
}

/// An argon2id hash of `password` with OWASP's parameters (19 MiB, 2
/// passes) and a random salt.
pub fn hash(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "no system randomness".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default());
    argon
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_a_plaintext_is_refused_by_field() {
        let phc = hash(b"s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let p = BasicAuthSpec {
            username: "alice".into(),
            password_hash: phc,
        }
        .compile("basic_auth")
        .unwrap();
        assert!(p.verify(b"s3cret"));
        assert!(!p.verify(b"s3creT"));
        let e = BasicAuthSpec {
            username: "alice".into(),
            password_hash: "s3cret".into(),
        }
        .compile("basic_auth")
        .unwrap_err();
        assert_eq!(e.path, "basic_auth.password_hash");
        let greedy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let e = BasicAuthSpec {
            username: "alice".into(),
            password_hash: greedy.into(),
        }
        .compile("b")
        .unwrap_err();
        assert!(e.message.contains("at most"), "{e}");
        let e = BasicAuthSpec {
            username: "a:b".into(),
            password_hash: "x".into(),
        }
        .compile("b")
        .unwrap_err();
        assert_eq!(e.path, "b.username");
    }
}
