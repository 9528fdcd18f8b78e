//! Phases 4 and 5: memory with the big table and its registrations applied,
//! then wrk rounds of quiet, control and churn windows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use testkit::{Etcd, EtcdClient};

use crate::churn::Churn;
use crate::gateway::{as_usize, Gw};
use crate::keyspace::{
    clean, instance_value, put_all, table, ROUTES, SERVICES, SERVICE_COUNT, UNWATCHED,
};
use crate::opts::Opts;
use crate::pin::{pin, Layout};
use crate::progress::log;
use crate::{procfs, wrk};
use crate::{Plan, APPLY_TIMEOUT, CHURN_PER_SEC, SAMPLE_TIMEOUT};

pub struct Window {
    pub wrk: wrk::WrkResult,
    pub gw_cpu: f64,
    pub etcd_cpu: f64,
    pub rss_kib: (u64, u64),
    /// Route updates written (churn window only).
    pub puts: u64,
    /// Router rebuilds and config watch events seen by the gateway.
    pub rebuilds: f64,
    pub config_events: f64,
    pub relists: f64,
    /// Writes of the gateway's own record (`/tollgate/gateways/<node>`).
    pub own_writes: i64,
    /// Share of a core used by the gateway's etcd sync thread.
    pub sync_cpu: f64,
    /// Share of a core used by the gateway's tokio blocking-pool threads.
    pub blocking_cpu: f64,
    /// Cores used by processes that are not part of this benchmark.
    pub other_cpu: f64,
}

/// One `GET /metrics` with the big table loaded.
pub struct Scrape {
    pub took: Duration,
    pub bytes: usize,
    pub series: usize,
    pub rss_after: (u64, u64),
}

pub struct LoadRun {
    pub scrape: Scrape,
    pub routes: usize,
    pub instances: usize,
    pub apply_start: Duration,
    pub rss_applied: (u64, u64),
    pub rss_settled: (u64, u64),
    /// One (quiet, control, churn) triple per round.
    pub rounds: Vec<Round>,
    pub churn_applied_in: Duration,
    pub thread_cpu: Vec<(String, Duration)>,
    /// Where the rounds ran (`None`: one CPU, nothing pinned).
    pub layout: Option<String>,
}

/// One round of the throughput phase.
pub struct Round {
    pub quiet: Window,
    /// The same writes as `churn`, where the gateway does not watch.
    pub control: Window,
    pub churn: Window,
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

/// One wrk window, with CPU used by the gateway and etcd while it ran.
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

pub fn phase_load(etcd: &Etcd, opts: &Opts, plan: &Plan) -> Result<LoadRun> {
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
    let layout = Layout::for_this_machine().and_then(|l| {
        // This process (the writer, the backend, wrk's parent) and etcd on
        // the other CPUs (wrk inherits from us), the gateway on its own.
        let placed = [Some(std::process::id()), etcd_pid]
            .into_iter()
            .flatten()
            .try_for_each(|pid| pin(pid, &l.others))
            .and_then(|()| pin(gw.pid(), &[l.gateway]));
        match placed {
            Ok(()) => {
                log(format!("  {}", l.describe()));
                Some(l.describe())
            }
            Err(e) => {
                log(format!(
                    "  cannot pin CPUs ({e}): the rounds share all of them"
                ));
                None
            }
        }
    });
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
        layout,
    })
}
