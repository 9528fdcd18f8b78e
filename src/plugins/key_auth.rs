//! `key-auth {header, query, hide_credentials}`: the caller is the
//! consumer whose stored key hash matches the key it presents (header
//! `apikey` by default, or a query parameter). Missing or unknown: 401,
//! nothing goes upstream. The key is looked up by its SHA-256, so the
//! time taken does not depend on how much of a guess is right (the
//! comparison is of hashes the guesser cannot steer). By default the key
//! is removed before the upstream sees the request.

use http::{HeaderName, Uri};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::{config, header_name, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default = "yes")]
    hide_credentials: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
struct KeyAuth {
    header: Option<HeaderName>,
    query: Option<String>,
    hide: bool,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    let header = match (&spec.header, &spec.query) {
        (None, None) => Some(HeaderName::from_static("apikey")),
        (Some(h), _) => Some(header_name(h, &field(at, "header"))?),
        (None, Some(_)) => None,
    };
    if let Some(q) = &spec.query {
        if q.is_empty() || q.contains(['&', '=', '#']) {
            return Err(FieldError::new(field(at, "query"), "not a parameter name"));
        }
    }
    Ok(Arc::new(KeyAuth {
        header,
        query: spec.query,
        hide: spec.hide_credentials,
    }))
}

/// The value of query parameter `name` in `query`, and its span.
fn param<'q>(query: &'q str, name: &str) -> Option<(&'q str, std::ops::Range<usize>)> {
    let mut start = 0;
    for pair in query.split('&') {
        let end = start + pair.len();
        if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some((v, start..end));
        }
        start = end + 1;
    }
    None
}

/// `uri` without the query parameter at `span`.
fn without(uri: &Uri, span: std::ops::Range<usize>) -> Option<Uri> {
    let q = uri.query()?;
    let mut rest = String::with_capacity(q.len());
    rest.push_str(&q[..span.start]);
    rest.push_str(&q[span.end..]);
    let rest = rest.trim_matches('&').replace("&&", "&");
    let target = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{rest}", uri.path())
    };
    target.parse().ok()
}

impl Plugin for KeyAuth {
    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        let h = &*req.header;
        let from_header = self.header.as_ref().and_then(|n| h.headers.get(n));
        let (consumer, from_query) = match (from_header, &self.query) {
            (Some(v), _) => (req.consumers.by_key(v.as_bytes()).cloned(), None),
            (None, Some(q)) => match h.uri.query().and_then(|query| param(query, q)) {
                Some((v, span)) => (req.consumers.by_key(v.as_bytes()).cloned(), Some(span)),
                None => return Flow::Respond(Reply::error(401, "missing API key")),
            },
            (None, None) => return Flow::Respond(Reply::error(401, "missing API key")),
        };
        let Some(consumer) = consumer else {
            return Flow::Respond(Reply::error(401, "invalid API key"));
        };
        if self.hide {
            if let Some(n) = &self.header {
                req.header.remove_header(n);
            }
            if let Some(uri) = from_query.and_then(|span| without(&req.header.uri, span)) {
                req.header.set_uri(uri);
            }
        }
        *req.consumer = Some(consumer);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_key_is_found_and_taken_out() {
        let q = "a=1&apikey=k3y&b=2";
        let (v, span) = param(q, "apikey").unwrap();
        assert_eq!(v, "k3y");
        let uri: Uri = format!("/x?{q}").parse().unwrap();
        assert_eq!(without(&uri, span).unwrap(), "/x?a=1&b=2");
        assert!(param("xapikey=1", "apikey").is_none());
        let uri: Uri = "/x?apikey=1".parse().unwrap();
        assert_eq!(
            without(&uri, param("apikey=1", "apikey").unwrap().1).unwrap(),
            "/x"
        );
    }
}
