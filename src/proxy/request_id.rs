//! `X-Request-Id`: kept when the client sent a sane one, generated otherwise.
//!
//! Ids are held as [`HeaderValue`]s: a client's id is a refcount bump of
//! the header it came in, and a generated one is encoded once and then
//! shared by the upstream request, the response and the logs.

use http::HeaderValue;
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
    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        put_hex(&mut id[..16], self.prefix);
        put_hex(&mut id[16..], n);
        // One allocation that every clone shares; `Bytes` made from a `Vec`
        // would allocate again on its first clone. Hex digits only: always
        // a valid header value.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// `n` as 16 lowercase hex digits into `out` (16 bytes).
fn put_hex(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().take(16).enumerate() {
        *b = DIGITS[((n >> ((15 - i) * 4)) & 0xf) as usize];
    }
}

/// A client's id is kept only if it is short and made of safe characters,
/// so it can go into logs and JSON bodies verbatim.
pub fn from_client(value: Option<&HeaderValue>) -> Option<HeaderValue> {
    let v = value?;
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    ok.then(|| v.clone())
}

/// The id as text; ids are ASCII by construction (generated hex, or a
/// client's id that passed [`from_client`]).
pub fn as_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_fixed_length_hex() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(as_str(&a).bytes().all(|c| c.is_ascii_hexdigit()));
        // The counter is the low half.
        let (a, b) = (as_str(&a), as_str(&b));
        assert_eq!(a[..16], b[..16]);
        let lo = |s: &str| u64::from_str_radix(&s[16..], 16).unwrap();
        assert_eq!(lo(b), lo(a) + 1);
    }

    #[test]
    fn client_ids_are_kept_only_when_safe() {
        let v = |s: &[u8]| HeaderValue::from_bytes(s).unwrap();
        assert_eq!(from_client(Some(&v(b"abc-123"))), Some(v(b"abc-123")));
        assert_eq!(from_client(Some(&v(b"a\"b"))), None);
        assert_eq!(from_client(Some(&v(b""))), None);
        assert_eq!(from_client(Some(&v(&[b'a'; 129]))), None);
        assert_eq!(from_client(None), None);
    }
}
