//! The end of every request, for both engines: per-route metrics (and
//! the consumer's count) and the access log line.

use pingora::protocols::http::ServerSession;
use std::time::{Duration, Instant};

use super::access_log;
use super::ctx::RequestCtx;
use super::error_response;
use super::forwarding::host_of;
use super::gate::Gate;
use super::wall_clock;
use crate::metrics::{method_index, Observation, UNROUTED};

impl Gate {
    /// The request is over: per-route metrics and the access log line.
    pub fn log_request(&self, session: &ServerSession, ctx: &RequestCtx) {
        // Untimed: neither request metrics nor the access log is on.
        let Some(started) = ctx.started else { return };
        let total = started.elapsed();
        let status = error_response::final_response(session).map_or(0, |r| r.status.as_u16());
        if self.request_metrics {
            let obs = Observation {
                method: method_index(&session.req_header().method),
                status,
                total,
                upstream: ctx.upstream_took,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
            };
            match ctx.route() {
                Some(r) => r.metrics.observe(&obs),
                None => UNROUTED.observe(&obs),
            }
            if let Some(c) = &ctx.consumer {
                crate::metrics::METRICS
                    .consumer_requests
                    .with_label_values(&[&c.name])
                    .inc();
            }
        }
        self.log_access(session, ctx, status, started, total);
    }

    fn log_access(
        &self,
        session: &ServerSession,
        ctx: &RequestCtx,
        status: u16,
        started: Instant,
        total: Duration,
    ) {
        let Some(log) = &self.access_log else { return };
        if !log.wants() {
            return;
        }
        let req = session.req_header();
        log.send(&access_log::Line {
            time: wall_clock::at(started),
            request_id: ctx.request_id(),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            method: req.method.as_str(),
            protocol: ctx.protocol.as_str(),
            scheme: ctx.protocol.scheme(),
            host: host_of(req),
            path: req.uri.path(),
            route: ctx.route().map_or("", |r| &r.id),
            consumer: ctx.consumer.as_ref().map_or("", |c| &c.name),
            upstream: ctx.attempt.as_ref().map(|a| a.node().addr),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration: total,
            upstream_duration: ctx.upstream_took,
        });
    }
}
