//! Registry resilience against the real binary and a real etcd: services
//! whose leases expire together (the client gave up during an etcd outage,
//! or a mass expiry) keep serving through self-preservation while they
//! answer probes; a revoke is never preserved; one expiry of ten is dropped;
//! a dead instance leaves the rotation at its first refused connect; the
//! logs stay readable through an outage and a failing service.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd_gw::{
    answer, metric, put_route, start_gw, wait_connected, wait_gateway_status, wait_ok,
    wait_served_by, wait_status, Traffic, SERVICES,
};
use testkit::{Backend, Etcd, EtcdClient, Gateway};

const APPLY: Duration = Duration::from_secs(10);
/// Reconnecting after etcd returns: backoff is capped at 5 s, plus a dial.
const RECONNECT: Duration = Duration::from_secs(20);

/// Which backends answered `n` requests to `path` (each must be a 200).
fn spread(gw: &Gateway, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let b = answer(gw, path).unwrap_or_else(|e| panic!("request {i} to {path}: {e}"));
        *seen.entry(b).or_insert(0) += 1;
    }
    seen
}

/// Registers each backend as `<service>/<name>` on its own new lease of
/// `ttl` seconds, never kept alive. Returns the leases.
fn register_unkept(c: &EtcdClient, service: &str, backends: &[Backend], ttl: i64) -> Vec<i64> {
    backends
        .iter()
        .map(|b| {
            let lease = c.grant(ttl);
            c.put_with_lease(
                &format!("{SERVICES}{service}/{}", b.name()),
                &b.url(),
                lease,
            );
            lease
        })
        .collect()
}

fn backends(prefix: &str, n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::start(&format!("{prefix}-{i}")))
        .collect()
}

fn preserved(gw: &Gateway, service: &str) -> f64 {
    metric(
        gw,
        &format!("tollgate_registry_preserved_instances{{service=\"{service}\"}}"),
    )
}

/// Waits until etcd holds no key under `<service>/`.
fn wait_keys_gone(c: &EtcdClient, service: &str, timeout: Duration) {
    let prefix = format!("{SERVICES}{service}/");
    wait_ok(&format!("{prefix} empty in etcd"), timeout, || {
        let left = c.get_prefix(&prefix);
        left.is_empty()
            .then_some(())
            .ok_or(format!("{} keys left", left.len()))
    });
}

#[test]
fn services_whose_clients_gave_up_during_an_etcd_outage_keep_serving_while_they_answer() {
    let mut etcd = Etcd::start();
    let svc = backends("outage", 3);
    let gw = start_gw("gw-outage", &[etcd.endpoint()]);
    let mut route = serde_json::json!({ "paths": ["/o/*rest"], "upstream": "api" });
    route["retries"] = 2.into();
    etcd.put("/tollgate/routes/api", &route.to_string());
    // The way a Go service registers: a lease kept alive by its client.
    let mut leases: Vec<_> = svc
        .iter()
        .map(|b| {
            // 6 s: longer than the gateway's longest reconnect backoff
            // (5 s), so it is back on etcd before the restored leases expire.
            let lease = etcd.keep_alive(6);
            etcd.put_with_lease(&format!("{SERVICES}api/{}", b.name()), &b.url(), lease.id);
            lease
        })
        .collect();
    for b in &svc {
        wait_served_by(&gw, "/o/x", b.name(), APPLY);
    }
    // The gateway has asked how long each lease has left (what tells an
    // expiry from a revoke later).
    wait_ok("lease checks", APPLY, || {
        let n = metric(&gw, "tollgate_registry_lease_checks_total");
        (n >= 3.0).then_some(()).ok_or(format!("{n} checks"))
    });
    let traffic = Traffic::start(gw.url("/o/t"));

    // etcd goes down for longer than the TTL; the clients give their
    // leases up (the Go client closes its keep-alive channel) and never
    // register again.
    etcd.stop();
    for l in &mut leases {
        l.stop_keepalive();
    }
    wait_status(&gw, "etcd disconnected", APPLY, |s| {
        s["etcd"] == "disconnected"
    });
    std::thread::sleep(Duration::from_secs(7)); // the outage itself: > TTL
    etcd.restart();
    // etcd restored the leases with a fresh TTL; they expire together.
    wait_connected(&gw, RECONNECT);
    wait_keys_gone(etcd.client(), "api", Duration::from_secs(15));
    let s = wait_status(&gw, "3 preserved", APPLY, |s| s["preserved_instances"] == 3);
    assert_eq!(s["preserving_services"], 1, "{s}");
    assert_eq!(s["instances"], 3, "{s}");
    assert_eq!(preserved(&gw, "api"), 3.0);
    let seen = spread(&gw, "/o/y", 30);
    assert_eq!(seen.len(), 3, "all three still serve: {seen:?}");
    assert!(
        gw.logs().contains("service in self-preservation"),
        "one line says so"
    );

    // One stops answering: its probe fails and it is dropped; the others stay.
    let mut svc = svc;
    let stopped = svc.remove(0);
    let stopped_name = stopped.name().to_string();
    drop(stopped);
    wait_status(&gw, "2 preserved", APPLY, |s| s["preserved_instances"] == 2);
    assert_eq!(
        metric(
            &gw,
            "tollgate_registry_preserved_dropped_total{reason=\"probe_failed\",service=\"api\"}"
        ),
        1.0
    );
    let seen = spread(&gw, "/o/z", 20);
    assert!(!seen.contains_key(&stopped_name), "{seen:?}");

    // One registers again (a new id, the same address): it is an ordinary
    // instance again, no longer preserved.
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}api/again"), &svc[0].url(), lease.id);
    wait_status(&gw, "1 preserved", APPLY, |s| {
        s["preserved_instances"] == 1 && s["instances"] == 2
    });

    let (n, failures) = traffic.finish();
    assert!(n > 100, "only {n} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn a_mass_expiry_is_preserved_one_expiry_of_ten_is_not_and_a_revoke_never_is() {
    let etcd = Etcd::start();
    let c = etcd.client();
    let gw = start_gw("gw-mass", &[etcd.endpoint()]);
    for s in ["mass", "one", "revoked"] {
        put_route(c, s, &[&format!("/{s}/*rest")], s);
    }
    // Every lease is kept alive until the gateway knows how long each has
    // left; then the ones meant to expire stop (as a crashed client would).
    // mass: 10 of 10 expire together.
    let mass = backends("mass", 10);
    let register = |service: &str, b: &Backend, ttl: i64| {
        let l = etcd.keep_alive(ttl);
        c.put_with_lease(&format!("{SERVICES}{service}/{}", b.name()), &b.url(), l.id);
        l
    };
    let mut expiring: Vec<_> = mass.iter().map(|b| register("mass", b, 3)).collect();
    // one: 1 of 10 expires, 9 stay.
    let one = backends("one", 10);
    let kept: Vec<_> = one[1..].iter().map(|b| register("one", b, 30)).collect();
    expiring.push(register("one", &one[0], 3));
    // revoked: 4 of 4 deregistered on purpose, all at once.
    let revoked = backends("revoked", 4);
    let revoked_leases = register_unkept(c, "revoked", &revoked, 30);
    wait_status(&gw, "24 instances", APPLY, |s| s["instances"] == 24);
    wait_served_by(&gw, "/one/x", "one-0", APPLY);
    wait_ok("every lease's time known", APPLY, || {
        let n = metric(&gw, "tollgate_registry_leases_known");
        (n == 24.0).then_some(()).ok_or(format!("{n} of 24"))
    });
    for l in &mut expiring {
        l.stop_keepalive();
    }

    for l in &revoked_leases {
        c.revoke(*l);
    }
    let r = wait_gateway_status(&gw, "/revoked/x", 503, APPLY);
    assert!(r.body.contains("no live instance"), "{r:?}");
    assert_eq!(
        preserved(&gw, "revoked"),
        0.0,
        "a revoke is never preserved"
    );

    wait_keys_gone(c, "mass", Duration::from_secs(15));
    wait_ok("one-0 expired", Duration::from_secs(15), || {
        c.get(&format!("{SERVICES}one/one-0"))
            .map_or(Ok(()), |_| Err("still there".to_string()))
    });
    let s = wait_status(&gw, "10 preserved", APPLY, |s| {
        s["preserved_instances"] == 10
    });
    assert_eq!(s["preserving_services"], 1, "{s}");
    assert_eq!(preserved(&gw, "mass"), 10.0);
    assert_eq!(spread(&gw, "/mass/x", 20).len(), 10, "all ten still serve");
    assert_eq!(
        preserved(&gw, "one"),
        0.0,
        "one of ten is not a mass expiry"
    );
    wait_ok("one-0 out of rotation", APPLY, || {
        let seen = spread(&gw, "/one/x", 18);
        (!seen.contains_key("one-0") && seen.len() == 9)
            .then_some(())
            .ok_or(format!("{seen:?}"))
    });
    drop(kept);
}

#[test]
fn a_killed_instance_costs_no_request_beyond_the_first_failure() {
    let etcd = Etcd::start();
    let c = etcd.client();
    let gw = start_gw("gw-kill", &[etcd.endpoint()]);
    // retries: 0, so a request sent to the dead instance fails visibly.
    let route = serde_json::json!({ "paths": ["/k"], "upstream": "svc", "retries": 0 });
    c.put("/tollgate/routes/k", &route.to_string());
    let live = Backend::start("live");
    let dead = Backend::start("dead");
    let leases: Vec<_> = [&live, &dead]
        .iter()
        .map(|b| {
            let l = etcd.keep_alive(30);
            c.put_with_lease(&format!("{SERVICES}svc/{}", b.name()), &b.url(), l.id);
            l
        })
        .collect();
    wait_served_by(&gw, "/k", "dead", APPLY);
    wait_served_by(&gw, "/k", "live", APPLY);

    // The process dies (connections refused); its lease lives on for 30 s.
    drop(dead);
    let t = Instant::now();
    let mut failed = Vec::new();
    let mut ejected_after = None;
    for i in 0..100 {
        match answer(&gw, "/k") {
            Ok(b) => assert_eq!(b, "live", "request {i}"),
            Err(e) => failed.push(format!("#{i}: {e}")),
        }
        if ejected_after.is_none()
            && metric(&gw, "tollgate_ejections_total{upstream=\"svc\"}") == 1.0
        {
            ejected_after = Some(t.elapsed());
        }
    }
    assert!(
        failed.len() <= 1,
        "more than the first request failed: {failed:?}"
    );
    eprintln!(
        "instance killed: ejected {ejected_after:?} later, {} request(s) failed",
        failed.len()
    );
    assert!(ejected_after.is_some(), "no ejection counted");
    drop(leases);
}

#[test]
fn an_etcd_outage_logs_connected_only_when_it_is_and_failures_are_rate_limited() {
    let mut etcd = Etcd::start();
    let gw = start_gw("gw-logs", &[etcd.endpoint()]);
    let connected = |gw: &Gateway| gw.logs().matches("etcd connected").count();
    // /status says connected a moment before the line is written.
    wait_ok("the connected line", APPLY, || {
        (connected(&gw) == 1).then_some(()).ok_or(gw.logs())
    });

    etcd.stop();
    wait_status(&gw, "etcd disconnected", APPLY, |s| {
        s["etcd"] == "disconnected"
    });
    // Several reconnect attempts (backoff from 100 ms) while etcd is down.
    wait_ok("3 reconnect attempts", Duration::from_secs(15), || {
        let n = gw.logs().matches("etcd unavailable").count();
        (n >= 3).then_some(()).ok_or(format!("{n}"))
    });
    assert_eq!(
        connected(&gw),
        1,
        "no false \"connected\" while etcd is down"
    );
    etcd.restart();
    wait_connected(&gw, RECONNECT);
    wait_ok("one connected line after the outage", APPLY, || {
        (connected(&gw) == 2).then_some(()).ok_or(gw.logs())
    });

    // A route to a service with no instance fails every request (503):
    // one warning a second at most, which says how many it held back; the
    // access log has every request.
    put_route(etcd.client(), "none", &["/none"], "nobody");
    let t = Instant::now();
    wait_gateway_status(&gw, "/none", 503, APPLY);
    for _ in 0..1000 {
        let r = gw.get("/none");
        assert_eq!(r.status, 503);
    }
    let failure_lines = |gw: &Gateway| {
        gw.logs()
            .lines()
            .filter(|l| l.contains("request failed") && l.contains("route=\"none\""))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let lines = failure_lines(&gw);
    let allowed = t.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=allowed).contains(&lines.len()),
        "{} failure lines for 1,000+ failures in {:.2?}: {lines:?}\n{}",
        lines.len(),
        t.elapsed(),
        gw.logs()
            .lines()
            .filter(|l| l.contains("WARN"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The next line, a second later, counts the ones held back.
    let counted = wait_ok("a line with the held-back count", APPLY, || {
        assert_eq!(gw.get("/none").status, 503);
        let lines = failure_lines(&gw);
        let held: u64 = lines
            .iter()
            .filter_map(|l| l.split("similar_held_back=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        (held >= 999).then_some(held).ok_or(format!("{lines:?}"))
    });
    wait_ok("every request in the access log", APPLY, || {
        let n = gw.logs().matches("\"path\":\"/none\"").count();
        (n >= 1001).then_some(()).ok_or(format!("{n}"))
    });
    eprintln!(
        "1,000 failing requests: {} warning line(s), {counted} held back and counted",
        lines.len()
    );
}
