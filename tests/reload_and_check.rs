//! Standalone config lifecycle: live reload of the bootstrap file (good and
//! broken edits), `tollgate check`, and `tollgate run` refusing a bad file.

mod common;

use std::time::{Duration, Instant};

use common::{assert_gateway_error, backend_of, bin, send, start, upstream, TempFile};
use testkit::{run_cmd, wait_for, Backend, Gateway};

const RELOAD: Duration = Duration::from_secs(10);

/// Poll the file every 50ms so reload tests are quick.
const FAST_RELOAD: &str = "reload: { poll_ms: 50 }\n";

fn serves(gw: &Gateway, path: &str, backend: &str) -> bool {
    gw.request("GET", path, &[], None)
        .is_ok_and(|r| r.status == 200 && r.header("x-backend") == Some(backend))
}

fn rejected(gw: &Gateway) -> u64 {
    gw.status()["rejected"].as_u64().expect("status.rejected")
}

/// Route a (`/a` to upstream a) and route b (`/b` to upstream b), as lines
/// of a YAML list.
const ROUTE_A: &str = "- { id: a, paths: [\"/a\"], upstream: a }\n";
const ROUTE_B: &str = "- { id: b, paths: [\"/b\"], upstream: b }\n";

/// A bootstrap body, polled every 50ms: `routes` (lines of a YAML list),
/// then `upstreams`.
fn file(routes: &str, upstreams: &str) -> String {
    format!("{FAST_RELOAD}routes:\n{routes}{upstreams}")
}

/// The `upstreams:` section: upstream a on `a`, upstream b on `b`.
fn upstreams_ab(a: &Backend, b: &Backend) -> String {
    format!("upstreams:\n{}{}", upstream("a", &[a]), upstream("b", &[b]))
}

/// Rewrites the file to routes a and b over `upstreams`; waits until b is
/// served, and checks a still is.
fn add_route_b(gw: &Gateway, upstreams: &str) {
    gw.rewrite_config(&file(&format!("{ROUTE_A}{ROUTE_B}"), upstreams));
    wait_for("route b served", RELOAD, || serves(gw, "/b", "b"));
    assert_eq!(backend_of(&send(gw, "GET", "/a", &[])), "a");
}

#[test]
fn edits_apply_without_restart() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let ups = upstreams_ab(&a, &b);
    let mut gw = start(&file(ROUTE_A, &ups));
    let pid = gw.pid();
    assert_eq!(backend_of(&send(&gw, "GET", "/a", &[])), "a");
    assert_gateway_error(&send(&gw, "GET", "/b", &[]), 404, "no route");
    assert_eq!(gw.status()["routes"], 1);

    // A new route.
    add_route_b(&gw, &ups);
    assert_eq!(gw.status()["routes"], 2);

    // An upstream's nodes change under an unchanged route.
    gw.rewrite_config(&file(&format!("{ROUTE_A}{ROUTE_B}"), &upstreams_ab(&c, &b)));
    wait_for("route a moved to node c", RELOAD, || serves(&gw, "/a", "c"));

    // A route removed.
    gw.rewrite_config(&file(ROUTE_B, &ups));
    wait_for("route a gone", RELOAD, || {
        gw.request("GET", "/a", &[], None)
            .is_ok_and(|r| r.status == 404)
    });
    assert_eq!(backend_of(&send(&gw, "GET", "/b", &[])), "b");

    assert_eq!(gw.pid(), pid);
    assert_eq!(gw.wait_exit(Duration::ZERO), None, "the gateway restarted");
    assert_eq!(rejected(&gw), 0);
}

#[test]
fn broken_edits_are_rejected_and_the_last_good_config_keeps_serving() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let ups = upstreams_ab(&a, &b);
    let gw = start(&file(ROUTE_A, &ups));
    assert_eq!(rejected(&gw), 0);

    let broken = [
        // An unknown (misspelt) field.
        (
            "- { id: a, paths: [\"/a\"], upstream: a }\n- { id: b, paths: [\"/b\"], upstrem: b }\n",
            "routes[1].upstrem",
        ),
        // An invalid path pattern.
        (
            "- { id: a, paths: [\"nope\"], upstream: a }\n- { id: b, paths: [\"/b\"], upstream: b }\n",
            "routes[0].paths[0]",
        ),
    ];
    for (n, (routes, field)) in broken.iter().enumerate() {
        gw.rewrite_config(&file(routes, &ups));
        wait_for(&format!("the log to name {field}"), RELOAD, || {
            gw.logs()
                .lines()
                .any(|l| l.contains("config edit rejected") && l.contains(field))
        });
        wait_for("status.rejected to count it", RELOAD, || {
            rejected(&gw) == n as u64 + 1
        });
        // The previous config still serves, unchanged.
        assert_eq!(backend_of(&send(&gw, "GET", "/a", &[])), "a");
        assert_gateway_error(&send(&gw, "GET", "/b", &[]), 404, "no route");
        let s = gw.status();
        assert_eq!(s["routes"], 1, "{s}");
        assert_eq!(s["ready"], true, "{s}");
    }

    // A later good edit applies again.
    add_route_b(&gw, &ups);
    assert_eq!(rejected(&gw), 2);
}

const GOOD: &str = "\
listen: [\"127.0.0.1:8080\"]
admin: { listen: \"127.0.0.1:9180\" }
routes:
  - id: users
    paths: [\"/api/users/:id\"]
    upstream: users
  - id: static
    paths: [\"/static/*path\"]
    upstream: web
upstreams:
  users: { nodes: [\"http://127.0.0.1:9001\", {addr: \"http://127.0.0.1:9002\", weight: 2}] }
  web: { nodes: [\"http://127.0.0.1:9003\"] }
";

/// `GOOD` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

fn check(text: &str) -> (i32, String, String) {
    let f = TempFile::new(text);
    run_cmd(bin(), &["check", "-c", f.arg()])
}

#[test]
fn check_accepts_the_shipped_example_and_a_good_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.yaml");
    let (code, out, err) = run_cmd(bin(), &["check", "-c", example]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ok"), "{out}");

    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("2 routes, 2 upstreams"), "{out}");
}

/// (name, file text, what stderr must contain).
fn bad_files() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "malformed YAML",
            edit("paths: [\"/api/users/:id\"]", "paths: [\"/api/users/:id\""),
            vec!["line"],
        ),
        (
            "unknown field",
            edit("upstream: users", "upstrem: users"),
            vec!["routes[0].upstrem", "unknown field"],
        ),
        (
            "duplicate route id",
            edit("id: static", "id: users"),
            vec!["routes[1].id", "duplicate route id"],
        ),
        (
            "invalid path pattern",
            edit("/static/*path", "/static/*path/more"),
            vec!["routes[1].paths[0]", "last segment"],
        ),
        (
            "conflicting paths",
            edit("/static/*path", "/api/users/:name"),
            vec!["routes[1].paths", "already taken by route \"users\""],
        ),
        (
            "invalid upstream URL",
            edit("http://127.0.0.1:9003", "127.0.0.1:9003"),
            vec!["upstreams.web.nodes[0]"],
        ),
        (
            "weight 0",
            edit("weight: 2", "weight: 0"),
            vec!["upstreams.users.nodes[1].weight", "between 1"],
        ),
        (
            "weight -1",
            edit("weight: 2", "weight: -1"),
            vec!["upstreams.users.nodes[1].weight", "between 1"],
        ),
        (
            "upstream without nodes",
            edit("upstream: web", "upstream: ghost"),
            vec!["routes[1].upstream", "no nodes"],
        ),
        (
            "upstream with an empty node list",
            edit(
                "web: { nodes: [\"http://127.0.0.1:9003\"] }",
                "web: { nodes: [] }",
            ),
            vec!["routes[1].upstream", "no nodes"],
        ),
    ]
}

#[test]
fn check_names_the_bad_field() {
    for (name, text, wants) in bad_files() {
        let (code, out, err) = check(&text);
        assert_ne!(code, 0, "{name}: accepted\nstdout: {out}\nstderr: {err}");
        for want in wants {
            assert!(err.contains(want), "{name}: stderr lacks {want:?}: {err}");
        }
    }
}

#[test]
fn run_refuses_a_bad_file_quickly_with_the_same_message() {
    let a = Backend::start("a");
    // The harness writes listen/admin/threads/state_dir; the rest is ours.
    let with_upstream =
        |route: &str| format!("routes:\n- {route}\nupstreams:\n{}", upstream("a", &[&a]));
    let cases = [
        (
            with_upstream("{ id: a, paths: [\"/a\"], upstrem: a }"),
            "routes[0].upstrem",
        ),
        (
            with_upstream("{ id: a, paths: [\"/a/*x/y\"], upstream: a }"),
            "routes[0].paths[0]",
        ),
        (
            "routes:\n- { id: a, paths: [\"/a\"], upstream: a }\n".to_string(),
            "routes[0].upstream",
        ),
    ];
    for (body, field) in cases {
        let t = Instant::now();
        let err = match Gateway::try_start(bin(), &body) {
            Ok(_) => panic!("started with a bad config naming {field}"),
            Err(e) => e,
        };
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        assert!(err.contains("exited with 1"), "{err}");
        assert!(err.contains(field), "log does not name {field}: {err}");
        assert!(err.contains("is not a valid config"), "{err}");
    }
    assert_eq!(a.hits(), 0);
}

#[test]
fn run_names_the_bad_field_once() {
    let body = "routes:\n- { id: a, paths: [\"/a\"], upstream: a }\n";
    let err = match Gateway::try_start(bin(), body) {
        Ok(_) => panic!("started with a route naming an upstream without nodes"),
        Err(e) => e,
    };
    assert_eq!(err.matches("routes[0].upstream").count(), 1, "{err}");
}

#[test]
fn run_refuses_a_listen_address_in_use_naming_it() {
    let a = Backend::start("a");
    // Held for the whole test: another process listening on the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let free = format!("127.0.0.1:{}", testkit::free_port());
    let state = TempFile::new("");
    let cases = [
        (taken.as_str(), free.as_str(), "listen[0]"),
        (free.as_str(), taken.as_str(), "admin.listen"),
    ];
    for (listen, admin, field) in cases {
        let conf = TempFile::new(&format!(
            "listen: [\"{listen}\"]\nadmin: {{ listen: \"{admin}\" }}\nstate_dir: \"{}.d\"\n\
             routes:\n{ROUTE_A}upstreams:\n{}",
            state.arg(),
            upstream("a", &[&a])
        ));
        // Pingora alone would retry the bind for 30s and then run on without
        // that listener; run_cmd gives up (and fails the test) at 60s.
        let (code, _, err) = run_cmd(bin(), &["run", "-c", conf.arg()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{field}: {taken} is already in use")),
            "{err}"
        );
        let state_dir = format!("{}.d", state.arg());
        assert!(
            !std::path::Path::new(&state_dir).exists(),
            "nothing is created before the check"
        );
    }
    assert_eq!(a.hits(), 0);
}
