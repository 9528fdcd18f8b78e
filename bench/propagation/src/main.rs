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
//! gateway does not watch: etcd and the writer cost the same CPU, so churn /
//! control is the gateway's own share of the loss. The gateway runs on a
//! CPU of its own during the rounds, as it would with etcd on other
//! machines (see `pin`).

mod churn;
mod gateway;
mod header;
mod http;
mod instances;
mod keyspace;
mod load;
mod opts;
mod pin;
mod procfs;
mod progress;
mod report;
mod report_load;
mod routes;
mod stats;
mod wrk;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::{Backend, Etcd};

use crate::header::{record_start, FOREIGN_CORES};
use crate::instances::phase_instances_and_leases;
use crate::load::phase_load;
use crate::opts::{parse_args, Opts};
use crate::progress::{log, started};
use crate::report::{report, Results};
use crate::routes::phase_routes;

/// Deadline for one change to show through the gateway.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a gateway to list and apply a preloaded keyspace.
const APPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// Route updates per second written during the churn window.
const CHURN_PER_SEC: u64 = 100;

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
