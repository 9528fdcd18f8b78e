//! Errors the gateway itself answers: JSON `{"error", "request_id"}`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Maps a proxy error to the status the client sees and a short reason.
pub fn classify(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(503) => (503, "service has no live instance"),
        ErrorType::HTTPStatus(code) => (*code, "request failed"),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
        {
            (504, "upstream timed out")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "no reachable instance"),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, "client went away")
                }
                _ => (400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}

/// The JSON body; `request_id` is already restricted to safe characters.
pub fn body(message: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"{message}\",\"request_id\":\"{request_id}\"}}"
    ))
}

/// Writes a complete JSON error response to the client.
pub async fn respond(session: &mut Session, status: u16, message: &str, request_id: &str) {
    respond_with(session, status, message, request_id, &[]).await;
}

/// [`respond`] with extra headers (e.g. `Retry-After`).
pub async fn respond_with(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &str,
    extra: &[(&'static str, String)],
) {
    let body = body(message, request_id);
    let written = async {
        let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
        for (name, value) in extra {
            resp.insert_header(*name, value.as_str())?;
        }
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", request_id)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
    .await;
    if let Err(e) = written {
        tracing::debug!(error = %e, status, "could not send error response");
    }
}
