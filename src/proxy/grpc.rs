//! gRPC at the gateway: errors the gateway itself produces for a gRPC
//! request are gRPC errors (HTTP 200, `grpc-status`, `grpc-message`, a
//! trailers-only answer), not JSON a gRPC client cannot read; and a
//! request's `grpc-timeout` is its deadline.

use std::time::Duration;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::{HttpTask, ServerSession};

/// Whether the request is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status the gateway answers with.
pub fn status_for(http: u16) -> u8 {
    match http {
        400 | 413 | 431 => 3,  // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED (no route)
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        429 => 8,              // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        _ => 13,               // INTERNAL
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Answers a gRPC request with `status`'s gRPC error, trailers-only.
pub async fn respond(session: &mut ServerSession, status: u16, message: &str, request_id: &str) {
    let written = async {
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", status_for(status).to_string())?;
        resp.insert_header("grpc-message", encode_message(message))?;
        resp.insert_header("x-request-id", request_id)?;
        if session.is_http2() {
            // HEADERS with END_STREAM: gRPC's "trailers-only" answer.
            session
                .response_duplex_vec(vec![HttpTask::Header(Box::new(resp), true)])
                .await
                .map(|_| ())
        } else {
            resp.insert_header("content-length", "0")?;
            session.write_response_header(Box::new(resp)).await?;
            session.write_response_body(bytes::Bytes::new(), true).await
        }
    }
    .await;
    if let Err(e) = written {
        tracing::debug!(error = %e, status, "could not send gRPC error response");
    }
}

/// `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if sane.
pub fn timeout(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn recognises_grpc_and_reads_its_deadline() {
        assert!(is_grpc(&req(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&req(&[("content-type", "application/json")])));
        let t = |v| timeout(&req(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "10x", "-1S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn maps_gateway_statuses_and_encodes_messages() {
        assert_eq!(status_for(404), 12);
        assert_eq!(status_for(429), 8);
        assert_eq!(status_for(503), 14);
        assert_eq!(status_for(504), 4);
        assert_eq!(encode_message("no route: 100%\n"), "no route: 100%25%0A");
    }
}
