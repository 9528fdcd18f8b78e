//! Snapshot construction: a pure function of validated routes plus the
//! upstream leaves they name.

use ahash::AHashSet;

use super::{RouteEntry, Snapshot, UpstreamTable};
use crate::model::Route;
use crate::router::{RouteShape, Router};

/// A valid route that could not be served because an earlier route holds
/// the same path, hosts, methods and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: String,
    pub reason: String,
}

/// Compiles `routes` (earliest first: on a conflict the earlier one keeps
/// its slot) into a snapshot. Leaves come from `table`, so instance sets and
/// their round-robin cursors survive the rebuild.
pub fn build(routes: &[&Route], table: &mut UpstreamTable) -> (Snapshot, Vec<Rejected>) {
    let mut router = Router::default();
    let mut entries: Vec<RouteEntry> = Vec::with_capacity(routes.len());
    let mut rejected = Vec::new();
    for route in routes {
        let shape = RouteShape {
            patterns: &route.patterns,
            hosts: &route.hosts,
            methods: route.methods,
            priority: route.spec.priority,
        };
        if let Err(c) = router.add(entries.len() as u32, &shape) {
            let other = entries.get(c.other as usize).map_or("?", |e| &e.id);
            rejected.push(Rejected {
                id: route.id.clone(),
                reason: format!(
                    "path {:?} with the same hosts, methods and priority is already taken by route {other:?}",
                    c.pattern
                ),
            });
            continue;
        }
        entries.push(RouteEntry {
            id: route.id.as_str().into(),
            upstream: table.leaf(&route.spec.upstream),
            strip_prefix: route.spec.strip_prefix.as_deref().map(Into::into),
            preserve_host: route.spec.preserve_host.unwrap_or(true),
            timeout: route.spec.timeout,
            retries: route.spec.retries.unwrap_or(DEFAULT_RETRIES),
        });
    }
    let used: AHashSet<&str> = routes.iter().map(|r| r.spec.upstream.as_str()).collect();
    table.retain_used(&used);
    (
        Snapshot {
            router,
            routes: entries,
        },
        rejected,
    )
}

/// A failed connect is retried once on another instance unless the route
/// says otherwise (nginx's proxy_next_upstream does the same).
pub const DEFAULT_RETRIES: u32 = 1;

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
        assert_eq!(r.retries, DEFAULT_RETRIES);
        assert_eq!(snap.route("x", "GET", "/health").unwrap().retries, 0);
        assert!(snap.route("x", "GET", "/nope").is_none());
    }

    #[test]
    fn rebuild_keeps_leaves_and_rejects_the_later_conflict() {
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
        assert!(std::sync::Arc::ptr_eq(
            &s1.routes[0].upstream,
            &s2.routes[0].upstream
        ));
    }
}
