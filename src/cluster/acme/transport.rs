//! The HTTP client instant-acme talks to the CA through: rustls on ring
//! (as the listeners), the platform's roots or a PEM file of private roots
//! (a test CA such as pebble), and plain http only to a loopback directory.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, HttpClient};

use super::client::{Directory, CONNECT_TIMEOUT};
use super::error::AcmeError;

/// The HTTP client for `dir`: rustls on ring, the platform's roots or the
/// given PEM roots, HTTP/1.1 and HTTP/2, plain http only for a loopback
/// directory (checked by `check_directory_url` before).
pub(super) fn http_client(dir: &Directory<'_>) -> Result<Box<dyn HttpClient>, AcmeError> {
    // ring, like the listeners (src/tls/acceptor.rs): no aws-lc-rs build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = match dir.tls_roots_pem {
        Some(path) => {
            let roots = load_roots(path)?;
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| AcmeError::Invalid(format!("TLS client config: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
        None => HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| AcmeError::Invalid(format!("platform TLS roots: {e}")))?,
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let schemes = if dir.url.starts_with("http://") {
        tls.https_or_http()
    } else {
        tls.https_only()
    };
    let connector = schemes.enable_http1().enable_http2().wrap_connector(http);
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, AcmeError> {
    let pem = std::fs::read_to_string(path).map_err(|e| {
        AcmeError::Invalid(format!("cannot read TLS roots {}: {e}", path.display()))
    })?;
    let at = path.display().to_string();
    let certs = crate::model::pem::certs(&pem, &at)
        .map_err(|e| AcmeError::Invalid(format!("TLS roots: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| AcmeError::Invalid(format!("TLS roots {at}: not a usable root: {e}")))?;
    }
    Ok(roots)
}
