//! The request path: one snapshot load per request, route match, rate
//! limit, instance pick, header rewrites, retries, passive health
//! feedback, JSON errors, metrics and access log.
//!
//! Two engines serve it (`proxy.engine`): [`Gateway`], a pingora-proxy
//! `ProxyHttp`, and [`engine::CoreEngine`], tollgate's own loop on
//! pingora-core. Both call the same [`Gate`] for every decision; only the
//! moving of bytes differs.

pub mod access_log;
mod acme_challenge;
mod caching;
mod client_h1;
mod conn_limit;
mod connections;
mod ctx;
mod deadline;
pub mod engine;
mod error_response;
mod forwarding;
mod framing;
mod gate;
mod grpc;
mod header_edit;
mod header_names;
mod hop_by_hop;
mod http2;
mod instance_pick;
mod linger;
mod listeners;
mod path_norm;
#[cfg(test)]
mod properties;
mod protocol;
mod proxy_http;
mod request_id;
mod request_log;
mod request_scan;
mod response_fields;
mod retry;
mod shutdown;
mod spares;
mod timer_tick;
mod upstream_h1;
mod upstream_peer;
mod upstream_pool;
mod upstream_request;
mod vectored;
mod wall_clock;

pub use conn_limit::ConnLimits;
pub use connections::{Connections, Http1Loop};
pub use ctx::{InFlight, RequestCtx};
pub use gate::{ClientLimits, Gate};
pub use listeners::{http2_settings, ListenerKinds};
pub use proxy_http::Gateway;
pub use request_id::RequestIds;
