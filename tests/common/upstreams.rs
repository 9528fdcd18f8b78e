//! Real upstreams beyond the echo backend: nginx (TLS, h2c) and a gRPC
//! server (grpcio, tests/support/grpc_echo.py), each on a free port and
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{free_port, wait_for};

use super::etcd_gw::TempDir;

pub struct Upstream {
    child: Child,
    pub port: u16,
    _dir: Option<TempDir>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// nginx with one server: `listen 127.0.0.1:<port> <listen_opts>;` then
/// `body` (certificate lines, `return`s).
pub fn nginx(listen_opts: &str, body: &str) -> Upstream {
    let dir = TempDir::new("nginx-up");
    let port = free_port();
    let p = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {p}/nginx.pid; error_log {p}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{ access_log off; client_body_temp_path {p}; proxy_temp_path {p};\n\
         server {{ listen 127.0.0.1:{port} {listen_opts}; {body} }} }}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx_bin())
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs");
    wait_for("nginx to listen", Duration::from_secs(10), || {
        listening(port)
    });
    Upstream {
        child,
        port,
        _dir: Some(dir),
    }
}

fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "nginx".into()
}

pub fn grpc_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_echo.py")
}

pub fn ws_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ws_echo.py")
}

/// The gRPC echo server (Debian's python3 with grpcio).
pub fn grpc_server() -> Upstream {
    python_server(grpc_script())
}

/// The WebSocket echo server (Debian's python3 with websockets).
pub fn ws_server() -> Upstream {
    python_server(ws_script())
}

fn python_server(script: PathBuf) -> Upstream {
    let port = free_port();
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["server", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "test server did not start");
    Upstream {
        child,
        port,
        _dir: None,
    }
}

/// Runs the gRPC client script with `args`; its JSON output.
pub fn grpc_client(args: &[&str]) -> serde_json::Value {
    let out = Command::new("/usr/bin/python3")
        .arg(grpc_script())
        .args(args)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "gRPC client: {e}\nstdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
