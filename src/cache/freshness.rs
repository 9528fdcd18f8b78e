//! Whether an upstream answer may be stored, and for how long: RFC 9111
//! as a shared cache applies it, through pingora-cache's Cache-Control
//! rules (`no-store`, `private`, `no-cache`, `s-maxage` over `max-age`
//! over `Expires`, `must-revalidate` ending stale serving, `Authorization`
//! stored only when the answer says `public`/`s-maxage`/`must-revalidate`).
//! The route's `ttl_s` stands in when the upstream gives no lifetime.

use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use std::time::{Duration, SystemTime};

use crate::model::cache::CachePolicy;

/// Statuses stored (RFC 9110 §15.1's heuristically cacheable ones that a
/// gateway meets, less 206: ranges are not cached).
const STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];
/// Tags one answer may carry at most, and a tag's longest length.
const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 128;

static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Why an answer is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    Status,
    /// `no-store`, `private`, `no-cache`, no lifetime left.
    OriginSaysNo,
    /// `Vary: *`, or on a header the route does not key on.
    Vary,
    SetCookie,
    /// The request carried `Authorization` and the answer did not allow it
    /// (only for a consumer's own entries: other such requests never fill).
    Authorization,
    /// Bigger than the route's `max_body_bytes`.
    TooBig,
}

impl Uncacheable {
    /// How long the key then passes straight upstream (no coalescing):
    /// long for what the origin will say again, a second for errors.
    pub fn pass_for(self, ttl: Duration) -> Duration {
        match self {
            Uncacheable::Status => Duration::from_secs(1),
            _ => ttl.min(Duration::from_secs(30)),
        }
    }
}

/// What is stored with an answer besides its body.
pub struct Meta {
    pub header: ResponseHeader,
    pub fresh: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub initial_age: u64,
    pub tags: Vec<Box<str>>,
}

/// Whether `resp` (to a request that carried `Authorization` if
/// `authorized`) may be stored under `policy`.
pub fn storable(
    policy: &CachePolicy,
    authorized: bool,
    resp: &ResponseHeader,
) -> Result<Meta, Uncacheable> {
    if !STATUSES.contains(&resp.status.as_u16()) {
        return Err(Uncacheable::Status);
    }
    for line in resp.headers.get_all(header::VARY) {
        let line = line.to_str().map_err(|_| Uncacheable::Vary)?;
        for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let keyed = policy
                .vary
                .iter()
                .any(|v| v.as_str().eq_ignore_ascii_case(name));
            if name == "*" || !keyed {
                return Err(Uncacheable::Vary);
            }
        }
    }
    if resp.headers.contains_key(header::SET_COOKIE) && !policy.set_cookie {
        return Err(Uncacheable::SetCookie);
    }
    let cc = CacheControl::from_resp_headers(resp);
    if authorized
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return Err(Uncacheable::Authorization);
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return Err(Uncacheable::OriginSaysNo);
    }
    let initial_age: u64 = (resp.headers.get(header::AGE))
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0);
    let lifetime = (cc.as_ref().and_then(|c| c.fresh_duration()))
        .or_else(|| expires_in(resp))
        .unwrap_or(policy.ttl);
    let fresh = lifetime.saturating_sub(Duration::from_secs(initial_age));
    if fresh.is_zero() {
        return Err(Uncacheable::OriginSaysNo);
    }
    let stale_while_revalidate = (cc.as_ref())
        .and_then(|c| c.serve_stale_while_revalidate_duration())
        .unwrap_or(policy.stale_while_revalidate);
    let stale_if_error = (cc.as_ref())
        .and_then(|c| c.serve_stale_if_error_duration())
        .unwrap_or(policy.stale_if_error);
    let tags = tags_of(resp);
    let mut header = owned_copy(resp).ok_or(Uncacheable::Status)?;
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::SET_COOKIE,
        header::AGE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        header.remove_header(&h);
    }
    Ok(Meta {
        header,
        fresh,
        stale_while_revalidate,
        stale_if_error,
        initial_age,
        tags,
    })
}

/// `resp` with every value in memory of its own. A parsed header's values
/// are slices of the connection's 4 KiB read buffer: a stored clone kept
/// that whole buffer alive per entry (measured: ~5.5 KB of RSS per small
/// entry, 15 times what the entry weighed).
fn owned_copy(resp: &ResponseHeader) -> Option<ResponseHeader> {
    let mut copy = ResponseHeader::build_no_case(resp.status, Some(resp.headers.len())).ok()?;
    for (name, value) in &resp.headers {
        let value = http::HeaderValue::from_bytes(value.as_bytes()).ok()?;
        copy.append_header(name.clone(), value).ok()?;
    }
    Some(copy)
}

/// `Expires` as a lifetime from now (a past or bad date: none left).
fn expires_in(resp: &ResponseHeader) -> Option<Duration> {
    let at = pingora_cache::filters::calculate_expires_header_time(resp)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `Cache-Tag: a,b` (Cloudflare) and `Surrogate-Key: a b` (Fastly).
fn tags_of(resp: &ResponseHeader) -> Vec<Box<str>> {
    let mut tags = Vec::new();
    let lists = [(&CACHE_TAG, ','), (&SURROGATE_KEY, ' ')];
    for (name, sep) in lists {
        for line in resp.headers.get_all(name) {
            let Ok(line) = line.to_str() else { continue };
            for t in line.split(sep).map(str::trim) {
                if !t.is_empty() && t.len() <= MAX_TAG_LEN && tags.len() < MAX_TAGS {
                    tags.push(t.into());
                }
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cache::CacheSpec;

    fn policy(spec: &str) -> CachePolicy {
        serde_json::from_str::<CacheSpec>(spec)
            .unwrap()
            .compile("")
            .unwrap()
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn http_caching_rules() {
        let p = policy(r#"{"ttl_s": 60, "vary_headers": ["accept-encoding"]}"#);
        let ok = |h: &[(&str, &str)]| storable(&p, false, &resp(200, h));
        assert_eq!(ok(&[]).unwrap().fresh, Duration::from_secs(60));
        assert_eq!(
            ok(&[("cache-control", "max-age=10, s-maxage=20")])
                .unwrap()
                .fresh,
            Duration::from_secs(20)
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=10"), ("age", "4")])
                .unwrap()
                .fresh,
            Duration::from_secs(6)
        );
        for (h, why) in [
            (("cache-control", "no-store"), Uncacheable::OriginSaysNo),
            (("cache-control", "private"), Uncacheable::OriginSaysNo),
            (("cache-control", "no-cache"), Uncacheable::OriginSaysNo),
            (("cache-control", "max-age=0"), Uncacheable::OriginSaysNo),
            (
                ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                Uncacheable::OriginSaysNo,
            ),
            (("vary", "*"), Uncacheable::Vary),
            (("vary", "Accept-Encoding, Cookie"), Uncacheable::Vary),
            (("set-cookie", "s=1"), Uncacheable::SetCookie),
        ] {
            assert_eq!(ok(&[h]).err(), Some(why), "{h:?}");
        }
        assert!(ok(&[("vary", "Accept-Encoding")]).is_ok());
        assert_eq!(
            storable(&p, false, &resp(500, &[])).err(),
            Some(Uncacheable::Status)
        );
        assert_eq!(
            storable(&p, true, &resp(200, &[])).err(),
            Some(Uncacheable::Authorization)
        );
        assert!(storable(&p, true, &resp(200, &[("cache-control", "public")])).is_ok());
        let m = ok(&[
            ("cache-control", "max-age=5, must-revalidate"),
            ("cache-tag", "a, b"),
            ("surrogate-key", "c d"),
            ("connection", "keep-alive"),
        ])
        .unwrap();
        assert_eq!(m.stale_if_error, Duration::ZERO);
        assert_eq!(&*m.tags, ["a", "b", "c", "d"].map(Box::from));
        assert!(!m.header.headers.contains_key("connection"));
        let cookies = policy(r#"{"cache_set_cookie": true}"#);
        let m = storable(&cookies, false, &resp(200, &[("set-cookie", "s=1")])).unwrap();
        assert!(
            !m.header.headers.contains_key("set-cookie"),
            "never replayed"
        );
    }
}
