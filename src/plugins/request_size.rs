//! `request-size {max_bytes}`: a lower body limit for the route. It lowers
//! the request's limit, which the gateway already enforces both ways: a
//! declared `Content-Length` above it is refused (413) before anything is
//! read, a chunked body is cut off (413) once it passes it.

use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::{config, Flow, Plugin, PluginRequest};
use crate::field_error::{field, FieldError};

/// The most a body limit may be: 1 TiB.
pub const MAX_BODY_LIMIT: u64 = 1 << 40;

/// A request body limit (a route's, the proxy's, this plugin's): 1 byte to
/// [`MAX_BODY_LIMIT`].
pub fn check_body_limit(path: &str, v: u64) -> Result<(), FieldError> {
    if (1..=MAX_BODY_LIMIT).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!("must be 1 to {MAX_BODY_LIMIT} bytes, got {v}"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    max_bytes: u64,
}

#[derive(Debug)]
struct RequestSize {
    max_bytes: u64,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    check_body_limit(&field(at, "max_bytes"), spec.max_bytes)?;
    Ok(Arc::new(RequestSize {
        max_bytes: spec.max_bytes,
    }))
}

impl Plugin for RequestSize {
    fn edits_response(&self) -> bool {
        false
    }

    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        *req.max_body = (*req.max_body).min(self.max_bytes);
        Flow::Continue
    }
}
