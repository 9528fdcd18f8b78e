use super::*;
use crate::model::RouteSpec;

fn route(id: &str, json: &str) -> Route {
    serde_json::from_str::<RouteSpec>(json)
        .unwrap()
        .compile(id, "")
        .unwrap()
}

fn store() -> Store {
    Store::new(SnapshotCell::new(), Timeouts::default())
}

fn served(s: &Store, path: &str) -> Option<String> {
    s.cell()
        .route_for("h", "GET", path)
        .map(|r| r.id.to_string())
}

/// (route id, upstream name) served for `path`.
fn served_to(s: &Store, path: &str) -> Option<(String, String)> {
    s.cell()
        .route_for("h", "GET", path)
        .map(|r| (r.id.to_string(), r.upstream.name.to_string()))
}

fn node(port: u16) -> Node {
    Node {
        id: format!("i{port}"),
        addr: ([127, 0, 0, 1], port).into(),
        authority: format!("127.0.0.1:{port}"),
        weight: 1,
        draining: false,
        scheme: Default::default(),
    }
}

#[test]
fn routes_apply_update_and_delete_incrementally() {
    let mut s = store();
    s.set_route("a", Some(route("a", r#"{"paths":["/a"],"upstream":"u"}"#)));
    s.set_route("b", Some(route("b", r#"{"paths":["/b"],"upstream":"u"}"#)));
    assert!(s.publish().rebuilt);
    assert_eq!(served(&s, "/a").as_deref(), Some("a"));
    let before = s.cell().load();
    s.set_route("a", Some(route("a", r#"{"paths":["/a2"],"upstream":"u"}"#)));
    s.publish();
    assert_eq!(served(&s, "/a"), None);
    assert_eq!(served(&s, "/a2").as_deref(), Some("a"));
    assert_eq!(
        before.route("h", "GET", "/a").map(|r| &*r.id),
        Some("a"),
        "old snapshot untouched"
    );
    s.set_route("b", None);
    s.publish();
    assert_eq!(served(&s, "/b"), None);
    assert_eq!(s.cell().status.view().routes, 1);
    assert!(!s.publish().rebuilt, "nothing changed, nothing rebuilt");
}

#[test]
fn two_routes_may_swap_paths_in_one_batch() {
    let mut s = store();
    s.set_route("a", Some(route("a", r#"{"paths":["/x"],"upstream":"u"}"#)));
    s.set_route("b", Some(route("b", r#"{"paths":["/y"],"upstream":"u"}"#)));
    s.publish();
    s.set_route("a", Some(route("a", r#"{"paths":["/y"],"upstream":"u"}"#)));
    s.set_route("b", Some(route("b", r#"{"paths":["/x"],"upstream":"u"}"#)));
    let report = s.publish();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(served(&s, "/x").as_deref(), Some("b"));
    assert_eq!(served(&s, "/y").as_deref(), Some("a"));
}

#[test]
fn a_conflicting_route_waits_and_an_edit_keeps_the_old_version() {
    let mut s = store();
    s.set_route("a", Some(route("a", r#"{"paths":["/x"],"upstream":"u"}"#)));
    s.set_route("c", Some(route("c", r#"{"paths":["/c"],"upstream":"u"}"#)));
    s.publish();
    // A newcomer taking a's slot is refused; a keeps serving.
    s.set_route("b", Some(route("b", r#"{"paths":["/x"],"upstream":"v"}"#)));
    let report = s.publish();
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(served(&s, "/x").as_deref(), Some("a"));
    // An edit of c into a's slot is refused too, and c's old version stays.
    s.set_route("c", Some(route("c", r#"{"paths":["/x"],"upstream":"u"}"#)));
    let report = s.publish();
    let ids: Vec<&str> = report.rejected.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["c"], "b, still blocked, is not reported again");
    assert_eq!(served(&s, "/c").as_deref(), Some("c"));
    // An unrelated change retries both and reports neither again.
    s.set_route("d", Some(route("d", r#"{"paths":["/d"],"upstream":"u"}"#)));
    assert!(s.publish().rejected.is_empty());
    assert_eq!(served(&s, "/x").as_deref(), Some("a"));
    // When a goes, the first blocked route (by id) takes the slot.
    s.set_route("a", None);
    s.publish();
    assert_eq!(served(&s, "/x").as_deref(), Some("b"));
}

#[test]
fn an_edit_that_keeps_the_route_in_place_swaps_its_value_everywhere() {
    let mut s = store();
    let a = |upstream: &str| {
        route(
            "a",
            &format!(r#"{{"paths":["/a","/a/:id"],"hosts":["h","*.h"],"upstream":"{upstream}"}}"#),
        )
    };
    s.set_route("a", Some(a("u1")));
    s.publish();
    let before = s.cell().load();
    s.set_route("a", Some(a("u2")));
    // In the same batch a newcomer asks for a's place: refused, a stays.
    s.set_route(
        "b",
        Some(route(
            "b",
            r#"{"paths":["/a"],"hosts":["h"],"upstream":"u3"}"#,
        )),
    );
    let report = s.publish();
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    for path in ["/a", "/a/7"] {
        assert_eq!(
            served_to(&s, path),
            Some(("a".into(), "u2".into())),
            "{path}"
        );
    }
    let wild = s
        .cell()
        .route_for("x.h", "GET", "/a")
        .map(|r| r.upstream.name.to_string());
    assert_eq!(wild.as_deref(), Some("u2"), "the wildcard host's entry too");
    assert_eq!(s.cell().load().len(), 1);
    let old = before
        .route("h", "GET", "/a")
        .map(|r| r.upstream.name.to_string());
    assert_eq!(old.as_deref(), Some("u1"), "old snapshot untouched");
    // Deleted after an in-place edit, it is gone from every place.
    s.set_route("a", None);
    s.publish();
    assert_eq!(
        served(&s, "/a").as_deref(),
        Some("b"),
        "the blocked route takes the slot"
    );
    assert_eq!(served(&s, "/a/7"), None);
}

#[test]
fn a_route_sees_instances_registered_before_or_after_it() {
    let mut s = store();
    s.set_instance("early", "i1", Some(node(1)));
    s.set_route(
        "a",
        Some(route("a", r#"{"paths":["/a"],"upstream":"early"}"#)),
    );
    s.set_route(
        "b",
        Some(route("b", r#"{"paths":["/b"],"upstream":"late"}"#)),
    );
    s.publish();
    let a = s.cell().route_for("h", "GET", "/a").unwrap();
    assert_eq!(a.upstream.instances().nodes.len(), 1);
    let b = s.cell().route_for("h", "GET", "/b").unwrap();
    assert!(b.upstream.instances().nodes.is_empty());
    s.set_instance("late", "i2", Some(node(2)));
    assert_eq!(
        b.upstream.instances().nodes.len(),
        1,
        "same leaf, no rebuild"
    );
    s.set_instance("late", "i2", None);
    s.set_instance("late", "i3", Some(node(3)));
    assert_eq!(
        b.upstream.instances().nodes[0].id,
        "i3",
        "leaf kept while a route names it"
    );
}

#[test]
fn incremental_edits_match_a_fresh_build() {
    let mut s = store();
    let spec_to = |i: usize, v: usize, upstream: &str| {
        route(
            &format!("r{i}"),
            &format!(
                r#"{{"paths":["/p/{}/:id","/q{i}/*rest"],"priority":{},"upstream":"{upstream}"}}"#,
                (i * 7 + v) % 50,
                i % 3
            ),
        )
    };
    let spec = |i: usize, v: usize| spec_to(i, v, "u");
    for i in 0..60 {
        s.set_route(&format!("r{i}"), Some(spec(i, 0)));
    }
    s.publish();
    for i in (0..60).step_by(3) {
        s.set_route(&format!("r{i}"), Some(spec(i, 1)));
    }
    for i in (1..60).step_by(7) {
        s.set_route(&format!("r{i}"), None);
    }
    // Edits in place: same paths and priority, another upstream.
    for i in (2..60).step_by(5) {
        s.set_route(&format!("r{i}"), Some(spec_to(i, 0, "w")));
    }
    s.publish();
    let mut fresh = store();
    for id in s.route_ids() {
        let r = (*s.desired[&id]).clone();
        fresh.set_route(&id, Some(r));
    }
    fresh.publish();
    for n in 0..50 {
        for path in [format!("/p/{n}/x"), format!("/q{n}/y")] {
            assert_eq!(served_to(&s, &path), served_to(&fresh, &path), "{path}");
        }
    }
}

#[test]
fn a_refused_edit_leaves_the_served_limiter_and_its_buckets_in_charge() {
    let mut s = store();
    let a = |path: &str, rate: u32, upstream: &str| {
        route(
            "a",
            &format!(
                r#"{{"paths":["{path}"],"upstream":"{upstream}","rate_limit":{{"rate":{rate},"burst":{rate}}}}}"#
            ),
        )
    };
    s.set_route("a", Some(a("/a", 10, "u")));
    s.set_route("b", Some(route("b", r#"{"paths":["/b"],"upstream":"u"}"#)));
    s.publish();
    let limiter = |s: &Store| {
        s.cell()
            .route_for("h", "GET", "/a")
            .and_then(|r| r.limiter.clone())
            .unwrap()
    };
    let serving = limiter(&s);
    // An edit moving a onto b's path with another limit is refused.
    s.set_route("a", Some(a("/b", 1000, "u")));
    assert_eq!(s.publish().rejected.len(), 1);
    assert!(Arc::ptr_eq(&limiter(&s), &serving));
    // The next accepted edit with the served limit keeps the same buckets,
    // not ones carried over from the refused version.
    s.set_route("a", Some(a("/a", 10, "v")));
    assert!(s.publish().rejected.is_empty());
    assert!(Arc::ptr_eq(&limiter(&s), &serving));
}
