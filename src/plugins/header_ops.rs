//! `headers: {set, add, remove}`, as proxy-rewrite edits the request and
//! response-rewrite the response: names and values checked once, when the
//! route is validated (a value with CR or LF never reaches a header).

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;

use super::{header_name, header_value};
use crate::field_error::{field, index, FieldError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    /// Replace (or create) these headers.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Append these (a header may then have several values).
    #[serde(default)]
    add: BTreeMap<String, String>,
    /// Delete these.
    #[serde(default)]
    remove: Vec<String>,
}

/// The compiled edits, applied remove → set → add.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOpsSpec {
    pub fn compile(&self, at: &str) -> Result<HeaderOps, FieldError> {
        let pairs = |m: &BTreeMap<String, String>, at: &str| {
            m.iter()
                .map(|(n, v)| {
                    let name_at = field(at, n);
                    Ok((header_name(n, &name_at)?, header_value(v, &name_at)?))
                })
                .collect::<Result<Vec<_>, FieldError>>()
        };
        Ok(HeaderOps {
            set: pairs(&self.set, &field(at, "set"))?,
            add: pairs(&self.add, &field(at, "add"))?,
            remove: self
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| header_name(n, &index(&field(at, "remove"), i)))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply_request(&self, req: &mut RequestHeader) {
        for n in &self.remove {
            req.remove_header(n);
        }
        for (n, v) in &self.set {
            let _ = req.insert_header(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            let _ = req.append_header(n.clone(), v.clone());
        }
    }

    pub fn apply_response(&self, resp: &mut ResponseHeader) {
        for n in &self.remove {
            resp.remove_header(n);
        }
        for (n, v) in &self.set {
            let _ = resp.insert_header(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            let _ = resp.append_header(n.clone(), v.clone());
        }
    }
}
