//! basic-auth, forward-auth and consumers' rate limits as a user sees them
//! (both engines): the right credentials pass and name the consumer
//! upstream (and a client's own claim to a name never reaches it, on a
//! route with or without plugins); missing, malformed and wrong ones get
//! 401 and reach nothing;
//! a password changed in etcd stops the old one at once, even though it
//! was remembered; an auth service's refusal goes back to the client
//! as it was, a hung one costs the configured 504 after the timeout, a
//! down one 503; a consumer's own limit holds on every route it uses.

mod common;

use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::etcd_gw::{metric, put_plugin_route, start_gw};
use common::{assert_gateway_error, echo, send, start, upstream, READY};
use testkit::{http_request, wait_for, Backend, Etcd, Mode};

fn hash_secret(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(common::bin())
        .arg("hash-secret")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn password_hash(password: &str) -> String {
    let v = hash_secret(&["--password", password]);
    v["password_hash"].as_str().unwrap().to_string()
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// A gateway with consumer alice (basic-auth, `password`), route `/basic`
/// behind basic-auth and route `/plain` without it, both to `b`.
fn basic_gateway(b: &Backend, password: &str) -> testkit::Gateway {
    start(&format!(
        "consumers:\n\
         - {{ name: alice, basic_auth: {{ username: alice, password_hash: \"{}\" }} }}\n\
         routes:\n\
         - {{ id: basic, paths: [\"/basic\"], upstream: b, plugins: [{{basic-auth: {{}}}}] }}\n\
         - {{ id: plain, paths: [\"/plain\"], upstream: b }}\n\
         upstreams:\n{}",
        password_hash(password),
        upstream("b", &[b])
    ))
}

#[test]
fn basic_auth_names_the_consumer_and_refuses_missing_malformed_and_wrong_credentials() {
    let b = Backend::start("b");
    let gw = basic_gateway(&b, "correct horse");
    let r = send(&gw, "GET", "/basic", &[]);
    assert_gateway_error(&r, 401, "missing credentials");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic realm=")),
        "{r:?}"
    );
    for (what, header, error) in [
        (
            "wrong password",
            basic("alice", "correct horsE"),
            "invalid credentials",
        ),
        (
            "unknown user",
            basic("mallory", "correct horse"),
            "invalid credentials",
        ),
        (
            "no colon",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice")
            ),
            "malformed",
        ),
        ("not base64", "Basic !!!".to_string(), "malformed"),
        ("other scheme", "Bearer abc".to_string(), "malformed"),
    ] {
        let r = send(&gw, "GET", "/basic", &[("authorization", &header)]);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_gateway_error(&r, 401, error);
    }
    assert_eq!(b.hits(), 0);
    // Twice: the second is answered from the verified cache, same result.
    for _ in 0..2 {
        let r = send(
            &gw,
            "GET",
            "/basic",
            &[
                ("authorization", &basic("alice", "correct horse")),
                ("x-consumer-name", "root"),
            ],
        );
        let j = echo(&r);
        assert_eq!(j["headers"]["x-consumer-name"], "alice", "{j}");
        assert!(
            j["headers"].get("authorization").is_none(),
            "the credential stays at the gateway: {j}"
        );
    }
    // A route without plugins names no consumer, and passes on no claim.
    for claim in [
        &[("x-consumer-name", "root")][..],
        &[("X-Consumer-Name", "root"), ("x-consumer-name", "admin")],
    ] {
        let j = echo(&send(&gw, "GET", "/plain", claim));
        assert!(
            j["headers"].get("x-consumer-name").is_none(),
            "{claim:?}: {j}"
        );
    }
}

#[test]
fn a_password_changed_or_a_consumer_deleted_in_etcd_stops_the_old_password_at_once() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let c = etcd.client();
    let plugins = serde_json::json!([{"basic-auth": {"cache_ttl_s": 600}}]);
    put_plugin_route(c, &b.url(), "basic", "/basic", plugins);
    let consumer = |pw: &str| {
        serde_json::json!({"basic_auth": {"username": "dave", "password_hash": password_hash(pw)}})
            .to_string()
    };
    c.put("/tollgate/consumers/dave", &consumer("first"));
    let gw = start_gw("basic", &[etcd.endpoint()]);
    let status = |pw: &str| {
        http_request(
            "GET",
            &gw.url("/basic"),
            &[("authorization", &basic("dave", pw))],
            None,
        )
        .map(|r| r.status)
        .unwrap_or(0)
    };
    wait_for("dave's password to work", READY, || status("first") == 200);
    assert_eq!(status("first"), 200, "remembered now");
    c.put("/tollgate/consumers/dave", &consumer("second"));
    wait_for("the new password", READY, || status("second") == 200);
    assert_eq!(
        status("first"),
        401,
        "the remembered old password no longer works"
    );

    // A plaintext password where the hash goes: refused by field, the
    // current password keeps working.
    let before = metric(&gw, "tollgate_config_rejected_total{kind=\"consumer\"}");
    c.put(
        "/tollgate/consumers/dave",
        &serde_json::json!({"basic_auth": {"username": "dave", "password": "third"}}).to_string(),
    );
    wait_for("the rejection", READY, || {
        metric(&gw, "tollgate_config_rejected_total{kind=\"consumer\"}") > before
    });
    assert!(
        gw.logs().contains("basic_auth.password"),
        "the log names the field"
    );
    assert_eq!(status("second"), 200);
    c.delete("/tollgate/consumers/dave");
    wait_for("the deleted consumer's password to stop", READY, || {
        status("second") == 401
    });
}

/// A stand-in auth service: `Bearer good` → 200 with `X-User: alice`,
/// anything else → 403 with a body of its own. Counts the questions and
/// keeps the last one's head.
struct AuthService {
    url: String,
    asked: Arc<AtomicUsize>,
    last: Arc<Mutex<String>>,
}

fn auth_service() -> AuthService {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/check?x=1", l.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(String::new()));
    let (a, seen) = (asked.clone(), last.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_lowercase();
            a.fetch_add(1, Ordering::SeqCst);
            *seen.lock().unwrap() = head.clone();
            let answer: &[u8] = if head.contains("\r\nauthorization: bearer good\r\n") {
                b"HTTP/1.1 200 OK\r\nX-User: alice\r\nX-Other: no\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: bad-token\r\nContent-Length: 9\r\nConnection: close\r\n\r\nno entry\n"
            };
            let _ = s.write_all(answer);
        }
    });
    AuthService { url, asked, last }
}

#[test]
fn forward_auth_lets_through_what_the_service_allows_and_returns_what_it_refuses() {
    let b = Backend::start("b");
    let auth = auth_service();
    let hung = Backend::start("hung");
    hung.set_mode(Mode::Stall(Duration::from_secs(30)));
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start(&format!(
        "routes:\n\
         - {{ id: fa, paths: [\"/fa/*rest\"], upstream: b, plugins: [{{forward-auth: {{uri: \"{}\", upstream_headers: [x-user]}}}}] }}\n\
         - {{ id: cached, paths: [\"/cached\"], upstream: b, plugins: [{{forward-auth: {{uri: \"{}\", upstream_headers: [x-user], cache: {{ttl_ms: 60000}}}}}}] }}\n\
         - {{ id: hung, paths: [\"/hung\"], upstream: b, plugins: [{{forward-auth: {{uri: \"{}/check\", timeout_ms: 300}}}}] }}\n\
         - {{ id: hung503, paths: [\"/hung503\"], upstream: b, plugins: [{{forward-auth: {{uri: \"{}/check\", timeout_ms: 300, timeout_status: 503}}}}] }}\n\
         - {{ id: down, paths: [\"/down\"], upstream: b, plugins: [{{forward-auth: {{uri: \"http://{down}/check\"}}}}] }}\n\
         upstreams:\n{}",
        auth.url,
        auth.url,
        hung.url(),
        hung.url(),
        upstream("b", &[&b])
    ));
    // Allowed: the named header is copied upstream, a forged one is not
    // kept, and the service saw the request's method, path and credential.
    let r = send(
        &gw,
        "POST",
        "/fa/x?y=2",
        &[("authorization", "Bearer good"), ("x-user", "root")],
    );
    let j = echo(&r);
    assert_eq!(j["headers"]["x-user"], "alice", "{j}");
    assert!(
        j["headers"].get("x-other").is_none(),
        "only the named headers: {j}"
    );
    let head = auth.last.lock().unwrap().clone();
    assert!(head.starts_with("get /check?x=1 http/1.1\r\n"), "{head}");
    for line in [
        "x-forwarded-method: post",
        "x-forwarded-uri: /fa/x?y=2",
        "x-forwarded-proto: http",
        "authorization: bearer good",
    ] {
        assert!(head.contains(line), "{line} missing: {head}");
    }
    // Refused: the service's status, headers and body reach the client;
    // the request does not reach the upstream.
    let hits = b.hits();
    let r = send(&gw, "GET", "/fa/x", &[("authorization", "Bearer bad")]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "no entry\n");
    assert_eq!(r.header("x-reason"), Some("bad-token"));
    assert_eq!(b.hits(), hits);

    // Cached decisions: asked once per credential and path.
    let asked = auth.asked.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            send(&gw, "GET", "/cached", &[("authorization", "Bearer good")]).status,
            200
        );
        assert_eq!(
            send(&gw, "GET", "/cached", &[("authorization", "Bearer bad")]).status,
            403
        );
    }
    assert_eq!(
        auth.asked.load(Ordering::SeqCst),
        asked + 2,
        "one question per credential"
    );

    // Hung: the bounded timeout, then the configured status.
    let started = std::time::Instant::now();
    assert_gateway_error(
        &send(&gw, "GET", "/hung", &[]),
        504,
        "auth service timed out",
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_gateway_error(
        &send(&gw, "GET", "/hung503", &[]),
        503,
        "auth service timed out",
    );
    assert_gateway_error(
        &send(&gw, "GET", "/down", &[]),
        503,
        "auth service unavailable",
    );
    assert_eq!(
        b.hits(),
        hits + 3,
        "only the allowed requests reached the upstream"
    );
}

#[test]
fn a_consumers_own_limit_holds_on_every_route_and_a_route_can_limit_per_consumer() {
    let b = Backend::start("b");
    let key = |k: &str| {
        hash_secret(&[k])["key_sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let gw = start(&format!(
        "consumers:\n\
         - {{ name: alice, key_auth: {{ key_sha256: \"{}\" }}, rate_limit: {{ rate: 0.01, burst: 3 }} }}\n\
         - {{ name: bob, key_auth: {{ key_sha256: \"{}\" }} }}\n\
         routes:\n\
         - {{ id: one, paths: [\"/one\"], upstream: b, plugins: [{{key-auth: {{}}}}] }}\n\
         - {{ id: two, paths: [\"/two\"], upstream: b, plugins: [{{key-auth: {{}}}}] }}\n\
         - {{ id: per, paths: [\"/per\"], upstream: b, plugins: [{{key-auth: {{}}}}], rate_limit: {{ rate: 0.01, burst: 1, key: consumer }} }}\n\
         upstreams:\n{}",
        key("alice-key"),
        key("bob-key"),
        upstream("b", &[&b])
    ));
    let get = |path: &str, k: &str| send(&gw, "GET", path, &[("apikey", k)]).status;
    // alice's three tokens are shared by every route she uses.
    assert_eq!(get("/one", "alice-key"), 200);
    assert_eq!(get("/two", "alice-key"), 200);
    assert_eq!(get("/one", "alice-key"), 200);
    let r = send(&gw, "GET", "/two", &[("apikey", "alice-key")]);
    assert_gateway_error(&r, 429, "rate limited");
    assert!(r.header("retry-after").is_some());
    // bob has no limit of his own.
    for _ in 0..5 {
        assert_eq!(get("/one", "bob-key"), 200);
    }
    // A route keyed by consumer: one bucket each.
    assert_eq!(get("/per", "bob-key"), 200);
    assert_eq!(get("/per", "bob-key"), 429);
    assert_eq!(get("/per", "alice-key"), 429, "alice's own limit is spent");
}

#[test]
fn a_flood_of_wrong_passwords_gets_503s_and_leaves_the_request_threads_free() {
    let b = Backend::start("b");
    let gw = basic_gateway(&b, "right");
    // 300 wrong passwords at once: each costs an argon2 check (tens of
    // milliseconds), at most one per CPU at a time, so seconds of work
    // queue up against a 1 s wait.
    let url = gw.url("/basic");
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let auth = basic("alice", &format!("wrong-{i}"));
                http_request("GET", &url, &[("authorization", &auth)], None)
                    .map(|r| (r.status, r.header("retry-after").map(str::to_string)))
                    .unwrap_or((0, None))
            })
        })
        .collect();
    // Meanwhile a route without auth is served at once.
    assert_eq!(send(&gw, "GET", "/plain", &[]).status, 200);
    let answers: Vec<(u16, Option<String>)> =
        flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        answers.iter().all(|(s, _)| *s == 401 || *s == 503),
        "{answers:?}"
    );
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "some were turned away: {answers:?}");
    assert!(busy.iter().all(|(_, ra)| ra.as_deref() == Some("1")));
    assert_eq!(b.hits(), 1, "only the plain request reached the upstream");
    // Afterwards the right password works.
    let r = send(
        &gw,
        "GET",
        "/basic",
        &[("authorization", &basic("alice", "right"))],
    );
    assert_eq!(echo(&r)["headers"]["x-consumer-name"], "alice");
}
