//! The service registry in etcd against the real binary: leased instances
//! (plain URL and JSON form) are served, and leave when their lease is
//! revoked or expires; draining instances get no new requests; unleased
//! keys are never served.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd_gw::{
    answer, assert_gw_error, metric, put_route, start_gw, wait_gateway_status, wait_ok,
    wait_served_by, wait_status, SERVICES,
};
use testkit::{Backend, Etcd, Gateway};

const APPLY: Duration = Duration::from_secs(10);

/// Which backends answered `n` requests to `path` (each must be a 200).
fn spread(gw: &Gateway, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let b = answer(gw, path).unwrap_or_else(|e| panic!("request {i} to {path}: {e}"));
        *seen.entry(b).or_insert(0) += 1;
    }
    seen
}

#[test]
fn leased_instances_are_served_in_turn_and_leave_when_revoked() {
    let etcd = Etcd::start();
    let (a, b) = (Backend::start("svc-a"), Backend::start("svc-b"));
    let gw = start_gw("gw-reg", &[etcd.endpoint()]);
    put_route(etcd.client(), "svc", &["/svc/*rest"], "svc");

    // A route to a service nobody registered: 503, the gateway's own JSON.
    let r = wait_gateway_status(&gw, "/svc/x", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");

    // The plain-URL form.
    let la = etcd.grant(30);
    etcd.put_with_lease(&format!("{SERVICES}svc/a"), &a.url(), la);
    wait_served_by(&gw, "/svc/x", "svc-a", APPLY);

    // The JSON form; then the two alternate.
    let lb = etcd.grant(30);
    let json = serde_json::json!({ "addr": b.url(), "weight": 1, "meta": { "zone": "z1" } });
    etcd.put_with_lease(&format!("{SERVICES}svc/b"), &json.to_string(), lb);
    wait_served_by(&gw, "/svc/y", "svc-b", APPLY);
    let s = wait_status(&gw, "2 instances", APPLY, |s| s["instances"] == 2);
    assert_eq!(s["routes"], 1, "{s}");
    let seen = spread(&gw, "/svc/z", 20);
    assert_eq!(seen.get("svc-a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("svc-b"), Some(&10), "{seen:?}");
    let (mut prev, mut alternated) = (answer(&gw, "/svc/z").unwrap(), true);
    for _ in 0..10 {
        let next = answer(&gw, "/svc/z").unwrap();
        alternated &= next != prev;
        prev = next;
    }
    assert!(
        alternated,
        "round robin over two equal instances must alternate"
    );

    // Weight 3 for b: it gets three in four.
    let json = serde_json::json!({ "addr": b.url(), "weight": 3 });
    etcd.put_with_lease(&format!("{SERVICES}svc/b"), &json.to_string(), lb);
    wait_ok("b at weight 3", APPLY, || {
        let seen = spread(&gw, "/svc/w", 8);
        match (seen.get("svc-a"), seen.get("svc-b")) {
            (Some(2), Some(6)) => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    });

    // Revoke a: only b from then on.
    etcd.revoke(la);
    wait_ok("a gone", APPLY, || {
        let seen = spread(&gw, "/svc/v", 6);
        (seen.len() == 1 && seen.contains_key("svc-b"))
            .then_some(())
            .ok_or(format!("{seen:?}"))
    });
    let hits_a = a.hits();
    spread(&gw, "/svc/v", 20);
    assert_eq!(a.hits(), hits_a, "a revoked instance got traffic");

    // Revoke the last one: 503 with the gateway's JSON error.
    etcd.revoke(lb);
    let r = wait_gateway_status(&gw, "/svc/x", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");
    wait_status(&gw, "0 instances", APPLY, |s| s["instances"] == 0);
}

#[test]
fn a_crashed_instance_is_dropped_when_its_lease_expires() {
    let etcd = Etcd::start();
    let (live, crashed) = (Backend::start("live"), Backend::start("crashed"));
    let gw = start_gw("gw-crash", &[etcd.endpoint()]);
    put_route(etcd.client(), "svc", &["/c"], "svc");
    let live_lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}svc/live"), &live.url(), live_lease.id);
    let mut crash_lease = etcd.keep_alive(2);
    etcd.put_with_lease(
        &format!("{SERVICES}svc/crashed"),
        &crashed.url(),
        crash_lease.id,
    );
    wait_served_by(&gw, "/c", "crashed", APPLY);
    wait_served_by(&gw, "/c", "live", APPLY);

    // The instance "crashes": its keep-alives stop, its lease (TTL 2s)
    // expires, etcd deletes the key, and the gateway stops using it.
    let t = Instant::now();
    crash_lease.stop_keepalive();
    wait_ok(
        "crashed instance dropped",
        Duration::from_secs(2 + 5),
        || {
            let seen = spread(&gw, "/c", 4);
            (seen.len() == 1 && seen.contains_key("live"))
                .then_some(())
                .ok_or(format!("{seen:?}"))
        },
    );
    let gone_after = t.elapsed();
    eprintln!("lease TTL 2s: instance dropped {gone_after:.2?} after its last keep-alive");
    assert!(etcd.get(&format!("{SERVICES}svc/crashed")).is_none());
    let hits = crashed.hits();
    spread(&gw, "/c", 20);
    assert_eq!(crashed.hits(), hits);
    wait_status(&gw, "1 instance", APPLY, |s| s["instances"] == 1);
}

#[test]
fn a_draining_instance_gets_no_new_requests() {
    let etcd = Etcd::start();
    let (a, b, c) = (
        Backend::start("drain-a"),
        Backend::start("drain-b"),
        Backend::start("drain-c"),
    );
    let gw = start_gw("gw-drain", &[etcd.endpoint()]);
    put_route(etcd.client(), "svc", &["/d"], "svc");
    let lease = etcd.keep_alive(10);
    let json = |b: &Backend, draining: bool| {
        serde_json::json!({ "addr": b.url(), "weight": 1, "draining": draining }).to_string()
    };
    etcd.put_with_lease(&format!("{SERVICES}svc/a"), &json(&a, false), lease.id);
    etcd.put_with_lease(&format!("{SERVICES}svc/b"), &json(&b, false), lease.id);
    wait_served_by(&gw, "/d", "drain-a", APPLY);
    wait_served_by(&gw, "/d", "drain-b", APPLY);

    // Drain a; registering c afterwards is a barrier on the same watch.
    etcd.put_with_lease(&format!("{SERVICES}svc/a"), &json(&a, true), lease.id);
    etcd.put_with_lease(&format!("{SERVICES}svc/c"), &json(&c, false), lease.id);
    wait_served_by(&gw, "/d", "drain-c", APPLY);
    let hits_a = a.hits();
    let seen = spread(&gw, "/d", 30);
    assert_eq!(
        a.hits(),
        hits_a,
        "a draining instance got new requests: {seen:?}"
    );
    assert_eq!(seen.get("drain-b"), Some(&15), "{seen:?}");
    assert_eq!(seen.get("drain-c"), Some(&15), "{seen:?}");

    // Undrained: back in rotation.
    etcd.put_with_lease(&format!("{SERVICES}svc/a"), &json(&a, false), lease.id);
    wait_served_by(&gw, "/d", "drain-a", APPLY);

    // All draining: nothing to send new requests to.
    for (id, be) in [("a", &a), ("b", &b), ("c", &c)] {
        etcd.put_with_lease(&format!("{SERVICES}svc/{id}"), &json(be, true), lease.id);
    }
    let r = wait_gateway_status(&gw, "/d", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");
}

#[test]
fn an_unleased_registry_key_is_never_served() {
    let etcd = Etcd::start();
    let (leased, bare, bare2) = (
        Backend::start("leased"),
        Backend::start("bare"),
        Backend::start("bare2"),
    );
    let gw = start_gw("gw-unleased", &[etcd.endpoint()]);
    let unleased = "tollgate_registry_unleased_total";
    assert_eq!(metric(&gw, unleased), 0.0);
    put_route(etcd.client(), "only-bare", &["/bare"], "bare-svc");
    put_route(etcd.client(), "mixed", &["/mixed"], "mixed");

    // A service whose only key has no lease: never served, counted.
    etcd.put(&format!("{SERVICES}bare-svc/i1"), &bare.url());
    wait_ok("unleased key counted", APPLY, || {
        let n = metric(&gw, unleased);
        (n >= 1.0).then_some(()).ok_or(format!("{n}"))
    });
    let r = wait_gateway_status(&gw, "/bare", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");

    // Beside a leased instance: only the leased one is used.
    etcd.put(&format!("{SERVICES}mixed/bare"), &bare2.url());
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}mixed/leased"), &leased.url(), lease.id);
    wait_served_by(&gw, "/mixed", "leased", APPLY);
    let seen = spread(&gw, "/mixed", 20);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((bare.hits(), bare2.hits()), (0, 0));
    assert!(metric(&gw, unleased) >= 2.0);
    assert_eq!(gw.status()["instances"], 1);
    assert!(
        gw.logs().contains(&format!("{SERVICES}mixed/bare")),
        "the log names the unleased key"
    );

    // A leased instance re-put without its lease stops being served.
    etcd.put(&format!("{SERVICES}mixed/leased"), &leased.url());
    let r = wait_gateway_status(&gw, "/mixed", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");
    assert!(metric(&gw, unleased) >= 3.0);
}
