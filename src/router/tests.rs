use super::*;
use crate::model::pattern::PathPattern;

fn look(r: &Router, host: &str, method: &str, path: &str) -> Option<u32> {
    r.lookup(host, method, path).copied()
}

/// (paths, hosts, methods, priority)
type Row<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], i32);

/// Builds a router from rows; route i is row i.
fn router(rows: &[Row<'_>]) -> Router {
    let mut r = Router::default();
    for (i, (paths, hosts, methods, priority)) in rows.iter().enumerate() {
        let patterns: Vec<PathPattern> = paths
            .iter()
            .map(|p| PathPattern::parse(p).unwrap())
            .collect();
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let methods = methods.iter().fold(0, |m, x| m | method_bit(x));
        r.add(
            i as u32,
            &RouteShape {
                patterns: &patterns,
                hosts: &hosts,
                methods,
                priority: *priority,
            },
        )
        .unwrap();
    }
    r
}

#[test]
fn exact_beats_param_beats_catch_all() {
    let r = router(&[
        (&["/users/*rest"], &[], &[], 0),
        (&["/users/:id"], &[], &[], 0),
        (&["/users/new"], &[], &[], 0),
    ]);
    assert_eq!(look(&r, "h", "GET", "/users/new"), Some(2));
    assert_eq!(look(&r, "h", "GET", "/users/42"), Some(1));
    assert_eq!(look(&r, "h", "GET", "/users/42/posts"), Some(0));
    assert_eq!(
        look(&r, "h", "GET", "/users"),
        Some(0),
        "catch-all takes zero segments"
    );
    assert_eq!(look(&r, "h", "GET", "/other"), None);
}

#[test]
fn param_needs_a_non_empty_segment_and_exact_is_exact() {
    let r = router(&[(&["/users/:id"], &[], &[], 0), (&["/a"], &[], &[], 0)]);
    assert_eq!(look(&r, "h", "GET", "/users/"), None);
    assert_eq!(look(&r, "h", "GET", "/users"), None);
    assert_eq!(
        look(&r, "h", "GET", "/a/"),
        None,
        "trailing slash is a different path"
    );
    assert_eq!(look(&r, "h", "GET", "/a"), Some(1));
    assert_eq!(look(&r, "h", "GET", "a"), None);
}

#[test]
fn backtracks_when_the_specific_path_does_not_take_the_method() {
    let r = router(&[
        (&["/users/:id"], &[], &["GET"], 0),
        (&["/users/new"], &[], &["POST"], 0),
    ]);
    assert_eq!(look(&r, "h", "POST", "/users/new"), Some(1));
    assert_eq!(look(&r, "h", "GET", "/users/new"), Some(0));
    assert_eq!(look(&r, "h", "DELETE", "/users/new"), None);
}

#[test]
fn priority_then_host_specificity() {
    let r = router(&[
        (&["/api"], &[], &[], 0),
        (&["/api"], &["*.example.com"], &[], 0),
        (&["/api"], &["api.example.com"], &[], 0),
        (&["/api"], &["*.b.example.com"], &[], 0),
        (&["/p"], &["api.example.com"], &[], 0),
        (&["/p"], &[], &[], 5),
    ]);
    assert_eq!(look(&r, "api.example.com", "GET", "/api"), Some(2));
    assert_eq!(
        look(&r, "API.Example.com", "GET", "/api"),
        Some(2),
        "hosts ignore case"
    );
    assert_eq!(look(&r, "x.example.com", "GET", "/api"), Some(1));
    assert_eq!(
        look(&r, "x.b.example.com", "GET", "/api"),
        Some(3),
        "longer wildcard wins"
    );
    assert_eq!(look(&r, "example.com", "GET", "/api"), Some(0));
    assert_eq!(look(&r, "other.org", "GET", "/api"), Some(0));
    assert_eq!(
        look(&r, "api.example.com", "GET", "/p"),
        Some(5),
        "priority beats host"
    );
}

#[test]
fn host_only_routes_do_not_catch_other_hosts() {
    let r = router(&[(&["/x"], &["a.com"], &[], 0)]);
    assert_eq!(look(&r, "b.com", "GET", "/x"), None);
    assert_eq!(look(&r, "a.com", "GET", "/x"), Some(0));
}

#[test]
fn root_and_catch_all_root() {
    let r = router(&[(&["/"], &[], &[], 0), (&["/*any"], &[], &[], 0)]);
    assert_eq!(look(&r, "h", "GET", "/"), Some(0));
    assert_eq!(look(&r, "h", "GET", "/x/y"), Some(1));
}

#[test]
fn conflicts_are_reported_and_leave_the_table_unchanged() {
    let mut r = router(&[(&["/a/:id"], &["x.com"], &["GET"], 0)]);
    let pats = [
        PathPattern::parse("/b").unwrap(),
        PathPattern::parse("/a/:name").unwrap(),
    ];
    let hosts = ["x.com".to_string()];
    let err = r
        .add(
            1,
            &RouteShape {
                patterns: &pats,
                hosts: &hosts,
                methods: 0,
                priority: 0,
            },
        )
        .unwrap_err();
    assert_eq!(&*err.other, "0");
    assert_eq!(err.pattern, "/a/:name");
    assert_eq!(
        look(&r, "x.com", "GET", "/b"),
        None,
        "nothing of the rejected route was added"
    );
    // Disjoint methods, another priority or another host do not conflict.
    for (methods, priority, host) in [
        (method_bit("POST"), 0, "x.com"),
        (0, 1, "x.com"),
        (0, 0, "y.com"),
    ] {
        let hosts = [host.to_string()];
        r.add(
            2,
            &RouteShape {
                patterns: &pats[1..],
                hosts: &hosts,
                methods,
                priority,
            },
        )
        .unwrap();
    }
}

#[test]
fn a_route_may_repeat_its_own_path() {
    let r = router(&[(&["/a", "/a"], &["x.com", "x.com"], &[], 0)]);
    assert_eq!(look(&r, "x.com", "GET", "/a"), Some(0));
}

#[test]
fn unknown_methods_match_only_any_method_routes() {
    let r = router(&[(&["/a"], &[], &["GET"], 0), (&["/b"], &[], &[], 0)]);
    assert_eq!(look(&r, "h", "PROPFIND", "/a"), None);
    assert_eq!(look(&r, "h", "PROPFIND", "/b"), Some(1));
}

#[test]
fn wide_nodes_and_leaves_route_and_prune_as_they_grow_and_shrink() {
    // 20 children at one node and 20 exact hosts at one leaf: both cross
    // from the short vector to the hash map and back.
    let shapes: Vec<(Vec<PathPattern>, Vec<String>)> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                (
                    vec![PathPattern::parse(&format!("/s{i}/x")).unwrap()],
                    vec![],
                )
            } else {
                let host = format!("h{i}.example.com");
                (
                    vec![PathPattern::parse("/shared/*rest").unwrap()],
                    vec![host],
                )
            }
        })
        .collect();
    let shape = |i: usize| RouteShape {
        patterns: &shapes[i].0,
        hosts: &shapes[i].1,
        methods: 0,
        priority: 0,
    };
    let mut r = Router::default();
    for i in 0..40 {
        r.add(i as u32, &shape(i)).unwrap();
    }
    let hit = |r: &Router, i: usize| {
        if i.is_multiple_of(2) {
            look(r, "h", "GET", &format!("/s{i}/x"))
        } else {
            look(r, &format!("H{i}.example.com"), "GET", "/shared/a")
        }
    };
    let before = r.clone();
    for i in 0..40 {
        assert_eq!(hit(&r, i), Some(i as u32));
    }
    for i in 0..36 {
        r.remove(&i.to_string(), &shape(i));
    }
    for i in 0..40 {
        assert_eq!(hit(&r, i), (i >= 36).then_some(i as u32), "route {i}");
        assert_eq!(hit(&before, i), Some(i as u32), "the old version is intact");
    }
    for i in 36..40 {
        r.remove(&i.to_string(), &shape(i));
    }
    assert!(r.root.is_empty(), "every emptied node was pruned");
}

#[test]
fn same_place_means_same_patterns_hosts_methods_and_priority() {
    let p = |paths: &[&str]| -> Vec<PathPattern> {
        paths
            .iter()
            .map(|x| PathPattern::parse(x).unwrap())
            .collect()
    };
    let (ab, a) = (p(&["/a", "/b/:id"]), p(&["/a"]));
    let hosts = vec!["h".to_string()];
    let shape = |patterns, hosts, methods, priority| RouteShape {
        patterns,
        hosts,
        methods,
        priority,
    };
    let base = shape(&ab, &hosts, 0, 0);
    assert!(base.same_place(&shape(&ab, &hosts, 0, 0)));
    assert!(!base.same_place(&shape(&a, &hosts, 0, 0)), "a path fewer");
    assert!(!base.same_place(&shape(&ab, &[], 0, 0)), "any host");
    assert!(!base.same_place(&shape(&ab, &hosts, method_bit("GET"), 0)));
    assert!(!base.same_place(&shape(&ab, &hosts, 0, 1)));
}
