//! Host matching: exact, `*.suffix` wildcard, or any host.

/// Which hosts an entry accepts, in precedence order (exact first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKey {
    /// Lower-cased exact host.
    Exact(std::sync::Arc<str>),
    /// Lower-cased suffix including the dot: `*.example.com` → `.example.com`.
    Wildcard(std::sync::Arc<str>),
    Any,
}

impl HostKey {
    /// From a validated, lower-cased route host.
    pub fn from_route_host(host: &str) -> Self {
        match host.strip_prefix('*') {
            Some(suffix) => HostKey::Wildcard(suffix.into()),
            None => HostKey::Exact(host.into()),
        }
    }
}

/// The request's host without port, as sent (case is ignored when matching).
pub fn request_host(raw: &str) -> &str {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or(rest);
    }
    raw.rsplit_once(':')
        .map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
        .trim_end_matches('.')
}

/// Whether `host` ends with `suffix` (`.example.com`) and has a label before it.
pub fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports_and_trailing_dots() {
        assert_eq!(request_host("api.example.com:8080"), "api.example.com");
        assert_eq!(request_host("api.example.com."), "api.example.com");
        assert_eq!(request_host("[::1]:80"), "::1");
        assert_eq!(request_host("localhost"), "localhost");
    }

    #[test]
    fn wildcard_needs_a_label() {
        assert!(wildcard_matches(".example.com", "a.example.com"));
        assert!(wildcard_matches(".example.com", "A.B.Example.COM"));
        assert!(!wildcard_matches(".example.com", "example.com"));
        assert!(!wildcard_matches(".example.com", "badexample.com"));
    }
}
