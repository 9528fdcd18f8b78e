//! Rate limits against the real binary: a route's token bucket admits
//! burst + rate × t under overload; 429s and the `X-RateLimit-*` headers;
//! limits changed live (file and etcd) without resetting other buckets;
//! per-client keys (peer address, trusted `X-Forwarded-For`, a header) and
//! their memory bound; the default limit from settings; cluster scope
//! across two gateways; and bad limits refused by `check` and by etcd.
//!
//! Load comes from a paced generator: a few threads, each with one
//! keep-alive connection, sending on a fixed schedule.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::etcd_gw::{
    metric, start_gw, wait_ok, wait_revision, wait_status, GATEWAYS, ROUTES, SERVICES,
};
use common::keepalive::Conn;
use common::{assert_gateway_error, bin, echo, send, start, upstream, TempFile};
use serde_json::{json, Value};
use testkit::{run_cmd, wait_for, Backend, Etcd, Gateway, KeptLease, Resp};

const APPLY: Duration = Duration::from_secs(10);
/// Poll the bootstrap file every 50ms so reload tests are quick.
const FAST_RELOAD: &str = "reload: { poll_ms: 50 }\n";
/// Slow enough that a drained bucket stays drained for the whole test
/// (one token per 20 s).
const SLOW: f64 = 0.05;

// ------------------------------------------------------------ load

/// What one paced load run saw.
struct Run {
    /// (when it was sent, since the start; status, 0 for a transport error)
    samples: Vec<(Duration, u16)>,
    errors: Vec<String>,
    /// From the first scheduled send to the last answer.
    elapsed: Duration,
}

impl Run {
    fn count(&self, status: u16) -> usize {
        self.samples.iter().filter(|(_, s)| *s == status).count()
    }

    fn admitted(&self) -> usize {
        self.count(200)
    }

    /// Asserts every answer was a 200 or a 429.
    fn assert_only_200_and_429(&self) {
        let other: Vec<u16> = self
            .samples
            .iter()
            .map(|(_, s)| *s)
            .filter(|s| *s != 200 && *s != 429)
            .collect();
        assert!(
            other.is_empty() && self.errors.is_empty(),
            "statuses other than 200/429: {other:?}; errors: {:?}",
            self.errors
        );
    }

    /// Admissions per second among requests sent in `[from, to)`.
    fn admitted_rate(&self, from: Duration, to: Duration) -> f64 {
        let n = self
            .samples
            .iter()
            .filter(|(at, s)| *s == 200 && *at >= from && *at < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    }

    fn summary(&self) -> String {
        format!(
            "{} requests in {:.3}s: {} admitted, {} refused",
            self.samples.len(),
            self.elapsed.as_secs_f64(),
            self.admitted(),
            self.count(429)
        )
    }
}

/// One load thread's samples, errors and end time.
type ThreadRun = (Vec<(Duration, u16)>, Vec<String>, Instant);

/// `threads` keep-alive connections together sending `rate` GETs per
/// second to `path` for `dur`. Each thread keeps a fixed schedule
/// (staggered against the others), so a slow answer is caught up on
/// instead of lowering the rate.
fn drive(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    rate: f64,
    threads: usize,
    dur: Duration,
) -> Run {
    let period = Duration::from_secs_f64(threads as f64 / rate);
    let mut conns: Vec<Conn> = (0..threads).map(|_| Conn::new(addr)).collect();
    for c in &mut conns {
        c.open();
    }
    // Time for the threads to be spawned before the first send.
    let start = Instant::now() + Duration::from_millis(50);
    let results: Vec<ThreadRun> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(t, mut conn)| {
                let offset = period * t as u32 / threads as u32;
                s.spawn(move || {
                    let (mut samples, mut errors) = (Vec::new(), Vec::new());
                    for i in 0u32.. {
                        let at = start + offset + period * i;
                        if at >= start + dur {
                            break;
                        }
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let sent = Instant::now();
                        let status = match conn.get(path, headers) {
                            Ok(r) => r.status,
                            Err(e) => {
                                errors.push(e);
                                0
                            }
                        };
                        samples.push((sent - start, status));
                    }
                    (samples, errors, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    });
    let mut run = Run {
        samples: Vec::new(),
        errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for (samples, errors, end) in results {
        run.samples.extend(samples);
        run.errors.extend(errors);
        run.elapsed = run.elapsed.max(end - start);
    }
    run.samples.sort();
    run
}

/// Asserts `got` is within `tolerance` (a fraction) of `expected`.
fn assert_near(what: &str, got: f64, expected: f64, tolerance: f64) {
    let off = (got - expected) / expected;
    assert!(
        off.abs() <= tolerance,
        "{what}: got {got:.1}, expected {expected:.1} ± {:.0}% (off by {:+.1}%)",
        tolerance * 100.0,
        off * 100.0
    );
    eprintln!(
        "{what}: {got:.1} vs expected {expected:.1} ({:+.2}%)",
        off * 100.0
    );
}

// ------------------------------------------------------------ helpers

/// A route to the `svc` upstream with this `rate_limit` (omitted if null).
fn route(id: &str, path: &str, limit: Value) -> Value {
    let mut r = json!({ "id": id, "paths": [path], "upstream": "svc" });
    if !limit.is_null() {
        r["rate_limit"] = limit;
    }
    r
}

/// `{"rate": rate, "burst": burst}`
fn limit(rate: f64, burst: u32) -> Value {
    json!({ "rate": rate, "burst": burst })
}

/// A bootstrap body: `extra` lines, then the routes (JSON is YAML) and one
/// static upstream `svc` on `backend`.
fn file_body(extra: &str, routes: &[Value], backend: &Backend) -> String {
    let routes: String = if routes.is_empty() {
        " []\n".into()
    } else {
        routes
            .iter()
            .map(|r| format!("\n- {r}"))
            .collect::<String>()
            + "\n"
    };
    format!(
        "{FAST_RELOAD}{extra}routes:{routes}upstreams:\n{}",
        upstream("svc", &[backend])
    )
}

/// Asserts an admitted answer from the backend with these rate headers
/// (`None`: no `X-RateLimit-*` at all).
fn assert_admitted(r: &Resp, limit_remaining: Option<(u32, u32)>) {
    echo(r);
    let got = (
        r.header("x-ratelimit-limit"),
        r.header("x-ratelimit-remaining"),
    );
    match limit_remaining {
        Some((l, rem)) => assert_eq!(
            got,
            (Some(l.to_string().as_str()), Some(rem.to_string().as_str())),
            "{r:?}"
        ),
        None => assert_eq!(got, (None, None), "{r:?}"),
    }
}

/// Asserts a 429 of the gateway's own, with its headers; returns Retry-After.
fn assert_limited(r: &Resp, burst: u32) -> u64 {
    assert_gateway_error(r, 429, "rate limited");
    assert_eq!(r.json()["error"], "rate limited", "{r:?}");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {r:?}"));
    assert!(retry >= 1, "{r:?}");
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some(burst.to_string().as_str()),
        "{r:?}"
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
    retry
}

/// Takes the whole burst of a slow bucket (`burst` admissions), then
/// checks the next request is refused.
fn drain(conn: &mut Conn, path: &str, headers: &[(&str, &str)], burst: u32) {
    for i in 0..burst {
        let r = conn.get(path, headers).unwrap();
        assert_eq!(r.status, 200, "request {i} of the burst on {path}: {r:?}");
    }
    let r = conn.get(path, headers).unwrap();
    assert_eq!(r.status, 429, "{path} after its burst: {r:?}");
}

fn status_of(conn: &mut Conn, path: &str, headers: &[(&str, &str)]) -> u16 {
    conn.get(path, headers)
        .unwrap_or_else(|e| panic!("{e}"))
        .status
}

/// A registry instance of service `svc` on `backend`, leased.
fn register(etcd: &Etcd, backend: &Backend) -> KeptLease {
    let lease = etcd.keep_alive(10);
    etcd.put_with_lease(&format!("{SERVICES}svc/i1"), &backend.url(), lease.id);
    lease
}

/// Puts routes (ids from their `id`) into etcd; returns the last revision.
fn put_routes(etcd: &Etcd, routes: &[Value]) -> i64 {
    routes
        .iter()
        .map(|r| {
            etcd.put(
                &format!("{ROUTES}{}", r["id"].as_str().unwrap()),
                &r.to_string(),
            )
        })
        .max()
        .unwrap_or(0)
}

/// The gateway's resident set, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

// ------------------------------------------------------------ tests

#[test]
fn a_route_under_4x_overload_admits_burst_plus_rate_times_elapsed() {
    let backend = Backend::start("svc-1");
    let gw = start(&file_body(
        "",
        &[route("hot", "/hot/*rest", limit(100.0, 100))],
        &backend,
    ));
    let run = drive(
        gw.proxy_addr(),
        "/hot/x",
        &[],
        400.0,
        4,
        Duration::from_secs(5),
    );
    run.assert_only_200_and_429();
    eprintln!("rate 100/s, burst 100, driven at 400/s: {}", run.summary());
    let expected = 100.0 + 100.0 * run.elapsed.as_secs_f64();
    assert_near("admitted", run.admitted() as f64, expected, 0.03);
    assert!(
        run.elapsed < Duration::from_millis(5500),
        "the generator fell behind: {}",
        run.summary()
    );
    assert_eq!(
        backend.hits(),
        run.admitted(),
        "only admitted requests reach the backend"
    );
    assert_eq!(
        metric(&gw, "tollgate_ratelimit_rejected_total{route=\"hot\"}") as usize,
        run.count(429)
    );
}

#[test]
fn refusals_are_json_429s_and_admissions_count_down() {
    let backend = Backend::start("svc-1");
    let quiet = json!({ "rate": SLOW, "burst": 2, "headers": false });
    let gw = start(&file_body(
        "",
        &[
            route("lim", "/lim", limit(SLOW, 5)),
            route("quiet", "/quiet", quiet),
        ],
        &backend,
    ));

    // Admitted answers carry the limit and what is left, counting down.
    for remaining in (0..5).rev() {
        assert_admitted(&send(&gw, "GET", "/lim", &[]), Some((5, remaining)));
    }
    // Then a 429 of the gateway's own, JSON with the request id.
    let r = send(&gw, "GET", "/lim", &[("x-request-id", "trace-429")]);
    let retry = assert_limited(&r, 5);
    assert_eq!(r.json()["request_id"], "trace-429");
    // The next token is one interval (20 s) after the burst was taken.
    assert!((19..=20).contains(&retry), "Retry-After {retry}");
    let r = send(&gw, "GET", "/lim", &[]);
    assert!(common::is_generated_id(
        r.json()["request_id"].as_str().unwrap()
    ));
    assert_limited(&r, 5);
    assert_eq!(backend.hits(), 5);

    // `headers: false`: admitted answers carry none; a 429 still does.
    for _ in 0..2 {
        assert_admitted(&send(&gw, "GET", "/quiet", &[]), None);
    }
    assert_limited(&send(&gw, "GET", "/quiet", &[]), 2);
    assert_eq!(backend.hits(), 7);
    assert_eq!(
        metric(&gw, "tollgate_ratelimit_rejected_total{route=\"lim\"}"),
        2.0
    );
    assert_eq!(
        metric(&gw, "tollgate_ratelimit_rejected_total{route=\"quiet\"}"),
        1.0
    );
}

/// Where the hot-change test gets its config from.
trait Source {
    fn gw(&self) -> &Gateway;
    /// Applies exactly these routes; returns once the gateway has.
    fn apply(&mut self, routes: &[Value]);
}

struct FileSource {
    gw: Gateway,
    backend: Backend,
}

impl Source for FileSource {
    fn gw(&self) -> &Gateway {
        &self.gw
    }

    fn apply(&mut self, routes: &[Value]) {
        let applied = |gw: &Gateway| gw.status()["applied_unix_ms"].as_u64().unwrap();
        let before = applied(&self.gw);
        self.gw
            .rewrite_config(&file_body("", routes, &self.backend));
        wait_for("the file edit to apply", APPLY, || {
            applied(&self.gw) > before
        });
        assert_eq!(self.gw.status()["rejected"], 0);
    }
}

struct EtcdSource {
    gw: Gateway,
    etcd: Etcd,
    _lease: KeptLease,
    _backend: Backend,
}

impl Source for EtcdSource {
    fn gw(&self) -> &Gateway {
        &self.gw
    }

    fn apply(&mut self, routes: &[Value]) {
        let rev = put_routes(&self.etcd, routes);
        let s = wait_revision(&self.gw, rev, APPLY);
        assert_eq!(s["rejected"], 0, "{s}");
    }
}

/// Rate 100 → 200 applies; another route's drained bucket stays drained;
/// editing a route's other fields keeps its bucket's level; so does a
/// per-client bucket when its route's rate changes.
fn limits_change_live(src: &mut dyn Source) {
    let a = |rate: f64| route("a", "/a/*rest", limit(rate, 100));
    let b = route("b", "/b", limit(SLOW, 3));
    let c = route("c", "/c/*rest", limit(SLOW, 3));
    let mut c_edited = c.clone();
    c_edited["methods"] = json!(["GET"]);
    c_edited["strip_prefix"] = json!("/c");
    let k = |rate: f64| {
        let keyed = json!({ "rate": rate, "burst": 3, "key": "header:x-client" });
        route("k", "/k", keyed)
    };
    let d = |rate: f64| route("d", "/d", limit(rate, 3));
    src.apply(&[a(100.0), b.clone(), c.clone(), k(2.0 * SLOW), d(2.0 * SLOW)]);
    let addr = src.gw().proxy_addr();
    let mut conn = Conn::new(addr);
    let window = (Duration::from_secs(1), Duration::from_secs(4));

    // At 100/s: the first second spends the burst, then 100/s.
    let run = drive(addr, "/a/x", &[], 400.0, 4, window.1);
    run.assert_only_200_and_429();
    eprintln!("rate 100: {}", run.summary());
    assert_near(
        "admitted/s at rate 100 (after the first second)",
        run.admitted_rate(window.0, window.1),
        100.0,
        0.05,
    );

    // Drain b, then change a's rate.
    drain(&mut conn, "/b", &[], 3);
    src.apply(&[a(200.0), b.clone(), c.clone()]);
    assert_eq!(
        status_of(&mut conn, "/b", &[]),
        429,
        "b's bucket was reset by a's change"
    );
    let run = drive(addr, "/a/x", &[], 400.0, 4, window.1);
    run.assert_only_200_and_429();
    eprintln!("rate 200: {}", run.summary());
    assert_near(
        "admitted/s at rate 200 (after the first second)",
        run.admitted_rate(window.0, window.1),
        200.0,
        0.05,
    );
    assert_eq!(status_of(&mut conn, "/b", &[]), 429);

    // Drain c, then edit everything but its limit: still drained.
    drain(&mut conn, "/c/x", &[], 3);
    src.apply(&[
        a(200.0),
        b.clone(),
        c_edited.clone(),
        k(2.0 * SLOW),
        d(2.0 * SLOW),
    ]);
    let r = src.gw().request("POST", "/c/x", &[], None).unwrap();
    assert_gateway_error(&r, 404, "no route");
    let r = conn.get("/c/x", &[]).unwrap();
    assert_limited(&r, 3);

    // Halving the rate hands a drained bucket no part of a fresh burst:
    // neither a route's nor a client's; a new client gets a whole one.
    let client = |id: &'static str| [("x-client", id)];
    drain(&mut conn, "/d", &[], 3);
    drain(&mut conn, "/k", &client("k1"), 3);
    src.apply(&[a(200.0), b, c_edited, k(SLOW), d(SLOW)]);
    assert_limited(&conn.get("/d", &[]).unwrap(), 3);
    assert_limited(&conn.get("/k", &client("k1")).unwrap(), 3);
    drain(&mut conn, "/k", &client("k2"), 3);
}

#[test]
fn file_edits_change_limits_live_and_keep_other_buckets() {
    let backend = Backend::start("svc-1");
    let mut src = FileSource {
        gw: start(&file_body("", &[], &backend)),
        backend,
    };
    let pid = src.gw.pid();
    limits_change_live(&mut src);
    assert_eq!(src.gw.pid(), pid);
    assert_eq!(
        src.gw.wait_exit(Duration::ZERO),
        None,
        "the gateway restarted"
    );
}

#[test]
fn etcd_puts_change_limits_live_and_keep_other_buckets() {
    let etcd = Etcd::start();
    let backend = Backend::start("svc-1");
    let lease = register(&etcd, &backend);
    let gw = start_gw("rl-live", &[etcd.endpoint()]);
    let mut src = EtcdSource {
        gw,
        etcd,
        _lease: lease,
        _backend: backend,
    };
    limits_change_live(&mut src);
}

#[test]
fn client_ip_keys_limit_each_peer_address_on_its_own() {
    let backend = Backend::start("svc-1");
    let keyed = json!({ "rate": SLOW, "burst": 3, "key": "client_ip" });
    let gw = start(&file_body("", &[route("ip", "/ip", keyed)], &backend));
    let mut one = Conn::bound_to(gw.proxy_addr(), [127, 0, 0, 1].into());
    let mut two = Conn::bound_to(gw.proxy_addr(), [127, 0, 0, 2].into());
    assert_eq!(two.local_ip(), IpAddr::from([127, 0, 0, 2]));

    for remaining in (0..3).rev() {
        assert_admitted(&one.get("/ip", &[]).unwrap(), Some((3, remaining)));
    }
    assert_limited(&one.get("/ip", &[]).unwrap(), 3);
    // The other address has its own full bucket.
    for remaining in (0..3).rev() {
        let r = two.get("/ip", &[]).unwrap();
        assert_admitted(&r, Some((3, remaining)));
        assert_eq!(echo(&r)["headers"]["x-forwarded-for"], "127.0.0.2");
    }
    assert_limited(&two.get("/ip", &[]).unwrap(), 3);
    assert_limited(&one.get("/ip", &[]).unwrap(), 3);
    // A new connection from the same address shares its bucket.
    let mut again = Conn::bound_to(gw.proxy_addr(), [127, 0, 0, 2].into());
    assert_limited(&again.get("/ip", &[]).unwrap(), 3);
}

#[test]
fn forwarded_for_keys_only_through_trusted_proxies() {
    let backend = Backend::start("svc-1");
    let keyed = json!({ "rate": SLOW, "burst": 3, "key": "client_ip" });
    let routes = [route("ip", "/ip", keyed)];
    let xff = |v: &'static str| [("x-forwarded-for", v)];

    // Nobody trusted: whatever a client claims, its peer address is its key.
    let gw = start(&file_body("", &routes, &backend));
    let mut conn = Conn::new(gw.proxy_addr());
    for claim in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        assert_eq!(status_of(&mut conn, "/ip", &xff(claim)), 200);
    }
    assert_eq!(status_of(&mut conn, "/ip", &xff("4.4.4.4")), 429);
    assert_eq!(status_of(&mut conn, "/ip", &[]), 429);

    // Loopback trusted: the rightmost untrusted hop is the client.
    let trusted = start(&file_body(
        "trusted_proxies: [\"127.0.0.1/32\"]\n",
        &routes,
        &backend,
    ));
    let mut conn = Conn::new(trusted.proxy_addr());
    drain(&mut conn, "/ip", &xff("1.1.1.1"), 3);
    drain(&mut conn, "/ip", &xff("2.2.2.2"), 3);
    // Spoofed hops to the left of the real client do not help.
    assert_eq!(status_of(&mut conn, "/ip", &xff("9.9.9.9, 1.1.1.1")), 429);
    // No header: the proxy itself is the client, with its own bucket.
    assert_eq!(status_of(&mut conn, "/ip", &[]), 200);
}

#[test]
fn header_keys_limit_each_value_on_its_own() {
    let backend = Backend::start("svc-1");
    let keyed = json!({ "rate": SLOW, "burst": 3, "key": "header:X-Api-Key" });
    let gw = start(&file_body("", &[route("h", "/h", keyed)], &backend));
    let mut conn = Conn::new(gw.proxy_addr());
    drain(&mut conn, "/h", &[("x-api-key", "k1")], 3);
    for remaining in (0..3).rev() {
        let r = conn.get("/h", &[("X-API-KEY", "k2")]).unwrap();
        assert_admitted(&r, Some((3, remaining)));
    }
    assert_limited(&conn.get("/h", &[("x-api-key", "k2")]).unwrap(), 3);
    assert_limited(&conn.get("/h", &[("x-api-key", "k1")]).unwrap(), 3);
    assert_eq!(status_of(&mut conn, "/h", &[("x-api-key", "k3")]), 200);
}

#[test]
fn a_flood_of_distinct_keys_stays_within_max_keys() {
    let backend = Backend::start("svc-1");
    let keyed = json!({
        "rate": 0.01, "burst": 1, "key": "header:x-api-key", "max_keys": 1000
    });
    let swept = json!({
        "rate": 1000, "burst": 5, "key": "header:x-api-key", "max_keys": 1000
    });
    let gw = start(&file_body(
        "",
        &[
            route("k", "/k", keyed),
            route("e", "/e", swept),
            route("warm", "/warm", Value::Null),
        ],
        &backend,
    ));
    let overflow = "tollgate_ratelimit_overflow_total";
    assert_eq!(metric(&gw, overflow), 0.0);
    let send_keys = |path: &'static str, tag: &'static str, n: usize| -> usize {
        // Four connections at once, each with its share of the keys.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let addr = gw.proxy_addr();
                    s.spawn(move || {
                        let mut conn = Conn::new(addr);
                        let mut admitted = 0;
                        for i in (t..n).step_by(4) {
                            let key = format!("{tag}-{i:08}");
                            let r = conn.get(path, &[("x-api-key", &key)]).unwrap();
                            assert!(r.status == 200 || r.status == 429, "{r:?}");
                            admitted += usize::from(r.status == 200);
                        }
                        admitted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        })
    };
    // Warm the process up (connections, buffers, allocator) first.
    assert_eq!(send_keys("/warm", "warm", 5000), 5000);
    let before = rss_kib(gw.pid());

    let admitted = send_keys("/k", "flood", 5000);
    let after = rss_kib(gw.pid());
    let overflowed = metric(&gw, overflow);
    eprintln!(
        "5000 keys, max_keys 1000: {admitted} admitted, overflow {overflowed}, \
         RSS {before} KiB -> {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    );
    // Each of the first 1,000 keys got its own bucket; the other 4,000
    // share the one overflow bucket (one token).
    assert!(
        (1000..=1010).contains(&admitted),
        "admitted {admitted}, expected ~1001"
    );
    assert!(overflowed >= 3900.0, "overflow {overflowed}");
    assert!(
        after < before + 4 * 1024,
        "RSS grew by {} KiB",
        after - before
    );

    // Idle buckets (full again: here after a millisecond) are swept, so a
    // table at its cap has room for new clients again.
    let evictions = "tollgate_ratelimit_evictions_total";
    assert_eq!(send_keys("/e", "first", 1000), 1000);
    wait_for("the sweeper to drop idle buckets", APPLY, || {
        metric(&gw, evictions) >= 1000.0
    });
    assert_eq!(send_keys("/e", "second", 1000), 1000);
    assert_eq!(
        metric(&gw, overflow),
        overflowed,
        "no new client overflowed"
    );
}

#[test]
fn the_default_limit_from_the_file_applies_to_routes_without_their_own() {
    let backend = Backend::start("svc-1");
    let settings = format!("settings: {{ rate_limit: {} }}\n", limit(SLOW, 2));
    let routes = [
        route("d1", "/d1", Value::Null),
        route("d2", "/d2", Value::Null),
        route("own", "/own", limit(SLOW, 4)),
    ];
    let gw = start(&file_body(&settings, &routes, &backend));
    default_limits_apply(&gw);

    // Without settings, the routes without a limit have none.
    gw.rewrite_config(&file_body("", &routes, &backend));
    wait_unlimited(&gw, "/d1");
    assert_limited(&send(&gw, "GET", "/own", &[]), 4);
}

#[test]
fn the_default_limit_from_etcd_settings_applies_to_routes_without_their_own() {
    let etcd = Etcd::start();
    let backend = Backend::start("svc-1");
    let _lease = register(&etcd, &backend);
    let gw = start_gw("rl-default", &[etcd.endpoint()]);
    etcd.put(
        "/tollgate/settings",
        &json!({ "rate_limit": limit(SLOW, 2) }).to_string(),
    );
    let rev = put_routes(
        &etcd,
        &[
            route("d1", "/d1", Value::Null),
            route("d2", "/d2", Value::Null),
            route("own", "/own", limit(SLOW, 4)),
        ],
    );
    wait_revision(&gw, rev, APPLY);
    default_limits_apply(&gw);

    etcd.delete("/tollgate/settings");
    wait_unlimited(&gw, "/d1");
    assert_limited(&send(&gw, "GET", "/own", &[]), 4);
}

/// With a default of burst 2 and a route `own` of burst 4: each route
/// without a limit has its own default bucket; `own` its own limit.
fn default_limits_apply(gw: &Gateway) {
    for path in ["/d1", "/d2"] {
        for remaining in (0..2).rev() {
            assert_admitted(&send(gw, "GET", path, &[]), Some((2, remaining)));
        }
        assert_limited(&send(gw, "GET", path, &[]), 2);
    }
    for remaining in (0..4).rev() {
        assert_admitted(&send(gw, "GET", "/own", &[]), Some((4, remaining)));
    }
    assert_limited(&send(gw, "GET", "/own", &[]), 4);
}

/// Waits until `path` is admitted with no rate headers at all.
fn wait_unlimited(gw: &Gateway, path: &str) {
    wait_ok(&format!("{path} unlimited"), APPLY, || {
        let r = gw.request("GET", path, &[], None)?;
        match (r.status, r.header("x-ratelimit-limit")) {
            (200, None) => Ok(()),
            _ => Err(format!("{r:?}")),
        }
    });
}

#[test]
fn cluster_scope_splits_the_limit_across_live_gateways() {
    let etcd = Etcd::start();
    let backend = Backend::start("svc-1");
    let _lease = register(&etcd, &backend);
    let gw_a = start_gw("rl-cluster-a", &[etcd.endpoint()]);
    let gw_b = start_gw("rl-cluster-b", &[etcd.endpoint()]);
    for gw in [&gw_a, &gw_b] {
        wait_status(gw, "2 gateways", APPLY, |s| s["gateways"] == 2);
    }
    let shared = json!({ "rate": 100, "burst": 100, "scope": "cluster" });
    let rev = put_routes(&etcd, &[route("shared", "/shared/*rest", shared)]);
    for gw in [&gw_a, &gw_b] {
        wait_revision(gw, rev, APPLY);
        // Each node enforces half the rate and half the burst.
        let r = send(gw, "GET", "/shared/probe", &[]);
        assert_admitted(&r, Some((50, 49)));
    }

    // Both driven at twice the total rate: together they admit it once.
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            drive(
                gw_a.proxy_addr(),
                "/shared/x",
                &[],
                200.0,
                2,
                Duration::from_secs(5),
            )
        });
        let b = s.spawn(|| {
            drive(
                gw_b.proxy_addr(),
                "/shared/x",
                &[],
                200.0,
                2,
                Duration::from_secs(5),
            )
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    ra.assert_only_200_and_429();
    rb.assert_only_200_and_429();
    eprintln!("node a: {}\nnode b: {}", ra.summary(), rb.summary());
    let t = ra.elapsed.max(rb.elapsed).as_secs_f64();
    assert_near(
        "admitted across both nodes",
        (ra.admitted() + rb.admitted()) as f64,
        100.0 + 100.0 * t,
        0.05,
    );

    // One node dies without a word: once its lease expires, the survivor
    // enforces the whole limit.
    drop(gw_b);
    let key = format!("{GATEWAYS}rl-cluster-b");
    wait_for(
        "the dead gateway's record to expire",
        Duration::from_secs(30),
        || etcd.get(&key).is_none(),
    );
    wait_status(&gw_a, "1 gateway", APPLY, |s| s["gateways"] == 1);
    assert_admitted(&send(&gw_a, "GET", "/shared/probe", &[]), Some((100, 99)));
    let window = (Duration::from_secs(1), Duration::from_secs(4));
    let run = drive(gw_a.proxy_addr(), "/shared/x", &[], 200.0, 2, window.1);
    run.assert_only_200_and_429();
    eprintln!("survivor alone: {}", run.summary());
    assert_near(
        "admitted/s by the survivor alone (after the first second)",
        run.admitted_rate(window.0, window.1),
        100.0,
        0.05,
    );
}

#[test]
fn check_names_the_bad_limit_field() {
    let head = "listen: [\"127.0.0.1:8080\"]\n\
                admin: { listen: \"127.0.0.1:9180\" }\n";
    let file = |extra: &str, limit: &str| {
        format!(
            "{head}{extra}routes:\n\
             - {{ id: r, paths: [\"/r\"], upstream: svc, rate_limit: {limit} }}\n\
             upstreams:\n  svc: {{ nodes: [\"http://127.0.0.1:9001\"] }}\n"
        )
    };
    let check = |text: String| {
        let f = TempFile::new(&text);
        run_cmd(bin(), &["check", "-c", f.arg()])
    };
    let (code, out, err) = check(file("", "{ rate: 10, burst: 20, key: client_ip }"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    for (limit, field) in [
        ("{ rate: 0 }", "routes[0].rate_limit.rate"),
        ("{ rate: -5, burst: 10 }", "routes[0].rate_limit.rate"),
        ("{ rate: 10, burst: 0 }", "routes[0].rate_limit.burst"),
        ("{ rate: 10, key: ip }", "routes[0].rate_limit.key"),
        ("{ rate: 10, key: \"header:\" }", "routes[0].rate_limit.key"),
        ("{ rate: 10, max_keys: 0 }", "routes[0].rate_limit.max_keys"),
        ("{ rate: 10, scope: global }", "routes[0].rate_limit.scope"),
        ("{ rate: 10, brust: 20 }", "routes[0].rate_limit.brust"),
    ] {
        let (code, out, err) = check(file("", limit));
        assert_ne!(code, 0, "{limit} accepted: {out}");
        assert!(err.contains(field), "{limit}: {field} not named in: {err}");
    }
    let (code, _, err) = check(file(
        "settings: { rate_limit: { rate: 0 } }\n",
        "{ rate: 1 }",
    ));
    assert_ne!(code, 0);
    assert!(err.contains("settings.rate_limit.rate"), "{err}");
    let (code, _, err) = check(file("trusted_proxies: [\"10.0.0.0/33\"]\n", "{ rate: 1 }"));
    assert_ne!(code, 0);
    assert!(err.contains("trusted_proxies[0]"), "{err}");
}

#[test]
fn a_bad_limit_in_etcd_is_rejected_and_the_route_keeps_its_last_good_version() {
    let etcd = Etcd::start();
    let backend = Backend::start("svc-1");
    let _lease = register(&etcd, &backend);
    let gw = start_gw("rl-bad", &[etcd.endpoint()]);
    let rejected = "tollgate_config_rejected_total{kind=\"route\"}";
    let rev = put_routes(&etcd, &[route("r", "/r", limit(SLOW, 7))]);
    wait_revision(&gw, rev, APPLY);
    assert_admitted(&send(&gw, "GET", "/r", &[]), Some((7, 6)));

    let bad = [
        (json!({ "rate": 0, "burst": 7 }), "rate_limit.rate"),
        (json!({ "rate": 5, "burst": 0 }), "rate_limit.burst"),
        (json!({ "rate": 5, "key": "ip" }), "rate_limit.key"),
    ];
    for (limit, _) in &bad {
        put_routes(&etcd, &[route("r", "/r", limit.clone())]);
    }
    // A barrier on the same watch: once it applies, the above were seen.
    let rev = put_routes(&etcd, &[route("barrier", "/barrier", Value::Null)]);
    wait_revision(&gw, rev, APPLY);
    assert_eq!(metric(&gw, rejected), 3.0);
    let logs = gw.logs();
    for (_, field) in &bad {
        assert!(
            logs.lines()
                .any(|l| l.contains("/tollgate/routes/r") && l.contains(field)),
            "no log line names {field}"
        );
    }
    // Still served, with the same limit and the same bucket.
    assert_admitted(&send(&gw, "GET", "/r", &[]), Some((7, 5)));
    assert_eq!(gw.status()["routes"], 2);
}
