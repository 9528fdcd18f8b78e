//! The systemd integration, without a running systemd (these machines run
//! none): `systemd-analyze verify` on both unit files, the daemon's
//! sd_notify protocol against a real notify socket (READY=1 only once it
//! serves, STOPPING=1 on SIGTERM), and the ExecReload helper
//! (`systemd/tollgate-upgrade`) doing a real zero-downtime upgrade of a
//! running gateway under traffic.

mod common;

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd_gw::{wait_ok, TempDir};
use common::{bin, upstream};
use testkit::process::{kill_and_reap, tail_file, wait_child};
use testkit::{free_port, http_request, wait_for, Backend, SIGKILL, SIGTERM};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_analyze() -> &'static str {
    let p = "systemd-analyze";
    let found = Command::new(p)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "systemd-analyze not found: run scripts/deps.sh (Debian package `systemd`)"
    );
    p
}

/// A copy of a committed unit with the install paths pointed at this
/// checkout (verify checks that every Exec binary exists).
fn localized_unit(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("systemd").join(name))
        .unwrap_or_else(|e| panic!("systemd/{name}: {e}"));
    let upgrade = repo().join("systemd/tollgate-upgrade");
    let text = text
        .replace(
            "/usr/local/lib/tollgate/tollgate-upgrade",
            upgrade.to_str().unwrap(),
        )
        .replace("/usr/local/bin/tollgate", bin().to_str().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `systemd-analyze verify UNIT` must succeed and say nothing (it exits 0
/// on unknown keys and unparsable values, and only warns).
fn verify(unit: &Path) {
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(unit)
        .current_dir(unit.parent().unwrap())
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {}\nstdout: {stdout}\nstderr: {stderr}",
        unit.display(),
        out.status
    );
}

#[test]
fn unit_files_verify() {
    let dir = TempDir::new("units");
    let main = localized_unit("tollgate.service", dir.path());
    verify(&main);
    let template = localized_unit("tollgate-register@.service", dir.path());
    verify(&template);
    // An instance: %i expanded into ExecStart and EnvironmentFile.
    verify(&dir.path().join("tollgate-register@users.service"));

    // The committed units point at the real install paths, and the
    // properties the operator guide promises are there.
    let unit = std::fs::read_to_string(repo().join("systemd/tollgate.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStart=/usr/local/bin/tollgate run -c /etc/tollgate/tollgate.yaml",
        "ExecReload=/usr/local/lib/tollgate/tollgate-upgrade /usr/local/bin/tollgate /etc/tollgate/tollgate.yaml",
        "StateDirectory=tollgate",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=1048576",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "tollgate.service lacks {line:?}"
        );
    }
    // The gateway's default state_dir is the StateDirectory.
    assert!(
        std::fs::read_to_string(repo().join("conf/tollgate-etcd.yaml"))
            .unwrap()
            .contains("state_dir: /var/lib/tollgate")
    );
    let register =
        std::fs::read_to_string(repo().join("systemd/tollgate-register@.service")).unwrap();
    assert!(register.contains("EnvironmentFile=/etc/tollgate/register-%i.env"));
    assert!(register.contains("--service %i"));
}

#[test]
fn upgrade_helper_is_valid_sh() {
    let script = repo().join("systemd/tollgate-upgrade");
    let out = Command::new("sh")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(
        mode & 0o111 != 0,
        "systemd/tollgate-upgrade is not executable"
    );
}

// ------------------------------------------------------------ notify socket

/// A notify socket (what systemd listens on) whose datagrams are collected
/// by a thread.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !s.load(Ordering::Relaxed) {
                // A plain recv drops any passed fds (systemd-notify's
                // barrier pipe), which is what releases the sender.
                if let Ok(n) = sock.recv(&mut buf) {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket {
            path,
            rx,
            seen: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for a message with every line of `lines`; returns it.
    fn expect(&mut self, lines: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self
                .seen
                .iter()
                .find(|m| lines.iter().all(|l| m.lines().any(|x| x == *l)))
            {
                return m.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no notification with {lines:?} within {timeout:?}; got {:?}",
                    self.seen
                );
            }
            if let Ok(m) = self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                self.seen.push(m);
            }
        }
    }

    fn drain(&mut self) -> &[String] {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        &self.seen
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------ processes

/// A gateway process spawned here (the testkit one cannot set
/// NOTIFY_SOCKET); SIGKILLed on drop, log printed if panicking.
struct Daemon {
    child: Child,
    log: PathBuf,
}

struct Ports {
    proxy: u16,
    admin: u16,
}

fn write_config(dir: &Path, ports: &Ports, body: &str) -> PathBuf {
    let state = dir.join("state");
    let text = format!(
        "listen: [\"127.0.0.1:{}\"]\nadmin: {{ listen: \"127.0.0.1:{}\" }}\nthreads: 1\nstate_dir: {:?}\nreload: {{ poll_ms: 3600000 }}\naccess_log: {{ enabled: false }}\n{body}",
        ports.proxy,
        ports.admin,
        state.to_str().unwrap()
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    fn spawn(config: &Path, log: PathBuf, notify: Option<&Path>) -> Daemon {
        let f = File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET");
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        Daemon {
            child: cmd.spawn().expect("spawn tollgate"),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "----- {} -----\n{}",
                self.log.display(),
                tail_file(&self.log, 60)
            );
        }
    }
}

/// A process that is not our child (the upgraded gateway is the helper
/// script's child): SIGKILLed on drop if still there.
struct Orphan(u32);

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent (or init) can reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, SIGKILL);
        }
    }
}

fn get(url: &str) -> Result<testkit::Resp, String> {
    http_request("GET", url, &[], None)
}

// ------------------------------------------------------------ tests

#[test]
fn notifies_ready_once_serving_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let backend = Backend::start("b1");
    let ports = Ports {
        proxy: free_port(),
        admin: free_port(),
    };
    let body = format!(
        "routes:\n  - id: echo\n    paths: [\"/echo\"]\n    upstream: b\nupstreams:\n{}",
        upstream("b", &[&backend])
    );
    let config = write_config(dir.path(), &ports, &body);
    let mut notify = NotifySocket::bind(dir.path());
    let mut gw = Daemon::spawn(&config, dir.path().join("gw.log"), Some(&notify.path));

    let ready = notify.expect(&["READY=1"], Duration::from_secs(20));
    // READY means serving: no polling needed from here on.
    assert!(
        ready.contains(&format!("MAINPID={}", gw.pid())),
        "READY names the main pid: {ready:?}"
    );
    let r = get(&format!("http://127.0.0.1:{}/readyz", ports.admin)).expect("admin up at READY");
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&format!("http://127.0.0.1:{}/echo", ports.proxy)).expect("proxy up at READY");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        notify
            .drain()
            .iter()
            .filter(|m| m.contains("READY=1"))
            .count(),
        1,
        "READY=1 sent once"
    );

    signal(gw.pid(), SIGTERM);
    notify.expect(&["STOPPING=1"], Duration::from_secs(10));
    let st = wait_child(&mut gw.child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(st.success(), "exit status {st}");
}

#[test]
fn no_notify_socket_no_notification() {
    // Without NOTIFY_SOCKET the daemon runs exactly as before.
    let dir = TempDir::new("nonotify");
    let backend = Backend::start("b1");
    let ports = Ports {
        proxy: free_port(),
        admin: free_port(),
    };
    let body = format!(
        "routes:\n  - id: echo\n    paths: [\"/echo\"]\n    upstream: b\nupstreams:\n{}",
        upstream("b", &[&backend])
    );
    let config = write_config(dir.path(), &ports, &body);
    let gw = Daemon::spawn(&config, dir.path().join("gw.log"), None);
    let url = format!("http://127.0.0.1:{}/readyz", ports.admin);
    wait_for("ready", Duration::from_secs(20), || {
        get(&url).is_ok_and(|r| r.status == 200)
    });
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(!log.contains("notified systemd"), "{log}");
    assert!(!log.contains("cannot notify"), "{log}");
}

/// Requests in a loop from a background thread; every answer must be a
/// 200 from the backend.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(usize, Vec<String>)>>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut n, mut failures) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                n += 1;
                match get(&url) {
                    Ok(r) if r.status == 200 && r.header("x-backend").is_some() => {}
                    Ok(r) => failures.push(format!("#{n}: {} {}", r.status, r.body.trim())),
                    Err(e) => failures.push(format!("#{n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (n, failures)
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `systemctl reload` without systemd: the ExecReload helper, with the
/// environment systemd gives it (MAINPID, NOTIFY_SOCKET, STATE_DIRECTORY),
/// upgrades a gateway under traffic to a new process with a new config.
#[test]
fn reload_helper_upgrades_without_dropping_requests() {
    let dir = TempDir::new("upgrade");
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let ports = Ports {
        proxy: free_port(),
        admin: free_port(),
    };
    let route = "routes:\n  - id: echo\n    paths: [\"/echo\"]\n    upstream: b\nupstreams:\n";
    let config = write_config(
        dir.path(),
        &ports,
        &format!("{route}{}", upstream("b", &[&b1])),
    );
    let mut notify = NotifySocket::bind(dir.path());
    let mut old = Daemon::spawn(&config, dir.path().join("old.log"), Some(&notify.path));
    notify.expect(&["READY=1"], Duration::from_secs(20));
    let url = format!("http://127.0.0.1:{}/echo", ports.proxy);
    assert_eq!(get(&url).unwrap().header("x-backend"), Some("b1"));

    // The new process comes up with a new config (b2), as a reload after
    // an edit of the bootstrap file would (the old one polls the file only
    // once an hour, so b2 answering means the new process serves).
    let new_config = write_config(
        dir.path(),
        &ports,
        &format!("{route}{}", upstream("b", &[&b2])),
    );
    assert_eq!(new_config, config);

    let traffic = Traffic::start(url.clone());
    std::thread::sleep(Duration::from_millis(300));
    let helper_log = dir.path().join("helper.log");
    let f = File::create(&helper_log).unwrap();
    // Output to a file, not pipes: the new gateway inherits them and
    // outlives the helper.
    let mut helper = Command::new(repo().join("systemd/tollgate-upgrade"))
        .arg(bin())
        .arg(&config)
        .env("MAINPID", old.pid().to_string())
        .env("NOTIFY_SOCKET", &notify.path)
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("run systemd/tollgate-upgrade");
    let status = wait_child(&mut helper, Duration::from_secs(30));
    let helper_out = std::fs::read_to_string(&helper_log).unwrap_or_default();
    let Some(status) = status else {
        kill_and_reap(&mut helper);
        panic!("tollgate-upgrade did not finish within 30s:\n{helper_out}");
    };
    assert!(status.success(), "tollgate-upgrade: {status}\n{helper_out}");

    // The helper announced the new main pid before the hand-over ...
    let mainpid = notify
        .drain()
        .iter()
        .find_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MAINPID="))
                .filter(|p| *p != old.pid().to_string())
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no MAINPID=<new> in {:?}\n{helper_out}", notify.seen));
    let new_pid: u32 = mainpid.parse().unwrap();
    let _new = Orphan(new_pid);
    assert!(alive(new_pid), "new gateway {new_pid} is running");

    // ... the new process says READY with itself as main pid, the old one
    // never says STOPPING (that would stop the whole unit) ...
    notify.expect(
        &["READY=1", &format!("MAINPID={new_pid}")],
        Duration::from_secs(10),
    );
    // ... the old one exits on its own once drained ...
    let st = wait_child(&mut old.child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("old gateway still running\n{helper_out}"));
    assert!(st.success(), "old gateway exit: {st}");
    assert!(
        !notify.drain().iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 during an upgrade: {:?}",
        notify.seen
    );
    // ... and the new config serves on the same sockets.
    wait_ok(
        "b2 answers through the new process",
        Duration::from_secs(10),
        || match get(&url) {
            Ok(r) if r.header("x-backend") == Some("b2") => Ok(()),
            Ok(r) => Err(format!("{} {:?}", r.status, r.header("x-backend"))),
            Err(e) => Err(e),
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let (sent, failures) = traffic.finish();
    assert!(sent > 50, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the upgrade: {:?}\nhelper:\n{helper_out}\nold log:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        tail_file(&old.log, 40)
    );
    let status = get(&format!("http://127.0.0.1:{}/status", ports.admin))
        .expect("admin listener handed over too");
    assert_eq!(status.status, 200);

    signal(new_pid, SIGTERM);
    notify.expect(&["STOPPING=1"], Duration::from_secs(10));
    wait_for("new gateway exits", Duration::from_secs(15), || {
        !alive(new_pid)
    });
}

#[test]
fn reload_helper_keeps_the_old_process_on_a_bad_config() {
    let dir = TempDir::new("badupgrade");
    let backend = Backend::start("b1");
    let ports = Ports {
        proxy: free_port(),
        admin: free_port(),
    };
    let config = write_config(
        dir.path(),
        &ports,
        &format!(
            "routes:\n  - id: echo\n    paths: [\"/echo\"]\n    upstream: b\nupstreams:\n{}",
            upstream("b", &[&backend])
        ),
    );
    let mut old = Daemon::spawn(&config, dir.path().join("old.log"), None);
    let url = format!("http://127.0.0.1:{}/echo", ports.proxy);
    wait_for("old gateway serves", Duration::from_secs(20), || {
        get(&url).is_ok_and(|r| r.status == 200)
    });
    std::fs::write(&config, "listen: [\"127.0.0.1:1\"]\nno_such_key: 1\n").unwrap();
    let out = Command::new(repo().join("systemd/tollgate-upgrade"))
        .arg(bin())
        .arg(&config)
        .env("MAINPID", old.pid().to_string())
        .env("TOLLGATE_STATE_DIR", dir.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config must fail the reload");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_such_key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(old.child.try_wait().unwrap().is_none(), "old gateway kept");
    assert_eq!(get(&url).unwrap().status, 200);
}
