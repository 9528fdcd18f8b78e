//! On-demand CPU profiling on the admin listener, off unless the bootstrap
//! file says `admin: { profiling: true }`:
//!
//! - `GET /debug/pprof/profile?seconds=N`: a pprof protobuf, as Go's
//!   `net/http/pprof` serves it (`go tool pprof http://HOST:9180/debug/pprof/profile?seconds=30`,
//!   or `pprof -http=: profile.pb`).
//! - `GET /debug/pprof/flamegraph?seconds=N`: the same samples as an SVG
//!   flame graph, for a browser.
//!
//! `seconds` is 1..=60 (default 10). Sampling is SIGPROF-driven at 99 Hz
//! (pprof-rs), process-wide, and only while a request is being answered;
//! one profile at a time (409 while another runs).

use http::Response;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const PROFILE_PATH: &str = "/debug/pprof/profile";
pub const FLAMEGRAPH_PATH: &str = "/debug/pprof/flamegraph";

const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 60;
/// Samples per second; not a round number so that sampling does not run
/// in lockstep with periodic work.
const FREQUENCY: i32 = 99;

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pprof protobuf (`profile.proto`).
    Pprof,
    /// SVG flame graph.
    Svg,
}

impl Format {
    /// The format a path asks for; None for any other path.
    pub fn for_path(path: &str) -> Option<Format> {
        match path {
            PROFILE_PATH => Some(Format::Pprof),
            FLAMEGRAPH_PATH => Some(Format::Svg),
            _ => None,
        }
    }
}

/// Set while a profile is being taken (pprof-rs has one global profiler).
static BUSY: AtomicBool = AtomicBool::new(false);

struct BusyGuard;

impl Drop for BusyGuard {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// `seconds` from a query string: 1..=60, default 10.
pub fn parse_seconds(query: Option<&str>) -> Result<u64, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find_map(|(k, v)| (k == "seconds").then_some(v))
    else {
        return Ok(DEFAULT_SECONDS);
    };
    match v.parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "seconds must be an integer from 1 to {MAX_SECONDS}, not {v:?}"
        )),
    }
}

fn error(status: u16, msg: &str) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default();
    body.push(b'\n');
    super::respond(status, "application/json", body)
}

/// Samples the whole process for `seconds` and renders the result.
fn take(seconds: u64, format: Format) -> Result<(Vec<u8>, &'static str), String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Unwinding through these from a signal handler can deadlock.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("cannot start the profiler: {e}"))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build the report: {e}"))?;
    drop(guard);
    match format {
        Format::Svg => {
            let title = format!("tollgate CPU, {seconds}s");
            // pprof-rs writes nothing at all for a profile without samples.
            if report.data.is_empty() {
                return Ok((no_samples_svg(&title).into_bytes(), "image/svg+xml"));
            }
            let mut svg = Vec::new();
            let mut opts = pprof::flamegraph::Options::default();
            opts.title = title;
            report
                .flamegraph_with_options(&mut svg, &mut opts)
                .map_err(|e| format!("cannot render the flame graph: {e}"))?;
            Ok((svg, "image/svg+xml"))
        }
        Format::Pprof => {
            use pprof::protos::Message;
            let profile = report
                .pprof()
                .map_err(|e| format!("cannot encode the profile: {e}"))?;
            Ok((profile.encode_to_vec(), "application/octet-stream"))
        }
    }
}

/// The flame graph of an idle process: no CPU time was sampled.
fn no_samples_svg(title: &str) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"80\">\
         <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-size=\"17\">{title}</text>\
         <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-size=\"12\">no samples: the process used no CPU while it was profiled</text>\
         </svg>\n"
    )
}

/// Answers one profiling request (the caller has checked it is enabled).
pub async fn serve(format: Format, query: Option<&str>) -> Response<Vec<u8>> {
    let seconds = match parse_seconds(query) {
        Ok(s) => s,
        Err(e) => return error(400, &e),
    };
    if BUSY
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return error(409, "a profile is already being taken; try again later");
    }
    let busy = BusyGuard;
    tracing::info!(seconds, ?format, "CPU profile started");
    // The sampling wait and the symbolisation are blocking work: keep them
    // off the admin runtime's only worker thread.
    let result = tokio::task::spawn_blocking(move || {
        let _busy = busy;
        take(seconds, format)
    })
    .await
    .unwrap_or_else(|e| Err(format!("profiler task failed: {e}")));
    match result {
        Ok((body, content_type)) => {
            let mut resp = super::respond(200, content_type, body);
            if format == Format::Pprof {
                if let Ok(v) = http::HeaderValue::from_str("attachment; filename=\"profile.pb\"") {
                    resp.headers_mut().insert("content-disposition", v);
                }
            }
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "CPU profile failed");
            error(500, &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_bounds_and_garbage() {
        assert_eq!(parse_seconds(None), Ok(10));
        assert_eq!(parse_seconds(Some("")), Ok(10));
        assert_eq!(parse_seconds(Some("debug=1")), Ok(10));
        assert_eq!(parse_seconds(Some("seconds=1")), Ok(1));
        assert_eq!(parse_seconds(Some("x=y&seconds=60")), Ok(60));
        assert!(parse_seconds(Some("seconds=0")).is_err());
        assert!(parse_seconds(Some("seconds=61")).is_err());
        assert!(parse_seconds(Some("seconds=abc")).is_err());
        assert!(parse_seconds(Some("seconds")).is_err());
    }

    #[test]
    fn an_idle_profile_is_still_an_svg() {
        let svg = no_samples_svg("tollgate CPU, 1s");
        assert!(svg.starts_with("<?xml") && svg.contains("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("tollgate CPU, 1s") && svg.contains("no samples"));
    }

    #[test]
    fn paths() {
        assert_eq!(Format::for_path(PROFILE_PATH), Some(Format::Pprof));
        assert_eq!(Format::for_path(FLAMEGRAPH_PATH), Some(Format::Svg));
        assert_eq!(Format::for_path("/debug/pprof/heap"), None);
    }
}
