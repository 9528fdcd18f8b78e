//! The load phase's part of the report: its memory rows and the throughput
//! table (quiet / control / churn windows, their medians and CPU shares).

use crate::load::{LoadRun, Round, Window};
use crate::report::{mem_row, Verdicts};
use crate::stats::ms;
use crate::{Plan, CHURN_PER_SEC};

/// The memory rows of the load phase and the throughput table; true if
/// wrk saw more than 1% errors.
pub fn report_load(out: &mut Vec<String>, v: &mut Verdicts, plan: &Plan, load: &LoadRun) -> bool {
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
    out.push(match &load.layout {
        Some(layout) => format!("#   {layout}"),
        None => "#   not pinned: the gateway, etcd, the writer and wrk shared every CPU".into(),
    });
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
