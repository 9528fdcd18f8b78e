//! Errors the gateway itself answers: JSON `{"error", "request_id"}`.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorSource, ErrorType};

use super::client_h1;

/// Maps a proxy error to the status the client sees and a short reason.
pub fn classify(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(503) => (503, "service has no live instance"),
        ErrorType::HTTPStatus(413) => (413, "request body too large"),
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
                ErrorType::ReadTimedout => (408, "client request timed out"),
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

/// The response header the client got, ignoring interim (1xx) ones: a
/// `100 Continue` does not stop an error page or a retry.
pub fn final_response(session: &ServerSession) -> Option<&ResponseHeader> {
    session
        .response_written()
        .filter(|r| !r.status.is_informational() || r.status == 101)
}

/// Whether the client waits for `100 Continue` before sending its body
/// (an HTTP/1.0 client is never sent one: RFC 9110 15.2).
pub fn expects_continue(req: &RequestHeader) -> bool {
    continue_owed(
        req.version,
        req.headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
    )
}

/// Whether a client that asked for `100-continue` (`asked`, from its first
/// `Expect`) is owed one: only an HTTP/1.1 client is (RFC 9110 §10.1.1).
/// The one rule for the lookup above and the gate's header scan.
pub fn continue_owed(version: http::Version, asked: bool) -> bool {
    asked && version == http::Version::HTTP_11
}

/// Answers `Expect: 100-continue` (the caller has found one, see
/// [`expects_continue`]) the way nginx does, once the request is going to
/// be proxied: the client may send its body now. The upstream
/// never sees the `Expect` (see `Gate::edit_upstream_request`), so a client
/// does not wait (curl: 1 s) on an upstream that would not answer it.
pub async fn send_100_continue(session: &mut ServerSession) {
    if session.response_written().is_none() && !session.is_body_done() {
        let Ok(go_ahead) = ResponseHeader::build(100, Some(0)) else {
            return;
        };
        if let Err(e) = write_interim(session, Box::new(go_ahead)).await {
            tracing::debug!(error = %e, "could not send 100 Continue");
        }
    }
}

/// Writes an interim (1xx) answer. Pingora turns keep-alive off for any
/// response written before the request body is read whole (right for a
/// final answer, whose client may not send the rest), interim ones
/// included; an interim answer comes before the body by nature, so it must
/// not cost the connection.
pub async fn write_interim(
    session: &mut ServerSession,
    header: Box<ResponseHeader>,
) -> pingora::Result<()> {
    session.set_close_on_response_before_downstream_finish(false);
    let written = client_h1::write_response_header(session, header).await;
    session.set_close_on_response_before_downstream_finish(true);
    written
}

/// Writes a complete JSON error response to the client.
///
/// The gateway's own answers are boxed `dyn` futures, here and in
/// [`respond_with`] and [`respond_edited`]: awaited inline, each of the
/// request path's ~20 places that may answer would carry a copy of the
/// writing's code among its hot code (the instruction cache's lines a
/// proxied request needs), for answers that are the exception.
pub fn respond<'a>(
    session: &'a mut ServerSession,
    status: u16,
    message: &'a str,
    request_id: &'a str,
) -> BoxFuture<'a, ()> {
    respond_with(session, status, message, request_id, &[])
}

/// [`respond`] with extra headers (e.g. `Retry-After`).
pub fn respond_with<'a>(
    session: &'a mut ServerSession,
    status: u16,
    message: &'a str,
    request_id: &'a str,
    extra: &'a [(&'static str, String)],
) -> BoxFuture<'a, ()> {
    respond_edited(
        session,
        status,
        Body::Error(message),
        request_id,
        move |_, resp| {
            for (name, value) in extra {
                let _ = resp.insert_header(*name, value.as_str());
            }
        },
    )
}

/// What the gateway's own answer carries.
pub enum Body<'a> {
    /// Nothing (a 204 preflight, a redirect).
    Empty,
    /// The JSON error with this message.
    Error(&'a str),
    /// Bytes of a plugin's own (an auth service's answer), typed by its
    /// headers.
    Raw(Bytes),
}

/// The gateway's own answer, with `edit` run on the header before it goes
/// (extra headers; the response phases of the plugins the request
/// passed). A gRPC client gets a gRPC error instead of a 4xx/5xx JSON one.
pub fn respond_edited<'a>(
    session: &'a mut ServerSession,
    status: u16,
    body: Body<'a>,
    request_id: &'a str,
    edit: impl FnOnce(&RequestHeader, &mut ResponseHeader) + Send + 'a,
) -> BoxFuture<'a, ()> {
    Box::pin(answer(session, status, body, request_id, edit))
}

async fn answer(
    session: &mut ServerSession,
    status: u16,
    body: Body<'_>,
    request_id: &str,
    edit: impl FnOnce(&RequestHeader, &mut ResponseHeader),
) {
    if let (Body::Error(message), true) = (&body, status >= 400) {
        if super::grpc::is_grpc(session.req_header()) {
            return super::grpc::respond(session, status, message, request_id).await;
        }
    }
    if expects_continue(session.req_header())
        && session.response_written().is_none()
        && !session.is_body_done()
    {
        // The client was refused before it was told to send its body: it
        // may send it anyway or never. Do not wait to drain it for reuse.
        client_h1::set_keepalive(session, None);
    }
    let json = matches!(body, Body::Error(_));
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Error(m) => self::body(m, request_id),
        Body::Raw(b) => b,
    };
    let written = async {
        let mut resp = ResponseHeader::build(status, Some(8))?;
        if json {
            resp.insert_header("content-type", "application/json")?;
        }
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", request_id)?;
        edit(session.req_header(), &mut resp);
        // Framing is the gateway's, whatever `edit` copied.
        resp.remove_header("transfer-encoding");
        if matches!(status, 204 | 304) {
            resp.remove_header("content-length");
        } else {
            resp.insert_header("content-length", body.len().to_string())?;
        }
        client_h1::write_response_header(session, Box::new(resp)).await?;
        client_h1::write_response_body(session, body, true).await
    }
    .await;
    if let Err(e) = written {
        tracing::debug!(error = %e, status, "could not send error response");
    }
}
