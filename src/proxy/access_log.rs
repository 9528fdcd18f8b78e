//! The access log: one JSON line per request, formatted and written by its
//! own thread. The request path only fills a record and hands it over
//! through a bounded channel; if the writer falls behind, lines are
//! dropped and counted rather than slowing requests down.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use crate::config::AccessLogConfig;
use crate::metrics::METRICS;

/// One request, as logged. Borrowed: the line is formatted straight into
/// one buffer, the only allocation the access log costs a request.
#[derive(Debug)]
pub struct Line<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
}

impl Line<'_> {
    /// The JSON line, newline-terminated.
    pub fn to_json(&self) -> Vec<u8> {
        use std::io::Write as _;
        let mut b = Vec::with_capacity(320);
        let s = |b: &mut Vec<u8>, v: &str| {
            // serde_json escapes whatever a client put in a path or host.
            let _ = serde_json::to_writer(&mut *b, v);
        };
        let _ = write!(b, "{{\"time\":\"{}\",\"request_id\":", rfc3339(self.time));
        s(&mut b, self.request_id);
        b.extend_from_slice(b",\"client_ip\":\"");
        if let Some(ip) = self.client_ip {
            let _ = write!(b, "{ip}");
        }
        b.extend_from_slice(b"\",\"method\":");
        s(&mut b, self.method);
        b.extend_from_slice(b",\"host\":");
        s(&mut b, self.host);
        b.extend_from_slice(b",\"path\":");
        s(&mut b, self.path);
        b.extend_from_slice(b",\"route\":");
        s(&mut b, self.route);
        b.extend_from_slice(b",\"upstream\":\"");
        if let Some(u) = self.upstream {
            let _ = write!(b, "{u}");
        }
        let _ = write!(
            b,
            "\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3}",
            self.status, self.bytes_in, self.bytes_out, self.duration_ms
        );
        if let Some(u) = self.upstream_ms {
            let _ = write!(b, ",\"upstream_ms\":{u:.3}");
        }
        b.extend_from_slice(b"}\n");
        b
    }
}

/// The sending half; cheap to call from the request path.
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    sample: f64,
}

const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Starts the writer thread; `None` when the log is off.
    pub fn start(cfg: &AccessLogConfig) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = if cfg.path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.path)
                    .map_err(|e| anyhow::anyhow!("cannot open access log {}: {e}", cfg.path))?,
            )
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(Some(Self {
            tx,
            sample: cfg.sample,
        }))
    }

    /// Whether this request is logged (sampling); decide before building a line.
    pub fn wants(&self) -> bool {
        self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    pub fn send(&self, line: &Line<'_>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line.to_json()) {
            METRICS.access_log_dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Block for the first record, then take whatever else is queued
        // before one flush: few syscalls under load, prompt lines when idle.
        let Ok(first) = rx.recv() else { return };
        let mut next = Some(first);
        while let Some(line) = next {
            let _ = out.write_all(&line);
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_valid_json_even_with_hostile_input() {
        let line = Line {
            time: SystemTime::UNIX_EPOCH,
            request_id: "abc",
            client_ip: Some([127, 0, 0, 1].into()),
            method: "GET",
            host: "h\"x",
            path: "/a\\b\u{1}",
            route: "",
            upstream: None,
            status: 404,
            bytes_in: 0,
            bytes_out: 68,
            duration_ms: 1.5,
            upstream_ms: None,
        };
        let json = line.to_json();
        assert_eq!(json.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["host"], "h\"x");
        assert_eq!(v["path"], "/a\\b\u{1}");
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["upstream"], "");
        assert_eq!(v["status"], 404);
        assert!(v.get("upstream_ms").is_none());
    }

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_906_079_148);
        assert_eq!(rfc3339(t), "2026-11-28T22:47:59.148Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}
