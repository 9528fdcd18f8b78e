//! Running `wrk` and reading its summary.

use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

fn parse_latency(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-6)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("m") {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(
        num.trim().parse::<f64>().ok()? * mult,
    ))
}

pub fn parse(raw: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut have_rps = false;
    for line in raw.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50 = parse_latency(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99 = parse_latency(v);
        } else if t.contains(" requests in ") {
            r.requests = t.split_whitespace().next()?.parse().ok()?;
        }
    }
    have_rps.then_some(r)
}

/// `wrk -t2 -c32 -d<secs>s --latency url`.
pub fn run(url: &str, secs: u64) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency", url])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk (is it installed? scripts/deps.sh): {e}"))?;
    let raw = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        anyhow::bail!("wrk failed ({}):\n{raw}", out.status);
    }
    parse(&raw).ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{raw}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let raw = "Running 3s test @ http://127.0.0.1:1/bench\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  512.00us   9.00ms   90.00%\n  Latency Distribution\n     50%  1.01ms\n     75%    1.20ms\n     90%    1.50ms\n     99%  850.00us\n  90000 requests in 3.00s, 10.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  30000.50\nTransfer/sec:      3.33MB\n";
        let r = parse(raw).unwrap();
        assert_eq!(r.requests, 90000);
        assert!((r.rps - 30000.5).abs() < 1e-6);
        assert_eq!(r.p50, Some(Duration::from_micros(1010)));
        assert_eq!(r.p99, Some(Duration::from_micros(850)));
        assert_eq!((r.non_2xx, r.socket_errors), (4, 3));
    }
}
