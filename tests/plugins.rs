//! Plugins as a user sees them (both engines: scripts/test.sh runs this
//! file again with TOLLGATE_PROXY_ENGINE=pingora): the onion's order, early
//! answers seen by the plugins outside them, the settings' plugins around
//! every route, each plugin's effect at the upstream or the client, the
//! abuse each must refuse, and a bad plugin config in etcd rejected with
//! the previous version still serving.

mod common;

use std::time::Duration;

use common::etcd_gw::{metric, put_plugin_route, start_gw, ROUTES};
use common::{assert_gateway_error, echo, send, start, upstream, READY};
use testkit::{http_request, wait_for, Backend, Etcd};

const ORIGIN: &str = "https://app.example";

fn gateway(b: &Backend) -> testkit::Gateway {
    start(&format!(
        "settings:\n\
         \x20\x20plugins: [{{response-rewrite: {{headers: {{set: {{x-global: \"1\"}}}}}}}}]\n\
         routes:\n\
         - id: guarded\n\
         \x20\x20paths: [\"/guarded/*rest\"]\n\
         \x20\x20upstream: b\n\
         \x20\x20plugins:\n\
         \x20\x20- cors: {{ origins: [\"{ORIGIN}\", \"https://*.example.org\"], expose_headers: [x-backend] }}\n\
         \x20\x20- ip-restriction: {{ deny: [\"127.0.0.0/8\", \"::1\"] }}\n\
         - id: open\n\
         \x20\x20paths: [\"/open/*rest\"]\n\
         \x20\x20upstream: b\n\
         \x20\x20plugins: [{{cors: {{origins: [\"{ORIGIN}\"], credentials: true}}}}]\n\
         - id: small\n\
         \x20\x20paths: [\"/small\"]\n\
         \x20\x20upstream: b\n\
         \x20\x20plugins: [{{request-size: {{max_bytes: 10}}}}]\n\
         - id: moved\n\
         \x20\x20paths: [\"/moved/*rest\"]\n\
         \x20\x20upstream: b\n\
         \x20\x20plugins: [{{redirect: {{uri: \"https://new.example$uri\", code: 301}}}}]\n\
         - id: rewritten\n\
         \x20\x20paths: [\"/old/*rest\"]\n\
         \x20\x20upstream: b\n\
         \x20\x20plugins:\n\
         \x20\x20- proxy-rewrite: {{ regex_uri: [\"^/old/(.*)$\", \"/new/$1\"], headers: {{ set: {{x-added: yes}}, remove: [x-secret] }} }}\n\
         \x20\x20- response-rewrite: {{ status: 201, headers: {{ add: {{x-rewritten: \"1\"}}, remove: [x-backend] }} }}\n\
         upstreams:\n{}",
        upstream("b", &[b])
    ))
}

#[test]
fn an_early_answer_is_seen_by_the_plugins_outside_it_and_never_reaches_the_upstream() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    // ip-restriction (inside cors) refuses a local client: the 403 still
    // carries cors' headers, and the settings' plugin wraps them both.
    let r = send(&gw, "GET", "/guarded/x", &[("origin", ORIGIN)]);
    assert_gateway_error(&r, 403, "client address not allowed");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(ORIGIN),
        "{r:?}"
    );
    assert_eq!(r.header("x-global"), Some("1"), "{r:?}");
    // A preflight is answered by cors itself, before ip-restriction.
    let preflight = |origin: &str| {
        send(
            &gw,
            "OPTIONS",
            "/guarded/x",
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-token"),
            ],
        )
    };
    let r = preflight("https://a.example.org");
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example.org")
    );
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT"),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(r.header("x-global"), Some("1"), "{r:?}");
    // An origin not on the list: refused, no CORS header.
    let r = preflight("https://evil.example");
    assert_gateway_error(&r, 403, "CORS origin not allowed");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    let r = preflight("https://example.org");
    assert_eq!(r.status, 403, "the apex is not a subdomain: {r:?}");
    assert_eq!(b.hits(), 0, "nothing reached the upstream");
}

#[test]
fn cors_headers_go_on_upstream_answers_to_allowed_origins_only() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let r = send(&gw, "GET", "/open/x", &[("origin", ORIGIN)]);
    echo(&r);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(
        r.header("vary").is_some_and(|v| v.contains("Origin")),
        "{r:?}"
    );
    assert_eq!(r.header("x-global"), Some("1"));
    let r = send(&gw, "GET", "/open/x", &[("origin", "https://evil.example")]);
    echo(&r);
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    assert!(
        r.header("vary").is_some_and(|v| v.contains("Origin")),
        "{r:?}"
    );
}

#[test]
fn request_size_refuses_declared_and_streamed_bodies_over_its_limit() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let post = |body: &[u8], headers: &[(&str, &str)]| {
        gw.request("POST", "/small", headers, Some(body))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let r = post(b"0123456789", &[]);
    assert_eq!(echo(&r)["body_len"], 10);
    let r = post(b"0123456789A", &[]);
    assert_gateway_error(&r, 413, "too large");
    assert_eq!(r.header("x-global"), Some("1"), "{r:?}");
    // Chunked: no length to refuse by up front; cut off while streaming.
    let raw = testkit::raw_request(
        gw.proxy_addr(),
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n6789AB\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(b.hits(), 1);
}

#[test]
fn redirects_keep_the_operators_host_whatever_the_client_sends() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let r = send(&gw, "GET", "/moved/a/b?x=1", &[("host", "evil.example")]);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://new.example/moved/a/b?x=1")
    );
    assert_eq!(r.header("x-global"), Some("1"));
    assert_eq!(b.hits(), 0);
}

#[test]
fn proxy_rewrite_changes_what_the_upstream_gets_and_refuses_injected_captures() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let r = send(&gw, "GET", "/old/a/b?q=1", &[("x-secret", "s3cret")]);
    // response-rewrite: status 201 (so not `echo`, which wants a 200).
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("x-rewritten"), Some("1"));
    assert_eq!(r.header("x-backend"), None, "removed on the way out");
    let j = r.json();
    assert_eq!(j["path"], "/new/a/b?q=1");
    assert_eq!(j["headers"]["x-added"], "yes");
    assert!(j["headers"].get("x-secret").is_none(), "{j}");
    // A captured segment that would be a header break, a NUL or a
    // backslash: refused before it goes anywhere.
    let hits = b.hits();
    for bad in [
        "/old/x%0d%0aSet-Cookie:%20a=b",
        "/old/x%00",
        "/old/a%5c..%5cadmin",
    ] {
        let r = send(&gw, "GET", bad, &[]);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(r.header("set-cookie").is_none(), "{r:?}");
    }
    assert_eq!(b.hits(), hits);
}

#[test]
fn a_bad_plugin_config_in_etcd_is_refused_and_the_previous_version_keeps_serving() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let c = etcd.client();
    c.put(
        "/tollgate/upstreams/b",
        &serde_json::json!({ "nodes": [b.url()] }).to_string(),
    );
    let route = |plugins: serde_json::Value| {
        serde_json::json!({ "paths": ["/api/*rest"], "upstream": "b", "plugins": plugins })
            .to_string()
    };
    c.put(
        &format!("{ROUTES}api"),
        &route(serde_json::json!([{"response-rewrite": {"headers": {"set": {"x-v": "1"}}}}])),
    );
    let gw = start_gw("plugins", &[etcd.endpoint()]);
    // The value of response header `name` on GET /api/x.
    let header = |name: &str| {
        http_request("GET", &gw.url("/api/x"), &[], None)
            .ok()
            .and_then(|r| r.header(name).map(str::to_string))
    };
    let v = || header("x-v");
    let g = || header("x-g");
    wait_for("the route with its plugin", READY, || {
        v().as_deref() == Some("1")
    });

    for bad in [
        serde_json::json!([{"no-such-plugin": {}}]),
        serde_json::json!([{"cors": {"origins": ["*"], "credentials": true}}]),
        serde_json::json!([{"ip-restriction": {"allow": ["10.0.0.0/33"]}}]),
        serde_json::json!([{"proxy-rewrite": {"regex_uri": ["(", "/x"]}}]),
        serde_json::json!([{"redirect": {"uri": "https://$host/x"}}]),
    ] {
        let before = metric(&gw, "tollgate_config_rejected_total{kind=\"route\"}");
        c.put(&format!("{ROUTES}api"), &route(bad.clone()));
        wait_for("the rejection", READY, || {
            metric(&gw, "tollgate_config_rejected_total{kind=\"route\"}") > before
        });
        assert_eq!(
            v().as_deref(),
            Some("1"),
            "{bad}: the previous version serves"
        );
    }
    assert!(gw.logs().contains("plugins[0]"), "the log names the field");

    // The settings' plugins wrap every route, and go with the settings.
    c.put(
        "/tollgate/settings",
        &serde_json::json!({"plugins": [{"response-rewrite": {"headers": {"set": {"x-g": "1"}}}}]})
            .to_string(),
    );
    wait_for("the settings' plugin", READY, || {
        g().as_deref() == Some("1")
    });
    c.delete("/tollgate/settings");
    wait_for("the settings' plugin gone", READY, || g().is_none());
    assert_eq!(v().as_deref(), Some("1"));
}

fn sha256_hex(secret: &str) -> String {
    let out = std::process::Command::new(common::bin())
        .args(["hash-secret", secret])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    v["key_sha256"].as_str().unwrap().to_string()
}

#[test]
fn key_auth_names_the_consumer_upstream_and_refuses_missing_or_wrong_keys() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "access_log: {{ enabled: true, path: \"-\" }}\n\
         consumers:\n\
         - {{ name: alice, key_auth: {{ key_sha256: \"{}\" }} }}\n\
         - {{ name: bob, key_auth: {{ key_sha256: \"{}\" }} }}\n\
         routes:\n\
         - {{ id: keyed, paths: [\"/keyed/*rest\"], upstream: b, plugins: [{{cors: {{origins: [\"{ORIGIN}\"]}}}}, {{key-auth: {{}}}}] }}\n\
         - {{ id: query, paths: [\"/q\"], upstream: b, plugins: [{{key-auth: {{query: apikey}}}}] }}\n\
         - {{ id: plain, paths: [\"/plain\"], upstream: b }}\n\
         upstreams:\n{}",
        sha256_hex("alice-key"),
        sha256_hex("bob-key"),
        upstream("b", &[&b])
    ));
    // Missing and wrong keys: 401, with the CORS headers of the plugin
    // outside, and nothing upstream.
    let r = send(&gw, "GET", "/keyed/x", &[("origin", ORIGIN)]);
    assert_gateway_error(&r, 401, "missing API key");
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    for wrong in ["alice-kez", "blice-key", "alice-key2", ""] {
        let r = send(&gw, "GET", "/keyed/x", &[("apikey", wrong)]);
        assert_eq!(r.status, 401, "{wrong:?}: {r:?}");
    }
    assert_eq!(b.hits(), 0);
    // The right key: the upstream learns who, never sees the key, and a
    // name the client claims is replaced.
    let r = send(
        &gw,
        "GET",
        "/keyed/x",
        &[("apikey", "bob-key"), ("x-consumer-name", "alice")],
    );
    let j = echo(&r);
    assert_eq!(j["headers"]["x-consumer-name"], "bob", "{j}");
    assert!(j["headers"].get("apikey").is_none(), "{j}");
    // A route without auth passes no claimed name on.
    let j = echo(&send(&gw, "GET", "/plain", &[("x-consumer-name", "alice")]));
    assert!(j["headers"].get("x-consumer-name").is_none(), "{j}");
    // A key in the query is taken out of it.
    let j = echo(&send(&gw, "GET", "/q?a=1&apikey=alice-key&b=2", &[]));
    assert_eq!(j["path"], "/q?a=1&b=2");
    assert_eq!(j["headers"]["x-consumer-name"], "alice");
    assert_eq!(send(&gw, "GET", "/q?a=1", &[]).status, 401);

    wait_for("the consumer in the access log", READY, || {
        gw.logs()
            .contains("\"route\":\"keyed\",\"consumer\":\"bob\"")
    });
    assert_eq!(
        metric(&gw, "tollgate_consumer_requests_total{consumer=\"alice\"}"),
        1.0
    );
}

#[test]
fn a_consumer_put_deleted_or_refused_in_etcd_applies_on_the_next_request() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let c = etcd.client();
    let plugins = serde_json::json!([{"key-auth": {}}]);
    put_plugin_route(c, &b.url(), "api", "/api", plugins);
    let gw = start_gw("consumers", &[etcd.endpoint()]);
    let status = |key: &str| {
        http_request("GET", &gw.url("/api"), &[("apikey", key)], None)
            .map(|r| r.status)
            .unwrap_or(0)
    };
    wait_for("the keyed route", READY, || status("k1") == 401);
    let consumer = |hash: &str| serde_json::json!({"key_auth": {"key_sha256": hash}}).to_string();
    c.put("/tollgate/consumers/carol", &consumer(&sha256_hex("k1")));
    wait_for("carol's key to work", READY, || status("k1") == 200);

    // A plaintext key where the hash goes: refused, the old key still works.
    let before = metric(&gw, "tollgate_config_rejected_total{kind=\"consumer\"}");
    c.put(
        "/tollgate/consumers/carol",
        &serde_json::json!({"key_auth": {"key": "k2"}}).to_string(),
    );
    wait_for("the rejection", READY, || {
        metric(&gw, "tollgate_config_rejected_total{kind=\"consumer\"}") > before
    });
    assert_eq!(status("k1"), 200);
    assert_eq!(status("k2"), 401);
    assert!(gw.logs().contains("key_auth"), "the log names the field");

    // Rotated, then deleted: the old key stops at once.
    c.put("/tollgate/consumers/carol", &consumer(&sha256_hex("k2")));
    wait_for("the new key", READY, || status("k2") == 200);
    assert_eq!(status("k1"), 401);
    c.delete("/tollgate/consumers/carol");
    wait_for("the deleted consumer's key to stop working", READY, || {
        status("k2") == 401
    });
}
