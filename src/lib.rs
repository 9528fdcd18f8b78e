//! Tollgate: an etcd-native L7 API gateway on Pingora.
//!
//! Data flows one way: `source` (file or etcd) → `store` (last good value
//! per key) → `snapshot` (compiled router + upstream leaves, arc-swapped) →
//! `proxy` (reads one snapshot per request). `admin` only reads.

pub mod admin;
pub mod admin_api;
pub mod balance;
pub mod cache;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod field_error;
pub mod http_probe;
pub mod limiter;
pub mod log_gate;
pub mod metrics;
pub mod model;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod tls;
