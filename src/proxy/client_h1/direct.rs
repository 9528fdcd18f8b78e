//! The session calls of the request path, made on the codec itself when
//! it serves the request.
//!
//! pingora-core's wrapper reaches a `Custom` session through its trait,
//! whose methods are `async_trait`s: every call boxes its future (an
//! allocation, the future's state copied into it, a call through the
//! vtable). These are the calls every proxied request makes; each goes
//! straight to [`ClientH1`] when it serves the request, and through the
//! wrapper otherwise. Keep-alive goes through here for a second reason:
//! the wrapper ignores it for a `Custom` session.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::Result;

use super::response::RawHead;
use super::{of, of_ref};

/// pingora-core's `set_keepalive`: `None` closes the connection after
/// this request, `Some(0)` keeps it without a limit, `Some(s)` for `s`
/// idle seconds.
pub fn set_keepalive(session: &mut ServerSession, secs: Option<u64>) {
    match of(session) {
        Some(c) => c.set_keepalive(secs),
        None => session.set_keepalive(secs),
    }
}

/// pingora-core's `get_keepalive`.
pub fn keepalive(session: &mut ServerSession) -> Option<u64> {
    match of(session) {
        Some(c) => c.keepalive(),
        None => session.get_keepalive(),
    }
}

/// `ServerSession::write_response_header`.
pub async fn write_response_header(
    session: &mut ServerSession,
    resp: Box<ResponseHeader>,
) -> Result<()> {
    match of(session) {
        Some(c) => c.send_header(resp).await,
        None => session.write_response_header(resp).await,
    }
}

/// Whether the codec serves the session's request: only then can a head
/// go out from an upstream's bytes ([`write_raw_response_header`]).
pub fn serves(session: &ServerSession) -> bool {
    of_ref(session).is_some()
}

/// A final response head from an upstream's bytes, when the codec serves
/// the session ([`serves`]); an error otherwise (the caller asks first).
pub async fn write_raw_response_header<'a>(
    session: &mut ServerSession,
    head: RawHead<'a, '_, impl Iterator<Item = (&'a [u8], &'a [u8])>>,
) -> Result<()> {
    match of(session) {
        Some(c) => c.send_raw_header(head).await,
        None => pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "a raw response head for a session the codec does not serve",
        ),
    }
}

/// `ServerSession::write_response_body`: nothing is written for an empty
/// piece that does not end the body.
pub async fn write_response_body(
    session: &mut ServerSession,
    data: Bytes,
    end: bool,
) -> Result<()> {
    match of(session) {
        Some(c) => c.send_piece(&data, end).await,
        None => session.write_response_body(data, end).await,
    }
}

/// `ServerSession::finish_body`.
pub async fn finish_body(session: &mut ServerSession) -> Result<()> {
    match of(session) {
        Some(c) => c.end_body().await,
        None => session.finish_body().await,
    }
}

/// `ServerSession::read_body_or_idle`.
pub async fn read_body_or_idle(
    session: &mut ServerSession,
    no_body_expected: bool,
) -> Result<Option<Bytes>> {
    match of(session) {
        Some(c) => c.idle().await,
        None => session.read_body_or_idle(no_body_expected).await,
    }
}
