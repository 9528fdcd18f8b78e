//! One routed request's attempts: pick an instance, connect, exchange, and
//! on failure decide with the shared retry policy whether another instance
//! gets it; finally the JSON error when none answered. The same decisions
//! as `ProxyHttp`'s `upstream_peer`, `fail_to_connect`, `error_while_proxy`
//! and `fail_to_proxy` in `proxy_http.rs`.

use futures_util::FutureExt;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType};

use super::exchange::Exchange;
use super::target::Target;
use super::{CoreEngine, Upstream};
use crate::model::policy::RetryOn;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::retry;
use crate::snapshot::Outcome;

impl CoreEngine {
    /// Proxies a routed request; `true` when the client connection may
    /// carry another request.
    pub(super) async fn proxy(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> bool {
        // Keeps up to 64 KiB of the body so a retry can send it again.
        session.enable_retry_buffering();
        let error = loop {
            if ctx.attempts >= self.max_attempts {
                break Error::explain(ErrorType::InternalError, "too many attempts");
            }
            let mut target = match self.gate.choose_instance(session, ctx) {
                Ok((timeouts, attempt)) => Target::of(attempt, timeouts),
                Err(e) => break e,
            };
            let (mut up, reused) = match self.connect(&mut target).await {
                Ok(connected) => connected,
                Err(mut e) => {
                    e.as_up();
                    ctx.observe(Outcome::ConnectFailed);
                    // Nothing reached the upstream: any method may go elsewhere.
                    if retry::should_retry(session, ctx, RetryOn::ConnectFailure, false) {
                        tracing::debug!(request_id = ctx.request_id(), error = %e, "connect failed; retrying elsewhere");
                        continue;
                    }
                    break e.more_context(format!("peer: {target}"));
                }
            };
            let exchanged = match &mut up {
                Upstream::H1(h1) => self.exchange(session, h1, ctx).await,
                // Boxed (`dyn`): an HTTP/1.1 exchange's hot code does not
                // carry HTTP/2's inlined among it.
                Upstream::H2(h2) => {
                    self.exchange_h2(session, h2, ctx, target.peer())
                        .boxed()
                        .await
                }
            };
            match exchanged {
                Exchange::Complete {
                    upstream_reusable,
                    downstream_reusable,
                } => {
                    if upstream_reusable {
                        self.release(up, &mut target).await;
                    }
                    return downstream_reusable;
                }
                Exchange::Retry => {
                    tracing::debug!(
                        request_id = ctx.request_id(),
                        "upstream answer retried elsewhere"
                    );
                }
                Exchange::Failed(e) => {
                    let e = retry::blame_stalled_client(session, e)
                        .more_context(format!("peer: {target}"));
                    if !retry::after_error(session, ctx, &e, reused) {
                        break e;
                    }
                    tracing::debug!(request_id = ctx.request_id(), error = %e, "retrying elsewhere");
                }
            }
        };
        // Boxed (`dyn`) as the gateway's other answers (`error_response`).
        self.gate.answer_failure(session, &error, ctx).boxed().await;
        false
    }
}
