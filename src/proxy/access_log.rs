//! The access log: one JSON line per request, formatted and written by its
//! own thread. The request path only fills a record and hands it over
//! through a bounded channel; if the writer falls behind, lines are
//! dropped and counted rather than slowing requests down.

use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::AccessLogConfig;
use crate::metrics::METRICS;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Record {
    pub time: String,
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: String,
    pub upstream: String,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
}

/// The sending half; cheap to call from the request path.
pub struct AccessLog {
    tx: SyncSender<Record>,
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

    /// Whether this request is logged (sampling); decide before building a record.
    pub fn wants(&self) -> bool {
        self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    pub fn send(&self, r: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            METRICS.access_log_dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Block for the first record, then take whatever else is queued
        // before one flush: few syscalls under load, prompt lines when idle.
        let Ok(first) = rx.recv() else { return };
        let mut next = Some(first);
        while let Some(r) = next {
            if serde_json::to_writer(&mut out, &r).is_ok() {
                let _ = out.write_all(b"\n");
            }
            next = rx.recv_timeout(Duration::ZERO).ok();
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

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_906_079_148);
        assert_eq!(rfc3339(t), "2026-11-28T22:47:59.148Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}
