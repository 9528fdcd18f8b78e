//! Plugins as a user sees them (both engines: scripts/test.sh runs this
//! file again with TOLLGATE_PROXY_ENGINE=pingora): the onion's order, early
//! answers seen by the plugins outside them, the settings' plugins around
//! every route, each plugin's effect at the upstream or the client, the
//! abuse each must refuse, and a bad plugin config in etcd rejected with
//! the previous version still serving.

mod common;

use std::time::Duration;

use common::etcd_gw::{metric, start_gw, ROUTES};
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
    let v = |gw: &testkit::Gateway| {
        http_request("GET", &gw.url("/api/x"), &[], None)
            .ok()
            .and_then(|r| r.header("x-v").map(str::to_string))
    };
    wait_for("the route with its plugin", READY, || {
        v(&gw).as_deref() == Some("1")
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
            v(&gw).as_deref(),
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
    let g = |gw: &testkit::Gateway| {
        http_request("GET", &gw.url("/api/x"), &[], None)
            .ok()
            .and_then(|r| r.header("x-g").map(str::to_string))
    };
    wait_for("the settings' plugin", READY, || {
        g(&gw).as_deref() == Some("1")
    });
    c.delete("/tollgate/settings");
    wait_for("the settings' plugin gone", READY, || g(&gw).is_none());
    assert_eq!(v(&gw).as_deref(), Some("1"));
}
