//! Certificates and keys in PEM, checked the one way every user of them
//! needs (served certificates, upstream CAs, upstream client certificates):
//! each error names the field and says what is wrong.

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::FieldError;

/// Every CERTIFICATE block of `pem`, each an X.509 certificate; at least one.
pub fn certs(pem: &str, at: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let ders = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FieldError::new(at, format!("PEM does not parse: {e}")))?;
    if ders.is_empty() {
        return Err(FieldError::new(at, "no PEM CERTIFICATE block found"));
    }
    for d in &ders {
        x509_parser::parse_x509_certificate(d)
            .map_err(|e| FieldError::new(at, format!("not an X.509 certificate: {e}")))?;
    }
    Ok(ders)
}

/// The first private key block of `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8], at: &str) -> Result<PrivateKeyDer<'static>, FieldError> {
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(|e| FieldError::new(at, format!("PEM does not parse: {e}")))?
        .ok_or_else(|| FieldError::new(at, "no PEM PRIVATE KEY block found"))
}

/// `chain` with `key`, refused when the key is of a kind rustls cannot sign
/// with or is not the leaf's (a key whose match cannot be told is let
/// through: rustls says `Unknown` for some key encodings). `key_at` names
/// the key's field, `cert_name` the certificate it must match.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    key_at: &str,
    cert_name: &str,
) -> Result<CertifiedKey, FieldError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| {
        FieldError::new(
            key_at,
            format!("unsupported key (RSA 2048+, ECDSA P-256/P-384 or Ed25519): {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(FieldError::new(
            key_at,
            format!("the key does not match {cert_name} (the leaf's public key differs)"),
        )),
    }
}
