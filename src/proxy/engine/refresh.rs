//! Stale-while-revalidate off the request: the client that found a cache
//! entry stale has its stale answer already; the refresh goes upstream in
//! a task of its own and stores what comes back (one at a time per entry,
//! the others are served stale meanwhile). Only a whole answer is stored;
//! a failed or uncacheable one leaves the stale entry for the next try.

use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::Result;
use std::sync::Arc;

use super::target::Target;
use super::{CoreEngine, Upstream};
use crate::proxy::caching::Refresh;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::upstream_h1::Piece;

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
        let target = match self.gate.choose_instance(session, ctx) {
            Ok((timeouts, attempt)) => Target::of(attempt, timeouts),
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
            if let Err(e) = engine.fetch(target, req, refresh).await {
                tracing::debug!(error = %e, "cache refresh failed; the stale entry stays");
            }
        });
    }

    async fn fetch(
        &self,
        mut target: Target,
        req: RequestHeader,
        mut refresh: Refresh,
    ) -> Result<()> {
        let (mut up, _) = self.connect(&mut target).await?;
        let Upstream::H1(h1) = &mut up else {
            // HTTP/2 upstreams are refreshed by the next request instead.
            return Ok(());
        };
        h1.write_request_header(&req).await?;
        h1.finish_body().await?;
        loop {
            let (data, end) = match h1.read_response_piece().await? {
                Piece::Head(head, end) => {
                    if head.status.is_informational() {
                        continue;
                    }
                    if !refresh.header(&*head.header()?) {
                        return Ok(());
                    }
                    (None, end)
                }
                Piece::Body(data, end) => (data, end),
                Piece::Done => (None, true),
            };
            if let Some(data) = data {
                if !refresh.body(&data) {
                    return Ok(());
                }
            }
            if end {
                break;
            }
        }
        refresh.finish();
        self.release(up, &mut target).await;
        Ok(())
    }
}
