//! The report's header: when and at which revision the run started, the
//! host and what else loaded it, and how the numbers were taken.

use std::process::Command;
use std::sync::OnceLock;

use crate::keyspace::SERVICE_COUNT;
use crate::opts::Opts;
use crate::routes::SPACING;
use crate::Plan;

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The 1-minute load average: other work on the host skews every number.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

static LOAD_AT_START: OnceLock<String> = OnceLock::new();
/// (UTC date, git revision of the working tree) when the run started,
/// i.e. right after the wrapper built the binaries.
static STARTED_AT: OnceLock<(String, String)> = OnceLock::new();

pub fn record_start() {
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
pub static FOREIGN_CORES: OnceLock<f64> = OnceLock::new();

pub fn header(opts: &Opts, plan: &Plan) -> Vec<String> {
    let (date, rev) = STARTED_AT.get().cloned().unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    // Online CPUs, not this process's share: the throughput phase pins it.
    // SAFETY: sysconf only reads a system value.
    let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
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
