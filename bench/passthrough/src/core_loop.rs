//! `--engine core`: the same passthrough without pingora-proxy's `ProxyHttp`
//! machinery, as a straight loop on pingora-core's HTTP sessions and
//! connector (read the request, send it on a pooled upstream connection,
//! relay the response, hand both connections back for reuse).
//!
//! It is not a gateway: no retries, no upgrades, no error pages, and the
//! request body is sent before the response is read (no full duplex). It
//! exists to measure what `ProxyHttp` itself costs per request (its
//! per-request session and module setup, the task channel between the
//! downstream and upstream halves), i.e. how much a gateway could win by
//! running its own loop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;

pub struct CoreLoop {
    peer: HttpPeer,
    connector: Connector,
    idle: Option<Duration>,
}

impl CoreLoop {
    pub fn new(peer: HttpPeer) -> Self {
        let idle = peer.options.idle_timeout;
        Self {
            peer,
            connector: Connector::new(None),
            idle,
        }
    }

    /// One request; `None` closes the client connection.
    async fn proxy(&self, session: &mut ServerSession) -> Option<()> {
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await.ok()?;
        up.write_request_header(Box::new(session.req_header().clone()))
            .await
            .ok()?;
        while let Some(chunk) = session.read_request_body().await.ok()? {
            up.write_request_body(chunk, false).await.ok()?;
        }
        up.finish_request_body().await.ok()?;
        up.read_response_header().await.ok()?;
        let resp = Box::new(up.response_header()?.clone());
        session.write_response_header(resp).await.ok()?;
        while let Some(chunk) = up.read_response_body().await.ok()? {
            session.write_response_body(chunk, false).await.ok()?;
        }
        session.finish_body().await.ok()?;
        if up.response_done() {
            self.connector
                .release_http_session(up, &self.peer, self.idle)
                .await;
        }
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for CoreLoop {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        self.proxy(&mut session).await?;
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}
