use super::*;

const GOOD: &str = r#"
listen: ["127.0.0.1:8080"]
admin: { listen: "127.0.0.1:9180" }
routes:
  - id: users
    paths: ["/api/users/:id"]
    upstream: users
  - id: static
    hosts: ["*.example.com"]
    paths: ["/static/*path"]
    upstream: users
upstreams:
  users: { nodes: ["http://127.0.0.1:9001", {addr: "http://127.0.0.1:9002", weight: 2}] }
"#;

fn err(text: &str) -> FieldError {
    parse(text).expect_err("config should be rejected")
}

#[test]
fn the_example_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.upstreams["users"].1.len(), 2);
    assert_eq!(m.bootstrap.threads, 2);
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../conf/tollgate.yaml");
    parse(text).unwrap();
}

#[test]
fn malformed_yaml_is_reported() {
    let e = err("listen: [\"127.0.0.1:1\"\nroutes: {");
    assert!(!e.message.is_empty());
}

#[test]
fn unknown_fields_are_named() {
    let e = err("listen: [\"127.0.0.1:1\"]\nlisen: x\n");
    assert!(e.message.contains("unknown field `lisen`"), "{e}");
    let e = err(&GOOD.replace(
        "upstream: users\n  - id: static",
        "upstrem: users\n  - id: static",
    ));
    assert_eq!(e.path, "routes[0].upstrem", "{e}");
    assert!(!e.message.starts_with("routes[0]"), "{e}");
    assert!(e.message.contains("upstrem"), "{e}");
    // Inside a node's map form too: not "did not match any variant".
    let e = err(&GOOD.replace("weight: 2", "wieght: 2"));
    assert!(e.path.starts_with("upstreams.users.nodes[1]"), "{e}");
    assert!(e.message.contains("unknown field `wieght`"), "{e}");
}

#[test]
fn bad_fields_name_their_path() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("id: static", "id: users"),
            "routes[1].id",
            "duplicate route id",
        ),
        (
            GOOD.replace("/static/*path", "static"),
            "routes[1].paths[0]",
            "must start with '/'",
        ),
        (
            GOOD.replace("/static/*path", "/static/*path/x"),
            "routes[1].paths[0]",
            "last segment",
        ),
        (
            GOOD.replace("weight: 2", "weight: 0"),
            "upstreams.users.nodes[1].weight",
            "between 1",
        ),
        (
            GOOD.replace("weight: 2", "weight: -3"),
            "upstreams.users.nodes[1].weight",
            "between 1",
        ),
        (
            GOOD.replace("http://127.0.0.1:9001", "127.0.0.1:9001"),
            "upstreams.users.nodes[0]",
            "URL",
        ),
        (
            GOOD.replace(
                "upstream: users\n  - id: static",
                "upstream: ghost\n  - id: static",
            ),
            "routes[0].upstream",
            "no nodes",
        ),
        (
            GOOD.replace("\"127.0.0.1:8080\"", "\"nowhere\""),
            "listen[0]",
            "ip:port",
        ),
        (
            format!("{GOOD}log: {{ level: verbose }}\n"),
            "log.level",
            "not one of trace, debug, info, warn, error, off",
        ),
        (
            format!("{GOOD}log: {{ level: \"tollgate=loud\" }}\n"),
            "log.level",
            "tollgate=loud",
        ),
        (
            GOOD.replace("127.0.0.1:9180", "127.0.0.1:8080"),
            "admin.listen",
            "clashes with listen[0] (127.0.0.1:8080)",
        ),
        (
            GOOD.replace("[\"127.0.0.1:8080\"]", "[\"0.0.0.0:9180\"]"),
            "admin.listen",
            "clashes with listen[0] (0.0.0.0:9180)",
        ),
        (
            GOOD.replace(
                "[\"127.0.0.1:8080\"]",
                "[\"[::]:8080\", \"127.0.0.1:8080\"]",
            ),
            "listen[1]",
            "clashes with listen[0] ([::]:8080)",
        ),
        (
            GOOD.replace("hosts: [\"*.example.com\"]", "hosts: []")
                .replace("/static/*path", "/api/users/:name"),
            "routes[1].paths",
            "already taken by route \"users\"",
        ),
    ];
    for (text, path, why) in cases {
        let e = err(&text);
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(why), "{e}");
    }
}

#[test]
fn good_log_levels_pass() {
    for level in [
        "debug",
        "WARN",
        "tollgate=debug,pingora=warn",
        "info,tollgate::proxy=trace",
    ] {
        let text = format!("{GOOD}log: {{ level: \"{level}\" }}\n");
        parse(&text).unwrap_or_else(|e| panic!("{level}: {e}"));
    }
}

#[test]
fn upstreams_in_the_file_are_refused_with_etcd() {
    let text = "listen: [\"127.0.0.1:8080\"]\netcd: { endpoints: [\"http://127.0.0.1:2379\"] }\n\
                upstreams:\n  users: { nodes: [\"http://127.0.0.1:9001\"] }\n";
    let e = err(text);
    assert_eq!(e.path, "upstreams");
    assert!(e.message.contains("come from etcd"), "{e}");
}

#[test]
fn routes_in_the_file_are_refused_with_etcd() {
    let e = err(&format!(
        "{GOOD}etcd: {{ endpoints: [\"http://127.0.0.1:2379\"] }}\n"
    ));
    assert_eq!(e.path, "routes");
}

#[test]
fn type_errors_name_the_field() {
    let e = err("threads: many\n");
    assert_eq!(e.path, "threads", "{e}");
}

#[test]
fn the_proxy_engine_is_core_by_default_pingora_on_request_and_nothing_else() {
    use crate::config::ProxyEngine;
    assert_eq!(
        parse(GOOD).unwrap().bootstrap.proxy.engine,
        ProxyEngine::Core
    );
    let pingora = parse(&format!("{GOOD}proxy: {{ engine: pingora }}\n")).unwrap();
    assert_eq!(pingora.bootstrap.proxy.engine, ProxyEngine::Pingora);
    let e = err(&format!("{GOOD}proxy: {{ engine: bogus }}\n"));
    assert_eq!(e.path, "proxy.engine", "{e}");
    assert!(e.message.contains("bogus"), "{e}");
    assert!(
        e.message.contains("pingora") && e.message.contains("core"),
        "{e}"
    );
}

#[test]
fn client_keepalive_secs_defaults_to_60_and_must_be_positive() {
    assert_eq!(
        parse(GOOD).unwrap().bootstrap.proxy.client_keepalive_secs,
        60
    );
    let e = err(&format!("{GOOD}proxy: {{ client_keepalive_secs: 0 }}\n"));
    assert_eq!(e.path, "proxy.client_keepalive_secs", "{e}");
    assert!(e.message.contains("between 1 and 86400"), "{e}");
}

#[test]
fn self_preservation_settings_are_checked_naming_the_field() {
    let base = "listen: [\"127.0.0.1:8080\"]\netcd: { endpoints: [\"http://127.0.0.1:2379\"], ";
    let m = parse(&format!(
        "{base}self_preservation: {{ enabled: false }} }}\n"
    ))
    .unwrap();
    let etcd = m.bootstrap.etcd.expect("etcd");
    assert!(!etcd.self_preservation.enabled);
    assert_eq!(
        etcd.self_preservation.threshold, 0.5,
        "the rest keep their defaults"
    );
    let e = err(&format!(
        "{base}self_preservation: {{ threshold: 1.5 }} }}\n"
    ));
    assert_eq!(e.path, "etcd.self_preservation.threshold", "{e}");
    let e = err(&format!(
        "{base}self_preservation: {{ probe_failures: 0 }} }}\n"
    ));
    assert_eq!(e.path, "etcd.self_preservation.probe_failures", "{e}");
    let e = err(&format!("{base}self_preservation: {{ enabld: true }} }}\n"));
    assert!(e.to_string().contains("enabld"), "{e}");
}

#[test]
fn body_limits_are_checked_naming_the_field() {
    assert_eq!(
        parse(GOOD).unwrap().bootstrap.proxy.max_body_bytes,
        100 << 20
    );
    let e = err(&format!("{GOOD}proxy: {{ max_body_bytes: 0 }}\n"));
    assert_eq!(e.path, "proxy.max_body_bytes", "{e}");
    let text = GOOD.replace(
        "upstream: users\n  - id: static",
        "upstream: users\n    max_body_bytes: 2199023255553\n  - id: static",
    );
    let e = err(&text);
    assert_eq!(e.path, "routes[0].max_body_bytes", "{e}");
}

#[test]
fn connection_limits_are_checked_naming_the_field() {
    let p = parse(GOOD).unwrap().bootstrap.proxy;
    assert_eq!(
        (p.max_connections, p.max_connections_per_ip),
        (100_000, None)
    );
    let e = err(&format!("{GOOD}proxy: {{ max_connections: 0 }}\n"));
    assert_eq!(e.path, "proxy.max_connections", "{e}");
    let e = err(&format!("{GOOD}proxy: {{ max_connections_per_ip: 0 }}\n"));
    assert_eq!(e.path, "proxy.max_connections_per_ip", "{e}");
}

#[test]
fn standalone_certs_load_and_a_bad_one_names_its_field() {
    let spec = crate::tls::test_certs::spec(&["a.test"]);
    let text = format!(
        "{GOOD}listen: [{{addr: \"127.0.0.1:8443\", tls: true}}]\ncerts:\n  - {{id: a, snis: [a.test], cert: {}, key: {}}}\n",
        serde_json::to_string(&spec.cert).unwrap(),
        serde_json::to_string(&spec.key).unwrap()
    )
    .replace("listen: [\"127.0.0.1:8080\"]\n", "");
    let m = parse(&text).unwrap();
    assert_eq!(m.certs.len(), 1);
    assert!(m.bootstrap.listen[0].tls);

    let bad = text.replace(&serde_json::to_string(&spec.cert).unwrap(), "\"nope\"");
    assert_eq!(err(&bad).path, "certs[0].cert");
    let no_id = text.replace("id: a, ", "");
    assert_eq!(err(&no_id).path, "certs[0].id");
    let bad_key = format!("{GOOD}tls: {{ key_encryption_keys: [\"c2hvcnQ=\"] }}\n");
    assert_eq!(err(&bad_key).path, "tls.key_encryption_keys");
    let missing = format!(
        "{GOOD}tls: {{ default_cert: {{ cert_file: /nonexistent.crt, key_file: /x.key }} }}\n"
    );
    assert_eq!(err(&missing).path, "tls.default_cert.cert_file");
}

#[test]
fn tls_and_http2_settings_are_bounded() {
    for (extra, path) in [
        ("tls: { alpn: [\"http/2\"] }\n", "tls.alpn[0]"),
        ("tls: { alpn: [] }\n", "tls.alpn"),
        (
            "tls: { handshake_timeout_ms: 5 }\n",
            "tls.handshake_timeout_ms",
        ),
        ("tls: { min_version: \"1.1\" }\n", "tls.min_version"),
        (
            "proxy: { http2: { max_concurrent_streams: 0 } }\n",
            "proxy.http2.max_concurrent_streams",
        ),
        (
            "proxy: { http2: { max_header_list_bytes: 10 } }\n",
            "proxy.http2.max_header_list_bytes",
        ),
    ] {
        assert_eq!(err(&format!("{GOOD}{extra}")).path, path, "{extra}");
    }
}

#[test]
fn node_ids_and_acme_defaults_are_checked() {
    for bad in ["\"\"", "\"a/b\"", "\"a b\""] {
        let e = err(&format!("node_id: {bad}\n"));
        assert_eq!(e.path, "node_id", "{bad}: {e}");
    }
    assert!(parse("node_id: edge-1.example:2\n").is_ok());
    let e = err("acme: { directory: \"http://ca.example/dir\" }\n");
    assert_eq!(e.path, "acme.directory", "{e}");
    let e = err("acme: { tls_roots: /nonexistent/roots.pem }\n");
    assert_eq!(e.path, "acme.tls_roots", "{e}");
}
