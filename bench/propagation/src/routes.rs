//! Phase 1: route propagation. Put a new route and time the first 200
//! through the gateway, delete it and time the first 404; back-to-back and
//! spaced, at one table size per call.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use testkit::{Backend, Etcd, EtcdClient};

use crate::gateway::{as_usize, Gw};
use crate::keyspace::{clean, put_all, table, ROUTES, SERVICES, SERVICE_COUNT};
use crate::opts::Opts;
use crate::procfs;
use crate::progress::log;
use crate::stats::{ms, summarize, Summary};
use crate::{Plan, APPLY_TIMEOUT, SAMPLE_TIMEOUT};

/// Pause before each change of the spaced series: long enough that the
/// gateway has finished with the previous change (its publish and the
/// write of its own record that follows) before the next one arrives.
pub const SPACING: Duration = Duration::from_millis(40);

/// One series of route changes: put a new route -> first 200, then delete
/// it -> first 404 (so the table keeps its size).
pub struct Series {
    pub put: Summary,
    pub del: Summary,
    /// Puts already served on the first poll after the acknowledgement.
    pub first_poll_hits: usize,
    /// How long the etcd put itself took (call to acknowledgement).
    pub put_call: Summary,
}

pub struct RouteRun {
    pub n: usize,
    /// Each change written as soon as the previous one was seen.
    pub b2b: Series,
    /// Each change written [`SPACING`] after the previous one was seen.
    pub spaced: Series,
    pub poll_rtt: Summary,
    pub apply_start: Duration,
    pub rss_kib: (u64, u64),
    pub relists: f64,
    /// Cores used by processes outside this benchmark during the series.
    pub other_cpu: f64,
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

pub fn phase_routes(
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

    let logged = |how: &str, r: &Series| {
        log(format!(
            "  {n} routes, {how}: put->200 p50 {} ms p99 {} ms; delete->404 p50 {} ms p99 {} ms",
            ms(r.put.p50),
            ms(r.put.p99),
            ms(r.del.p50),
            ms(r.del.p99)
        ))
    };
    let b2b = route_series(&mut gw, c, plan.changes, Duration::ZERO, next_id)?;
    logged("back-to-back", &b2b);
    let spaced = route_series(&mut gw, c, plan.changes, SPACING, next_id)?;
    logged(&format!("{SPACING:?} apart"), &spaced);
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
