//! Which instance an attempt goes to: the shared [`Gate`]'s pick for both
//! engines (balancing, a retry avoiding the instance that just failed, the
//! retry budget's deposit), and the pingora peer for it.

use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;

use super::ctx::{Attempt, RequestCtx};
use super::forwarding::cookie;
use super::gate::Gate;
use super::{retry, upstream_peer};
use crate::balance::stable_hash;
use crate::model::policy::HashKey;
use crate::model::timeout::Timeouts;

impl Gate {
    /// Picks the instance for the next attempt (a retry avoids the one that
    /// just failed) and the peer with the route's timeouts.
    pub fn choose_peer(&self, session: &ServerSession, ctx: &mut RequestCtx) -> Result<HttpPeer> {
        let (t, attempt) = self.choose_instance(session, ctx)?;
        Ok(upstream_peer::for_instance(&attempt.set, attempt.index, &t))
    }

    /// [`Gate::choose_peer`] without the pingora peer: the attempt (kept
    /// in `ctx.attempt`) and the route's timeouts for it. The core engine
    /// builds a peer only to make a connection.
    pub fn choose_instance<'c>(
        &self,
        session: &ServerSession,
        ctx: &'c mut RequestCtx,
    ) -> Result<(Timeouts, &'c Attempt)> {
        let (Some(route), Some(leaf)) = (ctx.route.as_deref(), ctx.leaf.as_deref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let set = leaf.instances();
        if ctx.attempts == 0 {
            // Each request earns its upstream a share of a retry.
            leaf.budget.deposit(retry::budget_share(&set));
        }
        let avoid = ctx.attempt.as_ref().map(|a| a.node().addr);
        let key_hash = set.hash_key().and_then(|k| self.hash_of(session, k));
        let Some(picked) = leaf.pick(&set, key_hash, avoid) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {} has no live instance", leaf.name),
            ));
        };
        if picked.panic {
            tracing::debug!(upstream = %leaf.name, "too few healthy instances: failing open across all");
        }
        let t = route.timeouts(set.timeouts);
        let attempt = Attempt::new(set, picked.index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "picked instance vanished"))?;
        ctx.attempts += 1;
        Ok((t, ctx.attempt.insert(attempt)))
    }

    /// The consistent-hash key's hash, when the upstream hashes.
    fn hash_of(&self, session: &ServerSession, key: &HashKey) -> Option<u64> {
        let req = session.req_header();
        match key {
            HashKey::Header(h) => req
                .headers
                .get(h.as_str())
                .map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(c) => cookie(req, c).map(stable_hash),
            HashKey::ClientIp => self.client_ip(session).map(|ip| match ip {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => stable_hash(&v6.octets()),
            }),
            HashKey::Path => Some(stable_hash(req.uri.path().as_bytes())),
        }
    }
}
