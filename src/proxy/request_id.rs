//! `X-Request-Id`: kept when the client sent a sane one, generated (random)
//! otherwise.
//!
//! A generated id is held inline ([`RequestId::Own`], 32 bytes, no
//! allocation: the raw heads write its bytes); a client's id is a
//! refcount bump of the header it came in. A header map gets a value made
//! only when one is edited ([`RequestId::to_header`]).

use http::HeaderValue;

/// A request's id, as the upstream request, the response and the logs carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RequestId {
    /// Not decided yet (the request filter has not run).
    #[default]
    None,
    /// Generated: 32 lowercase hex digits.
    Own([u8; 32]),
    /// The client's, checked by [`from_client`].
    Client(HeaderValue),
}

impl RequestId {
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::None => b"",
            Self::Own(id) => id,
            Self::Client(v) => v.as_bytes(),
        }
    }

    /// The id as text: ASCII by construction (hex, or a client's id that
    /// passed [`from_client`]).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// As a header value, for a header map (a generated id is copied).
    pub fn to_header(&self) -> HeaderValue {
        match self {
            Self::Client(v) => v.clone(),
            // Hex digits or nothing: always a valid header value.
            _ => HeaderValue::from_bytes(self.as_bytes()).unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// Generates ids: 128 bits from the thread's CSPRNG (ChaCha, reseeded by
/// the OS), 32 hex digits. Random rather than a process prefix and a
/// counter: the id goes back to every client, and a counter would tell
/// any two of its requests how much traffic the node served between them,
/// and the prefix which node and which start of it answered. 128 random
/// bits don't collide in practice across a fleet's lifetime, and no state
/// is shared between threads.
#[derive(Debug, Default)]
pub struct RequestIds;

impl RequestIds {
    pub fn next(&self) -> RequestId {
        let n: u128 = rand::random();
        let mut id = [0u8; 32];
        put_hex(&mut id[..16], (n >> 64) as u64);
        put_hex(&mut id[16..], n as u64);
        RequestId::Own(id)
    }
}

/// `n` as 16 lowercase hex digits into `out` (16 bytes), a byte (two
/// digits) at a time.
fn put_hex(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// A client's id is kept only if it is short and made of safe characters,
/// so it can go into logs and JSON bodies verbatim.
pub fn from_client(value: Option<&HeaderValue>) -> Option<RequestId> {
    let v = value?;
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    ok.then(|| RequestId::Client(v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_fixed_length_hex() {
        let ids = RequestIds;
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a.to_header().as_bytes(), a.as_bytes());
    }

    #[test]
    fn generated_ids_share_nothing_a_client_could_count_with() {
        // Neither half repeats or steps by one between consecutive ids:
        // with a prefix and a counter, one half would (chance here: about 2^-57).
        let ids = RequestIds;
        let half = |id: &RequestId, r: std::ops::Range<usize>| {
            u64::from_str_radix(&id.as_str()[r], 16).unwrap()
        };
        let all: Vec<RequestId> = (0..16).map(|_| ids.next()).collect();
        for pair in all.windows(2) {
            for r in [0..16, 16..32] {
                let (x, y) = (half(&pair[0], r.clone()), half(&pair[1], r));
                assert!(x.abs_diff(y) > 1, "{:?} then {:?}", pair[0], pair[1]);
            }
        }
    }

    #[test]
    fn hex_digits_are_the_numbers_own() {
        let mut out = [0u8; 16];
        for n in [0, 1, 0xf, 0x10, 0x0123_4567_89ab_cdef, u64::MAX] {
            put_hex(&mut out, n);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{n:016x}"));
        }
    }

    #[test]
    fn client_ids_are_kept_only_when_safe() {
        let v = |s: &[u8]| HeaderValue::from_bytes(s).unwrap();
        let kept = from_client(Some(&v(b"abc-123"))).unwrap();
        assert_eq!(kept, RequestId::Client(v(b"abc-123")));
        assert_eq!(kept.as_str(), "abc-123");
        assert_eq!(kept.to_header(), v(b"abc-123"));
        assert_eq!(from_client(Some(&v(b"a\"b"))), None);
        assert_eq!(from_client(Some(&v(b""))), None);
        assert_eq!(from_client(Some(&v(&[b'a'; 129]))), None);
        assert_eq!(from_client(None), None);
    }
}
