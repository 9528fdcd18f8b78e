//! `redirect {https: true}` or `redirect {uri: "<template>", code,
//! keep_query}`: the gateway answers with a redirect instead of proxying.
//!
//! No open redirect: a template's scheme and host are the operator's
//! (checked when the route is validated; a `$` there is refused), the only
//! variable is `$uri`, the request's normalized path, and a relative result
//! that would start with `//` (another authority to a browser) is folded
//! to one slash. `https: true` keeps the request's own host (a plain DNS
//! name or address, else 400) and does nothing on a TLS connection.

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::https_redirect;
use super::{config, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    https: bool,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    /// Append the request's query to `uri`'s result (default true).
    #[serde(default = "yes")]
    keep_query: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
enum Target {
    Https,
    /// The template cut at each `$uri`.
    Template(Vec<String>),
}

#[derive(Debug)]
struct Redirect {
    target: Target,
    code: Option<u16>,
    keep_query: bool,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    if let Some(c) = spec.code {
        if ![301, 302, 307, 308].contains(&c) {
            return Err(FieldError::new(
                field(at, "code"),
                format!("must be 301, 302, 307 or 308, got {c}"),
            ));
        }
    }
    let target = match (spec.https, spec.uri) {
        (true, None) => Target::Https,
        (false, Some(t)) => Target::Template(template(&t, &field(at, "uri"))?),
        _ => return Err(FieldError::new(at, "give https: true or uri, one of them")),
    };
    Ok(Arc::new(Redirect {
        target,
        code: spec.code,
        keep_query: spec.keep_query,
    }))
}

/// A relative template: `$uri…` or one leading `/` (not `//`, `/\`).
fn relative_ok(t: &str) -> bool {
    let one_slash = t.starts_with('/') && !t.starts_with("//") && !t.starts_with("/\\");
    t.starts_with("$uri") || one_slash
}

/// Checks a template and cuts it at each `$uri`.
fn template(t: &str, at: &str) -> Result<Vec<String>, FieldError> {
    if let Some(r) = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
    {
        let authority = r.split(['/', '?', '$']).next().unwrap_or("");
        if authority.is_empty() || authority.contains(['@', '\\']) {
            return Err(FieldError::new(
                at,
                "the host of an absolute uri must be written out (no variables, no user info)",
            ));
        }
    } else if !relative_ok(t) {
        return Err(FieldError::new(
            at,
            "must be a path (/…) or an http(s):// URL with its host written out",
        ));
    };
    let parts: Vec<String> = t.split("$uri").map(str::to_string).collect();
    if parts.iter().any(|p| p.contains('$')) {
        return Err(FieldError::new(at, "the only variable is $uri"));
    }
    // Every literal piece must be header-safe.
    HeaderValue::from_str(&parts.concat())
        .map_err(|_| FieldError::new(at, "contains characters a Location cannot carry"))?;
    Ok(parts)
}

impl Redirect {
    fn location(&self, parts: &[String], req: &PluginRequest<'_>) -> Option<HeaderValue> {
        let uri = &req.header.uri;
        let path = uri.path();
        let mut out = String::with_capacity(64 + path.len());
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push_str(path);
            }
            out.push_str(p);
        }
        if out.starts_with('/') {
            // `$uri` of `//evil.example` must not become another authority.
            let slashes = out.len() - out.trim_start_matches(['/', '\\']).len();
            out.replace_range(..slashes, "/");
        }
        if let (true, Some(q)) = (self.keep_query, uri.query()) {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(q);
        }
        HeaderValue::from_str(&out).ok()
    }
}

fn moved(status: u16, location: HeaderValue) -> Flow {
    Flow::Respond(Reply {
        status,
        message: None,
        headers: vec![(HeaderName::from_static("location"), location)],
        body: None,
    })
}

impl Plugin for Redirect {
    fn edits_response(&self) -> bool {
        false
    }

    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        match &self.target {
            Target::Https => {
                if req.tls {
                    return Flow::Continue;
                }
                let Some(port) = req.https_port else {
                    return Flow::Respond(Reply::error(
                        403,
                        "this route is served over https only",
                    ));
                };
                match https_redirect::redirect(req.header, req.host(), port) {
                    Ok((status, location)) => match HeaderValue::from_str(&location) {
                        Ok(l) => moved(self.code.unwrap_or(status), l),
                        Err(_) => {
                            Flow::Respond(Reply::error(400, "invalid Host for a redirect to https"))
                        }
                    },
                    Err(why) => Flow::Respond(Reply::error(400, why)),
                }
            }
            Target::Template(parts) => match self.location(parts, req) {
                Some(l) => moved(self.code.unwrap_or(302), l),
                None => Flow::Respond(Reply::error(400, "invalid path for a redirect")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn location(t: &str, target: &str) -> String {
        let p = Redirect {
            target: Target::Template(template(t, "uri").unwrap()),
            code: None,
            keep_query: true,
        };
        let mut header = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        let mut max = 0;
        let mut consumer = None;
        let consumers = crate::plugins::consumer::ConsumerTable::default();
        let req = PluginRequest {
            header: &mut header,
            client_ip: None,
            host_of: |_| "evil.example",
            tls: false,
            https_port: None,
            max_body: &mut max,
            consumers: &consumers,
            consumer: &mut consumer,
        };
        let Target::Template(parts) = &p.target else {
            unreachable!()
        };
        p.location(parts, &req)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn templates_keep_the_operators_host_and_never_make_an_authority() {
        assert_eq!(
            location("https://new.example$uri", "/a/b?x=1"),
            "https://new.example/a/b?x=1"
        );
        assert_eq!(location("/v2$uri", "/a"), "/v2/a");
        assert_eq!(location("$uri", "//evil.example/x"), "/evil.example/x");
        assert_eq!(location("/docs?from=old", "/a?x=1"), "/docs?from=old&x=1");
        for bad in [
            "https://$host/x",
            "//evil.example",
            "evil.example/x",
            "/a$host",
            "https://u@h/",
        ] {
            assert!(template(bad, "uri").is_err(), "{bad}");
        }
    }
}
