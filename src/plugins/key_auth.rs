//! `key-auth {header, query, hide_credentials}`: the caller is the
//! consumer whose stored key hash matches the key it presents (header
//! `apikey` by default, or a query parameter). Missing or unknown: 401,
//! nothing goes upstream. The key is looked up by its SHA-256, so the
//! time taken does not depend on how much of a guess is right (the
//! comparison is of hashes the guesser cannot steer). By default the key
//! is removed before the upstream sees the request.

use http::HeaderName;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::query_param::{param, without};
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

impl Plugin for KeyAuth {
    fn edits_response(&self) -> bool {
        false
    }

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
