//! `tollgate apply/diff/get/export/status` against a real etcd and a real
//! gateway: documents applied and served, a second apply with no changes,
//! a field-by-field diff, --prune, one bad document among 100 refusing the
//! whole apply (nothing written, the file and field named), an export that
//! apply takes back unchanged, and --wait for the fleet.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::etcd_gw::{start_gw, ROUTES};
use common::{bin, READY};
use testkit::{http_request, wait_for, Backend, Etcd};

fn tollgate(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--etcd", &etcd.endpoint()])
        .args(["-c", "/nonexistent.yaml"])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    let status = common::etcd_gw::wait_status(&gw, "the gateway at etcd's state", READY, |s| {
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
