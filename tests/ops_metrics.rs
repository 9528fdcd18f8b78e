//! Observability against the real binary: every `/metrics` family exists
//! and moves with what happened (traffic, a 429, a passive ejection, etcd
//! changes, a rejected value); request-metric labels stay bounded under
//! thousands of distinct paths and methods; and the JSON access log line
//! carries what an operator needs (request id, route, upstream, sizes),
//! nothing is written when the log is off or sampled to 0, and a log file
//! that cannot be opened stops the start. Instance counts by state cover
//! services only a route names, draining and ejected instances.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::etcd_gw::{
    metrics, put_route, start_gw, wait_ok, wait_revision, wait_status, TempDir, ROUTES, SERVICES,
};
use common::keepalive::Conn;
use common::{echo, send, start, upstream};
use serde_json::{json, Value};
use testkit::{Backend, Etcd, Mode};

const APPLY: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ /metrics text

/// One exposed sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (as the `prometheus` crate writes it:
/// label values contain no `,` or `"` here).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label k=v");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The samples named `name` whose labels include every pair of `labels`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Sum over the matching series; None when no series matches.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut it = matching(samples, name, labels).peekable();
    it.peek()?;
    Some(it.map(|s| s.value).sum())
}

/// Like [`sum`], panicking with the family's lines when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(samples, name, labels).unwrap_or_else(|| {
        let have: Vec<String> = samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect();
        panic!("no series {name}{labels:?}; the family has: {have:#?}")
    })
}

/// 0 when absent (a counter not created yet).
fn value_or_0(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(samples, name, labels).unwrap_or(0.0)
}

// ------------------------------------------------------------ 1. every family

#[test]
fn every_metric_family_appears_and_moves() {
    let etcd = Etcd::start();
    let good = Backend::start("good");
    let bad = Backend::start("bad");
    bad.set_mode(Mode::Status(500));
    etcd.put(
        "/tollgate/upstreams/svc",
        &json!({ "health_check": { "passive": { "consecutive_failures": 2, "ejection_ms": 5000 } } })
            .to_string(),
    );
    let lease = etcd.keep_alive(30);
    etcd.put_with_lease(&format!("{SERVICES}svc/good"), &good.url(), lease.id);
    etcd.put_with_lease(&format!("{SERVICES}svc/bad"), &bad.url(), lease.id);
    put_route(etcd.client(), "echo", &["/echo"], "svc");
    // One token per 20 s: the second request in a row is refused.
    etcd.put(
        &format!("{ROUTES}limited"),
        &json!({ "paths": ["/limited"], "upstream": "svc", "rate_limit": { "rate": 0.05, "burst": 1 } })
            .to_string(),
    );
    let gw = start_gw("ops-metrics", &[etcd.endpoint()]);
    wait_status(&gw, "2 routes", APPLY, |s| s["routes"] == 2);
    wait_ok("svc has 2 live instances", APPLY, || {
        let m = parse(&metrics(&gw));
        match sum(
            &m,
            "tollgate_instances",
            &[("service", "svc"), ("state", "live")],
        ) {
            Some(2.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    let before = parse(&metrics(&gw));
    let watch_before = value(&before, "tollgate_etcd_watch_events_total", &[]);
    let rev_before = value(&before, "tollgate_applied_revision", &[]);
    let rejected_before = value(
        &before,
        "tollgate_config_rejected_total",
        &[("kind", "route")],
    );
    let ejections_before = value_or_0(&before, "tollgate_ejections_total", &[("upstream", "svc")]);

    // --- traffic: round robin over good and bad until bad is ejected
    // (two consecutive 500s), then only 200s from good.
    let mut sent = 0;
    let ejected = loop {
        let r = send(&gw, "GET", "/echo", &[]);
        assert!(r.status == 200 || r.status == 500, "{r:?}");
        sent += 1;
        let m = parse(&metrics(&gw));
        if value_or_0(&m, "tollgate_ejections_total", &[("upstream", "svc")]) > ejections_before {
            break sent;
        }
        assert!(
            sent < 20,
            "bad never ejected ({} hits of {sent})",
            bad.hits()
        );
    };
    // Ejected for 5 s: counted as such, not as live.
    let m = parse(&metrics(&gw));
    let state = |s: &str| {
        value(
            &m,
            "tollgate_instances",
            &[("service", "svc"), ("state", s)],
        )
    };
    assert_eq!((state("live"), state("ejected")), (1.0, 1.0));
    assert_eq!((state("draining"), state("unhealthy")), (0.0, 0.0));
    let bad_hits = bad.hits();
    for _ in 0..10 {
        let r = send(&gw, "GET", "/echo", &[]);
        assert_eq!(
            echo(&r)["backend"],
            "good",
            "ejected bad still served: {r:?}"
        );
    }
    assert_eq!(bad.hits(), bad_hits, "an ejected instance got traffic");

    // --- a 429
    let first = send(&gw, "GET", "/limited", &[]);
    assert_ne!(first.status, 429, "{first:?}");
    let limited = send(&gw, "GET", "/limited", &[]);
    assert_eq!(limited.status, 429, "{limited:?}");

    // --- an etcd change, then a rejected value
    let rev = put_route(etcd.client(), "extra", &["/extra"], "svc");
    wait_revision(&gw, rev, APPLY);
    let rev = etcd.put(
        &format!("{ROUTES}broken"),
        r#"{"paths": ["no-slash"], "upstream": "svc"}"#,
    );
    wait_revision(&gw, rev, APPLY);
    wait_status(&gw, "3 routes", APPLY, |s| s["routes"] == 3);

    let text = metrics(&gw);
    let after = parse(&text);
    eprintln!(
        "ejected after {ejected} requests; /metrics has {} samples",
        after.len()
    );

    // Request families, by route / method / status class.
    let ok_echo = value(
        &after,
        "tollgate_requests_total",
        &[("route", "echo"), ("method", "GET"), ("status", "2xx")],
    );
    assert!(ok_echo >= 10.0, "echo 2xx = {ok_echo}");
    assert_eq!(
        value(
            &after,
            "tollgate_requests_total",
            &[("route", "limited"), ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "tollgate_requests_total",
            &[("route", "echo"), ("status", "5xx")]
        ) >= 2.0
    );
    assert!(
        value(
            &after,
            "tollgate_request_duration_seconds_count",
            &[("route", "echo")]
        ) >= (ejected + 10) as f64
    );
    assert!(
        value(
            &after,
            "tollgate_upstream_duration_seconds_count",
            &[("route", "echo")]
        ) >= (ejected + 10) as f64
    );
    assert!(
        matching(
            &after,
            "tollgate_request_duration_seconds_bucket",
            &[("route", "echo")]
        )
        .count()
            > 5
    );
    // No request had a body; the series exists all the same.
    assert_eq!(
        value(&after, "tollgate_request_bytes_total", &[("route", "echo")]),
        0.0
    );
    let bytes_out_before = value_or_0(
        &before,
        "tollgate_response_bytes_total",
        &[("route", "echo")],
    );
    let bytes_out = value(
        &after,
        "tollgate_response_bytes_total",
        &[("route", "echo")],
    );
    assert!(
        bytes_out > bytes_out_before + 10.0 * 50.0,
        "response bytes {bytes_out_before} -> {bytes_out}"
    );
    assert_eq!(
        value(
            &after,
            "tollgate_ratelimit_rejected_total",
            &[("route", "limited")]
        ),
        1.0
    );

    // Upstream families (bad's ejection may have ended by now).
    let live = value(
        &after,
        "tollgate_instances",
        &[("service", "svc"), ("state", "live")],
    );
    let ejected = value(
        &after,
        "tollgate_instances",
        &[("service", "svc"), ("state", "ejected")],
    );
    assert_eq!(live + ejected, 2.0, "live {live} + ejected {ejected}");
    assert_eq!(
        value(&after, "tollgate_ejections_total", &[("upstream", "svc")]),
        ejections_before + 1.0
    );
    assert!(sum(&after, "tollgate_retries_total", &[("route", "echo")]).is_some());

    // Config sync families.
    assert_eq!(value(&after, "tollgate_etcd_connected", &[]), 1.0);
    let rev_after = value(&after, "tollgate_applied_revision", &[]);
    assert!(
        rev_after >= rev as f64 && rev_after > rev_before,
        "applied revision {rev_before} -> {rev_after}, last put {rev}"
    );
    let watch_after = value(&after, "tollgate_etcd_watch_events_total", &[]);
    assert!(
        watch_after >= watch_before + 2.0,
        "watch events {watch_before} -> {watch_after}"
    );
    assert!(
        value(
            &after,
            "tollgate_etcd_watch_events_total",
            &[("prefix", "config")]
        ) >= 2.0
    );
    assert_eq!(
        value(
            &after,
            "tollgate_config_rejected_total",
            &[("kind", "route")]
        ),
        rejected_before + 1.0
    );
    assert!(value(&after, "tollgate_last_apply_duration_seconds", &[]) >= 0.0);
    let age = value(&after, "tollgate_snapshot_age_seconds", &[]);
    assert!((0.0..60.0).contains(&age), "snapshot age {age}");
    assert_eq!(
        value(
            &after,
            "tollgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for family in [
        "tollgate_registry_unleased_total",
        "tollgate_etcd_relists_total",
        "tollgate_router_rebuilds_total",
        "tollgate_access_log_dropped_total",
        "tollgate_upstream_panic_picks_total",
        "tollgate_ratelimit_overflow_total",
        "tollgate_ratelimit_evictions_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "family {family} missing from /metrics"
        );
    }
}

/// A service only a route names has a `live` series at 0 (what the
/// no-live-instance alert looks for), and it moves as instances register
/// and drain.
#[test]
fn instances_by_state_cover_services_without_instances_and_draining() {
    let etcd = Etcd::start();
    put_route(etcd.client(), "ghost", &["/ghost"], "nobody");
    let gw = start_gw("ops-instances", &[etcd.endpoint()]);
    wait_status(&gw, "1 route", APPLY, |s| s["routes"] == 1);
    let states = |gw: &testkit::Gateway| {
        let m = parse(&metrics(gw));
        ["live", "draining", "unhealthy", "ejected"].map(|state| {
            value_or_0(
                &m,
                "tollgate_instances",
                &[("service", "nobody"), ("state", state)],
            )
        })
    };
    let m = parse(&metrics(&gw));
    assert_eq!(
        sum(
            &m,
            "tollgate_instances",
            &[("service", "nobody"), ("state", "live")]
        ),
        Some(0.0),
        "a named service without instances must have a live series at 0"
    );

    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lease = etcd.keep_alive(30);
    etcd.put_with_lease(&format!("{SERVICES}nobody/a"), &a.url(), lease.id);
    etcd.put_with_lease(&format!("{SERVICES}nobody/b"), &b.url(), lease.id);
    wait_ok("2 live", APPLY, || match states(&gw) {
        [2.0, 0.0, 0.0, 0.0] => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // Draining (design.md: the registration value as JSON with draining).
    etcd.put_with_lease(
        &format!("{SERVICES}nobody/b"),
        &json!({ "addr": b.url(), "draining": true }).to_string(),
        lease.id,
    );
    wait_ok("1 live, 1 draining", APPLY, || match states(&gw) {
        [1.0, 1.0, 0.0, 0.0] => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

// ------------------------------------------------------------ 2. cardinality

#[test]
fn label_cardinality_stays_bounded_under_10000_distinct_paths() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "access_log: {{ enabled: false }}\n\
         routes:\n\
         \x20 - {{ id: all, hosts: [\"metrics.test\"], paths: [\"/*rest\"], upstream: u }}\n\
         upstreams:\n{}",
        upstream("u", &[&b])
    ));
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1250;
    let addr = gw.proxy_addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                // The route is bound to host metrics.test; requests naming
                // another host match nothing.
                let mut conn = Conn::new(addr).with_host("metrics.test");
                let mut unrouted = Conn::new(addr).with_host("other.test");
                let mut statuses = BTreeMap::<u16, usize>::new();
                for i in 0..PER_THREAD {
                    let n = t * PER_THREAD + i;
                    let path = format!("/uniqpath-{n}/item?q={n}");
                    let r = match n % 50 {
                        // A distinct unknown method, routed.
                        0 => conn.request(&format!("XMETHOD{n}"), &path, &[], None, false),
                        // An unrouted host and path: 404 from the gateway.
                        1 => unrouted.get(&format!("/nowhere-{n}"), &[]),
                        2 => conn.request("DELETE", &path, &[], None, false),
                        _ => conn.get(&path, &[]),
                    };
                    let status = r.unwrap_or_else(|e| panic!("transport error: {e}")).status;
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = BTreeMap::<u16, usize>::new();
    for h in handles {
        for (s, n) in h.join().expect("client thread") {
            *statuses.entry(s).or_default() += n;
        }
    }
    eprintln!("statuses: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), THREADS * PER_THREAD);
    assert_eq!(statuses.get(&404), Some(&(THREADS * PER_THREAD / 50)));
    assert_eq!(
        statuses.get(&200),
        Some(&(THREADS * PER_THREAD * 49 / 50)),
        "every routed request (any method) is answered by the backend"
    );

    // Counters are updated in the logging hook, after the response: poll.
    let total = (THREADS * PER_THREAD) as f64;
    let text = wait_ok("every request counted", APPLY, || {
        let text = metrics(&gw);
        let n = sum(&parse(&text), "tollgate_requests_total", &[]).unwrap_or(0.0);
        if n >= total {
            Ok(text)
        } else {
            Err(format!("{n} of {total} counted"))
        }
    });
    let m = parse(&text);
    let series: Vec<&Sample> = matching(&m, "tollgate_requests_total", &[]).collect();
    for s in &series {
        eprintln!("{:?} {}", s.labels, s.value);
    }
    assert!(
        series.len() <= 12,
        "{} tollgate_requests_total series for 10 000 distinct paths",
        series.len()
    );
    assert_eq!(
        value(
            &m,
            "tollgate_requests_total",
            &[("route", "all"), ("method", "OTHER"), ("status", "2xx")]
        ),
        total / 50.0
    );
    assert_eq!(
        value(
            &m,
            "tollgate_requests_total",
            &[("route", ""), ("method", "GET"), ("status", "4xx")]
        ),
        total / 50.0
    );
    for raw in ["uniqpath", "nowhere", "XMETHOD", "item", "q="] {
        assert!(
            !text.contains(raw),
            "a raw request detail ({raw}) leaked into /metrics"
        );
    }
    // Every family of request metrics is keyed by route alone.
    for family in [
        "tollgate_request_duration_seconds_count",
        "tollgate_upstream_duration_seconds_count",
        "tollgate_request_bytes_total",
        "tollgate_response_bytes_total",
    ] {
        let n = matching(&m, family, &[]).count();
        assert!(n <= 2, "{family}: {n} series");
    }
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(lines < 300, "/metrics has {lines} samples");
}

// ------------------------------------------------------------ 3. access log

/// Every JSON line of the access log so far.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Polls the access log until a line with `request_id` appears.
fn wait_line(path: &Path, request_id: &str) -> Value {
    wait_ok(&format!("access log line for {request_id}"), APPLY, || {
        log_lines(path)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
            .ok_or_else(|| format!("{} lines", log_lines(path).len()))
    })
}

fn access_log_gateway(b: &Backend, access_log: &str) -> testkit::Gateway {
    start(&format!(
        "access_log: {access_log}\n\
         routes:\n\
         \x20 - {{ id: echo, paths: [\"/echo/*rest\"], upstream: u }}\n\
         upstreams:\n{}",
        upstream("u", &[b])
    ))
}

/// An access log file that cannot be opened stops the start with a message
/// naming it, rather than serving without the log the operator asked for.
#[test]
fn an_access_log_that_cannot_be_opened_fails_the_start_naming_it() {
    let b = Backend::start("b");
    let dir = TempDir::new("ops-log-missing-dir");
    let file = dir.path().join("no-such-dir").join("access.log");
    let body = format!(
        "access_log: {{ path: {:?} }}\n\
         routes:\n\
         \x20 - {{ id: echo, paths: [\"/echo/*rest\"], upstream: u }}\n\
         upstreams:\n{}",
        file.to_str().expect("utf-8 temp path"),
        upstream("u", &[&b])
    );
    let err = match testkit::Gateway::try_start(common::bin(), &body) {
        Ok(_) => panic!("started with an access log it cannot open"),
        Err(e) => e,
    };
    assert!(err.contains("cannot open access log"), "{err}");
    assert!(err.contains("no-such-dir/access.log"), "{err}");
    assert_eq!(b.hits(), 0);
}

#[test]
fn the_access_log_line_carries_request_id_and_route() {
    let b = Backend::start("b");
    let dir = TempDir::new("access-log");
    let file = dir.path().join("access.log");
    let gw = access_log_gateway(&b, &format!("{{ path: {:?} }}", file.to_str().unwrap()));

    let before = unix_ms(SystemTime::now());
    let r = send(
        &gw,
        "GET",
        "/echo/items?x=1",
        &[("x-request-id", "abc-123"), ("host", "api.example.test")],
    );
    let after = unix_ms(SystemTime::now());
    let body_len = echo(&r).to_string().len();
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let line = wait_line(&file, "abc-123");
    eprintln!("{line}");
    assert_eq!(line["route"], "echo", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/echo/items", "{line}");
    assert_eq!(line["host"], "api.example.test", "{line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(line["upstream"], b.addr().to_string(), "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    let bytes_out = line["bytes_out"].as_u64().expect("bytes_out");
    assert!(
        bytes_out > 0 && bytes_out as usize == r.body.len(),
        "{line} vs body {body_len}"
    );
    let duration = line["duration_ms"].as_f64().expect("duration_ms");
    assert!((0.0..10_000.0).contains(&duration), "{line}");
    let upstream_ms = line["upstream_ms"].as_f64().expect("upstream_ms");
    assert!(upstream_ms >= 0.0 && upstream_ms <= duration, "{line}");
    let time = line["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{line}"
    );
    // The request's start, to the millisecond.
    let logged = rfc3339_ms(time);
    assert!(
        (before..=after).contains(&logged),
        "{before} <= {time} <= {after}"
    );

    // A 404: no route, no upstream.
    let r = send(&gw, "GET", "/missing", &[("x-request-id", "nf-404")]);
    assert_eq!(r.status, 404, "{r:?}");
    let line = wait_line(&file, "nf-404");
    assert_eq!(line["route"], "", "{line}");
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["upstream"], "", "{line}");
    assert_eq!(line["path"], "/missing", "{line}");
    assert!(line.get("upstream_ms").is_none(), "{line}");
    // The generated id of a request without one is logged as well.
    let r = send(&gw, "GET", "/echo/gen", &[]);
    let id = r.header("x-request-id").expect("generated id").to_string();
    let line = wait_line(&file, &id);
    assert_eq!(line["path"], "/echo/gen", "{line}");
    assert_eq!(log_lines(&file).len(), 3);

    // Off, and sampled to 0: nothing is written.
    for (tag, cfg) in [
        ("disabled", "{{ enabled: false, path: {:?} }}"),
        ("sample-0", "{{ path: {:?}, sample: 0 }}"),
    ] {
        let file = dir.path().join(format!("{tag}.log"));
        let cfg = cfg
            .replace("{{", "{")
            .replace("}}", "}")
            .replace("{:?}", &format!("{:?}", file.to_str().unwrap()));
        let gw = access_log_gateway(&b, &cfg);
        let r = send(&gw, "GET", "/echo/quiet", &[("x-request-id", "quiet-1")]);
        echo(&r);
        let r = send(&gw, "GET", "/nope", &[("x-request-id", "quiet-2")]);
        assert_eq!(r.status, 404);
        // The requests are counted (logging hook ran) and still no line.
        wait_ok("requests counted", APPLY, || {
            let n = sum(&parse(&metrics(&gw)), "tollgate_requests_total", &[]).unwrap_or(0.0);
            if n >= 2.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        });
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(text.is_empty(), "{tag}: access log written: {text}");
        if tag == "disabled" {
            assert!(!file.exists(), "a disabled access log created its file");
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `2026-11-28T22:47:59.148Z` as milliseconds since the epoch (Howard
/// Hinnant's days_from_civil).
fn rfc3339_ms(t: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().expect(t);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    (secs * 1000 + n(20..23)) as u64
}
