//! Polling with a deadline (never fixed sleeps) and free-port allocation.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher, RandomState};
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

/// A TCP port on 127.0.0.1 that is free and that no other test process
/// will be handed while this one runs.
///
/// A kernel-chosen port (`bind :0`, read, close) is not enough: between the
/// close and the caller's bind, any `bind :0` or outgoing connection on the
/// host (nextest runs every test in its own process, each starting etcds,
/// Prometheus and gateways) can be given the same port. That happened: a
/// gateway's admin port went to a Go server of a parallel test. So ports
/// come from just below the kernel's ephemeral range, which the kernel never
/// hands out by itself, and each is claimed with a lock on a file under
/// `$TMPDIR/testkit-ports` that this process holds until it exits (the lock
/// goes with the process, so a crash leaves nothing stale). If that range is
/// too small on this host, falls back to a kernel-chosen port.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let Some((lo, hi)) = claimable_range() else {
        return kernel_port();
    };
    let dir = std::env::temp_dir().join("testkit-ports");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("testkit: cannot create {}: {e}", dir.display()));
    let span = u64::from(hi - lo);
    let start = RandomState::new().build_hasher().finish() % span;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        let path = dir.join(format!("{port}.lock"));
        let Ok(file) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        // An flock is per open file, so this also refuses ports this
        // process already holds.
        if file.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("testkit: no free port in {lo}..{hi}");
}

/// Up to 10,000 ports just below the ephemeral range (Linux default
/// 32768-60999), never below 10000; `None` if fewer than 2,000 fit.
fn claimable_range() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let eph_lo: u16 = range.split_whitespace().next()?.parse().ok()?;
    let lo = eph_lo.saturating_sub(10_000).max(10_000);
    (eph_lo.saturating_sub(lo) >= 2_000).then_some((lo, eph_lo))
}

/// A port the kernel picked a moment ago; never the same twice in one process.
fn kernel_port() -> u16 {
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
    fn free_ports_avoid_the_kernel_range_and_are_claimed_for_other_processes() {
        let Some((lo, hi)) = claimable_range() else {
            return; // this host's ephemeral range leaves no room: kernel ports
        };
        let port = free_port();
        assert!((lo..hi).contains(&port), "{port} not in {lo}..{hi}");
        // Another process opening the lock file gets what this fresh open
        // gets: flock refuses it while we hold the port.
        let path = std::env::temp_dir()
            .join("testkit-ports")
            .join(format!("{port}.lock"));
        let other = File::options().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err(), "{port} is not claimed");
        // And the port itself is free to bind.
        TcpListener::bind(("127.0.0.1", port)).unwrap();
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
