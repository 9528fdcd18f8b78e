//! Active health checks shared across the fleet, against real etcd, real
//! backends and three real gateways: each instance is probed by one node
//! (so about once per interval whatever the node count), a verdict written
//! by that node takes the instance out on every node, a SIGKILLed node's
//! instances are probed again by the others within its lease, and a
//! prober cut off from etcd leaves no instance marked down forever.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::bin;
use common::etcd_gw::{
    answer, body, etcd_relay, metric, put_route, start_gw, wait_connected, wait_ok, wait_status,
    SERVICES,
};
use testkit::{Backend, Etcd, Gateway, KeptLease, Mode};

const APPLY: Duration = Duration::from_secs(15);
const INTERVAL_MS: u64 = 200;
const HEALTH: &str = "/tollgate/health/svc/";

/// `n` instances of `svc`, registered on one kept-alive lease, and an
/// upstream policy probing them every 200 ms.
fn instances(etcd: &Etcd, n: usize) -> (Vec<Backend>, KeptLease) {
    let names: Vec<String> = (0..n).map(|i| format!("i{i:02}")).collect();
    named_instances(etcd, &names)
}

fn named_instances(etcd: &Etcd, names: &[String]) -> (Vec<Backend>, KeptLease) {
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    let lease = etcd.keep_alive(30);
    for b in &backends {
        etcd.put_with_lease(&format!("{SERVICES}svc/{}", b.name()), &b.url(), lease.id);
    }
    let policy = serde_json::json!({
        "health_check": { "active": { "path": "/healthz", "interval_ms": INTERVAL_MS, "unhealthy": 2, "healthy": 2 } }
    });
    etcd.put("/tollgate/upstreams/svc", &policy.to_string());
    put_route(etcd.client(), "svc", &["/svc/*rest"], "svc");
    (backends, lease)
}

/// Waits until every node shares verdicts with a fleet of `n`.
fn wait_shared(gws: &[&Gateway], n: usize) {
    for gw in gws {
        wait_status(gw, &format!("a shared fleet of {n}"), APPLY, |s| {
            s["gateways"] == n && s["health_verdicts"] == "shared"
        });
    }
}

/// Probes per instance per interval, measured over at least `probes`
/// probes in all (hits are probes: no traffic is sent meanwhile).
fn probe_rate(backends: &[Backend], probes: usize) -> f64 {
    let start: usize = backends.iter().map(Backend::hits).sum();
    let t0 = Instant::now();
    wait_ok("probes to arrive", Duration::from_secs(30), || {
        let now: usize = backends.iter().map(Backend::hits).sum();
        (now - start >= probes)
            .then_some(())
            .ok_or(format!("{} probes so far", now - start))
    });
    let counted: usize = backends.iter().map(Backend::hits).sum::<usize>() - start;
    let intervals = t0.elapsed().as_secs_f64() * 1000.0 / INTERVAL_MS as f64;
    counted as f64 / backends.len() as f64 / intervals
}

#[test]
fn each_instance_is_probed_once_per_interval_whatever_the_node_count_and_a_dead_nodes_share_moves()
{
    let etcd = Etcd::start();
    let (backends, _lease) = instances(&etcd, 12);
    let g1 = start_gw("hc-1", &[etcd.endpoint()]);
    wait_shared(&[&g1], 1);
    let alone = probe_rate(&backends, 240);
    let g2 = start_gw("hc-2", &[etcd.endpoint()]);
    let mut g3 = start_gw("hc-3", &[etcd.endpoint()]);
    wait_shared(&[&g1, &g2, &g3], 3);
    let three = probe_rate(&backends, 240);
    // One prober per instance: the same rate with 1 or 3 nodes (each node
    // probing everything would make it 3x).
    assert!(
        (0.7..1.4).contains(&alone),
        "1 node: {alone:.2} probes/instance/interval"
    );
    assert!(
        (0.7..1.4).contains(&three),
        "3 nodes: {three:.2} probes/instance/interval (alone: {alone:.2})"
    );
    // Every node probes a share; together they probe all 12.
    let probed: Vec<f64> = [&g1, &g2, &g3]
        .iter()
        .map(|g| metric(g, "tollgate_cluster_roles{role=\"health-prober\"}"))
        .collect();
    assert_eq!(probed.iter().sum::<f64>(), 12.0, "{probed:?}");
    assert!(probed.iter().all(|n| *n > 0.0), "{probed:?}");

    // SIGKILL one node: within its lease (10 s) its instances are probed
    // by the others, and the two left share all 12.
    g3.signal(9);
    let _ = g3.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    wait_shared(&[&g1, &g2], 2);
    let before: Vec<usize> = backends.iter().map(Backend::hits).collect();
    wait_ok(
        "every instance probed again",
        Duration::from_secs(20),
        || {
            let left: Vec<&str> = backends
                .iter()
                .zip(&before)
                .filter(|(b, n)| b.hits() <= **n)
                .map(|(b, _)| b.name())
                .collect();
            left.is_empty()
                .then_some(())
                .ok_or(format!("not probed since: {left:?}"))
        },
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed.elapsed()
    );
    let two = probe_rate(&backends, 240);
    assert!((0.7..1.4).contains(&two), "2 nodes: {two:.2}");
}

/// Which backends answered `n` requests through `gw` (all must be 200).
fn answers(gw: &Gateway, n: usize) -> Result<BTreeMap<String, usize>, String> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(answer(gw, "/svc/x")?).or_insert(0) += 1;
    }
    Ok(seen)
}

#[test]
fn one_nodes_verdict_takes_an_instance_out_on_every_node_and_brings_it_back() {
    let etcd = Etcd::start();
    let (backends, _lease) = instances(&etcd, 4);
    let gws: Vec<Gateway> = (1..=3)
        .map(|i| start_gw(&format!("v-{i}"), &[etcd.endpoint()]))
        .collect();
    wait_shared(&gws.iter().collect::<Vec<_>>(), 3);
    for gw in &gws {
        wait_ok("all 4 serving", APPLY, || {
            let seen = answers(gw, 8)?;
            (seen.len() == 4).then_some(()).ok_or(format!("{seen:?}"))
        });
    }
    let sick = &backends[1];
    sick.set_mode(Mode::Status(503));
    // One verdict, on the prober's lease; every node stops sending to it
    // (a node that probed nothing of it still knows).
    let verdict = wait_ok("a verdict in etcd", APPLY, || {
        let kvs = etcd.get_prefix(HEALTH);
        kvs.into_iter().next().ok_or("none yet".to_string())
    });
    assert_eq!(verdict.0, format!("{HEALTH}{}", sick.name()));
    let v: serde_json::Value = serde_json::from_str(&verdict.1).unwrap();
    assert_eq!(v["healthy"], false, "{v}");
    let prober = v["node"].as_str().unwrap().to_string();
    for gw in &gws {
        wait_ok("the sick instance out on every node", APPLY, || {
            let seen = answers(gw, 12)?;
            (!seen.contains_key(sick.name()))
                .then_some(())
                .ok_or(format!("{seen:?}"))
        });
    }
    // A verdict is not config: the fleet view shows every node up to date
    // (the records lag by up to half a second), never behind on it.
    wait_ok("every node up to date", APPLY, || {
        let v = common::acme::fleet_view(&etcd);
        let nodes = v["gateways"].as_array().cloned().unwrap_or_default();
        (nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "up_to_date"))
            .then_some(())
            .ok_or(format!("{v}"))
    });
    // Only its prober probes it: the others' probe counts are not spent on it.
    let on_prober = gws
        .iter()
        .filter(|g| g.status()["node_id"] == prober.as_str())
        .count();
    assert_eq!(on_prober, 1);
    // It recovers: the verdict is withdrawn and every node sends to it again.
    sick.set_mode(Mode::Normal);
    wait_ok("the verdict withdrawn", APPLY, || {
        etcd.get_prefix(HEALTH)
            .is_empty()
            .then_some(())
            .ok_or("still there".to_string())
    });
    for gw in &gws {
        wait_ok("it is back on every node", APPLY, || {
            let seen = answers(gw, 12)?;
            seen.contains_key(sick.name())
                .then_some(())
                .ok_or(format!("{seen:?}"))
        });
    }
}

/// An instance id that `node` probes in a fleet of `members` (the
/// gateway's own rendezvous hashing).
fn owned_by(members: &[&str], node: &str) -> String {
    let members: Vec<std::sync::Arc<str>> =
        members.iter().map(|m| std::sync::Arc::from(*m)).collect();
    (0..)
        .map(|i| format!("i{i:02}"))
        .find(|id| {
            tollgate::balance::sharing::owner(&members, "svc", id).is_some_and(|o| &**o == node)
        })
        .unwrap()
}

#[test]
fn a_prober_cut_off_from_etcd_leaves_nothing_marked_down_and_probes_alone() {
    let etcd = Etcd::start();
    // One instance, which the node that will be cut off probes.
    let (backends, _lease) = named_instances(&etcd, &[owned_by(&["cut", "other"], "cut")]);
    let sick = &backends[0];
    let relay = etcd_relay(&etcd);
    let cut = Gateway::start(bin(), &body("cut", &[relay.url()]));
    wait_connected(&cut, APPLY);
    let other = start_gw("other", &[etcd.endpoint()]);
    wait_shared(&[&cut, &other], 2);
    sick.set_mode(Mode::Status(503));
    let verdict = wait_ok("a verdict", APPLY, || {
        etcd.get_prefix(HEALTH)
            .into_iter()
            .next()
            .ok_or("none".to_string())
    });
    let v: serde_json::Value = serde_json::from_str(&verdict.1).unwrap();
    assert_eq!(v["node"], "cut", "{v}");
    for gw in [&cut, &other] {
        wait_ok("the instance out", APPLY, || match answer(gw, "/svc/x") {
            Err(e) if e.contains("503") => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }
    // The prober is cut off while it holds the verdict, and the instance
    // heals meanwhile. The verdict expires with the prober's lease (10 s),
    // `other` takes the instance over and serves it again.
    relay.cut();
    sick.set_mode(Mode::Normal);
    let t0 = Instant::now();
    wait_ok(
        "the cut prober's verdict expires",
        Duration::from_secs(25),
        || {
            etcd.get_prefix(HEALTH)
                .is_empty()
                .then_some(())
                .ok_or("still there".to_string())
        },
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    wait_ok(
        "the healed instance served by the other node",
        APPLY,
        || answer(&other, "/svc/x"),
    );
    wait_status(
        &other,
        "the other node probes it for the fleet",
        APPLY,
        |s| s["roles"]["health-prober"] == 1 && s["health_verdicts"] == "shared",
    );
    // The cut node gave its role up before its lease could have expired
    // on the server, and probes alone, serving by its own verdict.
    let s = wait_status(&cut, "local verdicts", Duration::from_secs(20), |s| {
        s["health_verdicts"] == "local"
    });
    assert!(s["roles"].get("health-prober").is_none(), "{s}");
    assert_eq!(s["roles"]["health-prober-local"], 1, "{s}");
    wait_ok("served by the cut node too", APPLY, || {
        answer(&cut, "/svc/x")
    });
    // Back in touch: shared again, nothing marked down.
    relay.restore();
    wait_shared(&[&cut, &other], 2);
    assert!(etcd.get_prefix(HEALTH).is_empty());
}

#[test]
fn a_node_that_does_not_share_probes_is_given_no_instances() {
    // A rolling upgrade: a node of an older version writes its record
    // without `shares_health` and probes for itself only. Were it given a
    // share, those instances would go unprobed for the fleet.
    let etcd = Etcd::start();
    let (backends, _lease) = instances(&etcd, 6);
    let old = etcd.keep_alive(30);
    let record = serde_json::json!({"node_id": "old", "version": "0.0.9", "config_revision": 0});
    etcd.put_with_lease("/tollgate/gateways/old", &record.to_string(), old.id);
    let gw = start_gw("new", &[etcd.endpoint()]);
    wait_status(&gw, "both gateways seen, probes shared", APPLY, |s| {
        s["gateways"] == 2 && s["health_verdicts"] == "shared" && s["roles"]["health-prober"] == 6
    });
    let rate = probe_rate(&backends, 120);
    assert!((0.7..1.4).contains(&rate), "{rate:.2}");
    // A record deleted by hand is written again (within its 5 s check).
    etcd.delete("/tollgate/gateways/new");
    wait_ok("the record back", Duration::from_secs(15), || {
        etcd.get("/tollgate/gateways/new").ok_or("gone".to_string())
    });
}

#[test]
fn a_static_nodes_verdict_takes_it_out_on_every_node() {
    // A static node's id is its URL (with `/` in it): its verdict key is
    // `<prefix>/health/<upstream>/http://…`.
    let etcd = Etcd::start();
    let (ok, sick) = (Backend::start("ok"), Backend::start("sick"));
    let policy = serde_json::json!({
        "nodes": [ok.url(), sick.url()],
        "health_check": { "active": { "path": "/healthz", "interval_ms": INTERVAL_MS, "unhealthy": 2, "healthy": 2 } }
    });
    etcd.put("/tollgate/upstreams/svc", &policy.to_string());
    put_route(etcd.client(), "svc", &["/svc/*rest"], "svc");
    let gws: Vec<Gateway> = (1..=2)
        .map(|i| start_gw(&format!("st-{i}"), &[etcd.endpoint()]))
        .collect();
    wait_shared(&gws.iter().collect::<Vec<_>>(), 2);
    sick.set_mode(Mode::Status(503));
    let key = format!("{HEALTH}{}", sick.url());
    wait_ok("the static node's verdict", APPLY, || {
        etcd.get(&key).ok_or("none".to_string())
    });
    for gw in &gws {
        wait_ok("only the healthy node serves", APPLY, || {
            let seen = answers(gw, 8)?;
            (seen.keys().collect::<Vec<_>>() == ["ok"])
                .then_some(())
                .ok_or(format!("{seen:?}"))
        });
    }
}

#[test]
fn a_dead_probers_verdict_is_carried_over_by_the_next() {
    // Probes every 3 s, two failures to flip: a new prober starting from
    // scratch would probe twice before marking the instance down again.
    let etcd = Etcd::start();
    let ids = [owned_by(&["a", "b"], "a")];
    let backends: Vec<Backend> = ids.iter().map(|n| Backend::start(n)).collect();
    let _lease = etcd.keep_alive(30);
    etcd.put_with_lease(
        &format!("{SERVICES}svc/{}", ids[0]),
        &backends[0].url(),
        _lease.id,
    );
    let policy = serde_json::json!({
        "health_check": { "active": { "path": "/healthz", "interval_ms": 3000, "unhealthy": 2, "healthy": 2 } }
    });
    etcd.put("/tollgate/upstreams/svc", &policy.to_string());
    put_route(etcd.client(), "svc", &["/svc/*rest"], "svc");
    let mut a = start_gw("a", &[etcd.endpoint()]);
    let b = start_gw("b", &[etcd.endpoint()]);
    wait_shared(&[&a, &b], 2);
    backends[0].set_mode(Mode::Status(503));
    let key = format!("{HEALTH}{}", ids[0]);
    let v = wait_ok("a's verdict", Duration::from_secs(20), || {
        etcd.get(&key).ok_or("none".to_string())
    });
    assert!(v.contains("\"node\":\"a\""), "{v}");
    a.signal(testkit::SIGKILL);
    let _ = a.wait_exit(Duration::from_secs(5));
    // From here only b probes (once it owns the instance).
    let at_kill = backends[0].hits();
    // a's lease ends (10 s): its verdict goes, and b writes its own at once.
    wait_ok(
        "a's verdict gone with its lease",
        Duration::from_secs(20),
        || match etcd.get(&key) {
            Some(v) if v.contains("\"node\":\"a\"") => Err("still a's".to_string()),
            _ => Ok(()),
        },
    );
    let v = wait_ok("b's verdict", Duration::from_secs(10), || {
        etcd.get(&key).ok_or("none".to_string())
    });
    assert!(v.contains("\"node\":\"b\""), "{v}");
    let probes = backends[0].hits() - at_kill;
    assert!(
        probes < 2,
        "b probed {probes} times before its verdict: it started from scratch"
    );
}
