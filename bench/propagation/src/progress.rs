//! Progress lines on stderr (seconds since the start), and the notes the
//! phases collect for the end of the report.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

pub fn started() -> &'static Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    T.get_or_init(Instant::now)
}

/// Lines for the report's closing notes.
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn note(line: String) {
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

pub fn notes() -> Vec<String> {
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub fn log(msg: impl std::fmt::Display) {
    eprintln!(
        "[propagation {:6.1}s] {msg}",
        started().elapsed().as_secs_f64()
    );
}
