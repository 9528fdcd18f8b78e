//! Secrets on their way through the admin API: a plaintext API key or
//! password sent by a client is replaced by its hash before anything is
//! checked or written, and nothing secret is ever read back.

use serde_json::Value;

use crate::field_error::FieldError;
use crate::plugins::consumer::{hash_password, sha256_hex};
use crate::source::document::Kind;

/// What GET shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Replaces plaintext credentials in a consumer with what is stored:
/// `key_auth.key` → `key_sha256`, `basic_auth.password` → `password_hash`
/// (argon2id: run off the async threads).
pub async fn harden(kind: Kind, v: &mut Value) -> Result<(), FieldError> {
    if kind != Kind::Consumer {
        return Ok(());
    }
    if let Some(ka) = v.get_mut("key_auth").and_then(Value::as_object_mut) {
        if let Some(Value::String(key)) = ka.remove("key") {
            let hex = sha256_hex(key.as_bytes());
            ka.insert("key_sha256".into(), Value::String(hex));
        }
    }
    if let Some(ba) = v.get_mut("basic_auth").and_then(Value::as_object_mut) {
        if let Some(Value::String(password)) = ba.remove("password") {
            let phc = tokio::task::spawn_blocking(move || hash_password(password.as_bytes()))
                .await
                .map_err(|e| FieldError::new("basic_auth.password", e.to_string()))?
                .map_err(|e| FieldError::new("basic_auth.password", e))?;
            ba.insert("password_hash".into(), Value::String(phc));
        }
    }
    Ok(())
}

/// Hides what must not leave the gateway: certificate keys and JWT HMAC
/// secrets (hashes stay: they are what is stored, and prove nothing).
pub fn redact(kind: Kind, v: &mut Value) {
    let hide = |o: Option<&mut Value>, fields: &[&str]| {
        if let Some(o) = o.and_then(Value::as_object_mut) {
            for f in fields {
                if let Some(x) = o.get_mut(*f) {
                    *x = Value::String(REDACTED.into());
                }
            }
        }
    };
    match kind {
        Kind::Cert => hide(Some(v), &["key"]),
        Kind::Consumer => hide(v.get_mut("jwt"), &["secret", "secret_base64"]),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn plaintext_credentials_are_hashed_and_secrets_never_read_back() {
        let mut c = json!({"key_auth": {"key": "k"}, "basic_auth": {"username": "a", "password": "p"},
                           "jwt": {"iss": "i", "alg": "HS256", "secret": "s"}});
        harden(Kind::Consumer, &mut c).await.unwrap();
        assert_eq!(c["key_auth"].as_object().unwrap().len(), 1);
        assert_eq!(c["key_auth"]["key_sha256"].as_str().unwrap().len(), 64);
        assert!(c["basic_auth"]["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"));
        assert!(c["basic_auth"].get("password").is_none());
        redact(Kind::Consumer, &mut c);
        assert_eq!(c["jwt"]["secret"], REDACTED);
        let mut cert = json!({"cert": "PEM", "key": "PEM"});
        redact(Kind::Cert, &mut cert);
        assert_eq!(cert["key"], REDACTED);
        assert_eq!(cert["cert"], "PEM");
    }
}
