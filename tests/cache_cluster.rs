//! The cache kept consistent across nodes through etcd: two gateways on one
//! etcd cache the same answers; one `tollgate purge` (by key, prefix, tag)
//! and both miss on their next request; a node cut off from etcd while a
//! purge is written applies it when it reconnects, before it serves the
//! purged entry again; a node cut off for longer than a purge record lives
//! drops its whole cache.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::etcd_gw::{body, etcd_relay, metric, start_gw, wait_connected, wait_status};
use common::{bin, output_text as text, READY};
use testkit::{wait_for, Backend, Etcd, Gateway, Relay};

const ROUTE: &str = r#"{"paths":["/c/*rest"],"upstream":"u","cache":{"ttl_s":300}}"#;

fn setup(etcd: &Etcd, b: &Backend) {
    let c = etcd.client();
    c.put(
        "/tollgate/upstreams/u",
        &serde_json::json!({ "nodes": [b.url()] }).to_string(),
    );
    c.put("/tollgate/routes/c", ROUTE);
}

fn x_cache(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = gw.request("GET", path, headers, None).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.header("x-cache").unwrap_or("").to_string()
}

/// Requests `path` until it is a HIT (the route may still be arriving).
fn cached(gw: &Gateway, path: &str, headers: &[(&str, &str)]) {
    wait_for(&format!("{path} cached"), READY, || {
        gw.request("GET", path, headers, None)
            .is_ok_and(|r| r.header("x-cache") == Some("HIT"))
    });
}

fn purge(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("purge")
        .args(args)
        .args(["--etcd", &etcd.endpoint(), "-c", "/nonexistent.yaml"])
        .output()
        .unwrap()
}

#[test]
fn one_purge_empties_both_nodes_by_key_prefix_and_tag() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    setup(&etcd, &b);
    let n1 = start_gw("cache-1", &[etcd.endpoint()]);
    let n2 = start_gw("cache-2", &[etcd.endpoint()]);
    let tagged = [("x-reply-header", "cache-tag: user-42, all")];
    let other = [("x-reply-header", "cache-tag: user-7")];
    for gw in [&n1, &n2] {
        cached(gw, "/c/a?v=1", &[]);
        cached(gw, "/c/static/x", &[]);
        cached(gw, "/c/static/y", &[]);
        cached(gw, "/c/t42", &tagged);
        cached(gw, "/c/t7", &other);
    }
    // By key, waiting for every node to apply it.
    let out = purge(
        &etcd,
        &["--route", "c", "--key", "/c/a?v=1", "--wait", "10"],
    );
    assert!(out.status.success(), "{}", text(&out));
    for gw in [&n1, &n2] {
        assert_eq!(x_cache(gw, "/c/a?v=1", &[]), "MISS");
        assert_eq!(x_cache(gw, "/c/static/x", &[]), "HIT", "other entries stay");
    }
    let out = purge(
        &etcd,
        &[
            "--route",
            "c",
            "--path-prefix",
            "/c/static/",
            "--wait",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = purge(&etcd, &["--route", "c", "--tag", "user-42", "--wait", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    for gw in [&n1, &n2] {
        assert_eq!(x_cache(gw, "/c/static/x", &[]), "MISS");
        assert_eq!(x_cache(gw, "/c/static/y", &[]), "MISS");
        assert_eq!(x_cache(gw, "/c/t42", &tagged), "MISS");
        assert_eq!(x_cache(gw, "/c/t7", &other), "HIT", "another tag stays");
        assert_eq!(
            metric(gw, r#"tollgate_cache_purges_total{kind="purge"}"#),
            3.0
        );
    }
    // Bad purges are refused and write nothing.
    for args in [
        &["--route", "ghost", "--key", "/x"][..],
        &["--route", "c", "--tag", "a,b"],
        &["--route", "c"],
    ] {
        let out = purge(&etcd, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
    }
    assert_eq!(etcd.client().get_prefix("/tollgate/purges/").len(), 3);
}

/// A backend, an etcd with the cached route, and a gateway whose only
/// way to etcd is a relay the test can cut.
fn behind_relay(node: &str, extra: &str) -> (Backend, Etcd, Relay, Gateway) {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    setup(&etcd, &b);
    let relay = etcd_relay(&etcd);
    let gw = Gateway::start(bin(), &format!("{}{extra}", body(node, &[relay.url()])));
    wait_connected(&gw, Duration::from_secs(15));
    (b, etcd, relay, gw)
}

#[test]
fn a_node_cut_off_during_a_purge_applies_it_before_serving_the_entry_again() {
    let (_b, etcd, relay, cut_off) = behind_relay("cut-off", "");
    let other = start_gw("connected", &[etcd.endpoint()]);
    cached(&cut_off, "/c/x", &[]);
    cached(&other, "/c/x", &[]);
    relay.cut();
    wait_status(&cut_off, "the node cut off", READY, |s| {
        s["etcd"] == "disconnected"
    });
    let out = purge(&etcd, &["--route", "c", "--key", "/c/x"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the connected node to apply it", READY, || {
        x_cache(&other, "/c/x", &[]) == "MISS"
    });
    // Cut off, it cannot know: the old entry still answers there.
    assert_eq!(x_cache(&cut_off, "/c/x", &[]), "HIT");
    relay.restore();
    let revision = etcd.client().revision();
    wait_status(&cut_off, "the node back, at etcd's revision", READY, |s| {
        s["etcd"] == "connected" && s["revision"].as_i64() >= Some(revision)
    });
    assert_eq!(
        x_cache(&cut_off, "/c/x", &[]),
        "MISS",
        "purged on reconnecting"
    );
    assert_eq!(
        metric(&cut_off, r#"tollgate_cache_purges_total{kind="flush"}"#),
        0.0,
        "a short cut: the purge was found, no flush needed"
    );
}

#[test]
fn a_node_cut_off_longer_than_a_purge_record_lives_drops_its_cache() {
    let (_b, _etcd, relay, gw) = behind_relay("long-cut", "cache: { purge_record_ttl_s: 5 }\n");
    cached(&gw, "/c/y", &[]);
    relay.cut();
    let cut_at = Instant::now();
    wait_status(&gw, "the node cut off", READY, |s| {
        s["etcd"] == "disconnected"
    });
    // Out of touch past a record's life (5 s): a purge could have come and
    // gone unseen. (Time itself is the condition here.)
    wait_for("a record's life to pass", Duration::from_secs(20), || {
        cut_at.elapsed() > Duration::from_secs(6)
    });
    relay.restore();
    wait_for("the whole cache dropped on reconnecting", READY, || {
        metric(&gw, r#"tollgate_cache_purges_total{kind="flush"}"#) == 1.0
    });
    assert_eq!(x_cache(&gw, "/c/y", &[]), "MISS");
}
