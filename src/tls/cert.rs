//! A stored certificate made ready to serve: PEM parsed, key decrypted and
//! loaded, the pair checked to match, validity read.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::keyring::{is_encrypted, KeyRing};
use crate::model::acme::ManagedCert;
use crate::model::cert::{CertSpec, Sni};
use crate::model::error::field;
use crate::model::pem;
use crate::model::FieldError;

/// A certificate as the handshake uses it.
pub struct LoadedCert {
    pub id: Arc<str>,
    pub snis: Vec<Sni>,
    pub key: Arc<CertifiedKey>,
    /// Validity of the leaf, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("id", &self.id)
            .field("snis", &self.snis)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Loads `spec` as certificate `id` from the standalone file (errors name
/// the field under `at`).
pub fn load(id: &str, spec: &CertSpec, keys: &KeyRing, at: &str) -> Result<LoadedCert, FieldError> {
    if spec.acme.is_some() {
        return Err(FieldError::new(
            field(at, "acme"),
            "managed certificates need etcd mode: the fleet orders them under an etcd lock and shares the challenge through etcd",
        ));
    }
    load_spec(id, spec, keys, at)
}

fn load_spec(
    id: &str,
    spec: &CertSpec,
    keys: &KeyRing,
    at: &str,
) -> Result<LoadedCert, FieldError> {
    for (name, value) in [("cert", &spec.cert), ("key", &spec.key)] {
        if value.is_empty() {
            let why =
                format!("missing field `{name}` (or `acme`, for a certificate the fleet orders)");
            return Err(FieldError::new(field(at, name), why));
        }
    }
    let snis = spec.snis(at)?;
    let (key, not_before, not_after) = load_pair(&spec.cert, &spec.key, keys, at)?;
    Ok(LoadedCert {
        id: id.into(),
        snis,
        key,
        not_before,
        not_after,
    })
}

/// A certificate entry: what it serves now (None: a managed certificate
/// not issued yet) and, if managed, what the fleet orders.
pub struct CertDoc {
    pub loaded: Option<LoadedCert>,
    pub managed: Option<ManagedCert>,
}

/// A stored value (`<prefix>/certs/<id>`) as a certificate, and, when it
/// must not be kept as it came, the value to keep as last-known-good: with
/// key encryption on, a key stored in clear is kept encrypted.
pub fn from_json(
    id: &str,
    value: &[u8],
    keys: &KeyRing,
) -> Result<(CertDoc, Option<String>), FieldError> {
    let mut spec: CertSpec = crate::model::error::from_json(value)?;
    if spec.id.is_some() {
        return Err(FieldError::new(
            "id",
            "the key names the certificate; leave id out",
        ));
    }
    let managed = |issued, covers_snis| {
        spec.acme.as_ref().map(|acme| ManagedCert {
            snis: spec.snis.clone(),
            acme: acme.clone(),
            issued,
            covers_snis,
        })
    };
    if let Some(acme) = &spec.acme {
        acme.check("acme", &spec.snis)?;
        spec.snis("")?;
        match (spec.cert.is_empty(), spec.key.is_empty()) {
            (true, true) => {
                let doc = CertDoc {
                    loaded: None,
                    managed: managed(None, false),
                };
                return Ok((doc, None));
            }
            (true, false) => return Err(FieldError::new("cert", "a key without its certificate")),
            (false, true) => return Err(FieldError::new("key", "a certificate without its key")),
            (false, false) => {}
        }
    }
    let cert = load_spec(id, &spec, keys, "")?;
    let covers = spec.acme.is_some() && names_all(&spec.cert, &spec.snis);
    let doc = |cert: LoadedCert| {
        let issued = Some((cert.not_before, cert.not_after));
        CertDoc {
            managed: managed(issued, covers),
            loaded: Some(cert),
        }
    };
    if !keys.is_enabled() || is_encrypted(&spec.key) {
        return Ok((doc(cert), None));
    }
    tracing::warn!(cert = id, "private key stored in clear while tls.key_encryption_keys is set; encrypt it with `tollgate encrypt-key`");
    spec.key = keys
        .encrypt(spec.key.as_bytes())
        .map_err(|e| FieldError::new("key", e.to_string()))?;
    let kept = serde_json::to_string(&spec)
        .map_err(|e| FieldError::new("", format!("cannot re-encode: {e}")))?;
    Ok((doc(cert), Some(kept)))
}

/// Whether the leaf of `cert_pem` names every one of `names` (DNS SANs,
/// case-blind).
fn names_all(cert_pem: &str, names: &[String]) -> bool {
    let Ok(chain) = pem::certs(cert_pem, "cert") else {
        return false;
    };
    let Some(Ok((_, leaf))) = chain
        .first()
        .map(|c| x509_parser::parse_x509_certificate(c))
    else {
        return false;
    };
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return false;
    };
    let has: Vec<String> = (san.value.general_names.iter())
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    names.iter().all(|n| has.contains(&n.to_ascii_lowercase()))
}

/// A PEM chain and a PEM (or `enc:v1:`) key as one checked pair, with the
/// leaf's validity (Unix seconds).
pub fn load_pair(
    cert_pem: &str,
    key_text: &str,
    keys: &KeyRing,
    at: &str,
) -> Result<(Arc<CertifiedKey>, i64, i64), FieldError> {
    let cert_at = field(at, "cert");
    let key_at = field(at, "key");
    let chain = pem::certs(cert_pem, &cert_at)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        FieldError::new(&cert_at, format!("the first certificate is not X.509: {e}"))
    })?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );

    let decrypted;
    let key_pem: &[u8] = if is_encrypted(key_text) {
        decrypted = keys
            .decrypt(key_text)
            .map_err(|e| FieldError::new(&key_at, e.to_string()))?;
        &decrypted
    } else {
        key_text.as_bytes()
    };
    let der = pem::private_key(key_pem, &key_at)?;
    let certified = pem::certified_key(chain, &der, &key_at, "the certificate")?;
    Ok((Arc::new(certified), not_before, not_after))
}
