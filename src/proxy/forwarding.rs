//! What the gateway reads from and adds to requests on their way through:
//! the host, the client address behind trusted proxies, `X-Forwarded-For`,
//! and the path sanity check.

use ipnet::IpNet;
use pingora::http::RequestHeader;
use std::net::IpAddr;

use crate::router::request_host;

/// The request's host without port ("" when absent).
pub fn host_of(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .map_or("", request_host)
}

/// The client: the peer, or, when the peer is a trusted proxy, the
/// rightmost untrusted hop of `X-Forwarded-For` (a client can prepend
/// anything; only what trusted proxies appended is believed).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a http::HeaderValue>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for line in forwarded.rev() {
        let Ok(line) = line.to_str() else { break };
        for hop in line.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(&ip) {
                        return Some(client);
                    }
                }
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

/// Appends the client to `X-Forwarded-For`, keeping what proxies before us
/// recorded, across every `X-Forwarded-For` line the client sent. Runs on
/// every request, so the usual first-hop value is one exact-size copy.
pub fn forwarded_for<'a>(
    existing: impl IntoIterator<Item = &'a http::HeaderValue>,
    client: IpAddr,
) -> http::HeaderValue {
    let mut ip = [0u8; MAX_IP_TEXT];
    let ip = ip_text(client, &mut ip);
    let mut out = Vec::new();
    for hop in kept_hops(existing.into_iter().map(|v| v.as_bytes())) {
        out.extend_from_slice(hop);
        out.extend_from_slice(b", ");
    }
    if out.is_empty() {
        // The usual case, the client is the first hop: one exact-size copy.
        return http::HeaderValue::from_bytes(ip)
            .unwrap_or_else(|_| http::HeaderValue::from_static(""));
    }
    out.extend_from_slice(ip);
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// [`forwarded_for`]'s value written at the end of `out` (an upstream
/// head being written), with no header value made for it.
pub fn write_forwarded_for<'a>(
    out: &mut Vec<u8>,
    existing: impl IntoIterator<Item = &'a [u8]>,
    client: IpAddr,
) {
    for hop in kept_hops(existing) {
        out.extend_from_slice(hop);
        out.extend_from_slice(b", ");
    }
    push_ip(out, client);
}

/// The earlier hops of the client's `X-Forwarded-For` lines that are
/// kept: trimmed, not empty, visible ASCII (`HeaderValue::to_str`).
fn kept_hops<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    lines.into_iter().map(<[u8]>::trim_ascii).filter(|hop| {
        !hop.is_empty() && hop.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    })
}

/// Room for the longest address text (39 bytes: eight IPv6 groups).
const MAX_IP_TEXT: usize = 48;

/// `ip` as text in `buf`, without allocating.
fn ip_text(ip: IpAddr, buf: &mut [u8; MAX_IP_TEXT]) -> &[u8] {
    let mut rest: &mut [u8] = &mut buf[..];
    push_ip(&mut rest, ip);
    let len = MAX_IP_TEXT - rest.len();
    &buf[..len]
}

/// Writes `ip` as `IpAddr`'s `Display` would, a byte at a time for IPv4
/// (the hot case) instead of through the formatter.
pub fn push_ip(out: &mut impl std::io::Write, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            let _ = out.write_all(&text[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v = http::HeaderValue::from_static("1.2.3.4");
        assert_eq!(forwarded_for(Some(&v), ip("5.6.7.8")), "1.2.3.4, 5.6.7.8");
        assert_eq!(forwarded_for(None, ip("5.6.7.8")), "5.6.7.8");
        assert_eq!(forwarded_for(None, ip("2001:db8::1")), "2001:db8::1");
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe";
        assert_eq!(forwarded_for(None, ip(longest)), longest);
        assert_eq!(
            forwarded_for(Some(&v), ip(longest)),
            format!("1.2.3.4, {longest}").as_str()
        );
    }

    #[test]
    fn ipv4_text_matches_std_for_every_octet() {
        for o in 0..=255u8 {
            let ip = IpAddr::from([o, 0, 10, o]);
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn the_value_written_in_place_is_the_header_value() {
        let client: IpAddr = "5.6.7.8".parse().unwrap();
        for lines in [
            &[][..],
            &["1.1.1.1"],
            &["1.1.1.1", " ", "2.2.2.2, 3.3.3.3"],
            &["  9.9.9.9  ", ""],
        ] {
            let values: Vec<_> = lines
                .iter()
                .map(|l| http::HeaderValue::from_str(l).unwrap())
                .collect();
            let mut out = b"x: ".to_vec();
            write_forwarded_for(&mut out, lines.iter().map(|l| l.as_bytes()), client);
            assert_eq!(
                out[3..],
                *forwarded_for(&values, client).as_bytes(),
                "{lines:?}"
            );
        }
        // A line that is not visible ASCII is not kept, as before.
        let obs = http::HeaderValue::from_bytes(b"caf\xe9").unwrap();
        let mut out = Vec::new();
        write_forwarded_for(&mut out, [obs.as_bytes()], client);
        assert_eq!(out, b"5.6.7.8");
        assert_eq!(forwarded_for([&obs], client), "5.6.7.8");
    }

    #[test]
    fn forwarded_for_keeps_every_line_the_client_sent() {
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", " ".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(
            forwarded_for(h.get_all("x-forwarded-for"), "5.6.7.8".parse().unwrap()),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 5.6.7.8"
        );
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &str| vec![http::HeaderValue::from_str(v).unwrap()];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // An untrusted peer's claim is ignored.
        assert_eq!(
            client_ip(stranger, xff("1.1.1.1").iter(), &trusted),
            Some(stranger)
        );
        // Through a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            client_ip(peer, xff("6.6.6.6, 1.1.1.1, 10.0.0.7").iter(), &trusted),
            Some("1.1.1.1".parse().unwrap())
        );
        // Garbage stops the walk at the last address we could trust.
        assert_eq!(
            client_ip(peer, xff("nonsense").iter(), &trusted),
            Some(peer)
        );
        assert_eq!(client_ip(peer, Vec::new().iter(), &trusted), Some(peer));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; session=xyz").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        assert_eq!(cookie(&req, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&req, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&req, "c"), None);
    }
}
