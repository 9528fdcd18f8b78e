//! An upstream policy's `tls`: how the gateway checks the certificates of
//! `https://` and `grpcs://` nodes, and the client certificate it shows.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::error::field;
use super::pem;
use super::FieldError;

/// `"tls": {"verify": true, "ca_file" | "ca_pem", "sni", "client_cert", "client_key"}`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// Check the node's certificate chain and name (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Trust these CAs instead of the system's (a file on each node, or PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The name sent and verified (default: the node URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// mTLS: the PEM chain and key shown to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl std::fmt::Debug for UpstreamTlsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsSpec")
            .field("verify", &self.verify)
            .field("ca_file", &self.ca_file)
            .field("sni", &self.sni)
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// A checked `tls`: CA certificates and the client pair as DER.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsDer {
    pub verify: bool,
    pub sni: Option<String>,
    /// Empty: the system's roots.
    pub ca: Vec<Vec<u8>>,
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
}

fn certs(pem: &str, at: &str) -> Result<Vec<Vec<u8>>, FieldError> {
    Ok(pem::certs(pem, at)?
        .into_iter()
        .map(|c| c.to_vec())
        .collect())
}

impl UpstreamTlsSpec {
    /// Checks the settings (reading `ca_file`) and returns them as DER.
    pub fn compile(&self, path: &str) -> Result<UpstreamTlsDer, FieldError> {
        let ca = match (&self.ca_file, &self.ca_pem) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    field(path, "ca_file"),
                    "give ca_file or ca_pem, not both",
                ))
            }
            (Some(file), None) => {
                let at = field(path, "ca_file");
                let pem = std::fs::read_to_string(file).map_err(|e| {
                    FieldError::new(&at, format!("cannot read {}: {e}", file.display()))
                })?;
                certs(&pem, &at)?
            }
            (None, Some(pem)) => certs(pem, &field(path, "ca_pem"))?,
            (None, None) => Vec::new(),
        };
        let client = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let chain = pem::certs(cert, &field(path, "client_cert"))?;
                let at = field(path, "client_key");
                let key = pem::private_key(key.as_bytes(), &at)?;
                // Loaded and matched here: Pingora's connector unwraps the
                // key on every connect, so a bad one must never get there.
                let chain: Vec<Vec<u8>> = chain.into_iter().map(|c| c.to_vec()).collect();
                let leaf = rustls_pki_types::CertificateDer::from(chain[0].clone());
                pem::certified_key(vec![leaf], &key, &at, "client_cert")?;
                Some((chain, key.secret_der().to_vec()))
            }
            _ => {
                return Err(FieldError::new(
                    field(path, "client_cert"),
                    "client_cert and client_key go together",
                ))
            }
        };
        if let Some(sni) = &self.sni {
            if sni.is_empty() || sni.contains(['/', ' ', ':']) {
                return Err(FieldError::new(field(path, "sni"), "must be a host name"));
            }
        }
        Ok(UpstreamTlsDer {
            verify: self.verify.unwrap_or(true),
            sni: self.sni.clone(),
            ca,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_client_key_that_does_not_load_or_match_is_refused() {
        let (cert, key) = pem(&["a.test"]);
        let (_, other) = pem(&["b.test"]);
        let spec = |k: &str| UpstreamTlsSpec {
            client_cert: Some(cert.clone()),
            client_key: Some(k.to_string()),
            ..Default::default()
        };
        assert!(spec(&key).compile("tls").unwrap().client.is_some());
        let e = spec(&other).compile("tls").unwrap_err();
        assert_eq!(e.path, "tls.client_key");
        assert!(e.message.contains("does not match"), "{e}");
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = spec(garbage).compile("tls").unwrap_err();
        assert_eq!(e.path, "tls.client_key", "{e}");
    }
}
