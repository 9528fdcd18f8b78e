//! Live routes from etcd against the real binary: puts, updates and deletes
//! take effect without a restart; bad values are rejected per key; a burst
//! of puts is coalesced into few router rebuilds; every gateway records
//! itself (and the config revision it applied) under `/tollgate/gateways/`.

mod common;

use std::time::{Duration, Instant};

use common::etcd_gw::{
    answer, assert_gw_error, lease_of, metric, put_route, route, start_gw, try_get,
    wait_gateway_status, wait_ok, wait_revision, wait_served_by, wait_status, GATEWAYS, ROUTES,
    SERVICES,
};
use testkit::{Backend, Etcd, SIGKILL, SIGTERM};

const APPLY: Duration = Duration::from_secs(10);

#[test]
fn route_put_update_delete_take_effect() {
    let etcd = Etcd::start();
    let (users, other) = (Backend::start("users-1"), Backend::start("other-1"));
    let users_lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}users/u1"), &users.url(), users_lease.id);
    let other_lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}other/o1"), &other.url(), other_lease.id);
    let gw = start_gw("gw-routes", &[etcd.endpoint()]);

    // Nothing routed yet.
    assert_gw_error(&gw.get("/api/users/1"), 404, "");

    // Put: served by the registered service.
    let rev = put_route(etcd.client(), "users", &["/api/users/:id"], "users");
    wait_served_by(&gw, "/api/users/1", "users-1", APPLY);
    let s = wait_revision(&gw, rev, APPLY);
    assert_eq!(s["etcd"], "connected", "{s}");
    assert_eq!(s["routes"], 1, "{s}");
    assert_eq!(s["stale"], false, "{s}");

    // A second route to another service, independent of the first.
    put_route(etcd.client(), "other", &["/other"], "other");
    wait_served_by(&gw, "/other", "other-1", APPLY);
    assert_eq!(answer(&gw, "/api/users/7"), Ok("users-1".into()));

    // Update: the new path is served, the old one is 404.
    let rev = put_route(etcd.client(), "users", &["/v2/users/:id"], "users");
    wait_served_by(&gw, "/v2/users/9", "users-1", APPLY);
    assert_gw_error(&gw.get("/api/users/1"), 404, "");
    // Update the upstream only: same path, other service.
    let rev2 = put_route(etcd.client(), "users", &["/v2/users/:id"], "other");
    assert!(rev2 > rev);
    wait_served_by(&gw, "/v2/users/9", "other-1", APPLY);

    // Delete: 404, the other route untouched.
    let rev = etcd.delete(&format!("{ROUTES}users"));
    wait_gateway_status(&gw, "/v2/users/9", 404, APPLY);
    assert_eq!(answer(&gw, "/other"), Ok("other-1".into()));
    let s = wait_revision(&gw, rev, APPLY);
    assert_eq!(
        (s["routes"].as_i64(), s["etcd"].as_str()),
        (Some(1), Some("connected")),
        "{s}"
    );
}

#[test]
fn bad_values_are_rejected_per_key_and_keep_the_last_good_value() {
    let etcd = Etcd::start();
    let svc = Backend::start("svc-1");
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}svc/i1"), &svc.url(), lease.id);
    let gw = start_gw("gw-bad", &[etcd.endpoint()]);
    let kind_route = "tollgate_config_rejected_total{kind=\"route\"}";
    assert_eq!(metric(&gw, kind_route), 0.0);

    put_route(etcd.client(), "good", &["/good"], "svc");
    wait_served_by(&gw, "/good", "svc-1", APPLY);
    let rejected_before = gw.status()["rejected"].as_u64().unwrap();

    // A syntax error and a semantically bad path, then a good route after
    // them: the good one applies, the bad ones are not served.
    etcd.put(
        &format!("{ROUTES}bad-json"),
        r#"{"paths": ["/bad-json"], "upstream": "svc""#,
    );
    etcd.put(&format!("{ROUTES}bad-path"), &route(&["nope"], "svc"));
    put_route(etcd.client(), "after", &["/after"], "svc");
    wait_served_by(&gw, "/after", "svc-1", APPLY);
    assert_gw_error(&gw.get("/bad-json"), 404, "");
    assert_gw_error(&gw.get("/nope"), 404, "");
    assert_eq!(answer(&gw, "/good"), Ok("svc-1".into()));

    // A good route overwritten with bad values keeps its earlier version.
    etcd.put(&format!("{ROUTES}good"), &route(&["also-no-slash"], "svc"));
    etcd.put(
        &format!("{ROUTES}good"),
        r#"{"paths": "/good2", "upstream": "svc"}"#,
    );
    etcd.put(&format!("{ROUTES}good"), "not json at all");
    // A barrier on the same watch: once it is served, the above were seen.
    let last = put_route(etcd.client(), "barrier", &["/barrier"], "svc");
    wait_served_by(&gw, "/barrier", "svc-1", APPLY);
    assert_eq!(
        answer(&gw, "/good"),
        Ok("svc-1".into()),
        "last good version"
    );
    assert_gw_error(&gw.get("/good2"), 404, "");

    // Counted on /status and /metrics, and /status still moves on.
    let s = wait_revision(&gw, last, APPLY);
    let rejected = s["rejected"].as_u64().unwrap() - rejected_before;
    assert_eq!(rejected, 5, "two bad keys + three bad overwrites: {s}");
    assert_eq!(s["routes"], 3, "good, after, barrier: {s}");
    assert_eq!(metric(&gw, kind_route), 5.0);

    // The log names each bad key.
    let logs = gw.logs();
    for key in ["bad-json", "bad-path", "good"] {
        let key = format!("{ROUTES}{key}");
        assert!(
            logs.lines()
                .any(|l| l.contains("rejected") && l.contains(&key)),
            "no rejection log line names {key}:\n{logs}"
        );
    }

    // Fixing a bad key applies it.
    put_route(etcd.client(), "bad-path", &["/fixed"], "svc");
    wait_served_by(&gw, "/fixed", "svc-1", APPLY);
    // Deleting a key whose value was rejected removes its last good value.
    etcd.delete(&format!("{ROUTES}good"));
    wait_gateway_status(&gw, "/good", 404, APPLY);
}

#[test]
fn a_burst_of_1000_route_puts_is_served_with_few_rebuilds() {
    const N: usize = 1000;
    const WRITERS: usize = 4;
    let etcd = Etcd::start();
    let svc = Backend::start("burst-1");
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}burst/i1"), &svc.url(), lease.id);
    let gw = start_gw("gw-burst", &[etcd.endpoint()]);
    let rebuilds = "tollgate_router_rebuilds_total";
    let before = metric(&gw, rebuilds);

    let started = Instant::now();
    let last = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let c = etcd.client().clone();
                s.spawn(move || {
                    (w..N)
                        .step_by(WRITERS)
                        .map(|i| put_route(&c, &format!("r{i}"), &[&format!("/r/{i}")], "burst"))
                        .max()
                        .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    });
    let put_took = started.elapsed();

    let s = wait_status(&gw, "all routes applied", Duration::from_secs(30), |s| {
        s["routes"].as_u64() == Some(N as u64) && s["revision"].as_i64() >= Some(last)
    });
    let applied_took = started.elapsed();
    assert_eq!(s["rejected"], 0, "{s}");
    for i in (0..N).step_by(37).chain([N - 1]) {
        let path = format!("/r/{i}");
        assert_eq!(answer(&gw, &path), Ok("burst-1".into()), "GET {path}");
    }
    assert_gw_error(&gw.get(&format!("/r/{N}")), 404, "");

    let rebuilt = metric(&gw, rebuilds) - before;
    eprintln!(
        "burst: {N} puts in {put_took:.2?}, all applied after {applied_took:.2?}, \
         {rebuilt} router rebuilds"
    );
    assert!(rebuilt >= 1.0);
    assert!(
        rebuilt < 500.0,
        "{rebuilt} router rebuilds for {N} puts: changes are not coalesced"
    );
}

fn gateway_record(etcd: &Etcd, node: &str) -> Option<serde_json::Value> {
    let v = etcd.get(&format!("{GATEWAYS}{node}"))?;
    Some(serde_json::from_str(&v).unwrap_or_else(|e| panic!("gateway record {v:?}: {e}")))
}

#[test]
fn each_gateway_registers_itself_with_its_applied_revision() {
    let etcd = Etcd::start();
    let svc = Backend::start("self-1");
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}self/i1"), &svc.url(), lease.id);
    let mut a = start_gw("gw-self-a", &[etcd.endpoint()]);
    let mut b = start_gw("gw-self-b", &[etcd.endpoint()]);

    // Both records exist, on a lease, and each node sees two gateways.
    wait_ok("both gateway records", APPLY, || {
        let keys: Vec<String> = etcd
            .get_prefix(GATEWAYS)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        match keys.len() {
            2 => Ok(()),
            _ => Err(format!("{keys:?}")),
        }
    });
    for node in ["gw-self-a", "gw-self-b"] {
        let lease = lease_of(etcd.client(), &format!("{GATEWAYS}{node}"));
        assert!(lease.is_some_and(|l| l != 0), "{node} record has no lease");
        let r = gateway_record(&etcd, node).unwrap();
        assert_eq!(r["node_id"], node, "{r}");
        assert!(r["config_revision"].is_i64(), "{r}");
    }
    for gw in [&a, &b] {
        wait_status(gw, "2 gateways", APPLY, |s| s["gateways"] == 2);
    }

    // A route put: the records' config_revision catches up to it, and the
    // nodes' own record writes do not move it further (no self-wakeup).
    let rev = put_route(etcd.client(), "self", &["/self"], "self");
    for gw in [&a, &b] {
        wait_served_by(gw, "/self", "self-1", APPLY);
    }
    for node in ["gw-self-a", "gw-self-b"] {
        wait_ok(&format!("{node} config_revision == {rev}"), APPLY, || {
            let r = gateway_record(&etcd, node).ok_or("no record")?;
            match r["config_revision"].as_i64() {
                Some(x) if x == rev => Ok(()),
                _ => Err(r.to_string()),
            }
        });
    }
    let settled = etcd.revision();
    std::thread::sleep(Duration::from_millis(300)); // observe: nothing else may be written
    assert_eq!(
        etcd.revision(),
        settled,
        "gateways keep writing their records"
    );

    // A graceful stop withdraws the record at once (well before its 10s TTL).
    let t = Instant::now();
    a.signal(SIGTERM);
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        a.logs()
    );
    wait_ok(
        "gw-self-a record withdrawn",
        Duration::from_secs(3),
        || match gateway_record(&etcd, "gw-self-a") {
            None => Ok(()),
            Some(r) => Err(r.to_string()),
        },
    );
    eprintln!("SIGTERM: record gone {:.2?} after the signal", t.elapsed());
    wait_status(&b, "1 gateway", APPLY, |s| s["gateways"] == 1);

    // A crashed gateway's record goes when its lease expires (TTL 10s).
    let t = Instant::now();
    b.signal(SIGKILL);
    b.wait_exit(Duration::from_secs(5));
    assert!(gateway_record(&etcd, "gw-self-b").is_some());
    wait_ok(
        "gw-self-b record expired",
        Duration::from_secs(20),
        || match gateway_record(&etcd, "gw-self-b") {
            None => Ok(()),
            Some(r) => Err(r.to_string()),
        },
    );
    eprintln!("SIGKILL: record gone {:.2?} after the kill", t.elapsed());
    assert!(try_get(&b, "/self").is_none());
}

#[test]
fn a_conflicting_route_waits_is_counted_once_and_takes_over_when_the_first_goes() {
    let etcd = Etcd::start();
    let (one, two) = (Backend::start("one-1"), Backend::start("two-1"));
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}one/i1"), &one.url(), lease.id);
    etcd.put_with_lease(&format!("{SERVICES}two/i1"), &two.url(), lease.id);
    let gw = start_gw("gw-conflict", &[etcd.endpoint()]);
    let conflicts = "tollgate_config_rejected_total{kind=\"route_conflict\"}";

    put_route(etcd.client(), "first", &["/x"], "one");
    wait_served_by(&gw, "/x", "one-1", APPLY);
    let rejected_before = gw.status()["rejected"].as_u64().unwrap();

    // Same path, hosts, methods and priority, written later: not served.
    put_route(etcd.client(), "second", &["/x"], "two");
    // Unrelated changes afterwards retry it without counting it again.
    put_route(etcd.client(), "other-1", &["/o1"], "one");
    let last = put_route(etcd.client(), "other-2", &["/o2"], "one");
    wait_served_by(&gw, "/o2", "one-1", APPLY);
    let s = wait_revision(&gw, last, APPLY);
    assert_eq!(
        answer(&gw, "/x"),
        Ok("one-1".into()),
        "the first route keeps /x"
    );
    assert_eq!(s["routes"], 3, "first, other-1, other-2: {s}");
    assert_eq!(
        s["rejected"].as_u64().unwrap() - rejected_before,
        1,
        "counted once: {s}"
    );
    assert_eq!(metric(&gw, conflicts), 1.0);
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("route not served") && l.contains("second")),
        "the log names the blocked route:\n{}",
        gw.logs()
    );

    // When the first route goes, the waiting one is served.
    etcd.delete(&format!("{ROUTES}first"));
    wait_served_by(&gw, "/x", "two-1", APPLY);
    assert_eq!(metric(&gw, conflicts), 1.0);
}
