//! The header names nearly every request and response carries, matched by
//! length and then bytes (any case) into their `HeaderName`, without
//! `HeaderName::from_bytes`, which lowercases each name into a scratch
//! buffer, looks it up among the standard ones (~190 instructions a name)
//! and allocates a copy of any other (`Sec-Fetch-*`, `X-Forwarded-*`).
//! Both HTTP/1.1 codecs parse with it: the client's request heads
//! (`client_h1`) and the upstreams' response heads (`upstream_h1`).

use http::header::{self, HeaderName};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
const SEC_FETCH_USER: HeaderName = HeaderName::from_static("sec-fetch-user");
const SEC_CH_UA: HeaderName = HeaderName::from_static("sec-ch-ua");
const SEC_CH_UA_MOBILE: HeaderName = HeaderName::from_static("sec-ch-ua-mobile");
const SEC_CH_UA_PLATFORM: HeaderName = HeaderName::from_static("sec-ch-ua-platform");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

/// The names the gateway writes itself, defined once for the parsers,
/// the header edits and the heads written without a header map.
/// Spelled as strings too, for what compares or writes names as bytes
/// (a `HeaderName`'s `as_str` is a match on its representation each time).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(spelled::X_FORWARDED_FOR);
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(spelled::X_FORWARDED_PROTO);
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static(spelled::X_REQUEST_ID);
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static(spelled::X_RATELIMIT_LIMIT);
pub static X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static(spelled::X_RATELIMIT_REMAINING);

/// The gateway's own names as strings (lower case, as `HeaderName` holds
/// them).
pub mod spelled {
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
    pub const X_REQUEST_ID: &str = "x-request-id";
    pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
    pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
}

/// The longest common name (`upgrade-insecure-requests`).
const LONGEST: usize = 25;

/// `name` as `HeaderName::from_bytes` parses it, when it is a common one;
/// `None` for any other (which then takes `from_bytes`). The name is
/// lowercased once on the stack and then matched whole.
pub fn common(name: &[u8]) -> Option<HeaderName> {
    if name.len() > LONGEST {
        return None;
    }
    let mut lower = [0u8; LONGEST];
    let lower = &mut lower[..name.len()];
    for (l, &b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    Some(match &*lower {
        b"te" => header::TE,
        b"age" => header::AGE,
        b"host" => header::HOST,
        b"date" => header::DATE,
        b"etag" => header::ETAG,
        b"vary" => header::VARY,
        b"range" => header::RANGE,
        b"accept" => header::ACCEPT,
        b"cookie" => header::COOKIE,
        b"origin" => header::ORIGIN,
        b"server" => header::SERVER,
        b"pragma" => header::PRAGMA,
        b"referer" => header::REFERER,
        b"expires" => header::EXPIRES,
        b"location" => header::LOCATION,
        b"sec-ch-ua" => SEC_CH_UA,
        b"user-agent" => header::USER_AGENT,
        b"set-cookie" => header::SET_COOKIE,
        b"connection" => header::CONNECTION,
        b"keep-alive" => KEEP_ALIVE,
        b"content-type" => header::CONTENT_TYPE,
        b"x-request-id" => X_REQUEST_ID.clone(),
        b"authorization" => header::AUTHORIZATION,
        b"if-none-match" => header::IF_NONE_MATCH,
        b"cache-control" => header::CACHE_CONTROL,
        b"last-modified" => header::LAST_MODIFIED,
        b"accept-ranges" => header::ACCEPT_RANGES,
        b"content-length" => header::CONTENT_LENGTH,
        b"sec-fetch-dest" => SEC_FETCH_DEST,
        b"sec-fetch-mode" => SEC_FETCH_MODE,
        b"sec-fetch-site" => SEC_FETCH_SITE,
        b"sec-fetch-user" => SEC_FETCH_USER,
        b"accept-encoding" => header::ACCEPT_ENCODING,
        b"accept-language" => header::ACCEPT_LANGUAGE,
        b"x-forwarded-for" => X_FORWARDED_FOR.clone(),
        b"content-encoding" => header::CONTENT_ENCODING,
        b"sec-ch-ua-mobile" => SEC_CH_UA_MOBILE,
        b"x-requested-with" => X_REQUESTED_WITH,
        b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"if-modified-since" => header::IF_MODIFIED_SINCE,
        b"x-forwarded-proto" => X_FORWARDED_PROTO.clone(),
        b"sec-ch-ua-platform" => SEC_CH_UA_PLATFORM,
        b"upgrade-insecure-requests" => header::UPGRADE_INSECURE_REQUESTS,
        _ => return None,
    })
}

/// Whether `name` is `known`, in any case (told by length first: most
/// names are not the one looked for).
#[inline]
pub fn is(name: &[u8], known: &str) -> bool {
    name.len() == known.len() && name.eq_ignore_ascii_case(known.as_bytes())
}

/// Writes one header line, `name: value`, of a head being written as bytes.
#[inline]
pub fn write_line(wire: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    wire.extend_from_slice(name);
    wire.extend_from_slice(b": ");
    wire.extend_from_slice(value);
    wire.extend_from_slice(b"\r\n");
}

/// `name` as `HeaderName::from_bytes` parses it, the common ones without it.
pub fn parse(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match common(name) {
        Some(known) => Ok(known),
        None => HeaderName::from_bytes(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON: [&str; 43] = [
        "te",
        "age",
        "host",
        "date",
        "etag",
        "vary",
        "range",
        "accept",
        "cookie",
        "origin",
        "server",
        "pragma",
        "referer",
        "expires",
        "location",
        "sec-ch-ua",
        "user-agent",
        "set-cookie",
        "connection",
        "keep-alive",
        "content-type",
        "x-request-id",
        "authorization",
        "if-none-match",
        "cache-control",
        "last-modified",
        "accept-ranges",
        "content-length",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-fetch-user",
        "accept-encoding",
        "accept-language",
        "x-forwarded-for",
        "content-encoding",
        "sec-ch-ua-mobile",
        "x-requested-with",
        "transfer-encoding",
        "if-modified-since",
        "x-forwarded-proto",
        "sec-ch-ua-platform",
        "upgrade-insecure-requests",
    ];

    #[test]
    fn common_names_are_the_names_http_parses() {
        for name in COMMON {
            for spelled in [name.to_string(), name.to_uppercase(), titled(name)] {
                let parsed = HeaderName::from_bytes(spelled.as_bytes()).unwrap();
                assert_eq!(
                    common(spelled.as_bytes()),
                    Some(parsed.clone()),
                    "{spelled}"
                );
                assert_eq!(parse(spelled.as_bytes()).unwrap(), parsed, "{spelled}");
                // The same name in every way the rest of the code reads it.
                assert_eq!(common(spelled.as_bytes()).unwrap().as_str(), name);
            }
        }
        assert_eq!(COMMON.iter().map(|n| n.len()).max(), Some(LONGEST));
        let long = "upgrade-insecure-requestsx";
        for other in [
            "x-date",
            "dates",
            "content-lengt",
            "X-Powered-By",
            "dnt",
            "",
            "-",
            long,
        ] {
            assert_eq!(common(other.as_bytes()), None, "{other}");
        }
        // Any other name is still parsed, and a bad one still refused.
        assert_eq!(parse(b"X-Powered-By").unwrap(), "x-powered-by");
        assert!(parse(b"bad name").is_err());
        assert!(parse(b"").is_err());
    }

    fn titled(name: &str) -> String {
        name.split('-')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-")
    }
}
