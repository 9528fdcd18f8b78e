//! Upstream policies and the nodes (static or registered) they send to.

use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};

use super::error::{field, index, FieldError};
use super::policy::{HealthCheckSpec, LbSpec, RetrySpec};
use super::preservation::SelfPreservationSpec;
use super::timeout::TimeoutSpec;
use super::upstream_tls::UpstreamTlsSpec;

/// A static node: a bare URL or `{addr, weight}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NodeSpec {
    Url(String),
    Weighted { addr: String, weight: Option<i64> },
}

/// The `{addr, weight}` form, strict so that a typo (`wieght`) is an error
/// naming the field instead of a node silently at weight 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedNode {
    addr: String,
    #[serde(default)]
    weight: Option<i64>,
}

/// By hand rather than `untagged`: an untagged enum reports any mistake in
/// the map form as "did not match any variant", hiding which key was wrong.
impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = NodeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node URL or {addr, weight}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeSpec, E> {
                Ok(NodeSpec::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<NodeSpec, A::Error> {
                let n = WeightedNode::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(NodeSpec::Weighted {
                    addr: n.addr,
                    weight: n.weight,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// An upstream policy: static nodes for services that don't register, and
/// the timeouts for every node of the upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    #[serde(default)]
    pub lb: LbSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Replaces the bootstrap `etcd.self_preservation` for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_preservation: Option<SelfPreservationSpec>,
    /// How `https://` and `grpcs://` nodes are verified (and mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

/// One resolved node; `id` is the registry instance id or the static URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// `host:port` as written, for a non-preserved Host header.
    pub authority: String,
    pub weight: u32,
    pub draining: bool,
    /// How the gateway talks to it.
    pub scheme: NodeScheme,
}

/// A node URL's scheme: the protocol the gateway speaks to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeScheme {
    /// `http://`: HTTP/1.1.
    #[default]
    Http,
    /// `https://`: HTTP/1.1 over TLS (SNI and verification: the URL's host,
    /// or the policy's `tls`).
    Https,
    /// `h2c://` and `grpc://`: HTTP/2 in cleartext, prior knowledge.
    H2c,
    /// `grpcs://`: HTTP/2 over TLS.
    H2s,
}

impl NodeScheme {
    fn parse(scheme: &str) -> Option<Self> {
        Some(match scheme {
            "http" => NodeScheme::Http,
            "https" => NodeScheme::Https,
            "h2c" | "grpc" => NodeScheme::H2c,
            "grpcs" => NodeScheme::H2s,
            _ => return None,
        })
    }

    pub fn is_tls(self) -> bool {
        matches!(self, NodeScheme::Https | NodeScheme::H2s)
    }

    pub fn is_h2(self) -> bool {
        matches!(self, NodeScheme::H2c | NodeScheme::H2s)
    }

    fn default_port(self) -> u16 {
        if self.is_tls() {
            443
        } else {
            80
        }
    }
}

/// A parsed and resolved node URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    pub addr: SocketAddr,
    /// `host:port`.
    pub authority: String,
    pub scheme: NodeScheme,
}

pub const MAX_WEIGHT: i64 = 10_000;

/// Parses `scheme://host:port` (http, https, h2c, grpc, grpcs; the port
/// defaults to 80, or 443 over TLS) and resolves it once, off the request
/// path.
pub fn parse_node_url(url: &str) -> Result<NodeUrl, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let Some(scheme) = NodeScheme::parse(parsed.scheme()) else {
        return Err(format!(
            "{url:?}: the scheme must be http, https, h2c, grpc or grpcs (got {}://)",
            parsed.scheme()
        ));
    };
    if !matches!(parsed.path(), "" | "/")
        || parsed.query().is_some()
        || !parsed.username().is_empty()
    {
        return Err(format!(
            "{url:?}: an upstream URL is scheme://host:port, nothing more"
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let port = parsed.port().unwrap_or(scheme.default_port());
    let authority = format!("{host}:{port}");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?}: {host} resolves to no address"))?;
    Ok(NodeUrl {
        addr,
        authority,
        scheme,
    })
}

pub fn check_weight(w: i64) -> Result<u32, String> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(w as u32)
    } else {
        Err(format!(
            "weight must be between 1 and {MAX_WEIGHT}, got {w}"
        ))
    }
}

impl UpstreamSpec {
    /// Validates the policy and resolves its static nodes.
    pub fn compile(&self, path: &str) -> Result<Vec<Node>, FieldError> {
        if let Some(t) = &self.timeout {
            t.validate(&field(path, "timeout"))?;
        }
        self.lb.hash_key(&field(path, "lb"))?;
        if let Some(r) = &self.retry {
            r.validate(&field(path, "retry"))?;
        }
        if let Some(h) = &self.health_check {
            h.validate(&field(path, "health_check"))?;
        }
        if let Some(p) = &self.self_preservation {
            p.validate(&field(path, "self_preservation"))?;
        }
        if let Some(t) = &self.tls {
            t.compile(&field(path, "tls"))?;
        }
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let at = index(&field(path, "nodes"), i);
                let (url, weight) = match n {
                    NodeSpec::Url(u) => (u, 1),
                    NodeSpec::Weighted { addr, weight } => (
                        addr,
                        check_weight(weight.unwrap_or(1))
                            .map_err(|m| FieldError::new(field(&at, "weight"), m))?,
                    ),
                };
                let u = parse_node_url(url).map_err(|m| FieldError::new(&at, m))?;
                Ok(Node {
                    id: url.clone(),
                    addr: u.addr,
                    authority: u.authority,
                    weight,
                    draining: false,
                    scheme: u.scheme,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_nodes_resolve_with_weights() {
        let spec: UpstreamSpec = serde_json::from_str(
            r#"{"nodes":["http://127.0.0.1:9001",{"addr":"http://localhost:9002","weight":3}]}"#,
        )
        .unwrap();
        let nodes = spec.compile("upstreams.users").unwrap();
        assert_eq!(nodes[0].addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(nodes[0].weight, 1);
        assert_eq!(nodes[1].addr.port(), 9002);
        assert_eq!(nodes[1].weight, 3);
        assert_eq!(nodes[1].authority, "localhost:9002");
    }

    #[test]
    fn schemes_choose_protocol_and_default_port() {
        for (url, scheme, port) in [
            ("http://127.0.0.1", NodeScheme::Http, 80),
            ("https://127.0.0.1", NodeScheme::Https, 443),
            ("h2c://127.0.0.1:9", NodeScheme::H2c, 9),
            ("grpc://127.0.0.1", NodeScheme::H2c, 80),
            ("grpcs://127.0.0.1", NodeScheme::H2s, 443),
        ] {
            let u = parse_node_url(url).unwrap();
            assert_eq!((u.scheme, u.addr.port()), (scheme, port), "{url}");
        }
    }

    #[test]
    fn bad_nodes_name_their_field() {
        for (json, want, why) in [
            (
                r#"{"nodes":[{"addr":"http://127.0.0.1:1","weight":0}]}"#,
                "u.nodes[0].weight",
                "between 1",
            ),
            (
                r#"{"nodes":[{"addr":"http://127.0.0.1:1","weight":-2}]}"#,
                "u.nodes[0].weight",
                "between 1",
            ),
            (
                r#"{"nodes":["ftp://127.0.0.1:1"]}"#,
                "u.nodes[0]",
                "must be http, https, h2c, grpc or grpcs",
            ),
            (
                r#"{"nodes":["grpc://127.0.0.1:1/x"]}"#,
                "u.nodes[0]",
                "nothing more",
            ),
            (
                r#"{"nodes":["https://127.0.0.1:1"],"tls":{"ca_pem":"nope"}}"#,
                "u.tls.ca_pem",
                "no PEM CERTIFICATE",
            ),
            (
                r#"{"nodes":["https://127.0.0.1:1"],"tls":{"client_cert":"x"}}"#,
                "u.tls.client_cert",
                "go together",
            ),
            (r#"{"nodes":["not a url"]}"#, "u.nodes[0]", "not a URL"),
            (
                r#"{"nodes":["http://127.0.0.1:1/path"]}"#,
                "u.nodes[0]",
                "nothing more",
            ),
        ] {
            let spec: UpstreamSpec = serde_json::from_str(json).unwrap();
            let err = spec.compile("u").unwrap_err();
            assert_eq!(err.path, want, "{json}");
            assert!(err.message.contains(why), "{json}: {err}");
        }
    }

    #[test]
    fn an_upstream_s_self_preservation_is_checked_with_it() {
        let spec: UpstreamSpec =
            serde_json::from_str(r#"{"self_preservation":{"enabled":false}}"#).unwrap();
        spec.compile("u").unwrap();
        let spec: UpstreamSpec =
            serde_json::from_str(r#"{"self_preservation":{"window_ttls":0}}"#).unwrap();
        let e = spec.compile("u").unwrap_err();
        assert_eq!(e.path, "u.self_preservation.window_ttls", "{e}");
    }
}
