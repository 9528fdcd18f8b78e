//! The gateway under test: starting it, reading `/status` and `/metrics`,
//! polling through its proxy port, its memory, and what it logged.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::Value;
use testkit::process::tail_file;
use testkit::{http_request, Gateway};

use crate::http::{KeepAlive, Reply};
use crate::opts::Opts;
use crate::procfs;
use crate::progress::{log, note};

/// Counters from the gateway's `/metrics`.
#[derive(Clone, Copy)]
pub struct Counters {
    pub rebuilds: f64,
    /// Watch events under the config prefix (routes, upstreams, settings,
    /// gateway records).
    pub config_events: f64,
    pub relists: f64,
}

/// A running gateway plus a keep-alive poller pointed at its proxy port.
pub struct Gw {
    pub g: Gateway,
    pub node_id: String,
    poll: KeepAlive,
    poll_gap: Duration,
}

impl Gw {
    pub fn start(opts: &Opts, node_id: &str, endpoint: &str) -> Result<Gw> {
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
    pub fn fail(&self, msg: impl std::fmt::Display) -> anyhow::Error {
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
    pub fn note_log(&self, phase: &str) {
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

    pub fn check_alive(&mut self) -> Result<()> {
        match self.g.wait_exit(Duration::ZERO) {
            Some(code) => {
                Err(self.fail(format!("gateway {} exited with code {code}", self.node_id)))
            }
            None => Ok(()),
        }
    }

    pub fn admin(&mut self, path: &str) -> Result<String> {
        match http_request("GET", &self.g.admin_url(path), &[], None) {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(self.fail(format!("admin {path} answered {}: {}", r.status, r.body))),
            Err(e) => {
                self.check_alive()?;
                Err(self.fail(format!("admin {path}: {e}")))
            }
        }
    }

    pub fn status(&mut self) -> Result<Value> {
        let body = self.admin("/status")?;
        serde_json::from_str(&body).map_err(|e| self.fail(format!("/status is not JSON ({e})")))
    }

    /// The sync counters, from one `/metrics` scrape (a scrape is not
    /// free with large tables: every route has its own series).
    pub fn counters(&mut self) -> Result<Counters> {
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
    pub fn wait_status(
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
    pub fn poll_until(
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
    pub fn poll_reply(
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
    pub fn rss(&mut self) -> Result<(u64, u64)> {
        self.check_alive()?;
        procfs::rss_kib(self.g.pid()).ok_or_else(|| self.fail("cannot read /proc/<pid>/status"))
    }

    pub fn pid(&self) -> u32 {
        self.g.pid()
    }

    /// Sleeps `d` while checking the process stays up.
    pub fn idle(&mut self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
        }
        self.check_alive()
    }
}

pub fn as_usize(v: &Value) -> usize {
    v.as_u64().unwrap_or(u64::MAX) as usize
}
