//! A lingering close for client connections closed with their request
//! body unread, for both engines.
//!
//! A response sent before the request's body was read whole (an upload
//! answered 413, or 502 on its way) closes the connection. Closed at once
//! with the body's rest still arriving, the connection ends in a reset,
//! which can throw the answer away in the client's buffers before it reads
//! it: the client sees "connection reset" instead of the 413. As nginx's
//! lingering close: stop writing, then read and discard what the client
//! still sends until it stops or [`LINGER`] passes (RFC 9112, 9.6).

use pingora::protocols::http::ServerSession;
use std::time::Duration;

/// How long a closing connection keeps reading (nginx: `lingering_time`).
const LINGER: Duration = Duration::from_secs(2);

/// Lingers if `session` (HTTP/1) answered with its request body unread.
pub async fn before_close(session: &mut ServerSession) {
    if !matches!(session, ServerSession::H1(_))
        || session.response_written().is_none()
        || session.is_body_done()
    {
        return;
    }
    session.shutdown().await;
    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
}
