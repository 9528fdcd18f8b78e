//! `tollgate apply/diff/get/export/status` against a real etcd and a real
//! gateway: documents applied and served, a second apply with no changes,
//! a field-by-field diff, --prune, one bad document among 100 refusing the
//! whole apply (nothing written, the file and field named), an export that
//! apply takes back unchanged, --wait for the fleet (outliving fleet reads
//! that time out), and the batch hold:
//! gateways publish a multi-transaction apply whole, never an instance
//! death late, and serve what a dead apply wrote once its marker's lease
//! ends.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::etcd_gw::{
    metric, start_gw, wait_status, GATEWAYS, ROUTES, SERVICES, SIGCONT, SIGSTOP,
};
use common::{bin, output_text as text, READY};
use testkit::{http_request, wait_for, Backend, Etcd};

/// Holds ended by the markers going (the apply's end or its lease's).
const RELEASED: &str = r#"tollgate_config_batch_holds_total{end="released"}"#;

fn tollgate(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--etcd", &etcd.endpoint()])
        .args(["-c", "/nonexistent.yaml"])
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

#[test]
fn apply_diff_prune_and_export_round_trip() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let gw = start_gw("declarative", &[etcd.endpoint()]);
    let dir = common::etcd_gw::TempDir::new("apply");
    let d = dir.path();
    write(
        d,
        "api.yaml",
        &format!(
            "kind: upstream\nid: users\nspec: {{nodes: [\"{}\"]}}\n---\nkind: route\nid: users\nspec: {{paths: [\"/users/*rest\"], upstream: users, retries: 1}}\n---\nkind: consumer\nid: alice\nspec: {{key_auth: {{key: alice-key}}}}\n",
            b.url()
        ),
    );
    let out = tollgate(&etcd, &["apply", "-f", d.to_str().unwrap(), "--wait", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("+ upstream users")
            && t.contains("+ route users")
            && t.contains("+ consumer alice"),
        "{t}"
    );
    assert!(t.contains("every gateway (1) applied"), "{t}");
    let r = http_request("GET", &gw.url("/users/1"), &[], None).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !etcd
            .client()
            .get("/tollgate/consumers/alice")
            .unwrap()
            .contains("alice-key"),
        "hashed"
    );

    // Nothing to do the second time (the key's hash is deterministic).
    let out = tollgate(&etcd, &["diff", "-f", d.to_str().unwrap()]);
    assert!(text(&out).contains("no changes"), "{}", text(&out));
    // A changed field is named.
    write(
        d,
        "api.yaml",
        &std::fs::read_to_string(d.join("api.yaml"))
            .unwrap()
            .replace("retries: 1", "retries: 2"),
    );
    let out = tollgate(&etcd, &["diff", "-f", d.to_str().unwrap()]);
    assert!(
        text(&out).contains("~ route users: retries"),
        "{}",
        text(&out)
    );
    assert!(
        etcd.client()
            .get(&format!("{ROUTES}users"))
            .unwrap()
            .contains("\"retries\":1"),
        "diff writes nothing"
    );

    // Export, then apply the export elsewhere in a dry run: no changes.
    let out = tollgate(&etcd, &["export"]);
    assert!(out.status.success(), "{}", text(&out));
    let export = common::etcd_gw::TempDir::new("export");
    std::fs::write(export.path().join("all.yaml"), &out.stdout).unwrap();
    let out = tollgate(&etcd, &["diff", "-f", export.path().to_str().unwrap()]);
    assert!(text(&out).contains("no changes"), "{}", text(&out));

    // --prune removes what the files no longer have, routes before upstreams.
    std::fs::write(
        d.join("api.yaml"),
        "kind: consumer\nid: alice\nspec: {key_auth: {key: alice-key}}\n",
    )
    .unwrap();
    let out = tollgate(&etcd, &["apply", "-f", d.to_str().unwrap(), "--prune"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let (route, upstream) = (
        t.find("- route users").unwrap(),
        t.find("- upstream users").unwrap(),
    );
    assert!(route < upstream, "{t}");
    wait_for("the route gone", READY, || {
        http_request("GET", &gw.url("/users/1"), &[], None).is_ok_and(|r| r.status == 404)
    });
    let out = tollgate(&etcd, &["get", "consumers", "-o", "json"]);
    assert!(text(&out).contains("\"id\": \"alice\""), "{}", text(&out));
    let out = tollgate(&etcd, &["status"]);
    assert!(
        text(&out).contains("\"node_id\": \"declarative\""),
        "{}",
        text(&out)
    );
}

#[test]
fn one_bad_document_among_a_hundred_writes_nothing_and_is_named() {
    let etcd = Etcd::start();
    let dir = common::etcd_gw::TempDir::new("bad-apply");
    let mut docs = String::from("kind: upstream\nid: u\nspec: {nodes: [\"http://127.0.0.1:1\"]}\n");
    for i in 0..99 {
        let path = if i == 57 {
            "no-slash".to_string()
        } else {
            format!("/r{i}")
        };
        docs.push_str(&format!(
            "---\nkind: route\nid: r{i}\nspec: {{paths: [\"{path}\"], upstream: u}}\n"
        ));
    }
    write(dir.path(), "many.yaml", &docs);
    let out = tollgate(&etcd, &["apply", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("many.yaml[58]") && t.contains("paths[0]"), "{t}");
    assert!(
        etcd.client().get("/tollgate/upstreams/u").is_none(),
        "nothing written"
    );
    // A route naming nothing that exists is refused too.
    write(
        dir.path(),
        "many.yaml",
        "kind: route\nid: r\nspec: {paths: [\"/r\"], upstream: ghost}\n",
    );
    let out = tollgate(&etcd, &["apply", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("ghost"), "{}", text(&out));
}

#[test]
fn an_apply_killed_midway_leaves_whole_transactions_served_and_a_rerun_finishes_it() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let gw = start_gw("killed-apply", &[etcd.endpoint()]);
    etcd.client().put(
        "/tollgate/upstreams/u",
        &serde_json::json!({ "nodes": [b.url()] }).to_string(),
    );
    let dir = common::etcd_gw::TempDir::new("killed-apply");
    let docs: String = (0..3000)
        .map(|i| {
            format!("---\nkind: route\nid: r{i:04}\nspec: {{paths: [\"/r/{i}\"], upstream: u}}\n")
        })
        .collect();
    write(dir.path(), "routes.yaml", &docs);
    let file = dir.path().to_str().unwrap().to_string();
    let mut apply = Command::new(bin())
        .args([
            "apply",
            "-f",
            &file,
            "--etcd",
            &etcd.endpoint(),
            "-c",
            "/nonexistent.yaml",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL as soon as the first transaction is visible (or it is done).
    wait_for("the first routes in etcd", READY, || {
        !etcd.client().get_prefix(ROUTES).is_empty() || apply.try_wait().ok().flatten().is_some()
    });
    let _ = apply.kill();
    let _ = apply.wait();
    let in_etcd = etcd.client().get_prefix(ROUTES).len();
    eprintln!("apply killed with {in_etcd} of 3000 routes written");
    assert_eq!(in_etcd % 100, 0, "etcd holds whole transactions: {in_etcd}");
    if in_etcd < 3000 {
        // The dead apply's marker holds the gateway until its lease ends:
        // meanwhile it serves none of the apply, not the part written.
        let held = "tollgate_config_batch_held";
        wait_for("the gateway holding for the apply", READY, || {
            metric(&gw, held) == 1.0 || metric(&gw, RELEASED) >= 1.0
        });
        let before = metric(&gw, held);
        let routes = wait_status(&gw, "status", READY, |_| true)["routes"].clone();
        if before == 1.0 && metric(&gw, held) == 1.0 {
            assert_eq!(routes, 0, "a held gateway serves none of the apply");
        }
    }
    let status = wait_status(&gw, "the gateway at etcd's state", READY, |s| {
        s["routes"].as_u64() == Some(in_etcd as u64)
    });
    assert_eq!(status["routes"].as_u64(), Some(in_etcd as u64));
    // Run again: the rest is written, nothing twice.
    let out = tollgate(&etcd, &["apply", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert_eq!(
        t.matches("+ route").count(),
        3000 - in_etcd,
        "{}",
        &t[..t.len().min(500)]
    );
    common::etcd_gw::wait_status(&gw, "all 3000 routes", READY, |s| s["routes"] == 3000);
}

#[test]
fn an_apply_of_several_transactions_is_published_whole() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let gw = start_gw("whole-apply", &[etcd.endpoint()]);
    let dir = common::etcd_gw::TempDir::new("whole-apply");
    let mut docs = format!(
        "kind: upstream\nid: u\nspec: {{nodes: [\"{}\"]}}\n",
        b.url()
    );
    for i in 0..250 {
        docs +=
            &format!("---\nkind: route\nid: r{i:03}\nspec: {{paths: [\"/r/{i}\"], upstream: u}}\n");
    }
    write(dir.path(), "all.yaml", &docs);
    let rebuilds = metric(&gw, "tollgate_router_rebuilds_total");
    let out = tollgate(
        &etcd,
        &["apply", "-f", dir.path().to_str().unwrap(), "--wait", "10"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("251 changes, 3 transactions"),
        "{}",
        text(&out)
    );
    assert_eq!(
        metric(&gw, RELEASED),
        1.0,
        "held once, released by the apply's end"
    );
    assert_eq!(metric(&gw, "tollgate_config_batch_held"), 0.0);
    assert_eq!(
        metric(&gw, "tollgate_router_rebuilds_total") - rebuilds,
        1.0,
        "three transactions, one router rebuild"
    );
    for i in [0, 249] {
        let r = gw.request("GET", &format!("/r/{i}"), &[], None).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        etcd.client().get_prefix("/tollgate/batches/").is_empty(),
        "the apply removed its marker"
    );
}

#[test]
fn a_batch_marker_holds_config_but_not_instances_and_its_lease_frees_the_fleet() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let gw = start_gw("held", &[etcd.endpoint()]);
    let c = etcd.client();
    let up = serde_json::json!({ "nodes": [b.url()] }).to_string();
    c.put("/tollgate/upstreams/u", &up);
    common::etcd_gw::put_route(c, "old", &["/old"], "u");
    common::etcd_gw::put_route(c, "reg", &["/reg"], "svc");
    let svc = c.keep_alive(30);
    c.put_with_lease(&format!("{SERVICES}svc/i1"), &b.url(), svc.id);
    wait_status(&gw, "both routes and an instance", READY, |s| {
        s["routes"] == 2 && s["instances"] == 2
    });
    // An apply begins (its marker on a lease), writes, and dies.
    let mut marker = c.keep_alive(2);
    c.put_with_lease("/tollgate/batches/t1", "{}", marker.id);
    common::etcd_gw::put_route(c, "new", &["/new"], "u");
    c.delete(&format!("{ROUTES}old"));
    // Registry events are not held: an instance registered now is served.
    c.put_with_lease(&format!("{SERVICES}svc/i2"), &b.url(), svc.id);
    // A gateway key after the route writes on the same (config) watch: once
    // the gateway counts it, it has seen the writes before it.
    c.put(&format!("{GATEWAYS}other"), "{}");
    wait_status(&gw, "the instance and the second gateway", READY, |s| {
        s["instances"] == 3 && s["gateways"] == 2
    });
    assert_eq!(metric(&gw, "tollgate_config_batch_held"), 1.0);
    assert_eq!(gw.request("GET", "/new", &[], None).unwrap().status, 404);
    assert_eq!(gw.request("GET", "/old", &[], None).unwrap().status, 200);
    // The fleet view says why this node is behind.
    wait_for("the fleet view to show the node holding", READY, || {
        let out = tollgate(&etcd, &["status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["applies_under_way"] == 1
            && v["gateways"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node_id"] == "held" && n["state"] == "holding")
    });
    // The apply died: its lease ends and the gateway serves what it wrote.
    marker.stop_keepalive();
    wait_for("the held changes served", READY, || {
        gw.request("GET", "/new", &[], None)
            .is_ok_and(|r| r.status == 200)
    });
    assert_eq!(gw.request("GET", "/old", &[], None).unwrap().status, 404);
    assert_eq!(metric(&gw, RELEASED), 1.0);
    assert_eq!(metric(&gw, "tollgate_config_batch_held"), 0.0);
    drop(svc);
}

/// `apply --wait` outlives reads of the fleet that time out: the changes
/// are written, so an etcd too slow to answer (each call has 3 s) only
/// delays the answer, and the apply ends as the fleet does.
#[test]
fn apply_wait_outlives_fleet_reads_that_time_out() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let gw = start_gw("slow-fleet-read", &[etcd.endpoint()]);
    // The apply's own path to etcd, which the test can freeze.
    let relay = common::etcd_gw::etcd_relay(&etcd);
    let dir = common::etcd_gw::TempDir::new("slow-fleet-read");
    write(
        dir.path(),
        "api.yaml",
        &format!(
            "kind: upstream\nid: slow\nspec: {{nodes: [\"{}\"]}}\n---\nkind: route\nid: slow\nspec: {{paths: [\"/slow\"], upstream: slow}}\n",
            b.url()
        ),
    );
    // Held behind: its record stays (its lease has 10 s), it applies nothing.
    gw.signal(SIGSTOP);
    let mut apply = Command::new(bin())
        .args(["apply", "-f", dir.path().to_str().unwrap(), "--wait", "30"])
        .args(["--etcd", &relay.url()])
        .args(["-c", "/nonexistent.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the apply to write the route", READY, || {
        let routes = etcd
            .client()
            .get(&format!("{ROUTES}slow"))
            .unwrap_or_default();
        !routes.is_empty()
    });
    // The apply now waits on the fleet: every read from here hangs until
    // its 3 s are up, and the gateway catches up meanwhile.
    relay.freeze();
    gw.signal(SIGCONT);
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(4) {
        if let Some(status) = apply.try_wait().unwrap() {
            let out = apply.wait_with_output().unwrap();
            panic!(
                "the apply ended ({status}) while etcd was slow: {}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.restore();
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("every gateway (1) applied"),
        "{}",
        text(&out)
    );
    let r = gw.request("GET", "/slow", &[], None).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn the_fleet_view_names_a_stale_node() {
    let etcd = Etcd::start();
    let c = etcd.client();
    c.put(&format!("{ROUTES}r"), r#"{"paths":["/r"],"upstream":"u"}"#);
    let record = |stale: bool| {
        serde_json::json!({"node_id": "n", "version": "x", "config_revision": 1, "stale": stale, "holding": false})
            .to_string()
    };
    let state = || {
        let out = tollgate(&etcd, &["status"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["gateways"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    c.put(&format!("{GATEWAYS}n"), &record(true));
    assert_eq!(state(), "stale");
    c.put(&format!("{GATEWAYS}n"), &record(false));
    assert_eq!(state(), "behind");
}
