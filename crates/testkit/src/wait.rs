//! Polling with a deadline (never fixed sleeps) and free-port allocation.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Poll `f` every ~20ms until it returns true; panic with `what` + elapsed if
/// `timeout` passes. `f` is always called at least once.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out waiting for {what} (waited {:.2?}, timeout {timeout:?})",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_for`] but returns false on timeout instead of panicking, for
/// callers that want to report their own error (e.g. with a log attached).
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind :0, read, close).
/// Never hands out the same port twice within one process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("testkit: cannot bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("testkit: could not find an unused free port");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn wait_for_returns_when_true() {
        let mut n = 0;
        wait_for("counter", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for never")]
    fn wait_for_panics_on_timeout() {
        wait_for("never", Duration::from_millis(50), || false);
    }
}
