//! What the gateway adds to a response it relays: the request id and the
//! rate limit's fields, written into the upstream's header map when
//! something else edits it too (the cache, a plugin, chunked framing), or
//! handed as lines to the head written from the upstream's bytes.

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;
use super::gate::Gate;
use super::header_edit;
use super::header_names::{spelled, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_REQUEST_ID};
use super::request_id::RequestId;

/// The fields the gateway sets on every response it relays: the request
/// id, and the limit and what is left of it when a rate limit applied.
pub struct ResponseOurs {
    pub id: RequestId,
    pub limits: Option<(u32, u32)>,
}

impl ResponseOurs {
    /// As header lines, the numbers written into `digits`.
    pub fn lines<'a>(
        &'a self,
        digits: &'a mut [itoa::Buffer; 2],
    ) -> ([(&'static str, &'a [u8]); 3], usize) {
        let [limit, remaining] = digits;
        let mut lines = [(spelled::X_REQUEST_ID, self.id.as_bytes()); 3];
        if let Some((l, r)) = self.limits {
            lines[1] = (spelled::X_RATELIMIT_LIMIT, limit.format(l).as_bytes());
            lines[2] = (
                spelled::X_RATELIMIT_REMAINING,
                remaining.format(r).as_bytes(),
            );
            return (lines, 3);
        }
        (lines, 1)
    }
}

impl Gate {
    /// Tollgate's edits of the response going to the client: the upstream
    /// latency, `X-Request-Id` and the `X-RateLimit-*` the route advertises.
    /// `chunked`: the upstream's body is close-delimited (HTTP/1.0 style);
    /// re-frame it as chunked so the client connection can be kept. The
    /// status line says HTTP/1.1 whatever the upstream's said.
    pub fn edit_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        chunked: bool,
    ) {
        let ours = Self::response_ours(ctx);
        // Exactly the room needed: a parsed response's map has little spare,
        // and growing it more than necessary rehashes it for nothing.
        let added = 1 + 2 * usize::from(ours.limits.is_some()) + usize::from(chunked);
        header_edit::edit_response(resp, added, |resp| {
            // The client's connection speaks HTTP/1.1, whatever the
            // upstream's did (nginx's answer too; pingora-core writes
            // the version it is given).
            resp.version = http::Version::HTTP_11;
            if chunked {
                resp.headers.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let h = &mut resp.headers;
            h.insert(X_REQUEST_ID.clone(), ours.id.to_header());
            if let Some((limit, remaining)) = ours.limits {
                h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
                h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
            }
        });
        self.mark_cache(ctx, resp);
        // The onion's way out.
        ctx.plugin_responses(req, resp);
    }

    /// The fields the gateway adds to an upstream's response, when they
    /// are all it adds (no cache, no plugin editing responses, no chunked
    /// framing to impose): then the head goes to the client from the
    /// upstream's bytes with these, without a header map.
    pub fn response_ours_only(&self, ctx: &mut RequestCtx, chunked: bool) -> Option<ResponseOurs> {
        let plugins = ctx.route().and_then(|r| r.plugins.as_deref());
        if chunked || ctx.cache.is_some() || plugins.is_some_and(|c| c.edits_response()) {
            return None;
        }
        Some(Self::response_ours(ctx))
    }

    /// What every relayed response gets; the upstream's answer time is
    /// taken here, when its head is in.
    fn response_ours(ctx: &mut RequestCtx) -> ResponseOurs {
        if let Some(sent) = ctx.upstream_sent {
            ctx.upstream_took.get_or_insert_with(|| sent.elapsed());
        }
        ResponseOurs {
            id: ctx.request_id.clone(),
            limits: ctx.rate_limit,
        }
    }
}
