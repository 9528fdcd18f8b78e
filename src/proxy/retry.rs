//! When a failed attempt is tried again: the route's `retries` (short
//! form) over the upstream's retry policy, the request's method, whether
//! its body can be replayed, and the upstream's retry budget.

use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::RequestCtx;
use super::error_response::final_response;
use crate::model::policy::{RetryOn, RetrySpec, DEFAULT_RETRY_BUDGET};
use crate::snapshot::{InstanceSet, Outcome};

/// A failed connect is retried once on another instance unless the route
/// or upstream says otherwise (nginx's proxy_next_upstream does the same).
pub const DEFAULT_ATTEMPTS: u32 = 1;

/// The policy in force for this request.
fn policy(ctx: &RequestCtx) -> (u32, RetrySpec) {
    let upstream = ctx
        .attempt
        .as_ref()
        .and_then(|a| a.set.retry.clone())
        .unwrap_or_default();
    let attempts = ctx
        .route()
        .and_then(|r| r.retries)
        .or_else(|| {
            ctx.attempt
                .as_ref()
                .and_then(|a| a.set.retry.as_ref())
                .map(|r| r.attempts)
        })
        .unwrap_or(DEFAULT_ATTEMPTS);
    (attempts, upstream)
}

/// Whether the policy allows another attempt at all.
pub fn attempts_left(ctx: &RequestCtx) -> bool {
    ctx.attempts <= policy(ctx).0
}

/// Whether to try again after `cause`. `body_sent`: the request (and its
/// body) may have reached the upstream, so a non-idempotent method is only
/// retried if the policy allows it and the body can be replayed.
pub fn should_retry(
    session: &ServerSession,
    ctx: &RequestCtx,
    cause: RetryOn,
    body_sent: bool,
) -> bool {
    let (attempts, spec) = policy(ctx);
    if ctx.attempts > attempts {
        return false;
    }
    let allowed = match cause {
        // Nothing reached the upstream: every route retries connect failures.
        RetryOn::ConnectFailure => true,
        c => spec.on.contains(&c),
    };
    if !allowed {
        return false;
    }
    if body_sent {
        let req = session.req_header();
        if spec.idempotent_only && !ctx.method_upstream(&req.method).is_idempotent() {
            return false;
        }
        if session.retry_buffer_truncated() {
            return false;
        }
    }
    let Some(leaf) = &ctx.leaf else { return false };
    // A refused or timed-out connect put no load on any instance, so only
    // retries of requests that reached an upstream spend the budget.
    if body_sent && !leaf.budget.try_spend() {
        tracing::debug!(upstream = %leaf.name, "retry budget exhausted");
        return false;
    }
    if let Some(r) = ctx.route() {
        r.metrics.retried();
    }
    true
}

/// The budget share each request adds to its upstream.
pub fn budget_share(set: &InstanceSet) -> f64 {
    set.retry
        .as_ref()
        .map_or(DEFAULT_RETRY_BUDGET, |r| r.budget)
}

/// The retry condition an upstream answer's status is, if any.
pub fn status_cause(status: u16) -> Option<RetryOn> {
    match status {
        502 => Some(RetryOn::Status502),
        503 => Some(RetryOn::Status503),
        504 => Some(RetryOn::Status504),
        _ => None,
    }
}

/// Which retry condition an error while proxying is. A failure on the
/// client's side (it went away, sent a broken body) is none: it says
/// nothing about the instance, and another attempt would not help.
pub fn retry_cause(e: &Error) -> Option<RetryOn> {
    if *e.esource() == ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::HTTPStatus(s) => status_cause(*s),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(RetryOn::Status504),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Some(RetryOn::Reset)
        }
        _ => None,
    }
}

/// An upstream read timeout while the client's body is still coming in is
/// the client's: nothing came from either side for the read timeout, and
/// the upstream was waiting for that body. It is answered 408, counts
/// against no instance and is not retried (as a 504 it ejected healthy
/// instances behind a slow uploader).
pub fn blame_stalled_client(session: &mut ServerSession, e: Box<Error>) -> Box<Error> {
    if *e.esource() == ErrorSource::Upstream
        && *e.etype() == ErrorType::ReadTimedout
        && !session.was_upgraded()
        && !session.is_body_done()
    {
        let mut stalled = Error::because(
            ErrorType::ReadTimedout,
            "the client's request body stalled",
            e,
        );
        stalled.as_down();
        return stalled;
    }
    e
}

/// After an error once connected (writing the request, reading the
/// answer): feeds passive health and decides whether to try another
/// instance. Never once the client has a response header: another
/// attempt's response would be spliced into it. Besides the policy's
/// conditions, a pooled connection the upstream had already closed
/// (`client_reused`, and Pingora marks the error retryable on reuse) is
/// retried once more than the policy allows, for an idempotent request: it
/// never reached the upstream, and a killed instance must not cost a failed
/// request for every idle connection the gateway still held to it.
pub fn after_error(
    session: &ServerSession,
    ctx: &RequestCtx,
    e: &Error,
    client_reused: bool,
) -> bool {
    // An upgraded connection (a WebSocket) idle past the read timeout, or
    // closed by either side, says nothing about the instance.
    let cause = retry_cause(e).filter(|_| !session.was_upgraded());
    if cause.is_some() {
        ctx.observe(Outcome::Failed);
    }
    if final_response(session).is_some() {
        return false;
    }
    match cause {
        Some(c) if should_retry(session, ctx, c, true) => true,
        // Within the route's attempts: `retries: 0` means none.
        _ => {
            let allowed = if client_reused {
                ctx.attempts <= policy(ctx).0 + 1
            } else {
                attempts_left(ctx)
            };
            let mut probe = e.retry;
            probe.decide_reuse(client_reused);
            ctx.method_upstream(&session.req_header().method)
                .is_idempotent()
                && allowed
                && probe.retry()
                && !session.retry_buffer_truncated()
        }
    }
}
