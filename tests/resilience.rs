//! Upstream resilience against the real binary and real backends: retries
//! while an instance dies under load, passive ejection and its expiry,
//! active health checks, consistent hashing, least-request balancing,
//! upstream timeouts, the retry policy for non-idempotent requests, canary
//! splits, panic isolation, a zero-downtime upgrade under load, panic mode,
//! and bad policies refused by `tollgate check`.
//!
//! Load comes from plain threads, each with its own keep-alive HTTP/1.1
//! connection (`common::keepalive::Conn`), so that every request's fate is
//! known exactly: what the client sent and what came back.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::keepalive::Conn;
use common::{assert_gateway_error, bin, is_generated_id, start, TempFile};
use testkit::{http_get, http_request, run_cmd, wait_for, Backend, Gateway, Mode, Resp, SIGQUIT};

/// Poll the bootstrap file every 50ms so edits apply quickly.
const FAST_RELOAD: &str = "reload: { poll_ms: 50 }\n";
const SETTLE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ load

/// What one request of a load run saw.
#[derive(Debug, Clone)]
struct Sample {
    /// When the answer (or the error) came, since the load started.
    done: Duration,
    /// 0 for a transport error.
    status: u16,
    backend: Option<String>,
    /// The gateway process that answered, where its config names it
    /// (`x-process`, set by a response-rewrite plugin).
    process: Option<String>,
    error: Option<String>,
}

/// Threads sending GETs until stopped; each keeps one keep-alive
/// connection (reopened when closed), or with `fresh` opens a new
/// connection per request.
struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    handles: Vec<JoinHandle<(Vec<Sample>, usize)>>,
}

struct LoadResult {
    samples: Vec<Sample>,
    stale_retries: usize,
}

impl Load {
    fn start(
        addr: SocketAddr,
        path: &str,
        keepalive: usize,
        fresh: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles = (0..keepalive + fresh)
            .map(|i| {
                let stop = stop.clone();
                let path = path.to_string();
                let close = i >= keepalive;
                std::thread::spawn(move || {
                    let mut conn = Conn::new(addr);
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = conn.request("GET", &path, &[], None, close);
                        let done = started.elapsed();
                        samples.push(match r {
                            Ok(r) => Sample {
                                done,
                                status: r.status,
                                backend: r.header("x-backend").map(str::to_string),
                                process: r.header("x-process").map(str::to_string),
                                error: (r.status != 200).then(|| r.body.clone()),
                            },
                            Err(e) => Sample {
                                done,
                                status: 0,
                                backend: None,
                                process: None,
                                error: Some(e),
                            },
                        });
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    (samples, conn.stale_retries)
                })
            })
            .collect();
        Load {
            stop,
            started,
            handles,
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        let mut stale_retries = 0;
        for h in self.handles.drain(..) {
            let (s, r) = h.join().expect("load thread");
            samples.extend(s);
            stale_retries += r;
        }
        samples.sort_by_key(|s| s.done);
        LoadResult {
            samples,
            stale_retries,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LoadResult {
    fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.status != 200).collect()
    }

    fn assert_no_failures(&self, what: &str) {
        let failed = self.failures();
        let first: Vec<String> = failed
            .iter()
            .take(5)
            .map(|s| {
                format!(
                    "at {:?}: status {} from {:?}: {}",
                    s.done,
                    s.status,
                    s.backend,
                    s.error.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed, first ones:\n{}",
            failed.len(),
            self.samples.len(),
            first.join("\n")
        );
    }

    fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.samples {
            *m.entry(s.backend.clone().unwrap_or_default()).or_default() += 1;
        }
        m
    }
}

// ------------------------------------------------------------ helpers

/// A route `/<id>/*rest` to upstream `<id>`.
fn route(id: &str) -> String {
    format!("- {{ id: {id}, paths: [\"/{id}/*rest\"], upstream: {id} }}\n")
}

/// `"http://a", "http://b"` for a node list.
fn nodes(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of series `name` with exactly these labels (in any order) in
/// a Prometheus text exposition; 0 if absent.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, have) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    rest.trim_end_matches('}')
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_string)
                        .collect::<HashSet<_>>(),
                ),
                None => (series, HashSet::new()),
            };
            (n == name && have == want).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 200, "{r:?}");
    metric_value(&r.body, name, labels)
}

fn transitions(gw: &Gateway, upstream: &str, state: &str) -> f64 {
    metric(
        gw,
        "tollgate_health_check_transitions_total",
        &[("upstream", upstream), ("state", state)],
    )
}

/// `tollgate_instances{service, state}`.
fn instances(gw: &Gateway, service: &str, state: &str) -> f64 {
    metric(
        gw,
        "tollgate_instances",
        &[("service", service), ("state", state)],
    )
}

// ------------------------------------------------------------ 1. kill under load

#[test]
fn killing_one_of_two_instances_under_load_loses_no_get() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (c, d) = (Backend::start("c"), Backend::start("d"));
    let e = Backend::start("e");
    let gw = start(&format!(
        "routes:\n{}{}{}upstreams:\n\
         \x20 plain: {{ nodes: [{}] }}\n\
         \x20 reset: {{ nodes: [{}], retry: {{ on: [connect_failure, reset] }} }}\n\
         \x20 mid: {{ nodes: [{}], retry: {{ attempts: 2, on: [connect_failure, reset] }} }}\n",
        route("plain"),
        route("reset"),
        route("mid"),
        nodes(&[&a, &b]),
        nodes(&[&c, &d]),
        nodes(&[&e]),
    ));
    let addr = gw.proxy_addr();

    // (a) An instance stops listening (and drops its connections) while
    // four keep-alive clients hammer the route: the default retry policy
    // moves every refused connect to the survivor.
    let load = Load::start(addr, "/plain/x", 4, 0, Duration::ZERO);
    // Past the warm-up, the gateway's pool holds a connection to b for
    // each request in flight: the default policy retries a reset only on
    // a pooled connection, and a request on a fresh one in flight at the
    // kill is (b)'s case.
    wait_for("b to take traffic", SETTLE, || b.hits() >= 300);
    b.set_mode(Mode::Refuse);
    let killed_at = load.elapsed();
    let a_at_kill = a.hits();
    wait_for("a to take 300 more requests", SETTLE, || {
        a.hits() >= a_at_kill + 300
    });
    let run = load.finish();
    run.assert_no_failures("instance refused mid-load");
    let after = run.samples.iter().filter(|s| s.done > killed_at).count();
    eprintln!(
        "refuse: {} GETs, {after} after the kill, 0 failed; by backend {:?}",
        run.samples.len(),
        run.by_backend()
    );

    // (b) An instance dies with requests in flight: d stalls, and once
    // requests hang on it its process "dies" (listener closed, connections
    // dropped before any answer). With `on: [reset]` those requests are
    // retried on c, so the clients see no failure either.
    let load = Load::start(addr, "/reset/x", 4, 0, Duration::ZERO);
    wait_for("d to take traffic", SETTLE, || d.hits() >= 100);
    let d_before = d.hits();
    d.set_mode(Mode::Stall(Duration::from_secs(5)));
    wait_for("two requests hanging on d", SETTLE, || {
        d.hits() >= d_before + 2
    });
    let hanging = d.hits() - d_before;
    d.set_mode(Mode::Refuse);
    let c_at_kill = c.hits();
    wait_for("c to take 300 more requests", SETTLE, || {
        c.hits() >= c_at_kill + 300
    });
    let run = load.finish();
    run.assert_no_failures("instance reset with requests in flight");
    eprintln!(
        "reset: {} GETs, {hanging} were hanging on d when it died, 0 failed; by backend {:?}",
        run.samples.len(),
        run.by_backend()
    );

    // (c) A reset after the response has started cannot be retried: the
    // client already has the status and part of the body. The gateway
    // must not try again (a retry's body would be spliced into the first
    // response); the client sees a truncated response.
    e.set_mode(Mode::CloseMidResponse);
    let mut conn = Conn::new(addr);
    let r = conn.get("/mid/x", &[]);
    assert!(
        r.is_err(),
        "a truncated upstream answer reached the client whole: {r:?}"
    );
    assert_eq!(
        e.hits(),
        1,
        "the gateway retried a request whose response had already started"
    );
    // The gateway keeps serving.
    e.set_mode(Mode::Normal);
    let r = conn.get("/mid/x", &[]).expect("GET after the reset");
    assert_eq!(r.header("x-backend"), Some("e"), "{r:?}");
}

// ------------------------------------------------------------ 2. passive ejection

#[test]
fn passive_ejection_takes_a_failing_instance_out_then_back() {
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    bad.set_mode(Mode::Status(500));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], health_check: {{ passive: {{ consecutive_failures: 3, ejection_ms: 1000 }} }} }}\n",
        route("u"),
        nodes(&[&good, &bad]),
    ));
    let mut conn = Conn::new(gw.proxy_addr());

    // Round robin sends every other request to `bad` until its third 500.
    let mut sent = 0;
    while bad.hits() < 3 {
        let r = conn.get("/u/x", &[]).expect("GET");
        assert!(r.status == 200 || r.status == 500, "{r:?}");
        sent += 1;
        assert!(sent <= 20, "bad got only {} requests of {sent}", bad.hits());
    }
    let ejected = Instant::now();
    let good_then = good.hits();

    // Ejected: for the next 600 ms every request goes to `good`.
    let mut during = 0;
    while ejected.elapsed() < Duration::from_millis(600) {
        let r = conn.get("/u/x", &[]).expect("GET");
        assert_eq!(r.header("x-backend"), Some("good"), "{r:?}");
        during += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(bad.hits(), 3, "an ejected instance got traffic");
    assert_eq!(good.hits(), good_then + during);

    // It recovers; after the ejection (1 s) it takes traffic again.
    bad.set_mode(Mode::Normal);
    let back = loop {
        let r = conn.get("/u/x", &[]).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        if bad.hits() > 3 {
            break ejected.elapsed();
        }
        assert!(
            ejected.elapsed() < Duration::from_secs(5),
            "bad never came back"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        back >= Duration::from_millis(900) && back < Duration::from_millis(2000),
        "back after {back:?}, ejection_ms is 1000"
    );
    let before = bad.hits();
    for _ in 0..40 {
        assert_eq!(conn.get("/u/x", &[]).expect("GET").status, 200);
    }
    let share = bad.hits() - before;
    assert!(
        (15..=25).contains(&share),
        "bad took {share} of 40 after its ejection"
    );
    eprintln!(
        "passive: {during} requests while ejected all to good; bad back after {back:?}, then {share}/40"
    );
    assert_eq!(
        metric(&gw, "tollgate_ejections_total", &[("upstream", "u")]),
        1.0
    );
}

// ------------------------------------------------------------ 3. active checks

#[test]
fn active_health_check_takes_an_instance_out_before_any_request_reaches_it() {
    let (good, sick) = (Backend::start("good"), Backend::start("sick"));
    // Failing before the gateway even starts: no client request may ever
    // reach it.
    sick.set_mode(Mode::Status(503));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], health_check: {{ active: {{ path: /healthz, interval_ms: 100, unhealthy: 2, healthy: 2 }} }} }}\n",
        route("u"),
        nodes(&[&good, &sick]),
    ));
    wait_for("sick to be marked unhealthy", SETTLE, || {
        transitions(&gw, "u", "unhealthy") >= 1.0
    });
    let checks = sick.hits();
    assert!(checks >= 2, "unhealthy after {checks} checks");
    assert_eq!(instances(&gw, "u", "unhealthy"), 1.0);
    assert_eq!(instances(&gw, "u", "live"), 1.0);

    let mut conn = Conn::new(gw.proxy_addr());
    let started = Instant::now();
    let n = 60;
    for i in 0..n {
        let r = conn.get(&format!("/u/{i}"), &[]).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("good"), "{r:?}");
        // Spread over a few check intervals.
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    // `sick` saw only its health checks meanwhile (one per 100 ms).
    let extra = sick.hits() - checks;
    let max_checks = (took.as_millis() / 100) as usize + 2;
    assert!(
        extra <= max_checks,
        "sick got {extra} requests in {took:?}: more than its health checks"
    );
    assert!(extra >= 1, "no health check in {took:?}");
    // `good` took them all (and its own health checks).
    assert!(good.hits() >= n);

    // It recovers: two good checks bring it back.
    sick.set_mode(Mode::Normal);
    wait_for("sick to be marked healthy", SETTLE, || {
        transitions(&gw, "u", "healthy") >= 1.0
    });
    assert_eq!(instances(&gw, "u", "live"), 2.0);
    assert_eq!(instances(&gw, "u", "unhealthy"), 0.0);
    let before = sick.hits();
    let mut to_sick = 0;
    for i in 0..20 {
        let r = conn.get(&format!("/u/{i}"), &[]).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        if r.header("x-backend") == Some("sick") {
            to_sick += 1;
        }
    }
    assert!(
        (8..=12).contains(&to_sick),
        "recovered instance took {to_sick} of 20"
    );
    assert!(sick.hits() >= before + to_sick);
    eprintln!("active: {n} requests in {took:?}, none to the sick instance ({extra} checks meanwhile); back: {to_sick}/20");
}

// ------------------------------------------------------------ 4. consistent hashing

#[test]
fn consistent_hash_keeps_keys_and_moves_only_the_removed_instances_share() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("h{i}"))).collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let config = |nodes_: &[&Backend]| {
        format!(
            "{FAST_RELOAD}routes:\n{}upstreams:\n\
             \x20 u: {{ nodes: [{}], lb: {{ type: consistent_hash, key: \"header:x-user\" }} }}\n",
            route("u"),
            nodes(nodes_),
        )
    };
    let gw = start(&config(&refs));
    let mut conn = Conn::new(gw.proxy_addr());
    let owner = |conn: &mut Conn, key: &str| -> String {
        let r = conn.get("/u/x", &[("x-user", key)]).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        r.header("x-backend").expect("x-backend").to_string()
    };

    // One key stays on one instance.
    let first = owner(&mut conn, "alice");
    for _ in 0..19 {
        assert_eq!(owner(&mut conn, "alice"), first);
    }

    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let before: HashMap<&str, String> = keys
        .iter()
        .map(|k| (k.as_str(), owner(&mut conn, k)))
        .collect();
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for b in before.values() {
        *spread.entry(b).or_default() += 1;
    }
    assert_eq!(spread.len(), 4, "keys on every instance: {spread:?}");

    // Remove h1 from the upstream.
    let removed = "h1";
    let kept: Vec<&Backend> = refs
        .iter()
        .copied()
        .filter(|b| b.name() != removed)
        .collect();
    gw.rewrite_config(&config(&kept));
    wait_for("the upstream to have 3 instances", SETTLE, || {
        gw.status()["instances"] == 3
    });

    let mut moved = 0;
    for k in &keys {
        let now = owner(&mut conn, k);
        let was = &before[k.as_str()];
        if &now != was {
            assert_eq!(was, removed, "key {k} moved from {was} to {now}");
            moved += 1;
        } else {
            assert_ne!(was, removed);
        }
    }
    let share = moved as f64 / keys.len() as f64;
    eprintln!(
        "consistent hash: spread {spread:?}; removing {removed} moved {moved}/400 = {share:.3}"
    );
    assert_eq!(
        moved, spread[removed],
        "exactly the removed instance's keys move"
    );
    assert!((0.15..=0.35).contains(&share), "{moved} of 400 keys moved");
}

// ------------------------------------------------------------ 5. least request

#[test]
fn least_request_favours_the_fast_instance() {
    let (fast, slow) = (Backend::start("fast"), Backend::start("slow"));
    slow.set_mode(Mode::Stall(Duration::from_millis(200)));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], lb: {{ type: least_request }} }}\n",
        route("u"),
        nodes(&[&fast, &slow]),
    ));
    let addr = gw.proxy_addr();
    // 8 threads share 8 × 50 requests, so all 8 stay busy to the end (a
    // lone last thread would see both instances idle and alternate).
    let (threads, per_thread) = (8, 50);
    let left = Arc::new(std::sync::atomic::AtomicIsize::new(threads * per_thread));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let left = left.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let mut seen = Vec::new();
                while left.fetch_sub(1, Ordering::Relaxed) > 0 {
                    let r = conn.get("/u/x", &[]).expect("GET");
                    assert_eq!(r.status, 200, "{r:?}");
                    seen.push(r.header("x-backend").unwrap_or_default().to_string());
                }
                seen
            })
        })
        .collect();
    let answers: Vec<String> = handles
        .into_iter()
        .flat_map(|t| t.join().expect("load thread"))
        .collect();
    let total = answers.len();
    let to_fast = answers.iter().filter(|b| *b == "fast").count();
    let share = to_fast as f64 / total as f64;
    eprintln!(
        "least_request: fast {to_fast}/{total} = {share:.3} in {:?}",
        started.elapsed()
    );
    assert!(share > 0.7, "fast took only {to_fast} of {total}");
}

// ------------------------------------------------------------ 6. timeout

#[test]
fn a_stalled_upstream_gives_504_at_the_read_timeout() {
    let stalled = Backend::start("stalled");
    stalled.set_mode(Mode::Stall(Duration::from_secs(5)));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], timeout: {{ read_ms: 300 }} }}\n",
        route("u"),
        nodes(&[&stalled]),
    ));
    let started = Instant::now();
    let r = http_request("GET", &gw.url("/u/x"), &[], None).expect("GET");
    let took = started.elapsed();
    let id = assert_gateway_error(&r, 504, "timed out");
    assert!(is_generated_id(&id), "{id}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "504 after {took:?}, read_ms is 300"
    );
    assert_eq!(
        stalled.hits(),
        1,
        "a timed-out GET is not retried by default"
    );
    eprintln!("timeout: 504 after {took:?}");
}

// ------------------------------------------------------------ 7. retry policy

/// Sends `method` until one lands first on `first` (whose hit count then
/// goes up by one); returns that response.
fn land_on(
    conn: &mut Conn,
    first: &Backend,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Resp {
    for _ in 0..10 {
        let before = first.hits();
        let r = conn
            .request(method, path, &[], body, false)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        if first.hits() > before {
            return r;
        }
        assert_eq!(r.status, 200, "{r:?}");
    }
    panic!("{method} {path} never landed on {}", first.name());
}

#[test]
fn posts_are_not_retried_once_sent_unless_the_policy_allows_it() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (c, d) = (Backend::start("c"), Backend::start("d"));
    let (e, f) = (Backend::start("e"), Backend::start("f"));
    a.set_mode(Mode::Status(503));
    c.set_mode(Mode::Status(503));
    e.set_mode(Mode::Status(503));
    let gw = start(&format!(
        "routes:\n{}{}\
         - {{ id: posted, paths: [\"/posted/*rest\"], upstream: posted, plugins: [{{proxy-rewrite: {{method: POST}}}}] }}\n\
         upstreams:\n\
         \x20 safe: {{ nodes: [{}], retry: {{ attempts: 2, on: [\"503\"] }} }}\n\
         \x20 any: {{ nodes: [{}], retry: {{ attempts: 2, on: [\"503\"], idempotent_only: false }} }}\n\
         \x20 posted: {{ nodes: [{}], retry: {{ attempts: 2, on: [\"503\"] }} }}\n",
        route("safe"),
        route("any"),
        nodes(&[&a, &b]),
        nodes(&[&c, &d]),
        nodes(&[&e, &f]),
    ));
    let mut conn = Conn::new(gw.proxy_addr());

    // A GET answered 503 by a is retried on b.
    let b_before = b.hits();
    let r = land_on(&mut conn, &a, "GET", "/safe/x", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("b"), "{r:?}");
    assert_eq!(b.hits(), b_before + 1);

    // A POST answered 503 by a is not: its body went upstream.
    let (a_before, b_before) = (a.hits(), b.hits());
    let r = land_on(&mut conn, &a, "POST", "/safe/x", Some(b"0123456789"));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-backend"),
        Some("a"),
        "the backend's own 503: {r:?}"
    );
    assert_eq!(a.hits(), a_before + 1, "the POST reached a exactly once");
    assert_eq!(b.hits(), b_before, "the POST was retried on b");

    // With idempotent_only: false it is, with its body.
    let d_before = d.hits();
    let r = land_on(&mut conn, &c, "POST", "/any/x", Some(b"0123456789"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("d"), "{r:?}");
    assert_eq!(r.json()["body_len"], 10, "the body was replayed: {r:?}");
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(d.hits(), d_before + 1);

    // A GET a plugin sends upstream as a POST is judged as the POST it is.
    let (e_before, f_before) = (e.hits(), f.hits());
    let r = land_on(&mut conn, &e, "GET", "/posted/x", None);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("e"), "{r:?}");
    assert_eq!(r.json()["method"], "POST", "{r:?}");
    assert_eq!(e.hits(), e_before + 1, "the POST reached e exactly once");
    assert_eq!(f.hits(), f_before, "the POST was retried on f");
}

// ------------------------------------------------------------ 8. canary

#[test]
fn canary_takes_its_share_and_the_header_forces_it() {
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let gw = start(&format!(
        "routes:\n\
         - {{ id: api, paths: [\"/api/*rest\"], upstream: v1, canary: {{ upstream: v2, weight: 10, header: {{ name: X-Canary, value: always }} }} }}\n\
         upstreams:\n  v1: {{ nodes: [{}] }}\n  v2: {{ nodes: [{}] }}\n",
        nodes(&[&v1]),
        nodes(&[&v2]),
    ));
    let addr = gw.proxy_addr();
    let (threads, per_thread) = (4, 2500);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let mut to_v2 = 0;
                for _ in 0..per_thread {
                    let r = conn.get("/api/x", &[]).expect("GET");
                    assert_eq!(r.status, 200, "{r:?}");
                    if r.header("x-backend") == Some("v2") {
                        to_v2 += 1;
                    }
                }
                to_v2
            })
        })
        .collect();
    let to_v2: usize = handles.into_iter().map(|h| h.join().expect("load")).sum();
    let total = threads * per_thread;
    let share = to_v2 as f64 / total as f64;
    eprintln!(
        "canary: {to_v2}/{total} = {share:.4} to v2 in {:?}",
        started.elapsed()
    );
    assert!(
        (0.07..=0.13).contains(&share),
        "canary share {share} not within 10% ± 3%"
    );
    assert_eq!(v1.hits() + v2.hits(), total);

    let mut conn = Conn::new(addr);
    for _ in 0..100 {
        let r = conn.get("/api/x", &[("X-Canary", "always")]).expect("GET");
        assert_eq!(r.header("x-backend"), Some("v2"), "{r:?}");
    }
    // Another value of the header is no override.
    let v1_before = v1.hits();
    for _ in 0..10 {
        conn.get("/api/x", &[("X-Canary", "never")]).expect("GET");
    }
    assert!(v1.hits() > v1_before);
}

// ------------------------------------------------------------ 9. panic isolation

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test.sh enables it)"
)]
fn a_panicking_request_gets_500_while_others_are_served() {
    let a = Backend::start("a");
    let gw = Gateway::start_with_env(
        bin(),
        &format!(
            "routes:\n{}upstreams:\n  u: {{ nodes: [{}] }}\n",
            route("u"),
            nodes(&[&a])
        ),
        &[("TOLLGATE_TEST_PANIC_HEADER", "x-test-panic")],
    );
    gw.wait_ready(SETTLE);

    let load = Load::start(gw.proxy_addr(), "/u/x", 3, 0, Duration::ZERO);
    wait_for("normal traffic", SETTLE, || a.hits() >= 50);
    let mut ids = HashSet::new();
    let mut conn = Conn::new(gw.proxy_addr());
    for _ in 0..20 {
        let r = conn.get("/u/x", &[("x-test-panic", "1")]).expect("GET");
        let id = assert_gateway_error(&r, 500, "internal error");
        assert!(is_generated_id(&id), "{id}");
        assert!(ids.insert(id), "request ids repeat");
    }
    let a_mid = a.hits();
    wait_for("normal traffic after the panics", SETTLE, || {
        a.hits() >= a_mid + 50
    });
    let run = load.finish();
    run.assert_no_failures("requests beside the panicking ones");
    // The panicking requests never went upstream.
    assert_eq!(a.hits(), run.samples.len());

    // Still serving, same process.
    let r = conn.get("/u/x", &[]).expect("GET after the panics");
    assert_eq!(r.header("x-backend"), Some("a"), "{r:?}");
    let logs = gw.logs();
    assert!(logs.contains("panic while handling a request"), "{logs}");
    eprintln!(
        "panic: 20 panicking requests answered 500; {} concurrent requests all 200",
        run.samples.len()
    );
}

// ------------------------------------------------------------ 10. upgrade

/// A process we spawned; SIGKILLed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a unix socket at `path` is listening (per /proc/net/unix:
/// flags 0x10000 is __SO_ACCEPTCON).
fn unix_listening(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8 && f[7] == want && f[3] == "00010000"
        })
    })
}

#[test]
fn a_zero_downtime_upgrade_under_load_loses_no_request() {
    let backend = Backend::start("b");
    // Each process names itself on its answers: the new one starts from a
    // copy of the file that differs only there (request ids are random,
    // so they can't tell the processes apart).
    let mut old = start(&format!(
        "settings:\n  plugins: [{{response-rewrite: {{headers: {{set: {{x-process: old}}}}}}}}]\n\
         routes:\n{}upstreams:\n  u: {{ nodes: [{}] }}\n",
        route("u"),
        nodes(&[&backend])
    ));
    let addr = old.proxy_addr();
    let r = Conn::new(addr).get("/u/x", &[]).expect("GET");
    assert_eq!(r.header("x-process"), Some("old"), "{r:?}");
    let new_config = old.dir().join("new.yaml");
    let text = std::fs::read_to_string(old.config_path()).expect("config");
    assert!(text.contains("x-process: old"), "{text}");
    std::fs::write(
        &new_config,
        text.replace("x-process: old", "x-process: new"),
    )
    .expect("new config");

    // Two keep-alive clients and two that open a connection per request
    // (so the listening socket keeps accepting throughout the hand-over).
    let load = Load::start(addr, "/u/x", 2, 2, Duration::from_millis(1));
    wait_for("load through the old process", SETTLE, || {
        backend.hits() >= 200
    });

    // The new process: same binary, a copy of the file, same state dir (so the same
    // upgrade socket). It waits there for the old one's listeners.
    let sock = old.state_dir().join("upgrade.sock");
    let new_log = old.dir().join("new.log");
    let log = std::fs::File::create(&new_log).expect("new log");
    let mut new = Proc(
        Command::new(bin())
            .args(["run", "--upgrade", "-c"])
            .arg(&new_config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn the new process"),
    );
    let new_logs = || std::fs::read_to_string(&new_log).unwrap_or_default();
    wait_for("the new process to listen on upgrade.sock", SETTLE, || {
        assert!(
            new.0.try_wait().expect("try_wait").is_none(),
            "new process exited: {}",
            new_logs()
        );
        unix_listening(&sock)
    });
    let handover = load.elapsed();
    old.signal(SIGQUIT);

    let exit = old.wait_exit(Duration::from_secs(20));
    let old_gone = load.elapsed();
    assert_eq!(
        exit,
        Some(0),
        "old process after SIGQUIT; log:\n{}",
        old.logs()
    );
    // The new process holds the listeners (proxy and admin) and serves.
    let served_after = backend.hits();
    wait_for("the new process to serve 200 more", SETTLE, || {
        backend.hits() >= served_after + 200
    });
    let r = http_get(&old.admin_url("/status"));
    assert_eq!(r.status, 200, "{r:?}");
    let run = load.finish();
    assert!(
        new.0.try_wait().expect("try_wait").is_none(),
        "new process exited: {}",
        new_logs()
    );

    run.assert_no_failures("zero-downtime upgrade");
    let mut by_process: BTreeMap<String, (usize, Duration, Duration)> = BTreeMap::new();
    for s in &run.samples {
        let p = s.process.clone().expect("x-process");
        let e = by_process.entry(p).or_insert((0, s.done, s.done));
        e.0 += 1;
        e.2 = s.done;
    }
    assert_eq!(
        by_process.keys().collect::<Vec<_>>(),
        ["new", "old"],
        "served by: {by_process:?}"
    );
    let (old_n, _, old_last) = by_process["old"];
    let (new_n, new_first, _) = by_process["new"];
    assert!(old_last <= old_gone, "old served after it exited");
    assert!(new_first >= handover, "new served before the hand-over");
    // Served throughout: no gap in answers longer than 500 ms.
    let gap = run
        .samples
        .windows(2)
        .map(|w| w[1].done - w[0].done)
        .max()
        .unwrap_or_default();
    assert!(
        gap < Duration::from_millis(500),
        "answers stopped for {gap:?}"
    );
    eprintln!(
        "upgrade: {} requests, 0 failed ({} stale keep-alive connections re-sent); old served {old_n} \
         (last at {old_last:?}), new served {new_n} (first at {new_first:?}); SIGQUIT at {handover:?}, \
         old exited at {old_gone:?}; longest gap {gap:?}",
        run.samples.len(),
        run.stale_retries,
    );
}

// ------------------------------------------------------------ 11. panic mode

#[test]
fn panic_mode_spreads_over_all_instances_when_too_few_are_healthy() {
    let h: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("p{i}"))).collect();
    h[1].set_mode(Mode::Status(503));
    h[2].set_mode(Mode::Status(503));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], health_check: {{ active: {{ path: /healthz, interval_ms: 100, unhealthy: 2, healthy: 2 }}, panic_threshold: 0.5 }} }}\n",
        route("u"),
        nodes(&h.iter().collect::<Vec<_>>()),
    ));
    wait_for("two instances marked unhealthy", SETTLE, || {
        transitions(&gw, "u", "unhealthy") >= 2.0
    });
    let mut conn = Conn::new(gw.proxy_addr());
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..90 {
        let r = conn.get("/u/x", &[]).expect("GET");
        *by.entry(r.header("x-backend").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    eprintln!("panic mode: {by:?}");
    for b in ["p0", "p1", "p2"] {
        let n = by.get(b).copied().unwrap_or(0);
        assert!((20..=40).contains(&n), "{b} took {n} of 90: {by:?}");
    }
    assert!(metric(&gw, "tollgate_upstream_panic_picks_total", &[]) > 0.0);
}

// ------------------------------------------------------------ bad policies

#[test]
fn check_refuses_bad_policies_naming_the_field() {
    let upstream = |policy: &str| {
        format!(
            "routes:\n- {{ id: r, paths: [\"/r\"], upstream: u }}\n\
             upstreams:\n  u: {{ nodes: [\"http://127.0.0.1:9\"], {policy} }}\n  v2: {{ nodes: [\"http://127.0.0.1:10\"] }}\n"
        )
    };
    let cases = [
        (upstream("lb: { type: random }"), "upstreams.u.lb"),
        (upstream("retry: { budget: 2 }"), "upstreams.u.retry.budget"),
        (
            upstream("health_check: { active: { path: \"x\" } }"),
            "upstreams.u.health_check.active.path",
        ),
        (
            "routes:\n- { id: r, paths: [\"/r\"], upstream: u, canary: { upstream: v2, weight: 150 } }\n\
             upstreams:\n  u: { nodes: [\"http://127.0.0.1:9\"] }\n  v2: { nodes: [\"http://127.0.0.1:10\"] }\n"
                .to_string(),
            "routes[0].canary.weight",
        ),
    ];
    for (text, field) in cases {
        let f = TempFile::new(&text);
        let (code, out, err) = run_cmd(bin(), &["check", "-c", f.arg()]);
        assert_ne!(code, 0, "accepted:\n{text}\nstdout: {out}\nstderr: {err}");
        assert!(err.contains(field), "stderr lacks {field:?}:\n{err}");
    }
    // The same policies, valid, pass.
    let f = TempFile::new(&upstream(
        "lb: { type: least_request }, retry: { budget: 0.5 }, health_check: { active: { path: /healthz } }",
    ));
    let (code, out, err) = run_cmd(bin(), &["check", "-c", f.arg()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

#[test]
fn a_client_hanging_up_counts_against_no_instance() {
    // Both instances answer slowly, so the client can leave mid-request.
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    for backend in [&a, &b] {
        backend.set_mode(Mode::Stall(Duration::from_secs(2)));
    }
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], health_check: {{ passive: {{ consecutive_failures: 1, ejection_ms: 60000 }} }} }}\n",
        route("u"),
        nodes(&[&a, &b]),
    ));
    let mut client = std::net::TcpStream::connect(gw.proxy_addr()).expect("connect");
    std::io::Write::write_all(
        &mut client,
        b"GET /u/x HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: hangs-up\r\n\r\n",
    )
    .expect("send");
    wait_for(
        "the request to reach an instance",
        Duration::from_secs(10),
        || a.hits() + b.hits() == 1,
    );
    drop(client);
    wait_for(
        "the gateway to end the request",
        Duration::from_secs(10),
        || {
            gw.logs()
                .lines()
                .any(|l| l.contains("hangs-up") && l.contains("request failed"))
        },
    );

    // The instance did nothing wrong: not ejected, and no other got it.
    assert_eq!(
        metric(&gw, "tollgate_ejections_total", &[("upstream", "u")]),
        0.0
    );
    assert_eq!(a.hits() + b.hits(), 1, "the request was retried");
    // Both keep taking traffic.
    for backend in [&a, &b] {
        backend.set_mode(Mode::Normal);
    }
    assert_both_instances_serve(&gw);
}

#[test]
fn a_client_stalling_mid_upload_gets_408_and_counts_against_no_instance() {
    // The instances read the whole body before answering, as most servers
    // do; the upstream read timeout is short, so it runs out while they
    // wait for the body the client stopped sending.
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let gw = start(&format!(
        "routes:\n{}upstreams:\n\
         \x20 u: {{ nodes: [{}], timeout: {{ read_ms: 300 }}, health_check: {{ passive: {{ consecutive_failures: 1, ejection_ms: 60000 }} }} }}\n",
        route("u"),
        nodes(&[&a, &b]),
    ));
    let mut client = std::net::TcpStream::connect(gw.proxy_addr()).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    std::io::Write::write_all(
        &mut client,
        b"PUT /u/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .expect("send");
    // 990 bytes never come: the gateway answers once the read timeout runs out.
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut client, &mut answer)
        .expect("the gateway answers and closes");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client request timed out"), "{answer}");

    // The instance did nothing wrong: not ejected, and no other got it.
    assert_eq!(
        metric(&gw, "tollgate_ejections_total", &[("upstream", "u")]),
        0.0
    );
    assert_eq!(
        a.hits() + b.hits(),
        0,
        "an instance answered a request it never got whole"
    );
    assert_both_instances_serve(&gw);
}

/// Four requests to route `u` reach both of its two instances: neither was
/// taken out.
fn assert_both_instances_serve(gw: &Gateway) {
    let mut conn = Conn::new(gw.proxy_addr());
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let r = conn.get("/u/x", &[]).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        seen.extend(r.header("x-backend").map(str::to_string));
    }
    assert_eq!(seen.len(), 2, "an instance was taken out: {seen:?}");
}
