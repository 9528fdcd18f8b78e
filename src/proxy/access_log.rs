//! The access log: one JSON line per request. The request path formats
//! the line into one buffer (no formatting machinery, one allocation) and
//! hands it over through a bounded channel; a writer thread drains the
//! channel on a short tick, so a request never pays for waking it. If the
//! writer falls behind, lines are dropped and counted rather than slowing
//! requests down.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use super::forwarding::push_ip;
use crate::config::AccessLogConfig;
use crate::metrics::METRICS;

/// One request, as logged. Borrowed: the line is formatted straight into
/// one buffer, the only allocation the access log costs a request.
#[derive(Debug)]
pub struct Line<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    /// `http/1.1`, `h2` or `h2c`, and `http` or `https`.
    pub protocol: &'static str,
    pub scheme: &'static str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    /// The consumer an auth plugin identified ("" when none).
    pub consumer: &'a str,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
}

/// `,"name":`, one constant per field: a line is ~40 small copies, and
/// each costs a call to `memcpy`.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

impl Line<'_> {
    /// The JSON line, newline-terminated. Durations are milliseconds with
    /// microsecond precision (`duration_ms`, `upstream_ms`).
    pub fn to_json(&self) -> Vec<u8> {
        // A typical line is ~350 bytes: one allocation, never a regrowth
        // (which cost ~575 instructions a request at 320).
        let mut b = Vec::with_capacity(512);
        b.extend_from_slice(b"{\"time\":\"");
        b.extend_from_slice(&rfc3339(self.time));
        b.push(b'"');
        let text = |b: &mut Vec<u8>, key: &[u8], v: &str| {
            b.extend_from_slice(key);
            push_str(b, v);
        };
        text(&mut b, key!("request_id"), self.request_id);
        b.extend_from_slice(key!("client_ip"));
        b.push(b'"');
        if let Some(ip) = self.client_ip {
            push_ip(&mut b, ip);
        }
        b.push(b'"');
        text(&mut b, key!("method"), self.method);
        text(&mut b, key!("protocol"), self.protocol);
        text(&mut b, key!("scheme"), self.scheme);
        text(&mut b, key!("host"), self.host);
        text(&mut b, key!("path"), self.path);
        text(&mut b, key!("route"), self.route);
        text(&mut b, key!("consumer"), self.consumer);
        b.extend_from_slice(key!("upstream"));
        b.push(b'"');
        if let Some(u) = self.upstream {
            push_ip(&mut b, u.ip());
            b.push(b':');
            push_int(&mut b, u.port());
        }
        b.push(b'"');
        b.extend_from_slice(key!("status"));
        push_int(&mut b, self.status);
        b.extend_from_slice(key!("bytes_in"));
        push_int(&mut b, self.bytes_in);
        b.extend_from_slice(key!("bytes_out"));
        push_int(&mut b, self.bytes_out);
        b.extend_from_slice(key!("duration_ms"));
        push_ms(&mut b, self.duration);
        if let Some(u) = self.upstream_duration {
            b.extend_from_slice(key!("upstream_ms"));
            push_ms(&mut b, u);
        }
        b.extend_from_slice(b"}\n");
        b
    }
}

/// `v` as a JSON string. What needs no escaping (nearly every value) is
/// copied as it is; anything else, whatever a client put in a path or
/// host, goes through serde_json's escaping.
fn push_str(b: &mut Vec<u8>, v: &str) {
    // No early exit: one branch-free pass over the bytes.
    let plain = v
        .bytes()
        .fold(true, |ok, c| ok & (c >= 0x20 && c != b'"' && c != b'\\'));
    if plain {
        b.push(b'"');
        b.extend_from_slice(v.as_bytes());
        b.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *b, v);
    }
}

fn push_int(b: &mut Vec<u8>, n: impl itoa::Integer) {
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` as exactly `out.len()` decimal digits (zero-padded, high digits
/// cut).
fn put_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Milliseconds with three decimals: `12.345`.
fn push_ms(b: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut text = itoa::Buffer::new();
    let ms = text.format(us / 1000).as_bytes();
    // The longest u64 and `.` and three digits.
    let mut out = [0u8; 24];
    out[..ms.len()].copy_from_slice(ms);
    out[ms.len()] = b'.';
    put_digits(&mut out[ms.len() + 1..ms.len() + 4], us % 1000);
    b.extend_from_slice(&out[..ms.len() + 4]);
}

/// The sending half; cheap to call from the request path.
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    sample: f64,
}

/// Lines that may wait for the writer: at 30k requests/s about 0.5 s.
const QUEUE: usize = 16 * 1024;
/// How long lines may sit in the queue before they are written. The writer
/// never blocks on the channel, so a send never has to wake it up.
const TICK: Duration = Duration::from_millis(20);

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

/// Every tick, writes whatever is queued with one flush; exits (after a
/// last drain) when the sender is gone.
fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let open = loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let _ = out.flush();
        if !open {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// RFC 3339 UTC with milliseconds (`2026-11-28T22:47:59.148Z`), without a
/// date-time dependency.
fn rfc3339(t: SystemTime) -> [u8; 24] {
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
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let parts = [
        (year as u64, 0..4),
        (month as u64, 5..7),
        (day as u64, 8..10),
        (rem / 3600, 11..13),
        (rem % 3600 / 60, 14..16),
        (rem % 60, 17..19),
        (u64::from(d.subsec_millis()), 20..23),
    ];
    for (n, at) in parts {
        put_digits(&mut out[at], n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339(t: SystemTime) -> String {
        String::from_utf8(super::rfc3339(t).to_vec()).unwrap()
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut samples: Vec<String> = (0u8..=0x7f).map(|c| format!("a{}z", c as char)).collect();
        samples.extend(
            [
                "",
                "/plain/path?q=1",
                "ü€\u{10ffff}",
                "\"\\\n\t\u{7f}",
                "héllo\u{2028}",
            ]
            .map(String::from),
        );
        for v in samples {
            let mut b = Vec::new();
            push_str(&mut b, &v);
            assert_eq!(b, serde_json::to_vec(&v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn lines_are_valid_json_even_with_hostile_input() {
        let line = Line {
            protocol: "h2",
            scheme: "https",
            time: SystemTime::UNIX_EPOCH,
            request_id: "abc",
            client_ip: Some([127, 0, 0, 1].into()),
            method: "GET",
            host: "h\"x",
            path: "/a\\b\u{1}",
            route: "",
            consumer: "",
            upstream: None,
            status: 404,
            bytes_in: 0,
            bytes_out: 68,
            duration: Duration::from_micros(1_500),
            upstream_duration: None,
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
        assert_eq!(v["duration_ms"], 1.5);
    }

    #[test]
    fn numbers_and_addresses_are_written_exactly() {
        let line = Line {
            protocol: "h2",
            scheme: "https",
            time: SystemTime::UNIX_EPOCH,
            request_id: "r",
            client_ip: Some("2001:db8::7".parse().unwrap()),
            method: "POST",
            host: "",
            path: "/",
            route: "r1",
            consumer: "alice",
            upstream: Some("10.1.2.3:8080".parse().unwrap()),
            status: 201,
            bytes_in: 12345,
            bytes_out: 0,
            duration: Duration::from_micros(12_005_007),
            upstream_duration: Some(Duration::from_nanos(999)),
        };
        let v: serde_json::Value = serde_json::from_slice(&line.to_json()).unwrap();
        assert_eq!(v["client_ip"], "2001:db8::7");
        assert_eq!(v["upstream"], "10.1.2.3:8080");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 12345);
        assert_eq!(v["duration_ms"], 12005.007);
        assert_eq!(v["upstream_ms"], 0.0);
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
