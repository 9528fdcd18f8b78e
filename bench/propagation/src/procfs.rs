//! What /proc says about a process: resident memory and CPU time.

use std::time::Duration;

/// (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// user + system CPU time of a process (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(") ")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / clock_ticks()))
}

/// CPU time per thread name (threads with the same name are summed).
pub fn thread_cpu(pid: u32) -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(") ")) else {
            continue;
        };
        let name = s[open + 1..close].to_string();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let d = Duration::from_millis(ticks * 1000 / clock_ticks());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += d,
            None => out.push((name, d)),
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    out
}

/// The pid of our child process named `name` (e.g. the etcd testkit started).
pub fn child_named(name: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let get = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if get("Name:") == Some(name) && get("PPid:") == Some(me.as_str()) {
            return Some(pid);
        }
    }
    None
}

/// CPU time the whole machine spent running processes (user, nice and
/// system time of all CPUs) since boot. Interrupt and softirq time (the
/// kernel's loopback networking, mostly) is left out on both sides: no
/// process is charged for it.
pub fn machine_busy() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2].iter().filter_map(|&i| f.get(i)).sum::<u64>();
    Some(Duration::from_millis(busy * 1000 / clock_ticks()))
}

/// CPU time of this process plus the children it has already reaped
/// (utime + stime + cutime + cstime).
pub fn self_and_reaped() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(") ")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14-17 (utime, stime, cutime, cstime) are rest[11..15]
    let ticks: u64 = (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum();
    Some(Duration::from_millis(ticks * 1000 / clock_ticks()))
}

/// CPU used by everything on the machine except this process, its reaped
/// children and the live processes in `ours`, between two snapshots.
#[derive(Clone, Copy)]
pub struct Foreign {
    busy: Duration,
    own: Duration,
    at: std::time::Instant,
}

impl Foreign {
    pub fn start(ours: &[u32]) -> Foreign {
        Foreign {
            busy: machine_busy().unwrap_or_default(),
            own: self_and_reaped().unwrap_or_default()
                + ours.iter().filter_map(|&p| cpu_time(p)).sum::<Duration>(),
            at: std::time::Instant::now(),
        }
    }

    /// Foreign CPU since `start`, in cores (1.0 = one CPU busy throughout).
    pub fn cores_since(&self, ours: &[u32]) -> f64 {
        let now = Foreign::start(ours);
        let busy = now.busy.saturating_sub(self.busy).as_secs_f64();
        let own = now.own.saturating_sub(self.own).as_secs_f64();
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        ((busy - own) / wall).max(0.0)
    }
}
