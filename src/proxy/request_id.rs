//! `X-Request-Id`: kept when the client sent a sane one, generated otherwise.

use std::sync::atomic::{AtomicU64, Ordering};

/// Generates ids unique across restarts and nodes: a random per-process
/// prefix and a counter, 32 hex digits (the length of a UUID without dashes).
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: rand::random(),
            counter: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, n)
    }
}

/// A client's id is kept only if it is short and made of safe characters,
/// so it can go into logs and JSON bodies verbatim.
pub fn from_client(value: Option<&[u8]>) -> Option<String> {
    let v = value?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_fixed_length() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn client_ids_are_kept_only_when_safe() {
        assert_eq!(from_client(Some(b"abc-123")), Some("abc-123".into()));
        assert_eq!(from_client(Some(b"a\"b")), None);
        assert_eq!(from_client(Some(b"")), None);
        assert_eq!(from_client(Some(&[b'a'; 129])), None);
        assert_eq!(from_client(None), None);
    }
}
