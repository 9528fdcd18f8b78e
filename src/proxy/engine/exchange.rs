//! One attempt on one upstream connection, full duplex: the request body
//! goes up while the response comes down, in one task.
//!
//! The loop polls the upstream's response and the client's body together,
//! so an upstream that answers before the body is all sent (a 413 on a big
//! upload) is relayed at once, and after a `101 Switching Protocols` the
//! same loop relays bytes both ways until either side closes. Writes are
//! awaited in place, as pingora-proxy's halves await theirs: a peer that
//! stops reading stalls the exchange until the write timeout. (Readable
//! does not mean "stopped reading": an upstream may stream its answer while
//! it still takes the body, and cutting the write then truncates uploads.)
//!
//! Reuse: the upstream connection goes back to the pool only when the
//! request was sent whole and the response read whole; the client's only
//! when its request was read whole (a response sent before that says
//! `Connection: close`) and nothing failed.

use bytes::Bytes;
use futures_util::FutureExt;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, Result};

use super::CoreEngine;
use crate::proxy::client_h1::RawHead;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::upstream_h1::{Head, Piece, UpstreamH1 as Upstream};
use crate::proxy::upstream_request::{Sanitize, UpstreamEdits};
use crate::proxy::{client_h1, error_response, header_edit, hop_by_hop, retry};
use crate::snapshot::Outcome;

/// How an attempt ended.
pub(super) enum Exchange {
    /// The response reached the client.
    Complete {
        upstream_reusable: bool,
        downstream_reusable: bool,
    },
    /// The upstream answered 502/503/504 and the policy sends the request
    /// elsewhere; nothing reached the client.
    Retry,
    /// The attempt failed; `retry::after_error` decides what next (never a
    /// retry once the client has a response header).
    Failed(Box<Error>),
}

/// How the core engine strips hop-by-hop headers for this client.
fn sanitize(session: &ServerSession) -> Sanitize {
    Sanitize::HopByHop {
        downstream_is_http11: session.req_header().version == http::Version::HTTP_11,
    }
}

/// Where the attempt stands.
struct State {
    /// Nothing more goes upstream: the body is all sent, or sending stopped.
    req_done: bool,
    /// The response is all relayed (or, upgraded, a side closed).
    resp_done: bool,
    /// A `101` went to the client: both sides are byte streams now.
    upgraded: bool,
    /// Why the upstream stopped taking the body; the response may still
    /// come (it is relayed), but the connection is not reused.
    send_error: Option<Box<Error>>,
    /// The upstream's response body was left unread (a `HEAD` sent as
    /// another method): the connection is not reused.
    body_left: bool,
}

impl CoreEngine {
    /// The request header as it goes upstream: the client's, hop-by-hop
    /// headers stripped, tollgate's edits applied, framing settled; built
    /// from the client's header in one copy.
    pub(super) fn upstream_request(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<RequestHeader> {
        let has_body = !session.is_body_empty();
        let edits = self.gate.upstream_edits(session, ctx, sanitize(session))?;
        Self::built_request(session, edits, has_body)
    }

    fn built_request(
        session: &ServerSession,
        edits: UpstreamEdits,
        has_body: bool,
    ) -> Result<RequestHeader> {
        let down = session.req_header();
        let had_host = down.headers.contains_key(http::header::HOST);
        let (mut req, edited) = header_edit::request_from(down, UpstreamEdits::ADDED, |parts| {
            parts.version = http::Version::HTTP_11;
            edits.apply(parts)
        });
        edited?;
        hop_by_hop::finalize(&mut req, had_host, has_body).map_err(|e| e.into_in())?;
        Ok(req)
    }

    /// Sends the request head: written straight from the client's header
    /// when it is plain (`UpstreamEdits::direct_head`), else built.
    async fn send_request_head(
        &self,
        session: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let has_body = !session.is_body_empty();
        let edits = self.gate.upstream_edits(session, ctx, sanitize(session))?;
        let mut wire = client_h1::head_buffer(session);
        let down = session.req_header();
        let as_sent = client_h1::fields_as_sent(session);
        if let Some(body_len) = edits.direct_head(down, as_sent, has_body, &mut wire) {
            let body_len = body_len.map_err(|e| e.into_in())?;
            let head = *ctx.method_upstream(&down.method) == http::Method::HEAD;
            let sent = up.write_plain_head(&wire, head, body_len).await;
            client_h1::keep_head_buffer(session, wire);
            return sent.map_err(|e| e.into_up());
        }
        client_h1::keep_head_buffer(session, wire);
        let req = Self::built_request(session, edits, has_body)?;
        up.write_request_header(&req).await.map_err(|e| e.into_up())
    }

    pub(super) async fn exchange(
        &self,
        session: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut RequestCtx,
    ) -> Exchange {
        if let Err(e) = self.send_request_head(session, up, ctx).await {
            return Exchange::Failed(e);
        }
        // A response that starts before the request body is read whole
        // closes the client connection afterwards instead of draining it.
        session.set_close_on_response_before_downstream_finish(true);
        // A retry first sends again what the client already sent.
        if let Some(sent) = session.get_retry_buffer() {
            if let Err(e) = up.write_body(&sent).await {
                return Exchange::Failed(e.into_up());
            }
        }
        let mut st = State {
            req_done: false,
            resp_done: false,
            upgraded: false,
            send_error: None,
            body_left: false,
        };
        if session.is_body_done() {
            if let Err(e) = self.end_request_body(up, &mut st).await {
                return Exchange::Failed(e);
            }
        }

        while !(st.req_done && st.resp_done) {
            // The client is read while its body lasts, and afterwards (until
            // the response is relayed) to notice it going away. Not once
            // sending stopped early: its remaining body is left unread.
            let watch_client = !st.req_done || (st.send_error.is_none() && session.is_body_done());
            tokio::select! {
                biased;
                piece = up.read_response_piece(), if !st.resp_done => {
                    let piece = match piece {
                        Ok(piece) => piece,
                        // The read's own error: a timeout stays a timeout (504) even after a
                        // failed write, and a reused connection's failure stays retryable.
                        Err(e) => return Exchange::Failed(e.into_up()),
                    };
                    if let Err(outcome) = self.relay(session, up, ctx, &mut st, piece).await {
                        return outcome;
                    }
                }
                body = client_h1::read_body_or_idle(session, st.req_done), if watch_client => {
                    let body = match body {
                        Ok(body) => body,
                        // The client went away, or its body is malformed.
                        Err(e) => return Exchange::Failed(e.into_down()),
                    };
                    if body.is_some() && !st.upgraded {
                        if let Err(e) = self.gate.check_body_size(ctx, session.body_bytes_read()) {
                            return Exchange::Failed(e);
                        }
                    }
                    if let Err(e) = self.forward(session, up, &mut st, body).await {
                        return Exchange::Failed(e);
                    }
                }
            }
        }

        let body_complete = session.is_body_done();
        Exchange::Complete {
            upstream_reusable: st.send_error.is_none()
                && !st.upgraded
                && !st.body_left
                && body_complete,
            downstream_reusable: !st.upgraded && body_complete,
        }
    }

    /// One piece of the client's body (`None`: it ended) to the upstream.
    async fn forward(
        &self,
        session: &mut ServerSession,
        up: &mut Upstream,
        st: &mut State,
        body: Option<Bytes>,
    ) -> Result<()> {
        let Some(data) = body else {
            // The client's body ended; upgraded, the client closed its side,
            // which ends the exchange.
            if st.upgraded {
                st.resp_done = true;
            }
            return self.end_request_body(up, st).await;
        };
        if st.upgraded {
            up.maybe_upgrade_body_writer();
        }
        if st.send_error.is_none() && !data.is_empty() {
            if let Err(e) = up.write_body(&data).await {
                // The upstream stopped taking the body (it answered early
                // and closed, or timed out): stop sending, keep reading its
                // response.
                tracing::debug!(error = %e, "upstream stopped taking the request body");
                st.send_error = Some(e.into_up());
                st.req_done = true;
                return Ok(());
            }
        }
        if !st.upgraded && session.is_body_done() {
            return self.end_request_body(up, st).await;
        }
        Ok(())
    }

    /// Ends the request body upstream (the last chunk, for chunked).
    async fn end_request_body(&self, up: &mut Upstream, st: &mut State) -> Result<()> {
        st.req_done = true;
        if st.send_error.is_some() {
            return Ok(());
        }
        if st.upgraded {
            up.maybe_upgrade_body_writer();
        }
        if let Err(e) = up.finish_body().await {
            st.send_error = Some(e.into_up());
        }
        Ok(())
    }

    /// One piece of the upstream's response to the client. `Err` ends the
    /// attempt with that outcome.
    async fn relay(
        &self,
        session: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut RequestCtx,
        st: &mut State,
        piece: Piece,
    ) -> Result<(), Exchange> {
        let (data, end) = match piece {
            Piece::Head(head, end) => {
                return self.relay_header(session, up, ctx, st, head, end).await
            }
            Piece::Body(data, end) => (data, end),
            Piece::Done => (None, true),
        };
        let data = data.unwrap_or_default();
        if !st.upgraded {
            self.gate.cache_response_body(ctx, &data, end);
        }
        if !data.is_empty() || end {
            client_h1::write_response_body(session, data, end)
                .await
                .map_err(|e| Exchange::Failed(e.into_down()))?;
        }
        if end {
            self.response_ended(session, st);
        }
        Ok(())
    }

    /// The response is all relayed. Upgraded, the upstream closed, which
    /// ends the client's side too (Pingora closes its reader when the
    /// response ends); otherwise an early response stops the request body.
    fn response_ended(&self, session: &mut ServerSession, st: &mut State) {
        st.resp_done = true;
        if st.upgraded || !session.is_body_done() {
            st.req_done = true;
        }
    }

    async fn relay_header(
        &self,
        session: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut RequestCtx,
        st: &mut State,
        head: Head,
        end: bool,
    ) -> Result<(), Exchange> {
        let status = head.status.as_u16();
        if head.status.is_informational() && status != 101 {
            // 100 Continue is ours to send (the upstream never saw the
            // client's Expect); other interim answers (103) are relayed.
            if status != 100 {
                let header = head.header().map_err(|e| Exchange::Failed(e.into_up()))?;
                // Boxed (`dyn`): rare, and not among the hot code.
                error_response::write_interim(session, header)
                    .boxed()
                    .await
                    .map_err(|e| Exchange::Failed(e.into_down()))?;
            }
            return Ok(());
        }
        if status == 101 && !(session.is_upgrade_req() && up.is_upgrade_req()) {
            // Switching protocols on one side only would let a tunnel skip
            // the request handling on the other (pingora-proxy refuses it too).
            return Err(Exchange::Failed(
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 answer to a request that is not an upgrade",
                )
                .into_up(),
            ));
        }
        ctx.observe(Outcome::of_status(status));
        if let Some(cause) = retry::status_cause(status) {
            if retry::should_retry(session, ctx, cause, true) {
                return Err(Exchange::Retry);
            }
        }
        if self.gate.stale_for_status(ctx, status) {
            let e = Error::explain(ErrorType::HTTPStatus(status), "upstream error");
            return Err(Exchange::Failed(e.into_up()));
        }
        let no_body =
            session.req_header().method == http::Method::HEAD || matches!(status, 204 | 304);
        // An HTTP/1.0-style body that ends when the upstream closes goes to
        // the client chunked, so its connection can be kept.
        let chunked = !no_body && status != 101 && !end && !head.has_framing_fields();
        if self.gate.draining() {
            // Draining: the client learns now that this connection ends.
            client_h1::set_keepalive(session, None);
        }
        self.write_header(session, ctx, &head, chunked)
            .await
            .map_err(Exchange::Failed)?;
        if session.was_upgraded() {
            // Both sides are byte streams from here: keep reading the client.
            st.upgraded = true;
            st.req_done = false;
        }
        let withheld = !end && ctx.withholds_body(&session.req_header().method);
        if end || withheld {
            if end {
                self.gate.cache_response_body(ctx, &Bytes::new(), true);
            }
            client_h1::finish_body(session)
                .await
                .map_err(|e| Exchange::Failed(e.into_down()))?;
            // A body the client is not sent is not read either: the
            // upstream connection goes, with what is left of it.
            st.body_left = withheld;
            self.response_ended(session, st);
        }
        Ok(())
    }

    /// The final head to the client: from the upstream's bytes when the
    /// gateway only adds its own fields to it and the client's codec is
    /// tollgate's (no header map built, the upstream's order and spelling
    /// kept); otherwise as a header map the cache, the plugins and the
    /// framing edit.
    async fn write_header(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        head: &Head,
        chunked: bool,
    ) -> Result<()> {
        let raw = head.status != 101 && client_h1::serves(session);
        if let Some(fields) = head.fields().filter(|_| raw) {
            if let Some(ours) = self.gate.response_ours_only(ctx, chunked) {
                let mut digits = Default::default();
                let (lines, n) = ours.lines(&mut digits);
                let raw = RawHead {
                    status: head.status,
                    reason: head.reason(),
                    fields,
                    ours: &lines[..n],
                };
                return client_h1::write_raw_response_header(session, raw)
                    .await
                    .map_err(|e| e.into_down());
            }
        }
        let mut header = head.header().map_err(|e| e.into_up())?;
        self.gate
            .cache_response_header(session.req_header(), &header, ctx);
        self.gate
            .edit_response(session.req_header(), &mut header, ctx, chunked);
        client_h1::write_response_header(session, header)
            .await
            .map_err(|e| e.into_down())
    }
}
