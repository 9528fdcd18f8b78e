//! The admin REST API as an operator (and an attacker) uses it: keys and
//! roles, writes validated by the gateways' own validator before anything
//! reaches etcd, ETag/If-Match on mod_revisions (two writers with one
//! If-Match: exactly one wins), merge patches, references, secrets hashed
//! on the way in and redacted on the way out, etcd down → 503 with nothing
//! written, the fleet view, and the OpenAPI document against the routes
//! the server really has.

mod common;

use serde_json::{json, Value};
use std::time::Duration;

use common::etcd_gw::{body, wait_connected, ROUTES};
use common::{bin, READY};
use testkit::{free_port, http_request, wait_for, Backend, Etcd, Gateway, Resp};

const ADMIN_KEY: &str = "admin-key-0123456789";
const VIEWER_KEY: &str = "viewer-key-0123456789";

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new(bin())
        .args(["hash-secret", s])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["key_sha256"].as_str().unwrap().to_string()
}

struct Api {
    gw: Gateway,
    base: String,
}

fn start(etcd: &Etcd, node: &str) -> Api {
    start_with(etcd, node, "", false)
}

/// `extra`: more bootstrap lines; `tls`: the API on HTTPS.
fn start_with(etcd: &Etcd, node: &str, extra: &str, tls: bool) -> Api {
    let port = free_port();
    let listen = if tls {
        format!("{{ addr: \"127.0.0.1:{port}\", tls: true }}")
    } else {
        format!("\"127.0.0.1:{port}\"")
    };
    let gw = Gateway::start(
        bin(),
        &format!(
            "{}{extra}admin_api:\n  listen: {listen}\n  keys:\n  - {{ name: ops, sha256: \"{}\", role: admin }}\n  - {{ name: dash, sha256: \"{}\", role: viewer }}\n",
            body(node, &[etcd.endpoint()]),
            sha256_hex(ADMIN_KEY),
            sha256_hex(VIEWER_KEY),
        ),
    );
    wait_connected(&gw, Duration::from_secs(15));
    let scheme = if tls { "https" } else { "http" };
    Api {
        gw,
        base: format!("{scheme}://127.0.0.1:{port}/admin/v1"),
    }
}

impl Api {
    fn call(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(k) = key {
            headers.push(("x-api-key", k));
        }
        if body.is_some() && !extra.iter().any(|(n, _)| *n == "content-type") {
            headers.push(("content-type", "application/json"));
        }
        http_request(
            method,
            &format!("{}{path}", self.base),
            &headers,
            body.map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let text = body.map(|b| b.to_string());
        self.call(Some(ADMIN_KEY), method, path, text.as_deref(), &[])
    }
}

fn etag(r: &Resp) -> String {
    r.header("etag")
        .unwrap_or_else(|| panic!("no ETag: {r:?}"))
        .trim_matches('"')
        .to_string()
}

fn error_fields(r: &Resp) -> Vec<String> {
    r.json()["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|x| x["path"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn keys_and_roles_guard_every_call_and_failures_are_counted() {
    let etcd = Etcd::start();
    let api = start(&etcd, "auth");
    assert_eq!(api.call(None, "GET", "/routes", None, &[]).status, 401);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(
            api.call(Some("wrong"), "GET", "/routes", None, &[]).status,
            401
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "failures are slowed down"
    );
    assert!(common::etcd_gw::metric(&api.gw, "tollgate_admin_auth_failures_total") >= 4.0);
    assert_eq!(
        api.call(Some(VIEWER_KEY), "GET", "/routes", None, &[])
            .status,
        200
    );
    let r = api.call(
        Some(VIEWER_KEY),
        "PUT",
        "/upstreams/u",
        Some(r#"{"nodes": ["http://127.0.0.1:1"]}"#),
        &[],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        etcd.client().get("/tollgate/upstreams/u").is_none(),
        "nothing written"
    );
}

#[test]
fn writes_are_validated_versioned_and_served() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let api = start(&etcd, "crud");
    let r = api.admin("PUT", "/upstreams/users", Some(json!({"nodes": [b.url()]})));
    assert_eq!(r.status, 201, "{r:?}");
    let r = api.admin(
        "PUT",
        "/routes/users",
        Some(json!({"paths": ["/users/*rest"], "upstream": "users", "retries": 1})),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let rev = etag(&r);
    wait_for("the route served", READY, || {
        http_request("GET", &api.gw.url("/users/1"), &[], None).is_ok_and(|r| r.status == 200)
    });
    // GET gives the same version; a write against an older one is refused.
    let got = api.admin("GET", "/routes/users", None);
    assert_eq!(etag(&got), rev);
    assert_eq!(got.json()["retries"], 1);
    let stale = (rev.parse::<i64>().unwrap() - 1).to_string();
    let body = json!({"paths": ["/users/*rest"], "upstream": "users"}).to_string();
    let r = api.call(
        Some(ADMIN_KEY),
        "PUT",
        "/routes/users",
        Some(&body),
        &[("if-match", &stale)],
    );
    assert_eq!(r.status, 412, "{r:?}");
    // Merge patch: null removes a field; the right If-Match passes.
    let r = api.call(
        Some(ADMIN_KEY),
        "PATCH",
        "/routes/users",
        Some(r#"{"retries": null}"#),
        &[("if-match", &format!("\"{rev}\""))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(api
        .admin("GET", "/routes/users", None)
        .json()
        .get("retries")
        .is_none());
    // A patch that would make the route invalid: 400 naming the field, the
    // stored route unchanged, still served.
    let before = etcd.client().get(&format!("{ROUTES}users"));
    let r = api.admin(
        "PATCH",
        "/routes/users",
        Some(json!({"paths": ["no-slash"]})),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(error_fields(&r), vec!["paths[0]".to_string()], "{r:?}");
    assert_eq!(etcd.client().get(&format!("{ROUTES}users")), before);
    // Deleting a referenced upstream: 409 naming the route, unless forced.
    let r = api.admin("DELETE", "/upstreams/users", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.json()["used_by"], json!(["users"]));
    assert_eq!(api.admin("DELETE", "/routes/users", None).status, 200);
    assert_eq!(api.admin("DELETE", "/upstreams/users", None).status, 200);
    assert_eq!(api.admin("GET", "/routes/users", None).status, 404);
    wait_for("the route gone", READY, || {
        http_request("GET", &api.gw.url("/users/1"), &[], None).is_ok_and(|r| r.status == 404)
    });
    // Every write that landed left one audit line (PUT, PUT, PATCH,
    // DELETE, DELETE), the refused ones none.
    wait_for("audit lines", READY, || {
        api.gw.logs().matches("admin write").count() == 5
    });
    assert!(
        api.gw.logs().contains("key=ops"),
        "the audit line names the key"
    );
}

#[test]
fn bad_bodies_ids_and_references_are_refused_and_nothing_is_written() {
    let etcd = Etcd::start();
    let api = start(&etcd, "bad");
    let c = etcd.client();
    let put = |path: &str, body: &str, ct: &str| {
        api.call(
            Some(ADMIN_KEY),
            "PUT",
            path,
            Some(body),
            &[("content-type", ct)],
        )
    };
    let json_ct = "application/json";
    let r = put("/upstreams/u", "{not json", json_ct);
    assert_eq!(r.status, 400, "{r:?}");
    let r = put(
        "/upstreams/u",
        r#"{"nodes": ["http://127.0.0.1:1"], "nodez": 1}"#,
        json_ct,
    );
    assert_eq!(
        (r.status, error_fields(&r)),
        (400, vec!["nodez".to_string()]),
        "{r:?}"
    );
    // Independent mistakes are named together.
    let r = put(
        "/routes/many",
        r#"{"paths": ["/m"], "upstream": "u", "retriez": 1, "priority": "high", "timeout": {"read_ms": 0}}"#,
        json_ct,
    );
    assert_eq!(
        (r.status, error_fields(&r)),
        (
            400,
            vec![
                "priority".to_string(),
                "retriez".to_string(),
                "timeout.read_ms".to_string()
            ]
        ),
        "{r:?}"
    );
    let r = put("/upstreams/u", "nodes: [unclosed", "application/yaml");
    assert_eq!(r.status, 400, "invalid YAML: {r:?}");
    let big = format!(
        "{{\"nodes\": [\"http://127.0.0.1:1\"], \"x\": \"{}\"}}",
        "a".repeat(1_100_000)
    );
    assert_eq!(put("/upstreams/u", &big, json_ct).status, 413);
    for id in ["..", "a%2Fb", &"x".repeat(257)] {
        let r = put(
            &format!("/upstreams/{id}"),
            r#"{"nodes": ["http://127.0.0.1:1"]}"#,
            json_ct,
        );
        assert_eq!(r.status, 400, "{id}: {r:?}");
    }
    let r = put(
        "/upstreams/a/b",
        r#"{"nodes": ["http://127.0.0.1:1"]}"#,
        json_ct,
    );
    assert_eq!(r.status, 400, "{r:?}");
    // A route naming nothing that exists: 400; a registry service: a warning.
    let r = put(
        "/routes/r",
        r#"{"paths": ["/r"], "upstream": "ghost"}"#,
        json_ct,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(c.get("/tollgate/upstreams/u").is_none() && c.get(&format!("{ROUTES}r")).is_none());
    c.put("/services/billing/i1", "http://127.0.0.1:1");
    let r = put(
        "/routes/r",
        "paths: [\"/r\"]\nupstream: billing\n",
        "application/yaml",
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.json()["warnings"][0]
            .as_str()
            .unwrap()
            .contains("registry"),
        "{r:?}"
    );
    // dry_run checks and writes nothing.
    let r = api.call(
        Some(ADMIN_KEY),
        "PUT",
        "/upstreams/d?dry_run=true",
        Some(r#"{"nodes": ["http://127.0.0.1:1"]}"#),
        &[],
    );
    assert_eq!(
        (r.status, r.json()["dry_run"].as_bool()),
        (200, Some(true)),
        "{r:?}"
    );
    assert!(c.get("/tollgate/upstreams/d").is_none());
}

#[test]
fn two_writers_with_one_if_match_one_wins() {
    let etcd = Etcd::start();
    let api = start(&etcd, "race");
    let r = api.admin(
        "PUT",
        "/upstreams/u",
        Some(json!({"nodes": ["http://127.0.0.1:1"]})),
    );
    let rev = etag(&r);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (api, rev) = (&api, &rev);
                s.spawn(move || {
                    let body =
                        json!({"nodes": [format!("http://127.0.0.1:{}", 1000 + i)]}).to_string();
                    api.call(
                        Some(ADMIN_KEY),
                        "PUT",
                        "/upstreams/u",
                        Some(&body),
                        &[("if-match", rev)],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        7,
        "{statuses:?}"
    );
}

#[test]
fn secrets_are_hashed_on_the_way_in_and_never_read_back() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let api = start(&etcd, "secrets");
    api.admin("PUT", "/upstreams/b", Some(json!({"nodes": [b.url()]})));
    api.admin(
        "PUT",
        "/routes/k",
        Some(json!({"paths": ["/k"], "upstream": "b", "plugins": [{"key-auth": {}}]})),
    );
    let r = api.admin(
        "PUT",
        "/consumers/alice",
        Some(json!({"key_auth": {"key": "alice-secret"},
        "jwt": {"iss": "a", "alg": "HS256", "secret": "an-hmac-secret-of-at-least-32-bytes!"}})),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let stored = etcd.client().get("/tollgate/consumers/alice").unwrap();
    assert!(!stored.contains("alice-secret"), "{stored}");
    assert!(stored.contains("key_sha256"));
    let shown = api.admin("GET", "/consumers/alice", None);
    assert_eq!(shown.json()["jwt"]["secret"], "<redacted>");
    assert!(!shown.body.contains("an-hmac-secret"));
    wait_for("alice's key", READY, || {
        http_request(
            "GET",
            &api.gw.url("/k"),
            &[("apikey", "alice-secret")],
            None,
        )
        .is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn etcd_down_is_a_503_and_nothing_half_written() {
    let mut etcd = Etcd::start();
    let api = start(&etcd, "down");
    assert_eq!(api.admin("GET", "/routes", None).status, 200);
    etcd.stop();
    let r = api.admin(
        "PUT",
        "/upstreams/u",
        Some(json!({"nodes": ["http://127.0.0.1:1"]})),
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("nothing written"));
}

#[test]
fn the_fleet_view_shows_each_node_catching_up_and_the_openapi_document_matches_the_server() {
    let etcd = Etcd::start();
    let api = start(&etcd, "fleet-1");
    let _other = common::etcd_gw::start_gw("fleet-2", &[etcd.endpoint()]);
    let r = api.admin(
        "PUT",
        "/upstreams/u",
        Some(json!({"nodes": ["http://127.0.0.1:1"]})),
    );
    let rev: i64 = etag(&r).parse().unwrap();
    wait_for("both nodes at the write's revision", READY, || {
        let v = api.admin("GET", "/gateways", None).json();
        let nodes = v["gateways"].as_array().cloned().unwrap_or_default();
        nodes.len() == 2
            && nodes
                .iter()
                .all(|n| n["config_revision"].as_i64() >= Some(rev) && n["lag"] == 0)
    });
    // Every path and method the document names is served (a missing
    // resource is a 404 that says so, never "no such path").
    let doc = api.admin("GET", "/openapi.json", None).json();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{doc}");
    for (path, ops) in paths {
        let path = path.trim_start_matches("/admin/v1").replace("{id}", "nope");
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            let body = matches!(m.as_str(), "PUT" | "PATCH").then_some("{}");
            let r = api.call(Some(VIEWER_KEY), &m, &path, body, &[]);
            let routed = match r.status {
                404 => r.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no ") && !e.starts_with("no resource kind")),
                405 => false,
                _ => true,
            };
            assert!(routed, "{m} {path}: {r:?}");
        }
    }
}

#[test]
fn the_api_can_be_served_over_tls_with_the_gateways_certificates() {
    let etcd = Etcd::start();
    let dir = common::etcd_gw::TempDir::new("admin-tls");
    let cert = common::tls::make_cert(dir.path(), "admin", &["admin.test"]);
    let tls = format!(
        "tls: {{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}\n",
        cert.cert_file, cert.key_file
    );
    let api = start_with(&etcd, "tls", &tls, true);
    let addr: std::net::SocketAddr = api.base["https://".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let r = common::tls::curl_https(
        addr,
        "admin.test",
        &cert.cert_file,
        "/admin/v1/routes",
        &["-H", &format!("x-api-key: {ADMIN_KEY}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"items\""), "{r:?}");
    let r = common::tls::curl_https(addr, "admin.test", &cert.cert_file, "/admin/v1/routes", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    // Plain HTTP to the TLS port gets no API.
    let plain = http_request(
        "GET",
        &format!("http://{addr}/admin/v1/routes"),
        &[("x-api-key", ADMIN_KEY)],
        None,
    );
    assert!(plain.map_or(true, |r| r.status != 200));
}

#[test]
fn purges_are_checked_and_written_with_their_revision() {
    let etcd = Etcd::start();
    let api = start(&etcd, "purge-api");
    let c = etcd.client();
    c.put(
        "/tollgate/upstreams/u",
        r#"{"nodes":["http://127.0.0.1:9"]}"#,
    );
    c.put(
        "/tollgate/routes/cached",
        r#"{"paths":["/c"],"upstream":"u","cache":{}}"#,
    );
    c.put(
        "/tollgate/routes/plain",
        r#"{"paths":["/p"],"upstream":"u"}"#,
    );
    for (body, why) in [
        (json!({"route": "ghost", "key": "/c"}), "no route"),
        (json!({"route": "plain", "key": "/p"}), "caches nothing"),
        (json!({"route": "cached", "tag": "a b"}), "tag"),
        (
            json!({"route": "cached", "key": "/c", "tag": "t"}),
            "exactly one",
        ),
        (json!({"route": "cached", "prefix": "static/"}), "prefix"),
        (
            json!({"route": "cached", "tag": "t", "extra": 1}),
            "unknown field",
        ),
    ] {
        let r = api.admin("POST", "/purge", Some(body.clone()));
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{body}: {r:?}"
        );
    }
    assert!(
        c.get_prefix("/tollgate/purges/").is_empty(),
        "nothing written"
    );
    let r = api.call(
        Some(VIEWER_KEY),
        "POST",
        "/purge",
        Some(r#"{"route":"cached","tag":"t"}"#),
        &[],
    );
    assert_eq!(r.status, 403);
    let r = api.admin(
        "POST",
        "/purge",
        Some(json!({"route": "cached", "tag": "user-42"})),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let revision = r.json()["revision"].as_i64().unwrap();
    assert_eq!(
        r.header("x-etcd-revision"),
        Some(revision.to_string().as_str())
    );
    let stored = c.get_prefix("/tollgate/purges/");
    assert_eq!(stored.len(), 1);
    assert!(
        common::etcd_gw::lease_of(c, &stored[0].0).is_some_and(|l| l != 0),
        "leased"
    );
    // The node applies it: its announced revision reaches the purge's.
    wait_for("the node to apply the purge", READY, || {
        let v = api.admin("GET", "/gateways", None).json();
        v["gateways"][0]["config_revision"].as_i64() >= Some(revision)
    });
}
