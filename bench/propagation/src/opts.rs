//! Command-line options: which phases run, `--quick`, `--strict`, the poll
//! gap, the gateway binary and where the table goes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// Which measurements to run (`--phases`, default all).
#[derive(Clone, Copy)]
pub struct Phases {
    /// 1: route propagation at both table sizes.
    pub routes: bool,
    /// 2 and 3: instance changes and lease revokes.
    pub instances: bool,
    /// 4 and 5: memory with the big table, then wrk quiet vs. churn.
    pub load: bool,
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

pub struct Opts {
    pub phases: Phases,
    pub quick: bool,
    pub strict: bool,
    /// Pause between two polls that did not match yet (0 = back-to-back).
    pub poll_gap: Duration,
    pub tollgate: PathBuf,
    /// Where the table goes; None: only printed (a run of some phases).
    pub out: Option<PathBuf>,
}

const USAGE: &str = "usage: propagation [--quick] [--tollgate PATH] [--out FILE] [--strict] \
                     [--poll-gap-us N] [--phases routes,instances,load]";

pub fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut strict = false;
    let mut tollgate = None;
    let mut out = None;
    let mut poll_gap = Duration::ZERO;
    let mut phases = Phases::parse("routes,instances,load")?;
    let mut flags = testkit::cli::Flags::from_env();
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || {
            flags
                .value(&inline)
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
