//! `"https_only": true` routes: a plaintext request is sent to the same
//! host and target on the TLS listener's port (301 for GET and HEAD, 308,
//! which keeps the method and body, for the rest).
//!
//! The `Location` is built from the request's own host, so it can only
//! send a client where it already asked to go; a host that is not a plain
//! DNS name or IP literal is refused (400) instead of being echoed into a
//! header, and the target must be origin-form (`/…`) so `//evil.example`
//! style targets cannot turn into another authority.

use pingora::http::RequestHeader;

/// The redirect's status and `Location`, or why there is none.
pub fn redirect(
    req: &RequestHeader,
    host: &str,
    https_port: u16,
) -> Result<(u16, String), &'static str> {
    // The router's host has an IPv6 literal's brackets taken off.
    let bracketed;
    let host = if host.contains(':') {
        bracketed = format!("[{host}]");
        bracketed.as_str()
    } else {
        host
    };
    if !is_plain_host(host) {
        return Err("invalid Host for a redirect to https");
    }
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if !target.starts_with('/') || target.starts_with("//") {
        return Err("invalid request target for a redirect to https");
    }
    let status = match req.method {
        http::Method::GET | http::Method::HEAD => 301,
        _ => 308,
    };
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    Ok((status, location))
}

/// A DNS name or an IP literal (IPv6 in brackets), nothing else.
fn is_plain_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> RequestHeader {
        RequestHeader::build(method, target.as_bytes(), None).unwrap()
    }

    #[test]
    fn keeps_host_and_target_and_picks_the_status_by_method() {
        let (s, l) = redirect(&req("GET", "/a/b?x=1"), "api.test", 8443).unwrap();
        assert_eq!((s, l.as_str()), (301, "https://api.test:8443/a/b?x=1"));
        let (s, l) = redirect(&req("POST", "/"), "api.test", 443).unwrap();
        assert_eq!((s, l.as_str()), (308, "https://api.test/"));
        let (_, l) = redirect(&req("GET", "/"), "::1", 443).unwrap();
        assert_eq!(l, "https://[::1]/");
    }

    #[test]
    fn refuses_hosts_and_targets_that_could_point_elsewhere() {
        for host in ["evil.com/x", "a@b", "a b", "", "[zz]", "x\r\nSet-Cookie: a"] {
            assert!(redirect(&req("GET", "/"), host, 443).is_err(), "{host:?}");
        }
        assert!(redirect(&req("GET", "//evil.example/"), "api.test", 443).is_err());
    }
}
