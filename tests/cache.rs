//! The response cache as a client sees it, on a standalone gateway (both
//! engines): MISS then HIT with `Age`, `X-Cache: BYPASS` for what is not
//! cached (POST, ranges, `no-store`, `private`, `Set-Cookie`, `Vary: *`),
//! the key (query, host, vary headers) and unkeyed headers that could
//! poison it stripped, coalescing of concurrent misses, an answer over
//! `max_body_bytes` streamed whole and not kept, an upstream dying
//! mid-body (nothing half-written kept), stale-if-error with the backend
//! down, and memory within `cache.max_bytes` under many distinct keys.

mod common;

use std::time::Duration;

use common::etcd_gw::metric;
use common::{send, start, upstream, READY};
use testkit::{wait_for, Backend, Gateway, Mode};

fn gateway(b: &Backend, extra: &str) -> Gateway {
    start(&format!(
        "routes:\n\
         - {{ id: c, paths: [\"/c/*rest\"], upstream: b, cache: {{ttl_s: 60, vary_headers: [accept-language]}} }}\n\
         - {{ id: nq, paths: [\"/nq/*rest\"], upstream: b, cache: {{key: [path]}} }}\n\
         - {{ id: small, paths: [\"/small/*rest\"], upstream: b, cache: {{max_body_bytes: 1000}} }}\n\
         - {{ id: stale, paths: [\"/stale/*rest\"], upstream: b, cache: {{ttl_s: 1, stale_if_error_s: 300}} }}\n\
         {extra}upstreams:\n{}",
        upstream("b", &[b])
    ))
}

fn x_cache(r: &testkit::Resp) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[test]
fn a_miss_is_stored_and_the_next_request_is_a_hit_with_its_age() {
    let b = Backend::start("b");
    let gw = gateway(&b, "");
    let r = send(&gw, "GET", "/c/a?x=1", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{r:?}");
    let first = r.body.clone();
    let hits = b.hits();
    let r = send(&gw, "GET", "/c/a?x=1", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"), "{r:?}");
    assert_eq!(r.body, first, "the stored body");
    assert!(r.header("age").is_some(), "{r:?}");
    assert!(
        r.header("x-request-id").is_some(),
        "the gateway's own headers on a hit"
    );
    assert_eq!(b.hits(), hits, "the upstream was not asked again");
    let r = send(&gw, "HEAD", "/c/a?x=1", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    assert!(r.body.is_empty());
    // The key: the query, the host's spelling does not matter, the vary header does.
    assert_eq!(x_cache(&send(&gw, "GET", "/c/a?x=2", &[])), "MISS");
    assert_eq!(
        x_cache(&send(&gw, "GET", "/c/a?x=1", &[("host", "LOCALHOST")])),
        "MISS"
    );
    assert_eq!(
        x_cache(&send(&gw, "GET", "/c/a?x=1", &[("host", "localhost")])),
        "HIT"
    );
    assert_eq!(
        x_cache(&send(&gw, "GET", "/c/a?x=1", &[("accept-language", "fr")])),
        "MISS"
    );
    assert_eq!(x_cache(&send(&gw, "GET", "/nq/a?x=1", &[])), "MISS");
    assert_eq!(
        x_cache(&send(&gw, "GET", "/nq/a?x=2", &[])),
        "HIT",
        "query not keyed"
    );
    assert_eq!(
        metric(&gw, r#"tollgate_cache_requests_total{result="hit"}"#),
        4.0
    );
}

#[test]
fn what_must_not_be_shared_is_not_stored() {
    let b = Backend::start("b");
    let gw = gateway(
        &b,
        "- { id: posted, paths: [\"/posted/*rest\"], upstream: b, cache: {}, plugins: [{proxy-rewrite: {method: POST}}] }\n",
    );
    for (path, headers, why) in [
        ("/c/post", vec![], "POST"),
        ("/c/range", vec![("range", "bytes=0-3")], "a range"),
        (
            "/c/nostore",
            vec![("x-reply-header", "cache-control: no-store")],
            "no-store",
        ),
        (
            "/c/private",
            vec![("x-reply-header", "cache-control: private")],
            "private",
        ),
        (
            "/c/cookie",
            vec![("x-reply-header", "set-cookie: s=1")],
            "Set-Cookie",
        ),
        ("/c/vary", vec![("x-reply-header", "vary: *")], "Vary: *"),
        (
            "/c/varyc",
            vec![("x-reply-header", "vary: cookie")],
            "an unkeyed Vary",
        ),
        (
            "/c/auth",
            vec![("authorization", "Bearer x")],
            "Authorization without public",
        ),
    ] {
        let method = if why == "POST" { "POST" } else { "GET" };
        let first = send(&gw, method, path, &headers);
        assert_eq!(first.status, 200, "{why}: {first:?}");
        let again = send(&gw, method, path, &headers);
        assert_ne!(x_cache(&again), "HIT", "{why}: {again:?}");
    }
    assert_eq!(x_cache(&send(&gw, "POST", "/c/post", &[])), "BYPASS");
    // A GET a plugin sends upstream as a POST: the POST's answer is not
    // stored to serve GETs.
    for _ in 0..2 {
        let r = send(&gw, "GET", "/posted/x", &[]);
        assert_eq!((r.status, x_cache(&r)), (200, "BYPASS"), "{r:?}");
        assert_eq!(r.json()["method"], "POST", "{r:?}");
    }
    // A WebSocket handshake goes to the upstream, never to a stored 200.
    assert_eq!(x_cache(&send(&gw, "GET", "/c/ws", &[])), "MISS");
    let ws = [("connection", "upgrade"), ("upgrade", "websocket")];
    let r = send(&gw, "GET", "/c/ws", &ws);
    assert_eq!(x_cache(&r), "BYPASS", "{r:?}");
    assert_eq!(r.json()["headers"]["upgrade"], "websocket");
    // A request with Authorization is served a stored answer, and its own
    // answer never makes the key skip the cache for others.
    assert_eq!(x_cache(&send(&gw, "GET", "/c/shared", &[])), "MISS");
    let authed = [("authorization", "Bearer x")];
    assert_eq!(x_cache(&send(&gw, "GET", "/c/shared", &authed)), "HIT");
    assert_eq!(x_cache(&send(&gw, "GET", "/c/authfirst", &authed)), "MISS");
    assert_eq!(
        x_cache(&send(&gw, "GET", "/c/authfirst", &[])),
        "MISS",
        "not stored"
    );
    assert_eq!(
        x_cache(&send(&gw, "GET", "/c/authfirst", &[])),
        "HIT",
        "no pass left behind"
    );
}

#[test]
fn unkeyed_headers_an_upstream_could_reflect_never_reach_it() {
    let b = Backend::start("b");
    let gw = gateway(&b, "");
    let evil = [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-http-method-override", "DELETE"),
    ];
    let r = send(&gw, "GET", "/c/poison", &evil);
    let j = r.json();
    for (h, _) in evil {
        assert!(
            j["headers"].get(h).is_none(),
            "{h} reached the upstream: {j}"
        );
    }
    // The next client gets the clean entry.
    let r = send(&gw, "GET", "/c/poison", &[]);
    assert_eq!(x_cache(&r), "HIT");
    assert!(!r.body.contains("evil"), "{r:?}");
}

#[test]
fn concurrent_misses_make_one_upstream_request() {
    let b = Backend::start("b");
    let gw = gateway(&b, "");
    b.set_mode(Mode::Stall(Duration::from_millis(300)));
    let before = b.hits();
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let url = gw.url("/c/coalesce");
            std::thread::spawn(move || testkit::http_request("GET", &url, &[], None))
        })
        .collect();
    let mut ok = 0;
    for h in handles {
        let r = h.join().unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(b.hits() - before, 1, "one upstream request for 200 misses");
    assert!(metric(&gw, "tollgate_cache_coalesced_total") >= 1.0);
}

#[test]
fn a_big_answer_streams_through_and_a_broken_one_is_not_kept() {
    let b = Backend::start("b");
    let gw = gateway(&b, "");
    let big = [("x-reply-size", "5000")];
    let r = send(&gw, "GET", "/small/big", &big);
    assert_eq!((r.status, r.body.len()), (200, 5000), "streamed whole");
    let r = send(&gw, "GET", "/small/big", &big);
    assert_ne!(x_cache(&r), "HIT", "over max_body_bytes: not kept");
    assert_eq!(r.body.len(), 5000);
    // The upstream dies mid-body: nothing of it is served later.
    b.set_mode(Mode::CloseMidResponse);
    let _ = gw.request("GET", "/c/broken", &[], None);
    b.set_mode(Mode::Normal);
    let r = send(&gw, "GET", "/c/broken", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{r:?}");
    assert!(r.json()["path"].is_string(), "a whole answer");
}

#[test]
fn a_stale_entry_answers_while_the_upstream_is_down() {
    let b = Backend::start("b");
    let gw = gateway(&b, "");
    let first = send(&gw, "GET", "/stale/x", &[]);
    assert_eq!(x_cache(&first), "MISS");
    b.set_mode(Mode::Refuse);
    // Fresh for a second, then stale: the error is answered from it.
    wait_for(
        "the entry to go stale and answer for the dead upstream",
        READY,
        || {
            let r = send(&gw, "GET", "/stale/x", &[]);
            r.status == 200 && x_cache(&r) == "STALE" && r.body == first.body
        },
    );
    b.set_mode(Mode::Status(500));
    let r = send(&gw, "GET", "/stale/x", &[]);
    assert_eq!(
        (r.status, x_cache(&r)),
        (200, "STALE"),
        "a 5xx answered from it too"
    );
    // Without a stale entry the error goes through.
    let r = send(&gw, "GET", "/stale/other", &[]);
    assert_eq!(r.status, 500);
}

#[test]
fn many_distinct_keys_stay_within_max_bytes() {
    let b = Backend::start("b");
    let gw = gateway(&b, "cache: { max_bytes: 1048576 }\n");
    let body = [("x-reply-size", "900")];
    for i in 0..3000 {
        let r = send(&gw, "GET", &format!("/c/k{i}"), &body);
        assert_eq!(r.status, 200);
    }
    let bytes = metric(&gw, "tollgate_cache_bytes");
    assert!(bytes > 0.0 && bytes <= 1_048_576.0, "{bytes}");
    assert!(metric(&gw, "tollgate_cache_evictions_total") > 0.0);
}

#[test]
fn stale_while_revalidate_answers_stale_at_once_and_refreshes_behind_it() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "routes:\n\
         - {{ id: swr, paths: [\"/swr/*rest\"], upstream: b, cache: {{ttl_s: 1, stale_while_revalidate_s: 300}} }}\n\
         upstreams:\n{}",
        upstream("b", &[&b])
    ));
    let first = send(&gw, "GET", "/swr/x", &[]);
    assert_eq!(x_cache(&first), "MISS");
    let core = std::env::var("TOLLGATE_PROXY_ENGINE").map_or(true, |e| e != "pingora");
    if core {
        // The core engine answers stale at once, even from a slow upstream,
        // and refreshes in the background.
        b.set_mode(Mode::Stall(Duration::from_millis(500)));
        wait_for("the entry to go stale", READY, || {
            let r = send(&gw, "GET", "/swr/x", &[]);
            assert_eq!(
                r.body, first.body,
                "stale or fresh, the stored answer: {r:?}"
            );
            x_cache(&r) == "STALE"
        });
    }
    // Then a new answer (the echo body carries each request's id).
    wait_for("the entry refreshed", READY, || {
        let r = send(&gw, "GET", "/swr/x", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        x_cache(&r) == "HIT" && r.body != first.body
    });
}

fn key_hash(secret: &str) -> String {
    let out = std::process::Command::new(common::bin())
        .args(["hash-secret", secret])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["key_sha256"].as_str().unwrap().to_string()
}

#[test]
fn one_consumers_answer_is_never_served_to_another() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "consumers:\n\
         - {{ name: alice, key_auth: {{ key_sha256: \"{}\" }} }}\n\
         - {{ name: bob, key_auth: {{ key_sha256: \"{}\" }} }}\n\
         routes:\n\
         - {{ id: shared, paths: [\"/shared/*rest\"], upstream: b, plugins: [{{key-auth: {{}}}}], cache: {{}} }}\n\
         - {{ id: per, paths: [\"/per/*rest\"], upstream: b, plugins: [{{key-auth: {{}}}}], cache: {{key: [path, consumer]}} }}\n\
         upstreams:\n{}",
        key_hash("alice-key"),
        key_hash("bob-key"),
        upstream("b", &[&b])
    ));
    let alice = [("apikey", "alice-key")];
    let bob = [("apikey", "bob-key")];
    // Not keyed on the consumer: an identified caller is never cached.
    assert_eq!(x_cache(&send(&gw, "GET", "/shared/x", &alice)), "BYPASS");
    assert_eq!(x_cache(&send(&gw, "GET", "/shared/x", &alice)), "BYPASS");
    // Keyed on the consumer: each has an entry of their own.
    let a1 = send(&gw, "GET", "/per/x", &alice);
    assert_eq!(x_cache(&a1), "MISS");
    assert_eq!(a1.json()["headers"]["x-consumer-name"], "alice");
    let b1 = send(&gw, "GET", "/per/x", &bob);
    assert_eq!(x_cache(&b1), "MISS", "not alice's entry");
    assert_eq!(b1.json()["headers"]["x-consumer-name"], "bob");
    let a2 = send(&gw, "GET", "/per/x", &alice);
    assert_eq!(x_cache(&a2), "HIT");
    assert_eq!(a2.json()["headers"]["x-consumer-name"], "alice");
    // No key: refused before the cache (401, never a cached answer).
    assert_eq!(send(&gw, "GET", "/per/x", &[]).status, 401);
}
