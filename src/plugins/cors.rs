//! `cors {origins, methods, headers, expose_headers, credentials,
//! max_age}`: preflights answered at the gateway (204, or 403 for an
//! origin not on the list: nothing reaches the upstream), and the
//! `Access-Control-*` headers on every response to an allowed origin,
//! including the gateway's own errors and the early answers of plugins
//! inside this one (a 401 a browser can read).
//!
//! Origins are exact (`https://app.example.com`, case-blind), a pattern
//! (`https://*.example.com`: any subdomain, not the apex), or `*` alone.
//! `*` with `credentials: true` is refused: browsers reject it, and
//! echoing any origin with credentials would hand every site the user's
//! session.

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::{config, header_name, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, index, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    /// Request headers a preflight may ask for; empty: whatever it asks.
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    /// Seconds a browser may cache a preflight's answer.
    #[serde(default = "default_max_age")]
    max_age: u32,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_max_age() -> u32 {
    600
}

#[derive(Debug)]
enum Origin {
    Exact(String),
    /// `scheme://*.suffix`: the scheme with `://`, and `.suffix`.
    Subdomains(String, String),
}

#[derive(Debug)]
struct Cors {
    /// Empty: any origin (`*`).
    origins: Vec<Origin>,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

static ACAO: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
static ACAC: HeaderName = header::ACCESS_CONTROL_ALLOW_CREDENTIALS;

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    let origins_at = field(at, "origins");
    if spec.origins.is_empty() {
        return Err(FieldError::new(
            &origins_at,
            "at least one origin (or \"*\")",
        ));
    }
    let any = spec.origins.iter().any(|o| o == "*");
    if any && spec.origins.len() > 1 {
        return Err(FieldError::new(&origins_at, "\"*\" stands alone"));
    }
    if any && spec.credentials {
        return Err(FieldError::new(
            &origins_at,
            "\"*\" with credentials: true is refused (browsers reject it; list the origins)",
        ));
    }
    let origins = if any {
        Vec::new()
    } else {
        spec.origins
            .iter()
            .enumerate()
            .map(|(i, o)| origin(o).map_err(|m| FieldError::new(index(&origins_at, i), m)))
            .collect::<Result<_, _>>()?
    };
    let methods_at = field(at, "methods");
    for (i, m) in spec.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new(
                index(&methods_at, i),
                format!("{m:?} is not a method"),
            ));
        }
    }
    let names = |list: &[String], at: &str| -> Result<Option<HeaderValue>, FieldError> {
        for (i, h) in list.iter().enumerate() {
            header_name(h, &index(at, i))?;
        }
        Ok((!list.is_empty())
            .then(|| HeaderValue::from_str(&list.join(", ")).ok())
            .flatten())
    };
    Ok(Arc::new(Cors {
        origins,
        credentials: spec.credentials,
        allow_methods: HeaderValue::from_str(&spec.methods.join(", "))
            .map_err(|_| FieldError::new(&methods_at, "not a header value"))?,
        allow_headers: names(&spec.headers, &field(at, "headers"))?,
        expose_headers: names(&spec.expose_headers, &field(at, "expose_headers"))?,
        max_age: HeaderValue::from(spec.max_age),
    }))
}

fn origin(o: &str) -> Result<Origin, String> {
    let lower = o.to_ascii_lowercase();
    let Some((scheme, host)) = lower.split_once("://") else {
        return Err(format!("{o:?} is not an origin (scheme://host[:port])"));
    };
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!("{o:?}: the scheme must be http or https"));
    }
    match host.strip_prefix("*.") {
        Some(suffix) if host_ok(suffix) && suffix.contains('.') => Ok(Origin::Subdomains(
            format!("{scheme}://"),
            format!(".{suffix}"),
        )),
        Some(_) => Err(format!("{o:?}: a pattern is scheme://*.domain.tld")),
        None if host_ok(host) => Ok(Origin::Exact(lower)),
        None => Err(format!(
            "{o:?} is not an origin (scheme://host[:port], no path)"
        )),
    }
}

impl Cors {
    /// The request's origin, if it is allowed.
    fn allowed<'r>(&self, req: &'r RequestHeader) -> Option<&'r HeaderValue> {
        let value = req.headers.get(header::ORIGIN)?;
        if self.origins.is_empty() {
            return Some(value);
        }
        let o = value.to_str().ok()?;
        let ok = self.origins.iter().any(|allowed| match allowed {
            Origin::Exact(e) => e.eq_ignore_ascii_case(o),
            Origin::Subdomains(scheme, suffix) => {
                o.len() > scheme.len() + suffix.len()
                    && o[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && o[o.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && o[scheme.len()..o.len() - suffix.len()]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        });
        ok.then_some(value)
    }

    /// What `Access-Control-Allow-Origin` says: `*` for any origin without
    /// credentials, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.is_empty() && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Whether the answer depends on `Origin` (caches must key on it).
    fn varies(&self) -> bool {
        !self.origins.is_empty() || self.credentials
    }
}

impl Plugin for Cors {
    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        let h = &*req.header;
        if h.method != http::Method::OPTIONS
            || !h
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            || !h.headers.contains_key(header::ORIGIN)
        {
            return Flow::Continue;
        }
        // A preflight: answered here, never proxied.
        let Some(origin) = self.allowed(h) else {
            return Flow::Respond(Reply::error(403, "CORS origin not allowed"));
        };
        let mut headers = vec![
            (ACAO.clone(), self.allow_origin(origin)),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            ),
            (header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
        ];
        let asked = h.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        match (&self.allow_headers, asked) {
            (Some(list), _) => headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, list.clone())),
            (None, Some(asked)) => {
                headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone()));
                headers.push((
                    header::VARY,
                    HeaderValue::from_static("Access-Control-Request-Headers"),
                ));
            }
            (None, None) => {}
        }
        if self.credentials {
            headers.push((ACAC.clone(), HeaderValue::from_static("true")));
        }
        if self.varies() {
            headers.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        Flow::Respond(Reply {
            status: 204,
            message: None,
            headers,
            body: None,
        })
    }

    fn response(&self, req: &RequestHeader, resp: &mut ResponseHeader) {
        if self.varies() {
            let _ = resp.append_header(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = self.allowed(req) else {
            return;
        };
        let _ = resp.insert_header(ACAO.clone(), self.allow_origin(origin));
        if self.credentials {
            let _ = resp.insert_header(ACAC.clone(), HeaderValue::from_static("true"));
        }
        if let Some(e) = &self.expose_headers {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_patterns_or_any_and_star_with_credentials_is_refused() {
        let e = compile(
            &serde_json::json!({"origins": ["*"], "credentials": true}),
            "c",
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "c.origins");
        let e = compile(
            &serde_json::json!({"origins": ["https://a.example", "app"]}),
            "c",
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "c.origins[1]");
        assert!(compile(&serde_json::json!({"origins": ["https://*.com"]}), "c").is_err());
        let p = Cors {
            origins: vec![
                origin("https://App.example.com").unwrap(),
                origin("https://*.example.org").unwrap(),
            ],
            credentials: false,
            allow_methods: HeaderValue::from_static("GET"),
            allow_headers: None,
            expose_headers: None,
            max_age: HeaderValue::from(1),
        };
        let req = |o: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("origin", o).unwrap();
            r
        };
        for ok in [
            "https://app.example.com",
            "https://APP.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
        ] {
            assert!(p.allowed(&req(ok)).is_some(), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://example.org",
            "https://evil.com/.example.org",
            "https://evilexample.org",
            "null",
        ] {
            assert!(p.allowed(&req(no)).is_none(), "{no}");
        }
    }
}
