//! `propagation`: how fast etcd changes reach a running tollgate, what it
//! costs in memory, and whether config churn slows the data path.
//!
//! Measured in one run, against a real etcd (testkit), real echo backends
//! and the real `tollgate` binary (threads: 1, etcd mode), on loopback:
//!
//! 1. route propagation at a small and a large table: put a new route,
//!    time from the put's acknowledgement to the first 200 through the
//!    gateway (and delete → first 404);
//! 2. instance propagation: re-point / add a registry instance, time to the
//!    first answer from the new backend (`x-backend`);
//! 3. lease revoke: time from the revoke's acknowledgement to the first 503;
//! 4. VmRSS with N routes and N leased instances applied;
//! 5. wrk throughput quiet vs. while 100 route updates/s are written (and
//!    vs. the same writes under a prefix the gateway does not watch).
//!
//! Usage: `propagation [--quick] [--tollgate PATH] [--out FILE] [--strict]
//! [--poll-gap-us N] [--phases routes,instances,load]`. Prints the table to stdout and writes it to FILE
//! (default `bench/results/propagation-latest.txt`, or
//! `propagation-quick.txt` with `--quick`). Exits 1 if the harness fails
//! (gateway died, a change never arrived, wrk errors); target misses only
//! fail with `--strict`.
//!
//! Route changes are measured twice: back-to-back (each change written as
//! soon as the previous one was seen, which is what the targets are judged
//! on) and spaced (40 ms of quiet before each change: what a lone change
//! costs, shown for comparison). The throughput windows run in rounds
//! (quiet, then control, then churn; 3 rounds in the full run) and compare
//! medians. The control window writes the same updates under a prefix the
//! gateway does not watch: etcd and the writer cost the same CPU on these
//! shared cores, so churn / control is the gateway's own share of the loss.

mod http;
mod procfs;
mod stats;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{PutOptions, Txn, TxnOp};
use serde_json::{json, Value};
use testkit::process::tail_file;
use testkit::rt::{block_on, rt};
use testkit::{http_request, Backend, Etcd, EtcdClient, Gateway};

use crate::http::{KeepAlive, Reply};
use crate::stats::{ms, summarize, Summary};

const ROUTES: &str = "/tollgate/routes/";
/// Where the control window writes: outside every prefix the gateway watches.
const UNWATCHED: &str = "/bench-control/routes/";
const SERVICES: &str = "/services/";
/// Registry services the preloaded routes are spread over.
const SERVICE_COUNT: usize = 100;
/// Puts per etcd transaction when preloading (etcd's default limit is 128).
const TXN_OPS: usize = 100;
/// Deadline for one change to show through the gateway.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a gateway to list and apply a preloaded keyspace.
const APPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// Route updates per second written during the churn window.
const CHURN_PER_SEC: u64 = 100;

// ------------------------------------------------------------------ options

/// Which measurements to run (`--phases`, default all).
#[derive(Clone, Copy)]
struct Phases {
    /// 1: route propagation at both table sizes.
    routes: bool,
    /// 2 and 3: instance changes and lease revokes.
    instances: bool,
    /// 4 and 5: memory with the big table, then wrk quiet vs. churn.
    load: bool,
}

impl Phases {
    fn parse(list: &str) -> Result<Phases> {
        let mut p = Phases {
            routes: false,
            instances: false,
            load: false,
        };
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "routes" => p.routes = true,
                "instances" => p.instances = true,
                "load" => p.load = true,
                other => bail!("--phases: unknown phase {other:?} (routes, instances, load)"),
            }
        }
        if !(p.routes || p.instances || p.load) {
            bail!("--phases: nothing selected");
        }
        Ok(p)
    }
}

struct Opts {
    phases: Phases,
    quick: bool,
    strict: bool,
    /// Pause between two polls that did not match yet (0 = back-to-back).
    poll_gap: Duration,
    tollgate: PathBuf,
    /// Where the table goes; None: only printed (a run of some phases).
    out: Option<PathBuf>,
}

/// How much of everything; `--quick` shrinks it to a smoke run.
struct Plan {
    small: usize,
    big: usize,
    changes: usize,
    instance_samples: usize,
    lease_samples: usize,
    rss_routes: usize,
    rss_instances: usize,
    wrk_secs: u64,
    /// Quiet/churn window pairs; the medians are compared.
    wrk_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                small: 10,
                big: 1_000,
                changes: 50,
                instance_samples: 50,
                lease_samples: 50,
                rss_routes: 1_000,
                rss_instances: 1_000,
                wrk_secs: 3,
                wrk_rounds: 1,
            }
        } else {
            Plan {
                small: 10,
                big: 10_000,
                changes: 200,
                instance_samples: 200,
                lease_samples: 200,
                rss_routes: 10_000,
                rss_instances: 10_000,
                wrk_secs: 10,
                wrk_rounds: 3,
            }
        }
    }
}

const USAGE: &str = "usage: propagation [--quick] [--tollgate PATH] [--out FILE] [--strict] \
                     [--poll-gap-us N] [--phases routes,instances,load]";

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut strict = false;
    let mut tollgate = None;
    let mut out = None;
    let mut poll_gap = Duration::ZERO;
    let mut phases = Phases::parse("routes,instances,load")?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--quick" => quick = true,
            "--strict" => strict = true,
            "--tollgate" => tollgate = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--phases" => phases = Phases::parse(&value()?)?,
            "--poll-gap-us" => {
                let v = value()?;
                let us: u64 = v
                    .parse()
                    .map_err(|_| anyhow!("--poll-gap-us: not a number: {v}"))?;
                poll_gap = Duration::from_micros(us);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let tollgate = tollgate.unwrap_or_else(|| PathBuf::from("target/release/tollgate"));
    if !tollgate.is_file() {
        bail!(
            "tollgate binary not found at {} (build it: cargo build --release -p tollgate)",
            tollgate.display()
        );
    }
    let all = phases.routes && phases.instances && phases.load;
    let out = out.or_else(|| {
        all.then(|| {
            PathBuf::from(if quick {
                "bench/results/propagation-quick.txt"
            } else {
                "bench/results/propagation-latest.txt"
            })
        })
    });
    Ok(Opts {
        phases,
        quick,
        strict,
        poll_gap,
        tollgate,
        out,
    })
}

fn started() -> &'static Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    T.get_or_init(Instant::now)
}

/// Lines for the report's closing notes.
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note(line: String) {
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

fn notes() -> Vec<String> {
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The 1-minute load average: other work on the host skews every number.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn log(msg: impl std::fmt::Display) {
    eprintln!(
        "[propagation {:6.1}s] {msg}",
        started().elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ gateway

/// Counters from the gateway's `/metrics`.
#[derive(Clone, Copy)]
struct Counters {
    rebuilds: f64,
    /// Watch events under the config prefix (routes, upstreams, settings,
    /// gateway records).
    config_events: f64,
    relists: f64,
}

/// A running gateway plus a keep-alive poller pointed at its proxy port.
struct Gw {
    g: Gateway,
    node_id: String,
    poll: KeepAlive,
    poll_gap: Duration,
}

impl Gw {
    fn start(opts: &Opts, node_id: &str, endpoint: &str) -> Result<Gw> {
        let bin = &opts.tollgate;
        let body = format!("node_id: \"{node_id}\"\netcd: {{ endpoints: [\"{endpoint}\"] }}\n");
        let t = Instant::now();
        let g = Gateway::try_start(bin, &body)
            .map_err(|e| anyhow!("gateway {node_id} did not start:\n{e}"))?;
        log(format!(
            "gateway {node_id} healthy in {:.2?} (pid {}, proxy {})",
            t.elapsed(),
            g.pid(),
            g.proxy_addr()
        ));
        let poll = KeepAlive::new(g.proxy_addr());
        Ok(Gw {
            g,
            node_id: node_id.to_string(),
            poll,
            poll_gap: opts.poll_gap,
        })
    }

    /// The gateway's own log lines (stdout + stderr), without the JSON
    /// access log lines that share the file.
    fn log_lines(&self) -> Vec<String> {
        let text = std::fs::read(self.g.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('{'))
            .map(str::to_string)
            .collect()
    }

    /// An error carrying `msg` and the gateway's log tail.
    fn fail(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        let lines = self.log_lines();
        let tail = if lines.is_empty() {
            tail_file(self.g.log_path(), 40)
        } else {
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        anyhow!(
            "{msg}\n---- last lines of gateway {} log ({}, access log lines left out):\n{tail}\n----",
            self.node_id,
            self.g.log_path().display(),
        )
    }

    /// Records what the gateway logged at WARN and ERROR (by message, with
    /// counts) and why it re-listed etcd, for the report's notes.
    fn note_log(&self, phase: &str) {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for line in self.log_lines() {
            let level = if line.contains(" ERROR ") {
                "ERROR"
            } else if line.contains(" WARN ") {
                "WARN"
            } else {
                continue;
            };
            // `<time> LEVEL target: message key=value ...`
            let rest = line.split_once(&format!(" {level} ")).map_or("", |x| x.1);
            let rest = rest.split_once(": ").map_or(rest, |x| x.1);
            let msg = if let Some((_, reason)) = rest.split_once("reason=") {
                let m = rest.split(" reason=").next().unwrap_or(rest);
                format!("{m} ({reason})")
            } else {
                let mut m = rest
                    .split_whitespace()
                    .take_while(|w| !w.contains('='))
                    .collect::<Vec<_>>()
                    .join(" ");
                // Group failed requests by status and error kind.
                if let Some(st) = rest.split(" status=").nth(1) {
                    m.push_str(&format!(" status={}", st.split(' ').next().unwrap_or("")));
                }
                if let Some(e) = rest.split(" error=").nth(1) {
                    let e: String = e.chars().take(70).collect();
                    m.push_str(&format!(" error={e}"));
                }
                m
            };
            let msg = format!("{level} {msg}");
            match counts.iter_mut().find(|(m, _)| *m == msg) {
                Some((_, n)) => *n += 1,
                None => counts.push((msg, 1)),
            }
        }
        if counts.is_empty() {
            return;
        }
        let list = counts
            .iter()
            .map(|(m, n)| format!("{m} x{n}"))
            .collect::<Vec<_>>()
            .join("; ");
        note(format!("{phase} (gateway {}): {list}", self.node_id));
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.g.wait_exit(Duration::ZERO) {
            Some(code) => {
                Err(self.fail(format!("gateway {} exited with code {code}", self.node_id)))
            }
            None => Ok(()),
        }
    }

    fn admin(&mut self, path: &str) -> Result<String> {
        match http_request("GET", &self.g.admin_url(path), &[], None) {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(self.fail(format!("admin {path} answered {}: {}", r.status, r.body))),
            Err(e) => {
                self.check_alive()?;
                Err(self.fail(format!("admin {path}: {e}")))
            }
        }
    }

    fn status(&mut self) -> Result<Value> {
        let body = self.admin("/status")?;
        serde_json::from_str(&body).map_err(|e| self.fail(format!("/status is not JSON ({e})")))
    }

    /// The sync counters, from one `/metrics` scrape (a scrape is not
    /// free with large tables: every route has its own series).
    fn counters(&mut self) -> Result<Counters> {
        let body = self.admin("/metrics")?;
        let sum = |prefix: &str| {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(Counters {
            rebuilds: sum("tollgate_router_rebuilds_total"),
            config_events: sum("tollgate_etcd_watch_events_total{prefix=\"config\"}"),
            relists: sum("tollgate_etcd_relists_total"),
        })
    }

    /// Polls `/status` until `ok` holds.
    fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let t = Instant::now();
        loop {
            let s = self.status()?;
            if ok(&s) {
                return Ok(s);
            }
            if t.elapsed() > timeout {
                return Err(self.fail(format!(
                    "timed out after {timeout:?} waiting for {what}; /status: {s}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `path` back-to-back until `done(reply)`; returns the time since
    /// `t0` at which the matching reply arrived, and the number of polls.
    fn poll_until(
        &mut self,
        path: &str,
        t0: Instant,
        timeout: Duration,
        done: impl Fn(&Reply) -> bool,
    ) -> Result<(Duration, u64)> {
        self.poll_reply(path, t0, timeout, done)
            .map(|(d, n, _)| (d, n))
    }

    /// [`Gw::poll_until`], also returning the matching reply.
    fn poll_reply(
        &mut self,
        path: &str,
        t0: Instant,
        timeout: Duration,
        done: impl Fn(&Reply) -> bool,
    ) -> Result<(Duration, u64, Reply)> {
        let mut polls = 0u64;
        loop {
            let last = match self.poll.get(path) {
                Ok(r) => {
                    let at = t0.elapsed();
                    polls += 1;
                    if done(&r) {
                        return Ok((at, polls, r));
                    }
                    if !self.poll_gap.is_zero() {
                        std::thread::sleep(self.poll_gap);
                    }
                    format!("status {} backend {:?}", r.status, r.backend)
                }
                Err(e) => {
                    self.check_alive()?;
                    std::thread::sleep(Duration::from_millis(1));
                    format!("transport error: {e}")
                }
            };
            if t0.elapsed() > timeout {
                self.check_alive()?;
                return Err(self.fail(format!(
                    "GET {path}: no matching answer within {timeout:?} ({polls} polls); last: {last}"
                )));
            }
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss(&mut self) -> Result<(u64, u64)> {
        self.check_alive()?;
        procfs::rss_kib(self.g.pid()).ok_or_else(|| self.fail("cannot read /proc/<pid>/status"))
    }

    fn pid(&self) -> u32 {
        self.g.pid()
    }

    /// Sleeps `d` while checking the process stays up.
    fn idle(&mut self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
        }
        self.check_alive()
    }
}

// ------------------------------------------------------------------ etcd data

/// Route `r<i>` of a preloaded table: a mix of exact, parameter, catch-all
/// and host-bound paths (many distinct first segments, as a gateway in
/// front of many services has), spread over [`SERVICE_COUNT`] services.
fn table_route(i: usize, read_ms: Option<u64>) -> String {
    let upstream = format!("svc-{}", i % SERVICE_COUNT);
    let mut v = match i % 4 {
        0 => json!({
            "paths": [format!("/api/v1/svc{i}/items/:id"), format!("/api/v1/svc{i}/items")],
            "upstream": upstream,
        }),
        1 => json!({ "paths": [format!("/svc{i}/*rest")], "upstream": upstream }),
        2 => json!({
            "hosts": [format!("svc{i}.example.com")],
            "paths": ["/shared/*rest"],
            "upstream": upstream,
        }),
        _ => json!({
            "paths": [format!("/static{i}/index.html")],
            "methods": ["GET", "HEAD"],
            "upstream": upstream,
        }),
    };
    if let Some(ms) = read_ms {
        v["timeout"] = json!({ "read_ms": ms });
    }
    v.to_string()
}

fn table(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{ROUTES}r{i}"), table_route(i, None)))
        .collect()
}

/// Writes `kvs` in transactions of [`TXN_OPS`] puts, 8 in flight.
fn put_all(c: &EtcdClient, kvs: &[(String, String)], lease: Option<i64>) {
    let txns: Vec<Vec<TxnOp>> = kvs
        .chunks(TXN_OPS)
        .map(|chunk| {
            chunk
                .iter()
                .map(|(k, v)| {
                    TxnOp::put(
                        k.as_str(),
                        v.as_str(),
                        lease.map(|l| PutOptions::new().with_lease(l)),
                    )
                })
                .collect()
        })
        .collect();
    block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for ops in txns {
            while set.len() >= 8 {
                let _ = set.join_next().await;
            }
            let c = c.clone();
            set.spawn(async move {
                c.run_async("txn put", |mut cl| {
                    let ops = ops.clone();
                    async move { cl.txn(Txn::new().and_then(ops)).await.map(|_| ()) }
                })
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                panic!("preload transaction failed: {e}");
            }
        }
    });
}

/// Removes every route and registration from earlier phases.
fn clean(c: &EtcdClient) {
    c.delete_prefix(ROUTES);
    c.delete_prefix(SERVICES);
}

fn as_usize(v: &Value) -> usize {
    v.as_u64().unwrap_or(u64::MAX) as usize
}

// ------------------------------------------------------------------ phase 1

/// Pause before each change of the spaced series: long enough that the
/// gateway has finished with the previous change (its publish and the
/// write of its own record that follows) before the next one arrives.
const SPACING: Duration = Duration::from_millis(40);

/// One series of route changes: put a new route -> first 200, then delete
/// it -> first 404 (so the table keeps its size).
struct Series {
    put: Summary,
    del: Summary,
    /// Puts already served on the first poll after the acknowledgement.
    first_poll_hits: usize,
    /// How long the etcd put itself took (call to acknowledgement).
    put_call: Summary,
}

struct RouteRun {
    n: usize,
    /// Each change written as soon as the previous one was seen.
    b2b: Series,
    /// Each change written [`SPACING`] after the previous one was seen.
    spaced: Series,
    poll_rtt: Summary,
    apply_start: Duration,
    rss_kib: (u64, u64),
    relists: f64,
    /// Cores used by processes outside this benchmark during the series.
    other_cpu: f64,
}

/// Median round trip of `GET path` on the warmed poller (404s, no change
/// pending): the resolution of every measurement.
fn poll_rtt(gw: &mut Gw, path: &str) -> Result<Summary> {
    let mut v = Vec::with_capacity(200);
    for _ in 0..200 {
        let (d, _) = gw.poll_until(path, Instant::now(), SAMPLE_TIMEOUT, |_| true)?;
        v.push(d);
    }
    Ok(summarize(&v))
}

fn route_series(
    gw: &mut Gw,
    c: &EtcdClient,
    changes: usize,
    spacing: Duration,
    next_id: &mut usize,
) -> Result<Series> {
    let (mut put, mut del, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_poll_hits = 0;
    for _ in 0..changes {
        let k = *next_id;
        *next_id += 1;
        let key = format!("{ROUTES}p{k}");
        let path = format!("/p/{k}");
        let value = json!({ "paths": [&path], "upstream": format!("svc-{}", k % SERVICE_COUNT) });
        std::thread::sleep(spacing);
        let call = Instant::now();
        c.put(&key, &value.to_string());
        let t0 = Instant::now();
        calls.push(t0 - call);
        let (d, polls) = gw.poll_until(&path, t0, SAMPLE_TIMEOUT, |r| r.status == 200)?;
        put.push(d);
        if polls == 1 {
            first_poll_hits += 1;
        }
        std::thread::sleep(spacing);
        c.delete(&key);
        let t0 = Instant::now();
        let (d, _) = gw.poll_until(&path, t0, SAMPLE_TIMEOUT, |r| r.status == 404)?;
        del.push(d);
    }
    Ok(Series {
        put: summarize(&put),
        del: summarize(&del),
        first_poll_hits,
        put_call: summarize(&calls),
    })
}

fn phase_routes(
    etcd: &Etcd,
    opts: &Opts,
    plan: &Plan,
    n: usize,
    backend: &Backend,
    next_id: &mut usize,
) -> Result<RouteRun> {
    let c = etcd.client();
    log(format!("route propagation at {n} routes: preloading"));
    clean(c);
    let lease = c.keep_alive(30);
    let instances: Vec<(String, String)> = (0..SERVICE_COUNT)
        .map(|s| (format!("{SERVICES}svc-{s}/a"), backend.url()))
        .collect();
    put_all(c, &instances, Some(lease.id));
    put_all(c, &table(n), None);

    let t = Instant::now();
    let mut gw = Gw::start(opts, &format!("prop-routes-{n}"), &etcd.endpoint())?;
    gw.wait_status(&format!("/status routes == {n}"), APPLY_TIMEOUT, |s| {
        s["etcd"] == "connected"
            && as_usize(&s["routes"]) == n
            && as_usize(&s["instances"]) == SERVICE_COUNT
    })?;
    let apply_start = t.elapsed();
    log(format!(
        "  {n} routes applied {apply_start:.2?} after start"
    ));
    // Warm the keep-alive connection and the upstream pool, and let
    // start-up work (first last-known-good write, announce) finish.
    gw.poll_until("/svc1/warm", Instant::now(), SAMPLE_TIMEOUT, |r| {
        r.status == 200
    })?;
    gw.idle(Duration::from_millis(1500))?;
    let rtt = poll_rtt(&mut gw, "/p/none")?;
    let before = gw.counters()?;
    let ours: Vec<u32> = std::iter::once(gw.pid())
        .chain(procfs::child_named("etcd"))
        .collect();
    let foreign = procfs::Foreign::start(&ours);

    let b2b = route_series(&mut gw, c, plan.changes, Duration::ZERO, next_id)?;
    log(format!(
        "  {n} routes, back-to-back: put->200 p50 {} ms p99 {} ms; delete->404 p50 {} ms p99 {} ms",
        ms(b2b.put.p50),
        ms(b2b.put.p99),
        ms(b2b.del.p50),
        ms(b2b.del.p99)
    ));
    let spaced = route_series(&mut gw, c, plan.changes, SPACING, next_id)?;
    log(format!(
        "  {n} routes, {SPACING:?} apart: put->200 p50 {} ms p99 {} ms; delete->404 p50 {} ms p99 {} ms",
        ms(spaced.put.p50),
        ms(spaced.put.p99),
        ms(spaced.del.p50),
        ms(spaced.del.p99)
    ));
    let s = gw.status()?;
    if as_usize(&s["routes"]) != n {
        return Err(gw.fail(format!(
            "expected {n} routes after the changes; /status: {s}"
        )));
    }
    let other_cpu = foreign.cores_since(&ours);
    let relists = gw.counters()?.relists - before.relists;
    let rss_kib = gw.rss()?;
    gw.note_log(&format!("route propagation, {n} routes"));
    drop(gw);
    c.revoke(lease.id);
    Ok(RouteRun {
        n,
        b2b,
        spaced,
        poll_rtt: rtt,
        apply_start,
        rss_kib,
        relists,
        other_cpu,
    })
}

// ------------------------------------------------------------------ phases 2, 3

struct InstanceRun {
    moved: Summary,
    added: Summary,
    all: Summary,
    lease: Summary,
    baseline_rss: (u64, u64),
}

fn other<'a>(cur: &str, a: &'a Backend, b: &'a Backend) -> &'a Backend {
    if cur == a.name() {
        b
    } else {
        a
    }
}

fn phase_instances_and_leases(
    etcd: &Etcd,
    opts: &Opts,
    plan: &Plan,
    a: &Backend,
    b: &Backend,
) -> Result<InstanceRun> {
    let c = etcd.client();
    log("instance propagation and lease revoke");
    clean(c);
    let lease = c.keep_alive(30);
    c.put(
        &format!("{ROUTES}inst"),
        &json!({ "paths": ["/inst/*rest"], "upstream": "isvc" }).to_string(),
    );
    c.put(
        &format!("{ROUTES}lease"),
        &json!({ "paths": ["/lease/*rest"], "upstream": "lsvc" }).to_string(),
    );
    let i0 = format!("{SERVICES}isvc/i0");
    c.put_with_lease(&i0, &a.url(), lease.id);

    let mut gw = Gw::start(opts, "prop-instances", &etcd.endpoint())?;
    gw.wait_status("/status routes == 2", APPLY_TIMEOUT, |s| {
        s["etcd"] == "connected" && as_usize(&s["routes"]) == 2 && as_usize(&s["instances"]) == 1
    })?;
    let a_name = a.name().to_string();
    gw.poll_until("/inst/x", Instant::now(), SAMPLE_TIMEOUT, |r| {
        r.status == 200 && r.backend.as_deref() == Some(a_name.as_str())
    })?;
    let baseline_rss = gw.rss()?;

    // 2. Alternately move i0 to the other backend, and add a second
    //    instance on the other backend (then remove it again).
    let mut current = a.name().to_string();
    let (mut moved, mut added) = (Vec::new(), Vec::new());
    for k in 0..plan.instance_samples {
        let target = other(&current, a, b);
        let want = target.name().to_string();
        if k % 2 == 0 {
            c.put_with_lease(&i0, &target.url(), lease.id);
            let t0 = Instant::now();
            let (d, _) = gw.poll_until("/inst/x", t0, SAMPLE_TIMEOUT, |r| {
                r.status == 200 && r.backend.as_deref() == Some(want.as_str())
            })?;
            moved.push(d);
            current = want;
        } else {
            let key = format!("{SERVICES}isvc/add{k}");
            c.put_with_lease(&key, &target.url(), lease.id);
            let t0 = Instant::now();
            let (d, _) = gw.poll_until("/inst/x", t0, SAMPLE_TIMEOUT, |r| {
                r.status == 200 && r.backend.as_deref() == Some(want.as_str())
            })?;
            added.push(d);
            // Remove it; with one instance left, 4 answers in a row from
            // the old backend show the removal applied (round-robin over
            // two would alternate).
            c.delete(&key);
            let t0 = Instant::now();
            let mut streak = 0;
            while streak < 4 {
                let (_, _, r) =
                    gw.poll_reply("/inst/x", t0, SAMPLE_TIMEOUT, |r| r.status == 200)?;
                if r.backend.as_deref() == Some(current.as_str()) {
                    streak += 1;
                } else {
                    streak = 0;
                }
                if t0.elapsed() > SAMPLE_TIMEOUT {
                    return Err(gw.fail(format!("instance {key} still served after its delete")));
                }
            }
        }
    }
    let mut all = moved.clone();
    all.extend_from_slice(&added);
    log(format!(
        "  instance change -> new backend: p50 {} ms p99 {} ms",
        ms(summarize(&all).p50),
        ms(summarize(&all).p99)
    ));

    // 3. Lease revoke -> 503, re-registering on a fresh lease each time.
    let l0 = format!("{SERVICES}lsvc/l0");
    let mut revoked = Vec::new();
    for _ in 0..plan.lease_samples {
        let id = c.grant(30);
        c.put_with_lease(&l0, &a.url(), id);
        gw.poll_until("/lease/x", Instant::now(), SAMPLE_TIMEOUT, |r| {
            r.status == 200
        })?;
        c.revoke(id);
        let t0 = Instant::now();
        let (d, _) = gw.poll_until("/lease/x", t0, SAMPLE_TIMEOUT, |r| r.status == 503)?;
        revoked.push(d);
    }
    let lease_sum = summarize(&revoked);
    log(format!(
        "  lease revoke -> 503: p50 {} ms p99 {} ms",
        ms(lease_sum.p50),
        ms(lease_sum.p99)
    ));
    gw.note_log("instances and leases");
    drop(gw);
    c.revoke(lease.id);
    Ok(InstanceRun {
        moved: summarize(&moved),
        added: summarize(&added),
        all: summarize(&all),
        lease: lease_sum,
        baseline_rss,
    })
}

// ------------------------------------------------------------------ phases 4, 5

struct Window {
    wrk: wrk::WrkResult,
    gw_cpu: f64,
    etcd_cpu: f64,
    rss_kib: (u64, u64),
    /// Route updates written (churn window only).
    puts: u64,
    /// Router rebuilds and config watch events seen by the gateway.
    rebuilds: f64,
    config_events: f64,
    relists: f64,
    /// Writes of the gateway's own record (`/tollgate/gateways/<node>`).
    own_writes: i64,
    /// Share of a core used by the gateway's etcd sync thread.
    sync_cpu: f64,
    /// Share of a core used by the gateway's tokio blocking-pool threads.
    blocking_cpu: f64,
    /// Cores used by processes that are not part of this benchmark.
    other_cpu: f64,
}

/// One `GET /metrics` with the big table loaded.
struct Scrape {
    took: Duration,
    bytes: usize,
    series: usize,
    rss_after: (u64, u64),
}

struct LoadRun {
    scrape: Scrape,
    routes: usize,
    instances: usize,
    apply_start: Duration,
    rss_applied: (u64, u64),
    rss_settled: (u64, u64),
    /// One (quiet, control, churn) triple per round.
    rounds: Vec<Round>,
    churn_applied_in: Duration,
    thread_cpu: Vec<(String, Duration)>,
}

/// The instance address of registration `i` (never contacted).
fn instance_value(i: usize) -> String {
    let addr = format!(
        "http://10.{}.{}.{}:8080",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    );
    if i % 2 == 0 {
        addr
    } else {
        json!({
            "addr": addr,
            "weight": 1 + i % 3,
            "meta": { "zone": format!("z{}", i % 3), "version": "1.4.2" },
        })
        .to_string()
    }
}

/// A fixed-body echo backend for wrk on its own thread and runtime.
fn start_wrk_backend() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    std::thread::Builder::new()
        .name("wrk-backend".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("wrk backend runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("wrk backend listener");
                testkit::backend::serve(l, "wrk-backend", true).await
            });
        })?;
    Ok(addr)
}

/// Background writer of `per_sec` route updates per second to routes
/// `r0..r<routes>`; each update changes the route's JSON (its read timeout).
struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    max_rev: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

/// One round of the throughput phase.
struct Round {
    quiet: Window,
    /// The same writes as `churn`, where the gateway does not watch.
    control: Window,
    churn: Window,
}

impl Churn {
    /// `first` numbers the first update: every update writes a value no
    /// earlier one wrote (an unchanged value would be a no-op). Keys go
    /// under `prefix` (`ROUTES`, or `UNWATCHED` for the control window).
    fn start(
        c: &EtcdClient,
        prefix: &'static str,
        routes: usize,
        per_sec: u64,
        first: u64,
    ) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let max_rev = Arc::new(AtomicI64::new(0));
        let (c, s, d, m) = (c.clone(), stop.clone(), done.clone(), max_rev.clone());
        let task = rt().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = first as usize;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                // A stride co-prime with most table sizes spreads the edits.
                let j = (n * 7919) % routes;
                let key = format!("{prefix}r{j}");
                let value = table_route(j, Some(10_000 + n as u64));
                let (c, d, m) = (c.clone(), d.clone(), m.clone());
                tasks.spawn(async move {
                    let rev = c
                        .run_async("churn put", |mut cl| {
                            let (k, v) = (key.clone(), value.clone());
                            async move {
                                let r = cl.put(k, v, None).await?;
                                Ok(r.header().map_or(0, |h| h.revision()))
                            }
                        })
                        .await;
                    m.fetch_max(rev, Ordering::Relaxed);
                    d.fetch_add(1, Ordering::Relaxed);
                });
                while tasks.try_join_next().is_some() {}
                n += 1;
            }
            while tasks.join_next().await.is_some() {}
        });
        Churn {
            stop,
            done,
            max_rev,
            task,
        }
    }

    /// Stops writing; (updates acknowledged, highest revision written).
    fn stop(self) -> (u64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = block_on(self.task);
        (
            self.done.load(Ordering::Relaxed),
            self.max_rev.load(Ordering::Relaxed),
        )
    }
}

/// One wrk window, with CPU used by the gateway and etcd while it ran.
/// How many times `key` was written since it was created (0: absent).
fn key_version(c: &EtcdClient, key: &str) -> i64 {
    c.run(&format!("get {key}"), |mut cl| {
        let key = key.to_string();
        async move {
            let r = cl.get(key, None).await?;
            Ok(r.kvs().first().map_or(0, |kv| kv.version()))
        }
    })
}

fn window(
    gw: &mut Gw,
    c: &EtcdClient,
    etcd_pid: Option<u32>,
    url: &str,
    secs: u64,
) -> Result<Window> {
    let cpu = |pid: Option<u32>| pid.and_then(procfs::cpu_time).unwrap_or_default();
    let own_key = format!("/tollgate/gateways/{}", gw.node_id);
    let own0 = key_version(c, &own_key);
    let before = gw.counters()?;
    // The etcd sync thread, and tokio's blocking pool (unnamed: the
    // last-known-good writer, the limiter sweeper).
    let threads = |pid: u32| {
        let t = procfs::thread_cpu(pid);
        let sum = |f: &dyn Fn(&str) -> bool| {
            t.iter()
                .filter(|(n, _)| f(n))
                .map(|(_, d)| *d)
                .sum::<Duration>()
        };
        (
            sum(&|n| n.contains("etcd-sync")),
            sum(&|n| n == "tokio-rt-worker"),
        )
    };
    let (s0, b0) = threads(gw.pid());
    let ours: Vec<u32> = std::iter::once(gw.pid()).chain(etcd_pid).collect();
    let foreign = procfs::Foreign::start(&ours);
    let (g0, e0, t0) = (cpu(Some(gw.pid())), cpu(etcd_pid), Instant::now());
    let result = wrk::run(url, secs);
    let wall = t0.elapsed().as_secs_f64();
    gw.check_alive()?;
    let result = result.map_err(|e| gw.fail(e))?;
    let (g1, e1) = (cpu(Some(gw.pid())), cpu(etcd_pid));
    let other_cpu = foreign.cores_since(&ours);
    let (s1, b1) = threads(gw.pid());
    let sync_cpu = s1.saturating_sub(s0).as_secs_f64() / wall;
    let blocking_cpu = b1.saturating_sub(b0).as_secs_f64() / wall;
    let rss_kib = gw.rss()?;
    let after = gw.counters()?;
    Ok(Window {
        sync_cpu,
        blocking_cpu,
        other_cpu,
        wrk: result,
        gw_cpu: (g1 - g0).as_secs_f64() / wall,
        etcd_cpu: e1.saturating_sub(e0).as_secs_f64() / wall,
        rss_kib,
        puts: 0,
        rebuilds: after.rebuilds - before.rebuilds,
        relists: after.relists - before.relists,
        config_events: after.config_events - before.config_events,
        own_writes: key_version(c, &own_key) - own0,
    })
}

fn phase_load(etcd: &Etcd, opts: &Opts, plan: &Plan) -> Result<LoadRun> {
    let c = etcd.client();
    let (routes, instances) = (plan.rss_routes, plan.rss_instances);
    log(format!(
        "memory and churn: preloading {routes} routes and {instances} leased instances"
    ));
    clean(c);
    let lease = c.keep_alive(60);
    let regs: Vec<(String, String)> = (0..instances)
        .map(|i| {
            (
                format!("{SERVICES}svc-{}/i{i}", i % SERVICE_COUNT),
                instance_value(i),
            )
        })
        .collect();
    put_all(c, &regs, Some(lease.id));
    put_all(c, &table(routes), None);
    let backend = start_wrk_backend()?;
    c.put(
        &format!("{ROUTES}bench"),
        &json!({ "paths": ["/bench/*rest"], "upstream": "wsvc" }).to_string(),
    );
    c.put_with_lease(
        &format!("{SERVICES}wsvc/w0"),
        &format!("http://{backend}"),
        lease.id,
    );

    let t = Instant::now();
    let mut gw = Gw::start(opts, "prop-load", &etcd.endpoint())?;
    gw.wait_status(
        &format!(
            "/status routes == {} and instances == {}",
            routes + 1,
            instances + 1
        ),
        APPLY_TIMEOUT,
        |s| {
            s["etcd"] == "connected"
                && as_usize(&s["routes"]) == routes + 1
                && as_usize(&s["instances"]) == instances + 1
        },
    )?;
    let apply_start = t.elapsed();
    let rss_applied = gw.rss()?;
    log(format!(
        "  applied {apply_start:.2?} after start; VmRSS {:.1} MiB (peak {:.1} MiB)",
        rss_applied.0 as f64 / 1024.0,
        rss_applied.1 as f64 / 1024.0
    ));
    // Let start-up work finish (last-known-good write, first announce).
    gw.idle(Duration::from_secs(2))?;
    let rss_settled = gw.rss()?;
    // One Prometheus scrape: its size, time, and what it does to memory.
    let t = Instant::now();
    let body = gw.admin("/metrics")?;
    let scrape = Scrape {
        took: t.elapsed(),
        bytes: body.len(),
        series: body.lines().filter(|l| !l.starts_with('#')).count(),
        rss_after: gw.rss()?,
    };
    drop(body);

    let url = gw.g.url("/bench/echo");
    gw.poll_until("/bench/echo", Instant::now(), SAMPLE_TIMEOUT, |r| {
        r.status == 200
    })?;
    let etcd_pid = procfs::child_named("etcd");
    log("  wrk warm-up 1s");
    wrk::run(&url, 1).map_err(|e| gw.fail(e))?;
    let before_threads = procfs::thread_cpu(gw.pid());
    let mut rounds = Vec::new();
    let mut max_rev = 0;
    let mut updates = 0;
    for round in 1..=plan.wrk_rounds {
        let quiet = window(&mut gw, c, etcd_pid, &url, plan.wrk_secs)?;
        let control_task = Churn::start(c, UNWATCHED, routes, CHURN_PER_SEC, updates);
        let control_result = window(&mut gw, c, etcd_pid, &url, plan.wrk_secs);
        let (control_puts, _) = control_task.stop();
        let mut control = control_result?;
        control.puts = control_puts;
        let churn_task = Churn::start(c, ROUTES, routes, CHURN_PER_SEC, updates);
        let churn_result = window(&mut gw, c, etcd_pid, &url, plan.wrk_secs);
        let (puts, rev) = churn_task.stop();
        max_rev = max_rev.max(rev);
        updates += puts.max(control_puts) + 1;
        let mut churn = churn_result?;
        churn.puts = puts;
        log(format!(
            "  round {round}/{}: quiet {:.0} req/s, control {:.0} req/s, churn {:.0} req/s ({puts} route updates in {}s)",
            plan.wrk_rounds, quiet.wrk.rps, control.wrk.rps, churn.wrk.rps, plan.wrk_secs
        ));
        rounds.push(Round {
            quiet,
            control,
            churn,
        });
    }
    let after_threads = procfs::thread_cpu(gw.pid());
    let thread_cpu = after_threads
        .into_iter()
        .map(|(name, t)| {
            let before = before_threads
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Duration::ZERO, |(_, b)| *b);
            (name, t.saturating_sub(before))
        })
        .filter(|(_, t)| !t.is_zero())
        .collect();
    let t = Instant::now();
    gw.wait_status(
        &format!("/status revision >= {max_rev} (the last churn update)"),
        Duration::from_secs(15),
        |s| s["revision"].as_i64().unwrap_or(0) >= max_rev,
    )?;
    let churn_applied_in = t.elapsed();
    gw.note_log("memory and churn");
    drop(gw);
    c.revoke(lease.id);
    Ok(LoadRun {
        routes,
        instances,
        apply_start,
        rss_applied,
        rss_settled,
        scrape,
        rounds,
        churn_applied_in,
        thread_cpu,
    })
}

// ------------------------------------------------------------------ report

struct Verdicts {
    met: usize,
    missed: usize,
}

impl Verdicts {
    fn check(&mut self, ok: bool) -> &'static str {
        if ok {
            self.met += 1;
            "PASS"
        } else {
            self.missed += 1;
            "MISS"
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

static LOAD_AT_START: OnceLock<String> = OnceLock::new();
/// (UTC date, git revision of the working tree) when the run started,
/// i.e. right after the wrapper built the binaries.
static STARTED_AT: OnceLock<(String, String)> = OnceLock::new();

fn record_start() {
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default();
    let mut rev =
        sh("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "no commit".into());
    if sh("git", &["diff", "--quiet", "HEAD"]).is_none() {
        rev.push_str("+dirty");
    }
    let _ = STARTED_AT.set((date, rev));
    let _ = LOAD_AT_START.set(loadavg());
}
/// CPU used by processes outside this benchmark over the run, in cores.
static FOREIGN_CORES: OnceLock<f64> = OnceLock::new();

fn header(opts: &Opts, plan: &Plan) -> Vec<String> {
    let (date, rev) = STARTED_AT.get().cloned().unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = sh("uname", &["-r"]).unwrap_or_default();
    let etcd_v = sh("etcd", &["--version"])
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    vec![
        format!("# bench/propagation.sh{} — {date}, rev {rev}", if opts.quick { " --quick" } else { "" }),
        format!("# host: {ncpu} cpu(s), {cpu}, linux {kernel}; {etcd_v} (one member, loopback, testkit)"),
        format!(
            "# other processes on this host used {:.2} of its {ncpu} CPUs during the run{}; load average (1 min) {} at start, {} at end",
            FOREIGN_CORES.get().copied().unwrap_or(f64::NAN),
            if FOREIGN_CORES.get().is_some_and(|c| *c > 0.1) {
                " (enough to skew every number below)"
            } else {
                ""
            },
            LOAD_AT_START.get().map_or("?", |s| s.as_str()),
            loadavg()
        ),
        format!(
            "# gateway: {} (threads 1, etcd mode); tables of {} and {} routes over {SERVICE_COUNT} services",
            opts.tollgate.display(),
            plan.small,
            plan.big
        ),
        "# latency = etcd client call acknowledged (put / delete / revoke returned) -> first matching HTTP answer through the".into(),
        format!(
            "#   gateway, polled on one keep-alive connection ({}; a sample includes up to one poll round trip)",
            if opts.poll_gap.is_zero() {
                "back-to-back".to_string()
            } else {
                format!("{:?} between polls", opts.poll_gap)
            }
        ),
        format!(
            "# route changes: {} new routes put then deleted one at a time, each as soon as the previous one was seen",
            plan.changes
        ),
        format!(
            "#   (\"spaced\": the same with {}ms of quiet before each change)",
            SPACING.as_millis()
        ),
    ]
}

fn lat_row(name: &str, s: &Summary, target: &str, verdict: &str) -> String {
    format!(
        "{name:<44} {:>7} {:>9} {:>9} {:>9} {:>9}   {target:<22} {verdict}",
        s.n,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    )
}

/// What a run measured; phases left out with `--phases` are `None`.
struct Results {
    routes: Option<(RouteRun, RouteRun)>,
    instances: Option<InstanceRun>,
    load: Option<LoadRun>,
}

fn mem_row(name: String, kib: (u64, u64), target: &str, verdict: &str) -> String {
    format!(
        "{name:<56} {:>10} {:>10}   {target:<22} {verdict}",
        mib(kib.0),
        mib(kib.1)
    )
}

fn report(opts: &Opts, plan: &Plan, res: &Results) -> (Vec<String>, Verdicts, bool) {
    let mut v = Verdicts { met: 0, missed: 0 };
    let mut out = header(opts, plan);
    if res.routes.is_some() || res.instances.is_some() {
        out.push(String::new());
        out.push(format!(
            "{:<44} {:>7} {:>9} {:>9} {:>9} {:>9}   {:<22} result",
            "propagation (ms)", "samples", "p50", "p90", "p99", "max", "target"
        ));
    }
    if let Some((small, big)) = &res.routes {
        report_routes(&mut out, &mut v, small, big);
    }
    if let Some(inst) = &res.instances {
        report_instances(&mut out, &mut v, inst);
    }
    if let Some((small, big)) = &res.routes {
        report_route_notes(&mut out, small, big);
    }
    out.push(String::new());
    out.push(format!(
        "{:<56} {:>10} {:>10}   {:<22} result",
        "gateway memory", "VmRSS MiB", "VmHWM MiB", "target"
    ));
    if let Some(inst) = &res.instances {
        out.push(mem_row(
            "2 routes, 1 instance (instance phase start)".into(),
            inst.baseline_rss,
            "-",
            "",
        ));
    }
    if let Some((small, big)) = &res.routes {
        for r in [small, big] {
            out.push(mem_row(
                format!(
                    "{} routes, {SERVICE_COUNT} instances, after {} changes",
                    r.n,
                    2 * (r.b2b.put.n + r.spaced.put.n)
                ),
                r.rss_kib,
                "-",
                "",
            ));
        }
    }
    let mut errors = false;
    if let Some(load) = &res.load {
        errors = report_load(&mut out, &mut v, plan, load);
    }
    out.push(String::new());
    for n in notes() {
        out.push(format!("# log: {n}"));
    }
    out.push(format!(
        "# targets: {} met, {} missed{}",
        v.met,
        v.missed,
        if opts.quick {
            " (quick mode: smaller tables and fewer samples than the targets are stated for)"
        } else {
            ""
        }
    ));
    (out, v, errors)
}

fn report_routes(out: &mut Vec<String>, v: &mut Verdicts, small: &RouteRun, big: &RouteRun) {
    let (p50_ok, p99_ok) = (Duration::from_millis(2), Duration::from_millis(10));
    for r in [small, big] {
        let is_big = std::ptr::eq(r, big);
        let (target, verdict) = if is_big {
            (
                "p50<=2, p99<=10",
                v.check(r.b2b.put.p50 <= p50_ok && r.b2b.put.p99 <= p99_ok),
            )
        } else {
            ("-", "")
        };
        out.push(lat_row(
            &format!("route put -> first 200 ({} routes)", r.n),
            &r.b2b.put,
            target,
            verdict,
        ));
        out.push(lat_row(
            &format!("route delete -> first 404 ({} routes)", r.n),
            &r.b2b.del,
            "-",
            "",
        ));
    }
    let ratio = |b: &Summary, s: &Summary| b.p50.as_secs_f64() / s.p50.as_secs_f64().max(1e-9);
    let b2b_ratio = ratio(&big.b2b.put, &small.b2b.put);
    out.push(format!(
        "{:<44} {:>7} {:>8.2}x {:>9} {:>9} {:>9}   {:<22} {}",
        format!("route put p50 ratio {} / {} routes", big.n, small.n),
        "",
        b2b_ratio,
        "",
        "",
        "",
        "<= 2x",
        v.check(b2b_ratio <= 2.0)
    ));
    // The same changes, spaced out: what a lone change costs. Shown against
    // the same targets for comparison, not counted.
    for r in [small, big] {
        let is_big = std::ptr::eq(r, big);
        let (target, verdict) = if is_big {
            let ok = r.spaced.put.p50 <= p50_ok && r.spaced.put.p99 <= p99_ok;
            ("(p50<=2, p99<=10)", if ok { "(pass)" } else { "(miss)" })
        } else {
            ("-", "")
        };
        out.push(lat_row(
            &format!(
                "  spaced {}ms: put -> 200 ({} routes)",
                SPACING.as_millis(),
                r.n
            ),
            &r.spaced.put,
            target,
            verdict,
        ));
        out.push(lat_row(
            &format!(
                "  spaced {}ms: delete -> 404 ({} routes)",
                SPACING.as_millis(),
                r.n
            ),
            &r.spaced.del,
            "-",
            "",
        ));
    }
    let spaced_ratio = ratio(&big.spaced.put, &small.spaced.put);
    out.push(format!(
        "{:<44} {:>7} {:>8.2}x {:>9} {:>9} {:>9}   {:<22} {}",
        format!("  spaced: put p50 ratio {} / {}", big.n, small.n),
        "",
        spaced_ratio,
        "",
        "",
        "",
        "(<= 2x)",
        if spaced_ratio <= 2.0 {
            "(pass)"
        } else {
            "(miss)"
        }
    ));
}

fn report_instances(out: &mut Vec<String>, v: &mut Verdicts, inst: &InstanceRun) {
    out.push(lat_row(
        "instance re-pointed -> first answer from it",
        &inst.moved,
        "-",
        "",
    ));
    out.push(lat_row(
        "instance added -> first answer from it",
        &inst.added,
        "-",
        "",
    ));
    out.push(lat_row("instance changes (both kinds)", &inst.all, "-", ""));
    out.push(lat_row(
        "lease revoked -> first 503",
        &inst.lease,
        "p99<=10",
        v.check(inst.lease.p99 <= Duration::from_millis(10)),
    ));
}

fn report_route_notes(out: &mut Vec<String>, small: &RouteRun, big: &RouteRun) {
    for r in [small, big] {
        out.push(format!(
            "#   {} routes: listed+applied {:.2?} after start; etcd put call p50 {} ms; 404 poll round trip p50 {} ms (p99 {}); served on the first poll: {}/{} back-to-back, {}/{} spaced; re-lists {}; other processes {:.2} CPUs",
            r.n,
            r.apply_start,
            ms(r.b2b.put_call.p50),
            ms(r.poll_rtt.p50),
            ms(r.poll_rtt.p99),
            r.b2b.first_poll_hits,
            r.b2b.put.n,
            r.spaced.first_poll_hits,
            r.spaced.put.n,
            r.relists,
            r.other_cpu
        ));
    }
}

/// The memory rows of the load phase and the throughput table; true if
/// wrk saw more than 1% errors.
fn report_load(out: &mut Vec<String>, v: &mut Verdicts, plan: &Plan, load: &LoadRun) -> bool {
    let mem = mem_row;
    out.push(mem(
        format!(
            "{} routes, {} instances, just applied",
            load.routes + 1,
            load.instances + 1
        ),
        load.rss_applied,
        "-",
        "",
    ));
    let loaded = load.rss_applied.0.max(load.rss_settled.0);
    out.push(mem(
        format!(
            "{} routes, {} instances, 2 s later",
            load.routes + 1,
            load.instances + 1
        ),
        load.rss_settled,
        "<= 64 MiB",
        v.check(loaded <= 64 * 1024),
    ));
    out.push(mem(
        format!(
            "  after one GET /metrics ({:.1} MB, {} series, {:.0} ms)",
            load.scrape.bytes as f64 / 1e6,
            load.scrape.series,
            load.scrape.took.as_secs_f64() * 1000.0
        ),
        load.scrape.rss_after,
        "-",
        "",
    ));
    if let Some(Round { churn: last, .. }) = load.rounds.last() {
        out.push(mem(
            "  after the wrk rounds below".into(),
            last.rss_kib,
            "-",
            "",
        ));
    }
    out.push(format!(
        "#   {} routes + {} instances listed and applied {:.2?} after start",
        load.routes + 1,
        load.instances + 1,
        load.apply_start
    ));

    out.push(String::new());
    out.push(format!(
        "throughput: wrk -t2 -c32 -d{}s --latency on a routed path, {} routes + {} instances loaded; {} quiet/churn round(s)",
        plan.wrk_secs,
        load.routes + 1,
        load.instances + 1,
        load.rounds.len()
    ));
    out.push(format!(
        "{:<30} {:>9} {:>8} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>7}",
        "window",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "updates",
        "gw",
        "sync",
        "blk",
        "etcd",
        "other",
        "rebuilds",
        "cfg evts",
        "own wr"
    ));
    let win = |name: String, w: &Window| {
        format!(
            "{name:<30} {:>9.0} {:>8} {:>8} {:>6} {:>8} {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>8} {:>8} {:>7}",
            w.wrk.rps,
            w.wrk.p50.map_or("-".into(), ms),
            w.wrk.p99.map_or("-".into(), ms),
            w.wrk.non_2xx + w.wrk.socket_errors,
            w.puts,
            w.gw_cpu * 100.0,
            w.sync_cpu * 100.0,
            w.blocking_cpu * 100.0,
            w.etcd_cpu * 100.0,
            w.other_cpu * 100.0,
            w.rebuilds,
            w.config_events,
            w.own_writes
        )
    };
    for (
        i,
        Round {
            quiet,
            control,
            churn,
        },
    ) in load.rounds.iter().enumerate()
    {
        out.push(win(format!("quiet #{}", i + 1), quiet));
        out.push(win(
            format!("control #{} (unwatched writes)", i + 1),
            control,
        ));
        out.push(win(
            format!("churn #{} ({CHURN_PER_SEC} updates/s)", i + 1),
            churn,
        ));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let mut q: Vec<f64> = load.rounds.iter().map(|r| r.quiet.wrk.rps).collect();
    let mut k: Vec<f64> = load.rounds.iter().map(|r| r.control.wrk.rps).collect();
    let mut c: Vec<f64> = load.rounds.iter().map(|r| r.churn.wrk.rps).collect();
    let (mq, mk, mc) = (median(&mut q), median(&mut k), median(&mut c));
    let tp_ratio = mc / mq.max(1e-9);
    let label = if load.rounds.len() > 1 {
        format!("median churn / median quiet ({mc:.0} / {mq:.0})")
    } else {
        "ratio churn / quiet".to_string()
    };
    out.push(format!(
        "{label:<55} {tp_ratio:>6.3}x   target >= 0.95   {}",
        v.check(tp_ratio >= 0.95)
    ));
    out.push(format!(
        "{:<55} {:>6.3}x   (etcd + writer alone)",
        format!("  median control / median quiet ({mk:.0} / {mq:.0})"),
        mk / mq.max(1e-9)
    ));
    out.push(format!(
        "{:<55} {:>6.3}x   (the gateway's own share)",
        format!("  median churn / median control ({mc:.0} / {mk:.0})"),
        mc / mk.max(1e-9)
    ));
    // What the data path costs per request: a window with less CPU left
    // (etcd and the writer share these cores) serves fewer requests at the
    // same cost each.
    let per_request = |pick: fn(&Round) -> &Window| {
        let mut us: Vec<f64> = load
            .rounds
            .iter()
            .map(|r| pick(r).gw_cpu / pick(r).wrk.rps.max(1e-9) * 1e6)
            .collect();
        median(&mut us)
    };
    out.push(format!(
        "#   gateway CPU per request (median): quiet {:.1} us, control {:.1} us, churn {:.1} us",
        per_request(|r| &r.quiet),
        per_request(|r| &r.control),
        per_request(|r| &r.churn)
    ));
    let ratios: Vec<String> = load
        .rounds
        .iter()
        .map(|r| format!("{:.3}", r.churn.wrk.rps / r.quiet.wrk.rps.max(1e-9)))
        .collect();
    let relists: f64 = load
        .rounds
        .iter()
        .map(|r| r.quiet.relists + r.control.relists + r.churn.relists)
        .sum();
    out.push(format!(
        "#   per-round ratios {}; etcd re-lists during the rounds: {relists}",
        ratios.join(", ")
    ));
    out.push(
        "#   gw / sync / blk / etcd / other = CPU in % of one core: gateway process / its etcd sync thread / its tokio blocking pool".into(),
    );
    out.push(
        "#   (last-known-good writes, limiter sweeps) / etcd / processes outside this benchmark; cfg evts = config watch".into(),
    );
    out.push(
        "#   events the gateway received; own wr = writes of the gateway's own /tollgate/gateways/<node> record"
            .into(),
    );
    out.push(format!(
        "#   every churn update applied within {:.2?} after the last window; gateway CPU by thread over all rounds: {}",
        load.churn_applied_in,
        load.thread_cpu
            .iter()
            .take(6)
            .map(|(n, t)| format!("{n} {:.2}s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    load.rounds
        .iter()
        .flat_map(|r| [&r.quiet, &r.control, &r.churn])
        .any(|w| (w.wrk.non_2xx + w.wrk.socket_errors) * 100 > w.wrk.requests.max(1))
}

// ------------------------------------------------------------------ main

fn run(opts: &Opts) -> Result<bool> {
    let plan = Plan::new(opts.quick);
    started();
    log(format!(
        "{} run against {}",
        if opts.quick { "quick" } else { "full" },
        opts.tollgate.display()
    ));
    record_start();
    let etcd = Etcd::start();
    log(format!("etcd up at {}", etcd.endpoint()));
    let etcd_pid: Vec<u32> = procfs::child_named("etcd").into_iter().collect();
    let foreign = procfs::Foreign::start(&etcd_pid);
    let a = Backend::start("backend-a");
    let b = Backend::start("backend-b");

    let mut next_id = 0;
    let routes = if opts.phases.routes {
        let small = phase_routes(&etcd, opts, &plan, plan.small, &a, &mut next_id)?;
        let big = phase_routes(&etcd, opts, &plan, plan.big, &a, &mut next_id)?;
        Some((small, big))
    } else {
        None
    };
    let instances = if opts.phases.instances {
        Some(phase_instances_and_leases(&etcd, opts, &plan, &a, &b)?)
    } else {
        None
    };
    let load = if opts.phases.load {
        Some(phase_load(&etcd, opts, &plan)?)
    } else {
        None
    };
    let results = Results {
        routes,
        instances,
        load,
    };
    let _ = FOREIGN_CORES.set(foreign.cores_since(&etcd_pid));

    let (lines, verdicts, wrk_errors) = report(opts, &plan, &results);
    let text = lines.join("\n") + "\n";
    println!();
    print!("{text}");
    if let Some(out) = &opts.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        log(format!("written to {}", out.display()));
    }
    if wrk_errors {
        log("FAIL: more than 1% of wrk requests failed");
        return Ok(false);
    }
    if opts.strict && verdicts.missed > 0 {
        log(format!("--strict: {} target(s) missed", verdicts.missed));
        return Ok(false);
    }
    Ok(true)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("propagation: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("propagation: FAILED: {e:#}");
            ExitCode::from(1)
        }
    }
}
