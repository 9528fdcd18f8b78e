//! `response-rewrite {status, headers: {set, add, remove}}`: the response
//! on its way out, whoever produced it (the upstream, the gateway, a
//! plugin inside this one).

use http::StatusCode;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::header_ops::{HeaderOps, HeaderOpsSpec};
use super::{config, Plugin};
use crate::field_error::{field, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: HeaderOpsSpec,
}

#[derive(Debug)]
struct ResponseRewrite {
    status: Option<StatusCode>,
    headers: HeaderOps,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    let status = match spec.status {
        None => None,
        Some(s @ 200..=599) => StatusCode::from_u16(s).ok(),
        Some(s) => {
            return Err(FieldError::new(
                field(at, "status"),
                format!("must be a final status, 200 to 599, got {s}"),
            ))
        }
    };
    let headers = spec.headers.compile(&field(at, "headers"))?;
    if status.is_none() && headers.is_empty() {
        return Err(FieldError::new(at, "give status, headers or both"));
    }
    Ok(Arc::new(ResponseRewrite { status, headers }))
}

impl Plugin for ResponseRewrite {
    fn response(&self, _req: &RequestHeader, resp: &mut ResponseHeader) {
        // Switching protocols stays what it is: the connection is no
        // longer HTTP after it.
        if resp.status == StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        if let Some(s) = self.status {
            let _ = resp.set_status(s);
        }
        self.headers.apply_response(resp);
    }
}
