//! A consumer's JWT credential: the issuer its tokens name, the one
//! algorithm they may use, and the key that checks them.

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::field_error::{field, FieldError};

/// `{"iss": "...", "alg": "RS256", "public_key": "<PEM>"}` or, for the
/// HMAC algorithms, `"secret"` (or `"secret_base64"`) instead of the key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    pub iss: String,
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64: Option<String>,
}

/// The algorithms tollgate accepts, by their JOSE names.
pub const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// `name` as an algorithm (`none` is not one), or the error at `at`.
pub fn algorithm(name: &str, at: &str) -> Result<Algorithm, FieldError> {
    ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            let known: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
            FieldError::new(at, format!("{name:?} is not one of {}", known.join(", ")))
        })
}

/// A checked JWT credential.
#[derive(Debug, Clone)]
pub struct JwtKey {
    pub iss: Arc<str>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The shortest HMAC secret accepted (RFC 7518 3.2: at least the hash size
/// for HS256).
const MIN_SECRET: usize = 32;

impl JwtSpec {
    pub fn compile(&self, at: &str) -> Result<JwtKey, FieldError> {
        crate::plugins::jwt_crypto::install();
        if self.iss.is_empty() {
            return Err(FieldError::new(field(at, "iss"), "must not be empty"));
        }
        let alg = algorithm(&self.alg, &field(at, "alg"))?;
        let hmac = alg.family() == AlgorithmFamily::Hmac;
        let key = match (&self.public_key, &self.secret, &self.secret_base64) {
            (Some(pem), None, None) if !hmac => {
                let pem = pem.as_bytes();
                match alg.family() {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                    _ => DecodingKey::from_ed_pem(pem),
                }
                .map_err(|e| {
                    FieldError::new(
                        field(at, "public_key"),
                        format!("not a PEM public key for {}: {e}", self.alg),
                    )
                })?
            }
            (None, Some(s), None) if hmac => secret(s.as_bytes(), &field(at, "secret"))?,
            (None, None, Some(s)) if hmac => {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| FieldError::new(field(at, "secret_base64"), "not base64"))?;
                secret(&raw, &field(at, "secret_base64"))?
            }
            _ if hmac => {
                return Err(FieldError::new(
                    at,
                    format!("{} needs exactly one of secret, secret_base64", self.alg),
                ))
            }
            _ => {
                return Err(FieldError::new(
                    at,
                    format!("{} needs public_key (and no secret)", self.alg),
                ))
            }
        };
        Ok(JwtKey {
            iss: self.iss.as_str().into(),
            alg,
            key,
        })
    }
}

fn secret(raw: &[u8], at: &str) -> Result<DecodingKey, FieldError> {
    if raw.len() < MIN_SECRET {
        return Err(FieldError::new(
            at,
            format!("at least {MIN_SECRET} bytes (a short HMAC secret can be guessed offline from one token)"),
        ));
    }
    DecodingKey::from_secret(raw).map_err(|e| FieldError::new(at, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JwtSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keys_fit_their_algorithm_and_none_is_no_algorithm() {
        let s = "0123456789abcdef0123456789abcdef";
        let k = spec(&format!(r#"{{"iss":"i","alg":"HS256","secret":"{s}"}}"#))
            .compile("jwt")
            .unwrap();
        assert_eq!(k.alg, Algorithm::HS256);
        for (json, at) in [
            (r#"{"iss":"i","alg":"none","secret":"x"}"#, "jwt.alg"),
            (
                r#"{"iss":"i","alg":"HS256","secret":"short"}"#,
                "jwt.secret",
            ),
            (
                r#"{"iss":"i","alg":"RS256","secret":"0123456789abcdef0123456789abcdef"}"#,
                "jwt",
            ),
            (
                r#"{"iss":"i","alg":"ES256","public_key":"nope"}"#,
                "jwt.public_key",
            ),
            (r#"{"iss":"","alg":"ES256","public_key":"nope"}"#, "jwt.iss"),
        ] {
            assert_eq!(spec(json).compile("jwt").unwrap_err().path, at, "{json}");
        }
    }
}
