//! The gateway on either proxy engine (`proxy.engine: core | pingora`),
//! for the files that check a behaviour on both.

use testkit::Gateway;

pub const ENGINES: [&str; 2] = ["pingora", "core"];

/// A gateway on `engine` (through the environment override) with one
/// route `/*rest` to `nodes`; checks the engine is the one running.
pub fn gateway(engine: &str, nodes: &[String]) -> Gateway {
    gateway_with(engine, nodes, "")
}

/// [`gateway`] with more upstream settings (`, retry: {...}`).
pub fn gateway_with(engine: &str, nodes: &[String], upstream_extra: &str) -> Gateway {
    gateway_full(engine, nodes, upstream_extra, "")
}

/// [`gateway_with`] with top-level settings before the routes (`proxy: {...}\n`).
pub fn gateway_full(engine: &str, nodes: &[String], upstream_extra: &str, top: &str) -> Gateway {
    super::engine_gateway(engine, nodes, upstream_extra, top)
}
/// The status of a small `POST path` through `gw`.
pub fn post(gw: &Gateway, path: &str) -> u16 {
    gw.request("POST", path, &[], Some(b"x=1"))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .status
}

/// The status of `GET path` through `gw`.
pub fn gw_get(gw: &Gateway, path: &str) -> u16 {
    gw.request("GET", path, &[], None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}
