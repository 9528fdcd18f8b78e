//! `proxy.engine: pingora`: the gateway as a pingora-proxy `ProxyHttp`.
//! Each phase calls the shared [`Gate`]; what is left here is mapping
//! Pingora's phases and retry flags onto it.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::panic::AssertUnwindSafe;

use super::ctx::RequestCtx;
use super::gate::{panic_message, Gate};
use super::upstream_request::Sanitize;
use super::{hop_by_hop, retry, timer_tick};
use crate::model::policy::RetryOn;
use crate::snapshot::Outcome;

/// The gateway's proxy logic on pingora-proxy.
pub struct Gateway {
    gate: Gate,
}

impl Gateway {
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        timer_tick::ensure_started();
        self.gate.new_ctx()
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None: Pingora's default is a disabled compression module that
        // still costs every request an allocation and four filter calls.
        // Tollgate passes bodies through as the upstream encoded them.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        match AssertUnwindSafe(self.gate.route_request(session, ctx))
            .catch_unwind()
            .await
        {
            Ok(answered) => Ok(answered),
            Err(p) => {
                // Answered 500; the connection keeps serving.
                self.gate
                    .answer_panic(session, ctx, panic_message(&*p))
                    .await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.gate.choose_peer(session, ctx))) {
            Ok(r) => r.map(Box::new),
            Err(p) => {
                tracing::error!(
                    request_id = ctx.request_id(),
                    panic = panic_message(&*p),
                    "panic while choosing an upstream"
                );
                Err(Error::explain(
                    ErrorType::InternalError,
                    "panic while choosing an upstream",
                ))
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if body.is_some() && !session.was_upgraded() {
            self.gate.check_body_size(ctx, session.body_bytes_read())?;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.gate
            .edit_upstream_request(session, upstream, ctx, Sanitize::Done)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // What the core engine's upstream client leaves out as it parses.
        hop_by_hop::strip_response(upstream_response);
        let status = upstream_response.status.as_u16();
        if upstream_response.status.is_informational() {
            // An interim answer says nothing about the instance yet.
            return Ok(());
        }
        ctx.observe(Outcome::of_status(status));
        // Retry on the answer's status before anything reached the client.
        if let Some(cause) = retry::status_cause(status) {
            if retry::should_retry(session, ctx, cause, true) {
                ctx.retry_decided = true;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    format!("upstream answered {status}; retrying elsewhere"),
                ));
            }
        }
        if self.gate.stale_for_status(ctx, status) {
            // Answered from the stale cache entry by `fail_to_proxy`.
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream error",
            ));
        }
        self.gate
            .cache_response_header(session.req_header(), upstream_response, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.cache.is_some() {
            let data = body.clone().unwrap_or_default();
            self.gate.cache_response_body(ctx, &data, end_of_stream);
        }
        if ctx.withholds_body(&session.req_header().method) {
            *body = None;
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if upstream_response.status.is_informational() && upstream_response.status != 101 {
            return Ok(());
        }
        self.gate
            .edit_response(session.req_header(), upstream_response, ctx, false);
        if self.gate.draining() {
            // Draining: the client learns now that this connection ends.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        self.gate.log_request(session, ctx);
        // The last phase before pingora-proxy closes or reuses the connection.
        super::linger::before_close(session).await;
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // fail_to_proxy logs every failure once, with its request id.
        true
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.observe(Outcome::ConnectFailed);
        // Nothing reached the upstream: safe to retry any method elsewhere.
        if retry::should_retry(session, ctx, RetryOn::ConnectFailure, false) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = retry::blame_stalled_client(session, e).more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.retry_decided) {
            e.set_retry(true);
            return e;
        }
        let retry = retry::after_error(session, ctx, &e, client_reused);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = self.gate.answer_failure(session, e, ctx).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
