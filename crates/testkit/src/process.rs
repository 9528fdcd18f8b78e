//! Child-process helpers shared by the etcd and gateway launchers, and
//! [`run_cmd`] for one-shot CLI invocations.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a finished process; a death by signal N maps to 128 + N,
/// as shells report it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Send signal `sig` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc != 0 {
        panic!(
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// SIGKILL `child` (if still running) and reap it.
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Poll `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `n` lines of a (log) file, or a note that it cannot be read.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Run `bin` with args to completion (for `tollgate check` and friends),
/// returning (exit code, stdout, stderr). stdin is empty. Panics if it cannot
/// be started or runs longer than 60s.
pub fn run_cmd(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait_child(&mut child, Duration::from_secs(60)) else {
        kill_and_reap(&mut child);
        panic!("{} {args:?} did not finish within 60s", bin.display());
    };
    (
        exit_code(status),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_cmd_captures_code_and_output() {
        let (code, out, err) = run_cmd(
            Path::new("/bin/sh"),
            &["-c", "echo hello; echo oops >&2; exit 3"],
        );
        assert_eq!((code, out.as_str(), err.as_str()), (3, "hello\n", "oops\n"));
    }
}
