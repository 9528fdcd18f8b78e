//! `proxy-rewrite {uri | regex_uri: [pattern, template], host, method,
//! headers: {set, add, remove}}`: the request as the upstream gets it.
//!
//! A regex rewrite puts client bytes into the path, so its result is
//! checked before it is used: a path with an encoded CR, LF or NUL, a dot
//! segment (`..`, `.`, or their `%2e` spellings), a backslash, or one that
//! would not start with a single `/` is refused (400), never sent. The
//! route was matched on the normalized path; a rewrite cannot take the
//! request anywhere the route's operator did not write. The query is kept.

use http::{HeaderValue, Method, Uri};
use pingora::http::RequestHeader;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::header_ops::{HeaderOps, HeaderOpsSpec};
use super::{config, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, index, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    regex_uri: Option<(String, String)>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: HeaderOpsSpec,
}

#[derive(Debug)]
enum PathEdit {
    None,
    Fixed(String),
    Regex(Regex, String),
}

#[derive(Debug)]
struct ProxyRewrite {
    path: PathEdit,
    host: Option<HeaderValue>,
    method: Option<Method>,
    headers: HeaderOps,
}

/// The methods a request may be sent upstream as. Not `HEAD`: the answer
/// to it has no body, and the client, which asked with another method,
/// would wait for the one its head declares.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    let path = match (spec.uri, spec.regex_uri) {
        (Some(_), Some(_)) => return Err(FieldError::new(at, "give uri or regex_uri, not both")),
        (Some(u), None) => {
            let at = field(at, "uri");
            if safe_path(&u).is_err() || u.contains('?') {
                return Err(FieldError::new(
                    at,
                    "must be a path: one leading '/', no dot segments, no query",
                ));
            }
            PathEdit::Fixed(u)
        }
        (None, Some((pattern, template))) => {
            let at = field(at, "regex_uri");
            let re = regex::RegexBuilder::new(&pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| FieldError::new(index(&at, 0), format!("not a regex: {e}")))?;
            if !(template.starts_with('/') || template.starts_with('$')) {
                return Err(FieldError::new(
                    index(&at, 1),
                    "must start with '/' or a capture",
                ));
            }
            PathEdit::Regex(re, template)
        }
        (None, None) => PathEdit::None,
    };
    let host = spec
        .host
        .map(|h| {
            let ok = !h.is_empty()
                && h.len() <= 260
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            ok.then(|| HeaderValue::from_str(&h).ok())
                .flatten()
                .ok_or_else(|| {
                    FieldError::new(field(at, "host"), format!("{h:?} is not host[:port]"))
                })
        })
        .transpose()?;
    let method = spec
        .method
        .map(|m| {
            METHODS
                .contains(&m.as_str())
                .then(|| Method::from_bytes(m.as_bytes()).ok())
                .flatten()
                .ok_or_else(|| {
                    let why = if m.eq_ignore_ascii_case("HEAD") {
                        " (an answer to HEAD has no body to give the client)"
                    } else {
                        ""
                    };
                    FieldError::new(
                        field(at, "method"),
                        format!("{m:?}{why}: use one of {}", METHODS.join(", ")),
                    )
                })
        })
        .transpose()?;
    let headers = spec.headers.compile(&field(at, "headers"))?;
    Ok(Arc::new(ProxyRewrite {
        path,
        host,
        method,
        headers,
    }))
}

/// Refuses a path that could inject or escape (see the module docs).
fn safe_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') || p.starts_with("//") {
        return Err("rewritten path must start with one '/'");
    }
    let lower = p.to_ascii_lowercase();
    if p.bytes()
        .any(|b| b.is_ascii_control() || b == b'\\' || b == b' ')
        || ["%0d", "%0a", "%00", "%5c"]
            .iter()
            .any(|e| lower.contains(e))
    {
        return Err("rewritten path carries a control character");
    }
    let dot = |s: &str| {
        let s = s.replace("%2e", ".");
        s == "." || s == ".."
    };
    if lower.split('/').any(dot) || lower.contains("%2f") && lower.split("%2f").any(dot) {
        return Err("rewritten path has a dot segment");
    }
    Ok(())
}

impl ProxyRewrite {
    fn new_path(&self, path: &str) -> Result<Option<String>, &'static str> {
        let out = match &self.path {
            PathEdit::None => return Ok(None),
            PathEdit::Fixed(p) => return Ok(Some(p.clone())),
            PathEdit::Regex(re, template) => {
                let Some(caps) = re.captures(path) else {
                    return Ok(None);
                };
                let mut out = String::with_capacity(path.len() + template.len());
                out.push_str(&path[..caps.get(0).map_or(0, |m| m.start())]);
                caps.expand(template, &mut out);
                out.push_str(&path[caps.get(0).map_or(path.len(), |m| m.end())..]);
                out
            }
        };
        safe_path(&out)?;
        Ok(Some(out))
    }
}

fn set_path(req: &mut RequestHeader, path: &str) -> Result<(), &'static str> {
    let target = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let uri = target
        .parse::<Uri>()
        .map_err(|_| "rewritten path is not a valid target")?;
    req.set_uri(uri);
    Ok(())
}

impl Plugin for ProxyRewrite {
    fn edits_response(&self) -> bool {
        false
    }

    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        let h = &mut *req.header;
        let rewritten = self
            .new_path(h.uri.path())
            .and_then(|p| p.map_or(Ok(()), |p| set_path(h, &p)));
        if let Err(why) = rewritten {
            return Flow::Respond(Reply::error(400, why));
        }
        if let Some(host) = &self.host {
            let _ = h.insert_header(http::header::HOST, host.clone());
        }
        if let Some(m) = &self.method {
            h.set_method(m.clone());
        }
        self.headers.apply_request(h);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(pattern: &str, template: &str) -> ProxyRewrite {
        ProxyRewrite {
            path: PathEdit::Regex(Regex::new(pattern).unwrap(), template.into()),
            host: None,
            method: None,
            headers: HeaderOps::default(),
        }
    }

    #[test]
    fn captures_fill_the_template_and_what_could_escape_or_inject_is_refused() {
        let p = regex("^/old/(.*)$", "/new/$1");
        assert_eq!(p.new_path("/old/a/b").unwrap().as_deref(), Some("/new/a/b"));
        assert_eq!(p.new_path("/other").unwrap(), None);
        for bad in [
            "/old/x%0d%0aSet-Cookie:%20a=b",
            "/old/x%0A",
            "/old/../admin",
            "/old/%2e%2e/admin",
            "/old/%2E%2e",
            "/old/a%2f..%2fadmin",
            "/old/a\\b",
        ] {
            assert!(p.new_path(bad).is_err(), "{bad}");
        }
        // A capture at the front cannot make a second authority.
        let front = regex("^/p(.*)$", "$1");
        assert!(front.new_path("/p//evil.example/x").is_err());
        assert!(front.new_path("/pok").is_err(), "no leading slash");
        assert_eq!(front.new_path("/p/ok").unwrap().as_deref(), Some("/ok"));
    }

    #[test]
    fn configs_name_the_bad_field() {
        let e = compile(&serde_json::json!({"regex_uri": ["(", "/x"]}), "p")
            .err()
            .unwrap();
        assert_eq!(e.path, "p.regex_uri[0]");
        let e = compile(&serde_json::json!({"uri": "/a/../b"}), "p")
            .err()
            .unwrap();
        assert_eq!(e.path, "p.uri");
        let e = compile(&serde_json::json!({"host": "a b"}), "p")
            .err()
            .unwrap();
        assert_eq!(e.path, "p.host");
        let e = compile(
            &serde_json::json!({"headers": {"set": {"x-a": "1\r\nx-b: 2"}}}),
            "p",
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "p.headers.set.x-a");
        // An answer to HEAD has no body for a client that asked otherwise.
        let e = compile(&serde_json::json!({"method": "HEAD"}), "p")
            .err()
            .unwrap();
        assert_eq!(e.path, "p.method");
        assert!(e.to_string().contains("no body"), "{e}");
        assert!(compile(&serde_json::json!({"method": "GET"}), "p").is_ok());
    }
}
