//! Proxy listeners and the bootstrap `tls:` section.
//!
//! A `listen` entry is either an address (plaintext HTTP/1.1) or a map,
//! `{addr: "0.0.0.0:8443", tls: true}` or `{addr: "0.0.0.0:8080", h2c: true}`.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{ListenerTls, TlsVersion};

/// One proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: String,
    /// TLS (HTTP/1.1 and HTTP/2 by ALPN, as `tls.alpn` says).
    pub tls: bool,
    /// Plaintext HTTP/2 with prior knowledge beside HTTP/1.1.
    pub h2c: bool,
}

impl Listener {
    pub fn plain(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls: false,
            h2c: false,
        }
    }

    /// The port this listener binds (how a connection finds its listener).
    pub fn port(&self) -> Option<u16> {
        self.addr.rsplit(':').next()?.parse().ok()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerMap {
    addr: String,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    h2c: bool,
}

impl<'de> Deserialize<'de> for Listener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listener;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an address ("0.0.0.0:8080") or {addr, tls, h2c}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listener, E> {
                Ok(Listener::plain(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listener, A::Error> {
                let m = ListenerMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if m.tls && m.h2c {
                    return Err(de::Error::custom(
                        "tls and h2c exclude each other: over TLS, HTTP/2 is chosen by ALPN (tls.alpn)",
                    ));
                }
                Ok(Listener {
                    addr: m.addr,
                    tls: m.tls,
                    h2c: m.h2c,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A certificate and key from files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Bootstrap `tls:`: what every TLS listener shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Served when no certificate's `snis` matches the client's name (or
    /// it sent none). Absent: such a handshake is refused with an alert.
    #[serde(default)]
    pub default_cert: Option<CertFiles>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, preferred first: `h2`, `http/1.1`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// AES-256-GCM keys (base64, 32 bytes) for private keys stored as
    /// `enc:v1:…`: the first encrypts, every one decrypts (rotation).
    #[serde(default)]
    pub key_encryption_keys: Vec<String>,
    /// A client that has not finished its handshake by then is dropped.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

impl TlsConfig {
    /// What the TLS listeners' acceptor needs of it.
    pub fn listener(&self) -> ListenerTls {
        ListenerTls {
            min_version: self.min_version,
            alpn: self.alpn.clone(),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            default_cert: None,
            min_version: TlsVersion::default(),
            alpn: default_alpn(),
            key_encryption_keys: Vec::new(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
        }
    }
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_an_address_or_a_map() {
        let l: Vec<Listener> = serde_yaml_ng::from_str(
            r#"["127.0.0.1:1", {addr: "127.0.0.1:2", tls: true}, {addr: "127.0.0.1:3", h2c: true}]"#,
        )
        .unwrap();
        assert_eq!(l[0], Listener::plain("127.0.0.1:1"));
        assert!(l[1].tls && !l[1].h2c);
        assert!(l[2].h2c && !l[2].tls);
        assert_eq!(l[2].port(), Some(3));
    }

    #[test]
    fn tls_with_h2c_and_unknown_fields_are_refused() {
        let e = serde_yaml_ng::from_str::<Listener>("{addr: a, tls: true, h2c: true}").unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
        let e = serde_yaml_ng::from_str::<Listener>("{addr: a, tsl: true}").unwrap_err();
        assert!(e.to_string().contains("tsl"), "{e}");
    }
}

/// `proxy.http2`: what one HTTP/2 client connection may ask of the
/// gateway. Each bound closes an abusive connection (GOAWAY) instead of
/// letting it cost unbounded CPU or memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// Requests in flight at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Decoded request header list, bytes (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// also what bounds a run of CONTINUATION frames.
    #[serde(default = "default_max_header_list_bytes")]
    pub max_header_list_bytes: u32,
    /// Streams the client may reset before the gateway has taken them up;
    /// more is HTTP/2 Rapid Reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM.
    #[serde(default = "default_max_pending_resets")]
    pub max_pending_resets: usize,
    /// Streams the client may reset per second, taken up or not; more is
    /// Rapid Reset at a steady pace: GOAWAY ENHANCE_YOUR_CALM.
    #[serde(default = "default_max_resets_per_second")]
    pub max_resets_per_second: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: default_max_concurrent_streams(),
            max_header_list_bytes: default_max_header_list_bytes(),
            max_pending_resets: default_max_pending_resets(),
            max_resets_per_second: default_max_resets_per_second(),
        }
    }
}

fn default_max_concurrent_streams() -> u32 {
    128
}
fn default_max_header_list_bytes() -> u32 {
    64 << 10
}
fn default_max_pending_resets() -> usize {
    20
}
fn default_max_resets_per_second() -> u32 {
    100
}
