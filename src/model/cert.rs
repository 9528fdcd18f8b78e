//! A certificate as stored at `<prefix>/certs/<id>` (and in the standalone
//! file's `certs:`): the names it serves and its PEM chain and key.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::error::{field, index};
use super::FieldError;

/// A stored certificate. The key is PEM or `enc:v1:<base64>` (encrypted
/// with `tls.key_encryption_keys`); it is never printed.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    /// Standalone file only: the id (etcd: the key's last segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Names served: `api.example.com` or `*.example.com` (one label).
    pub snis: Vec<String>,
    /// PEM chain, leaf first (empty for a managed certificate not issued
    /// yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A managed certificate: the fleet orders it (and renews it) from an
    /// ACME CA and writes `cert` and `key` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<super::acme::AcmeSpec>,
}

impl fmt::Debug for CertSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSpec")
            .field("id", &self.id)
            .field("snis", &self.snis)
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &"<redacted>")
            .field("acme", &self.acme)
            .finish()
    }
}

/// One `snis` entry, normalised: lower case, and for a wildcard the part
/// after `*.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sni {
    Exact(Box<str>),
    /// `*.example.com` is stored as `example.com`.
    Wildcard(Box<str>),
}

impl CertSpec {
    /// The `snis` list, checked and normalised (`at` is the spec's path).
    pub fn snis(&self, at: &str) -> Result<Vec<Sni>, FieldError> {
        let at = field(at, "snis");
        if self.snis.is_empty() {
            return Err(FieldError::new(
                at,
                "must name at least one server name (a certificate nobody can select is a mistake)",
            ));
        }
        let mut out = Vec::with_capacity(self.snis.len());
        for (i, raw) in self.snis.iter().enumerate() {
            let name = raw.to_ascii_lowercase();
            let (wild, host) = match name.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, name.as_str()),
            };
            if let Err(why) = check_dns_name(host) {
                return Err(FieldError::new(index(&at, i), format!("{raw:?}: {why}")));
            }
            let host: Box<str> = host.into();
            let sni = if wild {
                Sni::Wildcard(host)
            } else {
                Sni::Exact(host)
            };
            if !out.contains(&sni) {
                out.push(sni);
            }
        }
        Ok(out)
    }
}

/// A DNS name as SNI carries it: dot-separated labels of letters, digits
/// and hyphens (no IP literals, RFC 6066 §3).
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be a DNS name of 1 to 253 characters (or *.<name>)");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address is not a server name (TLS clients send none for it)");
    }
    for label in name.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !ok_chars || label.starts_with('-') {
            return Err(
                "labels are 1 to 63 letters, digits or hyphens; a wildcard is only `*.` in front",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(snis: &[&str]) -> CertSpec {
        CertSpec {
            id: None,
            snis: snis.iter().map(|s| s.to_string()).collect(),
            cert: String::new(),
            key: "secret".into(),
            acme: None,
        }
    }

    #[test]
    fn snis_are_normalised_and_wildcards_split() {
        let s = spec(&["API.example.com", "*.Example.com", "api.example.com"]);
        assert_eq!(
            s.snis("").unwrap(),
            vec![
                Sni::Exact("api.example.com".into()),
                Sni::Wildcard("example.com".into())
            ]
        );
    }

    #[test]
    fn bad_snis_name_the_entry() {
        assert!(spec(&[])
            .snis("")
            .unwrap_err()
            .to_string()
            .starts_with("snis: "));
        for bad in ["a.*.com", "*", "10.0.0.1", "a..b", "-a.com", "a b.com", ""] {
            let e = spec(&["ok.com", bad]).snis("").unwrap_err();
            assert_eq!(e.path, "snis[1]", "{bad}: {e}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert!(!format!("{:?}", spec(&["a.com"])).contains("secret"));
    }
}
