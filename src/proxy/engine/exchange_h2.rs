//! One attempt on an HTTP/2 upstream (`h2c://`, `grpc://`, `grpcs://`):
//! the request body goes up while the response comes down (gRPC's client,
//! server and bidirectional streams), and the upstream's trailers
//! (`grpc-status`, custom metadata) reach an HTTP/2 client.
//!
//! The response header must come within the read timeout; after it, the
//! body may pause for up to the idle timeout between pieces, so a healthy
//! long-lived stream is not cut by the read timeout. A gRPC request's
//! `grpc-timeout` bounds the whole exchange (504: DEADLINE_EXCEEDED).

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::exchange::Exchange;
use super::CoreEngine;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::{grpc, retry};
use crate::snapshot::Outcome;

/// What the loop waited for.
enum Event {
    Header(Result<()>),
    Body(Result<Option<Bytes>>),
    Client(Result<Option<Bytes>>),
}

impl CoreEngine {
    pub(super) async fn exchange_h2(
        &self,
        session: &mut ServerSession,
        up: &mut Http2Session,
        ctx: &mut RequestCtx,
        peer: &HttpPeer,
    ) -> Exchange {
        let req = session.req_header();
        let deadline = grpc::is_grpc(req).then(|| grpc::timeout(req)).flatten();
        let run = self.exchange_h2_inner(session, up, ctx, peer);
        match deadline {
            None => run.await,
            // The client's own deadline: a 504 (DEADLINE_EXCEEDED) that is
            // the client's, never retried nor counted against the instance.
            Some(d) => tokio::time::timeout(d, run).await.unwrap_or_else(|_| {
                Exchange::Failed(
                    Error::explain(ErrorType::HTTPStatus(504), "grpc-timeout passed").into_down(),
                )
            }),
        }
    }

    async fn exchange_h2_inner(
        &self,
        session: &mut ServerSession,
        up: &mut Http2Session,
        ctx: &mut RequestCtx,
        peer: &HttpPeer,
    ) -> Exchange {
        let wants_trailers = session
            .req_header()
            .headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let mut req = match self.upstream_request(session, ctx) {
            Ok(req) => req,
            Err(e) => return Exchange::Failed(e),
        };
        // HTTP/2 frames the body itself; `te: trailers` is how a gRPC
        // server knows the path keeps trailers (hop-by-hop, re-added).
        req.remove_header(&http::header::TRANSFER_ENCODING);
        if let Err(e) = authority_from_host(&mut req, peer.is_tls()) {
            return Exchange::Failed(e);
        }
        if wants_trailers {
            if let Err(e) = req.insert_header(http::header::TE, "trailers") {
                return Exchange::Failed(e);
            }
        }
        let resent = session.get_retry_buffer();
        let mut req_done = session.is_body_done() && resent.is_none();
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        if let Err(e) = up.write_request_header(Box::new(req), req_done) {
            return Exchange::Failed(e.into_up());
        }
        if let Some(sent) = resent {
            req_done = session.is_body_done();
            if let Err(e) = up.write_request_body(sent, req_done).await {
                return Exchange::Failed(e.into_up());
            }
        }
        let idle = peer.options.idle_timeout.unwrap_or(Duration::from_secs(60));
        let mut header_done = false;
        let mut resp_done = false;
        while !(req_done && resp_done) {
            let upstream = async {
                if header_done {
                    let body = tokio::time::timeout(idle, up.read_response_body()).await;
                    Event::Body(body.unwrap_or_else(|_| {
                        Error::e_explain(ErrorType::ReadTimedout, "h2 upstream body idle")
                    }))
                } else {
                    Event::Header(up.read_response_header().await)
                }
            };
            let event = tokio::select! {
                biased;
                e = upstream, if !resp_done => e,
                r = session.read_body_or_idle(req_done) => Event::Client(r),
            };
            match event {
                Event::Header(r) => {
                    if let Err(e) = r {
                        return Exchange::Failed(e.into_up());
                    }
                    header_done = true;
                    // From here pauses are bounded by the idle timeout, not
                    // the read timeout: a quiet gRPC stream is not cut.
                    up.read_timeout = None;
                    let Some(header) = up.response_header() else {
                        return Exchange::Failed(Error::explain(
                            ErrorType::InvalidHTTPHeader,
                            "h2 response without a header",
                        ));
                    };
                    let mut header = Box::new(header.clone());
                    let status = header.status.as_u16();
                    ctx.observe(Outcome::of_status(status));
                    if let Some(cause) = retry::status_cause(status) {
                        if retry::should_retry(session, ctx, cause, true) {
                            return Exchange::Retry;
                        }
                    }
                    let end = up.response_finished();
                    if !session.is_http2() {
                        // An HTTP/1.1 client: the body has no framing of
                        // its own on the way down, so it goes chunked
                        // unless its length is known.
                        header.set_version(http::Version::HTTP_11);
                    }
                    let chunked = !session.is_http2()
                        && !end
                        && !header.headers.contains_key(http::header::CONTENT_LENGTH);
                    self.gate
                        .edit_response(session.req_header(), &mut header, ctx, chunked);
                    // A header that ends the stream stays one frame (gRPC's
                    // trailers-only answer carries its status in it).
                    let written = if end {
                        session
                            .response_duplex_vec(vec![HttpTask::Header(header, true)])
                            .await
                            .map(|_| ())
                    } else {
                        session.write_response_header(header).await
                    };
                    if let Err(e) = written {
                        return Exchange::Failed(e.into_down());
                    }
                    if !end && ctx.withholds_body(&session.req_header().method) {
                        // A `HEAD` sent as another method: the head alone
                        // (the upstream's stream is reset when dropped).
                        if let Err(e) = session.finish_body().await {
                            return Exchange::Failed(e.into_down());
                        }
                        return Exchange::Complete {
                            upstream_reusable: true,
                            downstream_reusable: session.is_body_done(),
                        };
                    }
                    if end {
                        resp_done = true;
                        req_done = true;
                    }
                }
                Event::Body(r) => match r {
                    Ok(Some(data)) => {
                        if let Err(e) = session.write_response_body(data, false).await {
                            return Exchange::Failed(e.into_down());
                        }
                    }
                    Ok(None) => {
                        if let Err(e) = self.end_h2_response(session, up).await {
                            return Exchange::Failed(e);
                        }
                        resp_done = true;
                        // An early answer ends the upload (gRPC: the
                        // status is final).
                        req_done = true;
                    }
                    Err(e) => return Exchange::Failed(e.into_up()),
                },
                Event::Client(r) => match r {
                    Ok(Some(data)) => {
                        if let Err(e) = self.gate.check_body_size(ctx, session.body_bytes_read()) {
                            return Exchange::Failed(e);
                        }
                        let end = session.is_body_done();
                        if let Err(e) = up.write_request_body(data, end).await {
                            return Exchange::Failed(e.into_up());
                        }
                        req_done = end;
                    }
                    Ok(None) if !req_done => {
                        if let Err(e) = up.finish_request_body() {
                            return Exchange::Failed(e.into_up());
                        }
                        req_done = true;
                    }
                    Ok(None) => {}
                    // The client went away (or reset its stream).
                    Err(e) => return Exchange::Failed(e.into_down()),
                },
            }
        }
        Exchange::Complete {
            upstream_reusable: true,
            downstream_reusable: session.is_body_done(),
        }
    }

    /// The upstream's trailers (to an HTTP/2 client; an HTTP/1.1 one has
    /// no way to take them) and the end of the response.
    async fn end_h2_response(
        &self,
        session: &mut ServerSession,
        up: &mut Http2Session,
    ) -> Result<()> {
        let trailers = up.read_trailers().await.map_err(|e| e.into_up())?;
        match trailers {
            Some(t) if session.is_http2() => session
                .write_response_trailers(t)
                .await
                .map_err(|e| e.into_down()),
            _ => session.finish_body().await.map_err(|e| e.into_down()),
        }
    }
}

/// HTTP/2 names the host in `:authority`; a `Host` beside it is refused as
/// a duplicate by some servers (nginx), so it moves into the target.
fn authority_from_host(req: &mut RequestHeader, tls: bool) -> Result<()> {
    let Some(host) = req.headers.get(http::header::HOST).cloned() else {
        return Ok(());
    };
    let path = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(host.as_bytes())
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "h2 upstream target", e))?;
    req.set_uri(uri);
    req.remove_header(&http::header::HOST);
    Ok(())
}
