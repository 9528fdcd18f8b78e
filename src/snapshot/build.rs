//! Snapshot construction: routes become [`RouteEntry`]s placed in the
//! router. [`build`] compiles a whole table from scratch (the file check
//! and unit tests); the store edits the current table in place with
//! [`entry_for`] and [`shape_of`].

use std::sync::Arc;

use super::{Canary, RouteEntry, Snapshot, UpstreamTable};
use crate::limiter::RouteLimiter;
use crate::metrics::RouteMetrics;
use crate::model::Route;
use crate::plugins::{Chain, PluginList};
use crate::router::RouteShape;

/// A valid route that could not be served because an earlier route holds
/// the same path, hosts, methods and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: String,
    pub reason: String,
}

/// Where a route sits in the router.
pub fn shape_of(route: &Route) -> RouteShape<'_> {
    RouteShape {
        patterns: &route.patterns,
        hosts: &route.hosts,
        methods: route.methods,
        priority: route.spec.priority,
    }
}

/// The served form of a route, bound to its upstream's leaf and limiter.
pub fn entry_for(
    route: &Route,
    table: &mut UpstreamTable,
    limiter: Option<Arc<RouteLimiter>>,
    global_plugins: &PluginList,
) -> Arc<RouteEntry> {
    Arc::new(RouteEntry {
        id: route.id.as_str().into(),
        upstream: table.leaf(&route.spec.upstream),
        strip_prefix: route.spec.strip_prefix.as_deref().map(Into::into),
        preserve_host: route.spec.preserve_host.unwrap_or(true),
        https_only: route.spec.https_only,
        timeout: route.spec.timeout,
        retries: route.spec.retries,
        max_body_bytes: route.spec.max_body_bytes,
        canary: route
            .spec
            .canary
            .as_ref()
            .map(|c| Canary::new(c, table.leaf(&c.upstream))),
        limiter,
        metrics: RouteMetrics::new(&route.id),
        failure_log: Default::default(),
        plugins: Chain::join(global_plugins, &route.plugins),
        cache: route.cache.clone(),
    })
}

/// Compiles `routes` (earliest first: on a conflict the earlier one keeps
/// its slot) into a fresh snapshot, without limiters (for checking a file
/// and for tests of routing).
pub fn build(routes: &[&Route], table: &mut UpstreamTable) -> (Snapshot, Vec<Rejected>) {
    let mut snap = Snapshot::default();
    let mut rejected = Vec::new();
    for route in routes {
        let entry = entry_for(route, table, None, &PluginList::default());
        if let Err(c) = snap
            .router
            .insert(&entry.id, entry.clone(), &shape_of(route))
        {
            rejected.push(Rejected {
                id: route.id.clone(),
                reason: c.to_string(),
            });
        }
    }
    (snap, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RouteSpec, Timeouts};

    fn route(id: &str, json: &str) -> Route {
        serde_json::from_str::<RouteSpec>(json)
            .unwrap()
            .compile(id, "")
            .unwrap()
    }

    #[test]
    fn builds_a_routable_snapshot() {
        let mut table = UpstreamTable::new(Timeouts::default());
        let a = route(
            "a",
            r#"{"paths":["/api/*rest"],"upstream":"users","strip_prefix":"/api"}"#,
        );
        let b = route("b", r#"{"paths":["/health"],"upstream":"ops","retries":0}"#);
        let (snap, rejected) = build(&[&a, &b], &mut table);
        assert!(rejected.is_empty());
        let r = snap.route("x", "GET", "/api/users/1").unwrap();
        assert_eq!(&*r.id, "a");
        assert_eq!(r.rewrite_path("/api/users/1"), Some("/users/1"));
        assert_eq!(r.rewrite_path("/api"), Some("/"));
        assert_eq!(r.rewrite_path("/apix"), None);
        assert_eq!(r.retries, None);
        assert_eq!(snap.route("x", "GET", "/health").unwrap().retries, Some(0));
        assert!(snap.route("x", "GET", "/nope").is_none());
    }

    #[test]
    fn the_later_conflicting_route_is_rejected_and_leaves_are_shared() {
        let mut table = UpstreamTable::new(Timeouts::default());
        let a = route("a", r#"{"paths":["/x"],"upstream":"u"}"#);
        let b = route("b", r#"{"paths":["/x"],"upstream":"v"}"#);
        let (s1, _) = build(&[&a], &mut table);
        let (s2, rejected) = build(&[&a, &b], &mut table);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].id, "b");
        assert!(
            rejected[0].reason.contains("\"a\""),
            "{}",
            rejected[0].reason
        );
        let (r1, r2) = (
            s1.route("h", "GET", "/x").unwrap(),
            s2.route("h", "GET", "/x").unwrap(),
        );
        assert!(Arc::ptr_eq(&r1.upstream, &r2.upstream));
    }
}
