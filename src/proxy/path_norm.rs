//! Request path normalization before routing (policy: `model::path_policy`),
//! so that the route matched is the route the upstream sees:
//!
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`,
//!   `%7E` is `~`, RFC 3986 §6.2.2.2); other escapes are kept, in upper
//!   case; a malformed escape or an encoded NUL is refused;
//! - a dot segment (`.`, `..`), also one hidden by decoding or carrying
//!   `;` parameters (`/..;/`, which Tomcat resolves as `..`), is refused:
//!   the upstream would resolve it after the route was matched;
//! - escaped slashes and backslashes are refused, kept or read as `/`, by
//!   policy (refused by default: a `/public/*` route must not reach
//!   `/admin` on an upstream that decodes them);
//! - `//` is merged into `/` unless the policy says not to.
//!
//! Normalizing twice gives what normalizing once did (tested).

use std::borrow::Cow;

use crate::model::path_policy::{Ambiguous, PathPolicy};

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `/`, `\` or their escape by `policy`; Err for `Reject`.
fn ambiguous(
    out: &mut Vec<u8>,
    policy: Ambiguous,
    as_sent: &[u8],
    what: &'static str,
) -> Result<(), &'static str> {
    match policy {
        Ambiguous::Reject => return Err(what),
        Ambiguous::Keep => out.extend_from_slice(as_sent),
        Ambiguous::Decode => out.push(b'/'),
    }
    Ok(())
}

/// Whether a segment is `.` or `..`, ignoring `;` parameters.
fn is_dot_segment(seg: &[u8]) -> bool {
    let core = seg.split(|b| *b == b';').next().unwrap_or(seg);
    core == b"." || core == b".."
}

/// Where the path is in a request target: origin-form (`/p?q`) or
/// absolute-form (`http://host/p?q`); the query is not the path's.
pub fn path_span(target: &[u8]) -> (usize, usize) {
    let start = if target.first() == Some(&b'/') {
        0
    } else {
        target
            .windows(3)
            .position(|w| w == b"://")
            .map_or(target.len(), |s| {
                let after = s + 3;
                target[after..]
                    .iter()
                    .position(|b| *b == b'/')
                    .map_or(target.len(), |p| after + p)
            })
    };
    let end = target[start..]
        .iter()
        .position(|b| *b == b'?')
        .map_or(target.len(), |q| start + q);
    (start, end)
}

/// The normalized path (borrowed when nothing changes: the usual case costs
/// one scan), or why the request is refused.
pub fn normalize<'a>(path: &'a [u8], policy: &PathPolicy) -> Result<Cow<'a, [u8]>, &'static str> {
    // One branch-free pass: a byte that may need work, or a doubled slash
    // when those are merged.
    let mut prev = 0u8;
    let mut odd = false;
    for &b in path {
        odd |= matches!(b, b'%' | b'\\' | b';' | b'.')
            | (policy.merge_slashes & (b == b'/') & (prev == b'/'));
        prev = b;
    }
    if !odd {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding in path");
                };
                let v = h << 4 | l;
                match v {
                    0 => return Err("encoded NUL in path"),
                    b'/' => ambiguous(
                        &mut out,
                        policy.escaped_slashes,
                        b"%2F",
                        "escaped slash in path",
                    )?,
                    b'\\' => ambiguous(&mut out, policy.backslashes, b"%5C", "backslash in path")?,
                    v if is_unreserved(v) => out.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(v >> 4)],
                            HEX[usize::from(v & 15)],
                        ]);
                    }
                }
                i += 3;
            }
            b'\\' => {
                ambiguous(&mut out, policy.backslashes, b"\\", "backslash in path")?;
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    if policy.merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    if out.split(|b| *b == b'/').any(is_dot_segment) {
        return Err("path has dot segments");
    }
    if out == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, &'static str> {
        normalize(p.as_bytes(), &PathPolicy::default())
            .map(|c| String::from_utf8_lossy(&c).into_owned())
    }

    #[test]
    fn the_path_is_found_in_either_form_without_its_query() {
        assert_eq!(path_span(b"/a/b?x=/.."), (0, 4));
        assert_eq!(path_span(b"http://h:1/a?q"), (10, 12));
        assert_eq!(path_span(b"http://h"), (8, 8));
        assert_eq!(path_span(b"*"), (1, 1));
    }

    #[test]
    fn plain_paths_are_borrowed_untouched() {
        for p in [
            "/",
            "/api/users/42",
            "/a-b_c~d",
            "/file.txt",
            "/a/.well-known/x",
        ] {
            let got = normalize(p.as_bytes(), &PathPolicy::default()).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_refused_however_they_are_written() {
        for bad in [
            "/..",
            "/a/../b",
            "/a/./b",
            "/.",
            "/%2e%2e/admin",
            "/%2E./x",
            "/.%2e",
            "/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/.;x/y",
            "/a/.%2E/b",
            "/%2E/",
        ] {
            assert_eq!(norm(bad), Err("path has dot segments"), "{bad}");
        }
        for ok in [
            "/...", "/a..b", "/.hidden", "/..a", "/a;..", "/v1.2/x", "/a%2eb", "/a/...",
        ] {
            assert!(norm(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn escapes_are_decoded_when_unreserved_and_upper_cased_otherwise() {
        assert_eq!(norm("/%41%7e%2D"), Ok("/A~-".into()));
        assert_eq!(norm("/a%20b%3f"), Ok("/a%20b%3F".into()));
        assert_eq!(
            norm("/%25"),
            Ok("/%25".into()),
            "an escaped % stays escaped"
        );
        assert_eq!(norm("/%zz"), Err("malformed percent-encoding in path"));
        assert_eq!(norm("/%4"), Err("malformed percent-encoding in path"));
        assert_eq!(norm("/a%00b"), Err("encoded NUL in path"));
    }

    #[test]
    fn slashes_and_backslashes_follow_the_policy() {
        assert_eq!(norm("/a//b///c"), Ok("/a/b/c".into()));
        assert_eq!(norm("/public/%2e%2e%2fadmin"), Err("escaped slash in path"));
        assert_eq!(norm("/public/..\\admin"), Err("backslash in path"));
        assert_eq!(norm("/a%5cb"), Err("backslash in path"));
        let decode = PathPolicy {
            merge_slashes: false,
            escaped_slashes: Ambiguous::Decode,
            backslashes: Ambiguous::Decode,
        };
        let with = |p: &str, pol: &PathPolicy| {
            normalize(p.as_bytes(), pol).map(|c| String::from_utf8_lossy(&c).into_owned())
        };
        assert_eq!(with("/a%2Fb\\c", &decode), Ok("/a/b/c".into()));
        assert_eq!(
            with("/public/%2e%2e%2fadmin", &decode),
            Err("path has dot segments")
        );
        assert_eq!(with("/a//b", &decode), Ok("/a//b".into()));
        let keep = PathPolicy {
            merge_slashes: true,
            escaped_slashes: Ambiguous::Keep,
            backslashes: Ambiguous::Keep,
        };
        assert_eq!(with("/a%2fb\\c", &keep), Ok("/a%2Fb\\c".into()));
    }
}
