//! CPU placement for the throughput rounds: the gateway gets CPU 0 to
//! itself; etcd, the churn writer, the wrk backend and wrk share the rest.
//!
//! In production etcd and the clients run on other machines. Sharing two
//! cores with them, the proxy lost 3–10% of its throughput to etcd's own
//! work whether or not the gateway watched the keys written (the control
//! window), which hid the number this phase is after: what config churn
//! costs the gateway. Every thread the gateway runs, its etcd sync
//! included, is on its core, so all of the gateway's own cost still counts.

use std::collections::HashSet;

/// Where each side runs; `None` when the machine has one CPU.
pub struct Layout {
    pub gateway: usize,
    pub others: Vec<usize>,
}

impl Layout {
    /// The first CPU this process may run on for the gateway, the rest for
    /// everything else (so `taskset -c 4,5 bench/propagation.sh` works).
    pub fn for_this_machine() -> Option<Layout> {
        let cpus = allowed_cpus();
        let (&gateway, others) = cpus.split_first()?;
        (!others.is_empty()).then(|| Layout {
            gateway,
            others: others.to_vec(),
        })
    }

    /// How the report describes it.
    pub fn describe(&self) -> String {
        let others: Vec<String> = self.others.iter().map(|c| c.to_string()).collect();
        format!(
            "gateway pinned to CPU {}; etcd, the writer, the backend and wrk to CPU {}",
            self.gateway,
            others.join(",")
        )
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, filled by the kernel; its size is passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins every thread of `pid` to `cpus`. Threads started later inherit it
/// from the thread that starts them; a thread started while we walk the
/// list is caught by walking it again until nothing new shows up.
pub fn pin(pid: u32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET only writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut done = HashSet::new();
    loop {
        let mut new = 0;
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if !done.insert(tid) {
                continue;
            }
            new += 1;
            // SAFETY: `set` outlives the call and its size is passed.
            let rc = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            // A thread that exited meanwhile is not an error.
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                return Err(std::io::Error::last_os_error());
            }
        }
        if new == 0 {
            return Ok(());
        }
    }
}
