//! What tells two cached answers apart: the route, the path, and as the
//! route says the host, the query, the consumer and the values of its
//! `vary_headers`. Hashed field by field (each with its length, so no two
//! different key lists hash the same input) under two random hash keys
//! made at start-up: 128 bits a client cannot aim a collision at.

use std::hash::{BuildHasher, Hasher};

use pingora::http::RequestHeader;

use super::Key;
use crate::model::cache::CachePolicy;

/// The request's parts that make its key.
pub struct KeyParts<'a> {
    pub route: &'a str,
    pub policy: &'a CachePolicy,
    pub req: &'a RequestHeader,
    pub host: &'a str,
    pub consumer: Option<&'a str>,
}

impl KeyParts<'_> {
    pub(super) fn hash(&self, (a, b): &(ahash::RandomState, ahash::RandomState)) -> Key {
        let mut ha = a.build_hasher();
        let mut hb = b.build_hasher();
        let mut put = |bytes: &[u8]| {
            for h in [&mut ha, &mut hb] {
                h.write_usize(bytes.len());
                h.write(bytes);
            }
        };
        let p = self.policy;
        put(self.route.as_bytes());
        put(self.req.uri.path().as_bytes());
        if p.key_host {
            // Host names are case-insensitive: one entry for all spellings.
            let mut lower = [0u8; 255];
            let host = self.host.as_bytes();
            let n = host.len().min(lower.len());
            for (d, s) in lower.iter_mut().zip(&host[..n]) {
                *d = s.to_ascii_lowercase();
            }
            put(&lower[..n]);
            if host.len() > n {
                put(&host[n..]);
            }
        }
        if p.key_query {
            put(self.req.uri.query().unwrap_or("").as_bytes());
        }
        if p.key_consumer {
            put(self.consumer.unwrap_or("").as_bytes());
        }
        for name in &p.vary {
            // Every line of the header, in order; absent differs from empty.
            let values = self.req.headers.get_all(name);
            let mut n = 0usize;
            for v in values {
                put(v.as_bytes());
                n += 1;
            }
            put(&n.to_le_bytes());
        }
        (u128::from(ha.finish()) << 64) | u128::from(hb.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cache::CacheSpec;

    fn key(target: &str, host: &str, headers: &[(&str, &str)], spec: &str) -> Key {
        let policy = serde_json::from_str::<CacheSpec>(spec)
            .unwrap()
            .compile("")
            .unwrap();
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).unwrap();
        }
        let parts = KeyParts {
            route: "r",
            policy: &policy,
            req: &req,
            host,
            consumer: None,
        };
        parts.hash(&HASHERS)
    }

    static HASHERS: std::sync::LazyLock<(ahash::RandomState, ahash::RandomState)> =
        std::sync::LazyLock::new(|| (ahash::RandomState::new(), ahash::RandomState::new()));

    #[test]
    fn keyed_parts_tell_entries_apart_and_unkeyed_ones_do_not() {
        let base = key("/a?x=1", "h", &[], "{}");
        assert_eq!(base, key("/a?x=1", "H", &[], "{}"), "host case");
        assert_ne!(base, key("/a?x=2", "h", &[], "{}"));
        assert_ne!(base, key("/b?x=1", "h", &[], "{}"));
        assert_ne!(base, key("/a?x=1", "g", &[], "{}"));
        let no_query = r#"{"key":["path","host"]}"#;
        assert_eq!(
            key("/a?x=1", "h", &[], no_query),
            key("/a?x=2", "h", &[], no_query)
        );
        // Unkeyed headers change nothing; keyed ones do.
        let forwarded = [("x-forwarded-host", "evil")];
        assert_eq!(base, key("/a?x=1", "h", &forwarded, "{}"));
        let vary = r#"{"vary_headers":["accept-encoding"]}"#;
        let gz = key("/a", "h", &[("accept-encoding", "gzip")], vary);
        assert_ne!(gz, key("/a", "h", &[("accept-encoding", "br")], vary));
        assert_ne!(
            key("/a", "h", &[], vary),
            key("/a", "h", &[("accept-encoding", "")], vary)
        );
        // Field boundaries: path "/ab" + query "" vs path "/a" + query "b".
        assert_ne!(key("/ab", "h", &[], "{}"), key("/a?b", "h", &[], "{}"));
    }
}
