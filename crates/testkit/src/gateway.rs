//! The real `tollgate` binary as a child process, with a generated bootstrap
//! config on free ports and its log captured in a temp dir.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http_client::{http_get, http_request, Resp};
use crate::process::{exit_code, kill_and_reap, send_signal, tail_file, wait_child};
use crate::wait::{free_port, wait_for};

/// How long `start` waits for `/healthz` to answer 200.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running gateway. Dropping it SIGKILLs the process; if the test is
/// panicking, the last 80 lines of its log go to stderr first.
pub struct Gateway {
    dir: TempDir,
    header: String,
    config: PathBuf,
    log: PathBuf,
    state_dir: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// Listeners beyond the first, in the order asked for.
    extra: Vec<SocketAddr>,
    child: Child,
    exit: Option<i32>,
}

fn quoted(p: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(&p.to_string_lossy()).unwrap()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

impl Gateway {
    /// Writes `<tmp>/tollgate.yaml` = a header with free ports and a temp
    /// state dir:
    /// `listen: ["127.0.0.1:P"]`, `admin: { listen: "127.0.0.1:A" }`,
    /// `threads: 1`, `state_dir: "<tmp>/state"` (so `body` must not repeat
    /// those keys), followed by `body`; spawns `bin run -c <file>` with
    /// stdout+stderr to `<tmp>/gateway.log` and RUST_LOG=info unless set, and
    /// waits up to 20s for `GET /healthz` on the admin listener to answer 200.
    /// Panics with the log if the process exits first or the deadline passes.
    pub fn start(bin: &Path, body: &str) -> Gateway {
        Self::launch(bin, body, None, &[], &[])
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// Like [`Gateway::start`] with more proxy listeners on free ports, one
    /// per entry, each the fields after `addr` (`"tls: true"`, `"h2c: true"`);
    /// [`Gateway::listener`] gives their addresses in the same order.
    pub fn start_with_listeners(bin: &Path, body: &str, extra: &[&str]) -> Gateway {
        Self::launch(bin, body, None, &[], extra)
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// Like [`Gateway::start`] with extra environment variables for the
    /// process (e.g. test-only hooks such as `TOLLGATE_TEST_PANIC_HEADER`).
    pub fn start_with_env(bin: &Path, body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(bin, body, None, env, &[])
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// [`Gateway::start_with_listeners`] and [`Gateway::start_with_env`] at once.
    pub fn start_with_env_and_listeners(
        bin: &Path,
        body: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Gateway {
        Self::launch(bin, body, None, env, extra)
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// Like [`Gateway::start`] but with a caller-owned state dir, so that a
    /// later gateway can start from what this one persisted.
    pub fn start_with_state_dir(bin: &Path, body: &str, state_dir: &Path) -> Gateway {
        Self::launch(bin, body, Some(state_dir), &[], &[])
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// For configs that must fail: `Err(exit code + log)` if the process
    /// exits (or is not healthy within 20s) instead of panicking.
    pub fn try_start(bin: &Path, body: &str) -> Result<Gateway, String> {
        Self::launch(bin, body, None, &[], &[])
    }

    fn launch(
        bin: &Path,
        body: &str,
        state_dir: Option<&Path>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Gateway, String> {
        // A free port can be taken by someone else before the gateway binds
        // it; only then do we retry, with new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::launch_once(bin, body, state_dir, env, extra) {
                Err((log, true)) if attempt < 3 => {
                    eprintln!("testkit: gateway port clash, retrying with new ports:\n{log}")
                }
                Err((log, _)) => return Err(log),
                Ok(g) => return Ok(g),
            }
        }
    }

    /// Err((message, port clash?))
    fn launch_once(
        bin: &Path,
        body: &str,
        state_dir: Option<&Path>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Gateway, (String, bool)> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-gw-")
            .tempdir()
            .expect("temp dir");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let state_dir = state_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("state"));
        let extra_addrs: Vec<SocketAddr> = extra
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
            .collect();
        let listen: String = std::iter::once(format!("\"{proxy}\""))
            .chain(
                (extra.iter().zip(&extra_addrs))
                    .map(|(fields, addr)| format!("{{addr: \"{addr}\", {fields}}}")),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let header = format!(
            "listen: [{listen}]\nadmin: {{ listen: \"{admin}\" }}\nthreads: 1\nstate_dir: {}\n",
            quoted(&state_dir)
        );
        let config = dir.path().join("tollgate.yaml");
        write_atomically(&config, &format!("{header}{body}"));
        let log = dir.path().join("gateway.log");
        let log_file = File::create(&log).expect("gateway log file");
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .map_err(|e| (format!("cannot spawn {}: {e}", bin.display()), false))?;
        let mut gw = Gateway {
            dir,
            header,
            config,
            log,
            state_dir,
            proxy,
            admin,
            extra: extra_addrs,
            child,
            exit: None,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = gw.child.try_wait() {
                gw.exit = Some(exit_code(st));
                let logs = gw.logs();
                let clash = logs.contains("Address already in use")
                    || logs.contains("address already in use");
                return Err((
                    format!(
                        "gateway exited with {} before becoming healthy; log:\n{logs}",
                        exit_code(st)
                    ),
                    clash,
                ));
            }
            // Healthy, and every proxy listener bound: Pingora starts the
            // admin service before the proxy's, so /healthz alone can
            // answer while the proxy port still refuses connections.
            if http_request("GET", &gw.admin_url("/healthz"), &[], None)
                .is_ok_and(|r| r.status == 200)
                && std::iter::once(gw.proxy)
                    .chain(gw.extra.iter().copied())
                    .all(|a| std::net::TcpStream::connect(a).is_ok())
            {
                return Ok(gw);
            }
            if start.elapsed() > START_TIMEOUT {
                kill_and_reap(&mut gw.child);
                gw.exit = Some(-1);
                return Err((
                    format!(
                        "gateway /healthz not 200 within {START_TIMEOUT:?}; log:\n{}",
                        gw.logs()
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://<proxy listener><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// `http://<admin listener><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The `i`th listener asked for by [`Gateway::start_with_listeners`].
    pub fn listener(&self, i: usize) -> SocketAddr {
        self.extra[i]
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The state dir written into the config header.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The gateway's temp dir (config, log; state unless given).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET `path` through the proxy listener; panics on transport errors.
    pub fn get(&self, path: &str) -> Resp {
        http_get(&self.url(path))
    }

    /// Any request through the proxy listener; Err on transport errors.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        http_request(method, &self.url(path), headers, body)
    }

    /// `GET /status` on the admin listener, as JSON (panics if not 200 JSON).
    pub fn status(&self) -> serde_json::Value {
        let r = http_get(&self.admin_url("/status"));
        assert_eq!(r.status, 200, "admin /status: {}", r.body);
        r.json()
    }

    /// Poll until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let url = self.admin_url("/readyz");
        wait_for("gateway /readyz == 200", timeout, || {
            http_request("GET", &url, &[], None).is_ok_and(|r| r.status == 200)
        });
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// Replace the config with the same header + `body`, atomically (write a
    /// temp file in the same dir, then rename over).
    pub fn rewrite_config(&self, body: &str) {
        write_atomically(&self.config, &format!("{}{body}", self.header));
    }

    /// The whole log so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal, e.g. `libc::SIGTERM` / `libc::SIGHUP`.
    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig)
    }

    /// Wait for the process to exit; its exit code (128 + N if killed by
    /// signal N), or None if still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout).map(exit_code);
        }
        self.exit
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of gateway log ({}) -----\n{}\n-----",
                self.log.display(),
                tail_file(&self.log, 80)
            );
        }
    }
}
