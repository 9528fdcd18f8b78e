//! Stale-while-revalidate off the request: the client that found a cache
//! entry stale has its stale answer already; the refresh goes upstream in
//! a task of its own and stores what comes back (one at a time per entry,
//! the others are served stale meanwhile). Only a whole answer is stored;
//! a failed or uncacheable one leaves the stale entry for the next try.

use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;
use std::sync::Arc;

use super::CoreEngine;
use crate::proxy::caching::Refresh;
use crate::proxy::ctx::RequestCtx;

impl CoreEngine {
    /// Starts the refresh a stale answer left to do, if any.
    pub(super) fn refresh_after(
        self: &Arc<Self>,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) {
        let Some(refresh) = self.gate.take_refresh(session.req_header(), ctx) else {
            return;
        };
        let peer = match self.gate.choose_peer(session, ctx) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!(error = %e, "no instance to refresh a stale cache entry from");
                return;
            }
        };
        let req = match self.upstream_request(session, ctx) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(error = %e, "cannot build a cache refresh request");
                return;
            }
        };
        // Held by the task: the instance counts the refresh as in flight.
        let attempt = ctx.attempt.take();
        let engine = self.clone();
        tokio::spawn(async move {
            let _attempt = attempt;
            if let Err(e) = engine.fetch(&peer, req, refresh).await {
                tracing::debug!(error = %e, "cache refresh failed; the stale entry stays");
            }
        });
    }

    async fn fetch(
        &self,
        peer: &HttpPeer,
        req: Box<RequestHeader>,
        mut refresh: Refresh,
    ) -> Result<()> {
        let (mut up, _) = self.connect(peer).await?;
        let HttpSession::H1(h1) = &mut up else {
            // HTTP/2 upstreams are refreshed by the next request instead.
            return Ok(());
        };
        h1.read_timeout = peer.options.read_timeout;
        h1.write_timeout = peer.options.write_timeout;
        h1.write_request_header(req).await?;
        h1.finish_body().await?;
        loop {
            h1.read_response().await?;
            if !h1
                .resp_header()
                .is_some_and(|h| h.status.is_informational())
            {
                break;
            }
        }
        let Some(header) = h1.resp_header() else {
            return Ok(());
        };
        if !refresh.header(header) {
            return Ok(());
        }
        while let Some(data) = h1.read_body_bytes().await? {
            if !refresh.body(&data) {
                return Ok(());
            }
        }
        if h1.is_body_done() {
            refresh.finish();
            self.release(up, peer).await;
        }
        Ok(())
    }
}
