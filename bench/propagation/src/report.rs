//! The table: latency and memory rows, target verdicts and the closing
//! notes (the load phase's rows are in `report_load`).

use std::time::Duration;

use crate::header::header;
use crate::instances::InstanceRun;
use crate::keyspace::SERVICE_COUNT;
use crate::load::LoadRun;
use crate::opts::Opts;
use crate::progress::notes;
use crate::report_load::report_load;
use crate::routes::{RouteRun, SPACING};
use crate::stats::{ms, Summary};
use crate::Plan;

pub struct Verdicts {
    pub met: usize,
    pub missed: usize,
}

impl Verdicts {
    pub fn check(&mut self, ok: bool) -> &'static str {
        if ok {
            self.met += 1;
            "PASS"
        } else {
            self.missed += 1;
            "MISS"
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
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

/// A row with one ratio where a latency row has its sample count and p50.
fn ratio_row(name: &str, ratio: f64, target: &str, verdict: &str) -> String {
    format!(
        "{name:<44} {:>7} {ratio:>8.2}x {:>9} {:>9} {:>9}   {target:<22} {verdict}",
        "", "", "", ""
    )
}

/// What a run measured; phases left out with `--phases` are `None`.
pub struct Results {
    pub routes: Option<(RouteRun, RouteRun)>,
    pub instances: Option<InstanceRun>,
    pub load: Option<LoadRun>,
}

pub fn mem_row(name: String, kib: (u64, u64), target: &str, verdict: &str) -> String {
    format!(
        "{name:<56} {:>10} {:>10}   {target:<22} {verdict}",
        mib(kib.0),
        mib(kib.1)
    )
}

pub fn report(opts: &Opts, plan: &Plan, res: &Results) -> (Vec<String>, Verdicts, bool) {
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
    out.push(ratio_row(
        &format!("route put p50 ratio {} / {} routes", big.n, small.n),
        b2b_ratio,
        "<= 2x",
        v.check(b2b_ratio <= 2.0),
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
    out.push(ratio_row(
        &format!("  spaced: put p50 ratio {} / {}", big.n, small.n),
        spaced_ratio,
        "(<= 2x)",
        if spaced_ratio <= 2.0 {
            "(pass)"
        } else {
            "(miss)"
        },
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
