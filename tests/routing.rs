//! Routing through the real gateway (standalone mode): path, priority, host
//! and method precedence; upstream path and Host rewrites; the headers the
//! gateway adds; weighted round robin. Every route has its own backend, so
//! the backend that answered says which route matched.

mod common;

use std::collections::BTreeMap;

use common::{assert_gateway_error, backend_of, echo, is_generated_id, send, start, upstream};
use testkit::{Backend, Gateway};

/// A gateway with one route, `/*rest`, to backend `b`.
fn catch_all_to(b: &Backend) -> Gateway {
    start(&format!(
        "routes:\n- {{ id: r, paths: [\"/*rest\"], upstream: b }}\nupstreams:\n{}",
        upstream("b", &[b])
    ))
}

#[test]
fn exact_beats_param_beats_catch_all() {
    let (exact, param, catch) = (
        Backend::start("exact"),
        Backend::start("param"),
        Backend::start("catch"),
    );
    // Least specific first: file order must not be what decides.
    let gw = start(&format!(
        "routes:\n\
         - {{ id: catch, paths: [\"/users/*rest\"], upstream: catch }}\n\
         - {{ id: param, paths: [\"/users/:id\"], upstream: param }}\n\
         - {{ id: exact, paths: [\"/users/new\"], upstream: exact }}\n\
         upstreams:\n{}{}{}",
        upstream("catch", &[&catch]),
        upstream("param", &[&param]),
        upstream("exact", &[&exact]),
    ));
    for (path, want) in [
        ("/users/new", "exact"),
        ("/users/42", "param"),
        ("/users/new/x", "catch"),
        ("/users/42/posts/7", "catch"),
        ("/users", "catch"),
    ] {
        let r = send(&gw, "GET", path, &[]);
        assert_eq!(backend_of(&r), want, "GET {path}");
        assert_eq!(echo(&r)["path"], path, "path forwarded unchanged");
    }
    assert_gateway_error(&send(&gw, "GET", "/other", &[]), 404, "no route");
    assert_eq!((exact.hits(), param.hits(), catch.hits()), (1, 1, 3));
}

#[test]
fn priority_decides_between_routes_of_the_same_path_shape() {
    let (low, high, param) = (
        Backend::start("low"),
        Backend::start("high"),
        Backend::start("param"),
    );
    let gw = start(&format!(
        "routes:\n\
         - {{ id: low, paths: [\"/p/*rest\"], upstream: low }}\n\
         - {{ id: high, paths: [\"/p/*rest\"], priority: 10, upstream: high }}\n\
         - {{ id: param, paths: [\"/p/:id\"], upstream: param }}\n\
         - {{ id: neg, paths: [\"/q\"], priority: -5, upstream: low }}\n\
         - {{ id: zero, paths: [\"/q\"], upstream: param }}\n\
         upstreams:\n{}{}{}",
        upstream("low", &[&low]),
        upstream("high", &[&high]),
        upstream("param", &[&param]),
    ));
    assert_eq!(backend_of(&send(&gw, "GET", "/p/a/b", &[])), "high");
    // Priority only orders routes of the same path shape: the parameter
    // route is more specific than either catch-all.
    assert_eq!(backend_of(&send(&gw, "GET", "/p/a", &[])), "param");
    assert_eq!(backend_of(&send(&gw, "GET", "/q", &[])), "param");
    assert_eq!(low.hits(), 0);
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let (exact, wild, any) = (
        Backend::start("exact"),
        Backend::start("wild"),
        Backend::start("any"),
    );
    let gw = start(&format!(
        "routes:\n\
         - {{ id: any, paths: [\"/h\"], upstream: any }}\n\
         - {{ id: wild, hosts: [\"*.example.com\"], paths: [\"/h\"], upstream: wild }}\n\
         - {{ id: exact, hosts: [\"api.example.com\"], paths: [\"/h\"], upstream: exact }}\n\
         - {{ id: only, hosts: [\"only.test\"], paths: [\"/only\"], upstream: exact }}\n\
         upstreams:\n{}{}{}",
        upstream("any", &[&any]),
        upstream("wild", &[&wild]),
        upstream("exact", &[&exact]),
    ));
    for (host, want) in [
        ("api.example.com", "exact"),
        ("API.Example.COM:8080", "exact"),
        ("www.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("example.com", "any"),
        ("badexample.com", "any"),
        ("other.test", "any"),
    ] {
        let r = send(&gw, "GET", "/h", &[("host", host)]);
        assert_eq!(backend_of(&r), want, "Host: {host}");
        assert_eq!(echo(&r)["headers"]["host"], host, "client Host is kept");
    }
    // A route bound to a host does not catch other hosts.
    assert_eq!(
        backend_of(&send(&gw, "GET", "/only", &[("host", "only.test")])),
        "exact"
    );
    assert_gateway_error(
        &send(&gw, "GET", "/only", &[("host", "else.test")]),
        404,
        "no route",
    );
}

#[test]
fn methods_filter_routes() {
    let (get, post) = (Backend::start("get"), Backend::start("post"));
    let gw = start(&format!(
        "routes:\n\
         - {{ id: get, paths: [\"/m\"], methods: [GET], upstream: get }}\n\
         - {{ id: post, paths: [\"/m\"], methods: [POST, PUT], upstream: post }}\n\
         - {{ id: only-post, paths: [\"/only-post\"], methods: [POST], upstream: post }}\n\
         upstreams:\n{}{}",
        upstream("get", &[&get]),
        upstream("post", &[&post]),
    ));
    assert_eq!(backend_of(&send(&gw, "GET", "/m", &[])), "get");
    for m in ["POST", "PUT"] {
        let r = send(&gw, m, "/m", &[]);
        assert_eq!(backend_of(&r), "post", "{m} /m");
        assert_eq!(echo(&r)["method"], m);
    }
    assert_gateway_error(&send(&gw, "DELETE", "/m", &[]), 404, "no route");
    assert_gateway_error(&send(&gw, "GET", "/only-post", &[]), 404, "no route");
    assert_eq!(backend_of(&send(&gw, "POST", "/only-post", &[])), "post");
    assert_eq!((get.hits(), post.hits()), (1, 3));
}

#[test]
fn strip_prefix_rewrites_the_path_and_keeps_the_query() {
    let (users, plain) = (Backend::start("users"), Backend::start("plain"));
    let gw = start(&format!(
        "routes:\n\
         - {{ id: users, paths: [\"/api/users/:id\", \"/api/users\"], upstream: users, strip_prefix: /api }}\n\
         - {{ id: plain, paths: [\"/plain/*rest\"], upstream: plain }}\n\
         upstreams:\n{}{}",
        upstream("users", &[&users]),
        upstream("plain", &[&plain]),
    ));
    for (path, want) in [
        ("/api/users/7?x=1&y=a%20b", "/users/7?x=1&y=a%20b"),
        ("/api/users/7", "/users/7"),
        ("/api/users?page=2", "/users?page=2"),
    ] {
        let r = send(&gw, "GET", path, &[]);
        assert_eq!(backend_of(&r), "users");
        assert_eq!(echo(&r)["path"], want, "GET {path}");
    }
    let r = send(&gw, "GET", "/plain/a/b?q=1", &[]);
    assert_eq!(
        echo(&r)["path"],
        "/plain/a/b?q=1",
        "no strip_prefix: unchanged"
    );
}

#[test]
fn preserve_host_false_sends_the_node_address() {
    let (keep, node) = (Backend::start("keep"), Backend::start("node"));
    let gw = start(&format!(
        "routes:\n\
         - {{ id: keep, paths: [\"/keep\"], upstream: keep }}\n\
         - {{ id: node, paths: [\"/node\"], upstream: node, preserve_host: false }}\n\
         - {{ id: keep2, paths: [\"/keep2\"], upstream: keep, preserve_host: true }}\n\
         upstreams:\n{}{}",
        upstream("keep", &[&keep]),
        upstream("node", &[&node]),
    ));
    let client_host = ("host", "client.example:1234");
    for path in ["/keep", "/keep2"] {
        let r = send(&gw, "GET", path, &[client_host]);
        assert_eq!(echo(&r)["headers"]["host"], "client.example:1234", "{path}");
    }
    let r = send(&gw, "GET", "/node", &[client_host]);
    assert_eq!(
        echo(&r)["headers"]["host"],
        node.addr().to_string().as_str(),
        "preserve_host: false must send the node's host:port"
    );
}

#[test]
fn forwarding_headers_are_added() {
    let b = Backend::start("b");
    let gw = catch_all_to(&b);
    let r = send(&gw, "GET", "/x", &[]);
    let h = &echo(&r)["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    // A client's chain is kept and the peer appended; a client's claim to
    // have come over https is not believed.
    let r = send(
        &gw,
        "GET",
        "/x",
        &[
            ("x-forwarded-for", "203.0.113.7, 198.51.100.1"),
            ("x-forwarded-proto", "https"),
        ],
    );
    let h = &echo(&r)["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.51.100.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    // The chain may come on several header lines; none of it is dropped.
    let r = send(
        &gw,
        "GET",
        "/x",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    );
    assert_eq!(
        echo(&r)["headers"]["x-forwarded-for"],
        "203.0.113.7, 198.51.100.1, 127.0.0.1"
    );
}

#[test]
fn bodies_and_encodings_pass_through_untouched() {
    // The gateway does not compress or decompress: a client offering gzip
    // gets the upstream's bytes as they were, and the upstream sees the offer.
    let b = Backend::start("b");
    let gw = catch_all_to(&b);
    let r = send(&gw, "GET", "/x", &[("accept-encoding", "gzip, br")]);
    assert_eq!(echo(&r)["headers"]["accept-encoding"], "gzip, br");
    assert_eq!(r.header("content-encoding"), None, "{r:?}");
}

#[test]
fn request_id_is_kept_or_generated_and_echoed() {
    let b = Backend::start("b");
    let gw = catch_all_to(&b);
    // A sane client id is kept end to end.
    let r = send(&gw, "GET", "/x", &[("x-request-id", "client-id_1.2:3")]);
    assert_eq!(echo(&r)["headers"]["x-request-id"], "client-id_1.2:3");
    assert_eq!(r.header("x-request-id"), Some("client-id_1.2:3"));
    // Several: the first is kept, and the upstream sees only it.
    let r = send(
        &gw,
        "GET",
        "/x",
        &[("x-request-id", "first-1"), ("x-request-id", "second-2")],
    );
    assert_eq!(echo(&r)["headers"]["x-request-id"], "first-1");
    assert_eq!(r.header("x-request-id"), Some("first-1"));

    // None, or an unsafe one: a fresh 32-hex id, the same upstream and back.
    let mut seen = Vec::new();
    for headers in [
        vec![],
        vec![("x-request-id", "has\"quote")],
        vec![("x-request-id", "has space")],
    ] {
        let r = send(&gw, "GET", "/x", &headers);
        let upstream_saw = echo(&r)["headers"]["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            is_generated_id(&upstream_saw),
            "{headers:?}: {upstream_saw:?}"
        );
        assert_eq!(r.header("x-request-id"), Some(upstream_saw.as_str()));
        assert!(!seen.contains(&upstream_saw), "ids repeat: {seen:?}");
        seen.push(upstream_saw);
    }
    // Generated ids go back to every client: they must not let one count
    // the node's traffic between two of its requests (a counter) or tell
    // which node and start answered (a fixed prefix). Neither half of one
    // id repeats or steps by one in the next.
    let half = |id: &str, at: usize| u64::from_str_radix(&id[at..at + 16], 16).unwrap_or(0);
    for pair in seen.windows(2) {
        for at in [0, 16] {
            let (x, y) = (half(&pair[0], at), half(&pair[1], at));
            assert!(x.abs_diff(y) > 1, "countable ids: {pair:?}");
        }
    }
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let (one, two) = (Backend::start("w1"), Backend::start("w2"));
    let gw = start(&format!(
        "routes:\n- {{ id: r, paths: [\"/*rest\"], upstream: u }}\nupstreams:\n{}",
        common::weighted_upstream("u", &[(&one, 1), (&two, 2)])
    ));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let r = send(&gw, "GET", &format!("/req/{i}"), &[]);
        *counts.entry(backend_of(&r)).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [("w1".to_string(), 10), ("w2".to_string(), 20)].into();
    assert_eq!(counts, want);
    assert_eq!((one.hits(), two.hits()), (10, 20));
}
