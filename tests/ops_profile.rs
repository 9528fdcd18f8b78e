//! CPU profiling on the admin listener: off (404) unless the bootstrap file
//! says `admin: { profiling: true }`; then a flame graph (SVG) and a pprof
//! protobuf of a running gateway under light traffic.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd_gw::TempDir;
use common::upstream;
use testkit::process::{kill_and_reap, tail_file};
use testkit::{free_port, http_request, raw_request, wait_for, Backend, Resp};

/// A gateway spawned here: testkit's header already sets `admin:`, and
/// this needs `admin.profiling`. SIGKILLed on drop.
struct Gw {
    child: Child,
    log: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Gw {
    fn start(profiling: Option<bool>, backend: &Backend) -> Gw {
        let dir = TempDir::new("profile");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_cfg = match profiling {
            Some(p) => format!("{{ listen: \"{admin}\", profiling: {p} }}"),
            None => format!("{{ listen: \"{admin}\" }}"),
        };
        let config = dir.path().join("tollgate.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: [\"{proxy}\"]\nadmin: {admin_cfg}\nthreads: 1\nstate_dir: {:?}\n\
                 access_log: {{ enabled: false }}\n\
                 routes:\n  - id: echo\n    paths: [\"/echo\"]\n    upstream: b\nupstreams:\n{}",
                dir.path().join("state").to_str().unwrap(),
                upstream("b", &[backend])
            ),
        )
        .unwrap();
        let log = dir.path().join("gw.log");
        let f = File::create(&log).unwrap();
        let child = Command::new(common::bin())
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn tollgate");
        let mut gw = Gw {
            child,
            log,
            proxy,
            admin,
            _dir: dir,
        };
        let ready = format!("http://{admin}/readyz");
        let start = Instant::now();
        while !http_request("GET", &ready, &[], None).is_ok_and(|r| r.status == 200) {
            if let Ok(Some(st)) = gw.child.try_wait() {
                panic!("gateway exited ({st}):\n{}", tail_file(&gw.log, 40));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway not ready:\n{}",
                tail_file(&gw.log, 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    fn admin(&self, path: &str) -> Resp {
        http_request("GET", &format!("http://{}{path}", self.admin), &[], None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!("----- gateway log -----\n{}", tail_file(&self.log, 60));
        }
    }
}

/// Light traffic through the proxy until dropped.
struct Load(Arc<AtomicBool>);

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let url = format!("http://{proxy}/echo");
            while !s.load(Ordering::Relaxed) {
                let _ = http_request("GET", &url, &[], None);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Load(stop)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Splits a raw HTTP/1.1 response into (status, lower-case head, body).
fn split(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    let status = testkit::status_code(head.lines().next().unwrap_or_default()).unwrap_or(0);
    (status, head, raw[at + 4..].to_vec())
}

#[test]
fn profiling_enabled_serves_a_flame_graph_and_a_pprof_profile() {
    let backend = Backend::start("b1");
    let gw = Gw::start(Some(true), &backend);
    let _load = Load::start(gw.proxy);

    let started = Instant::now();
    let r = gw.admin("/debug/pprof/flamegraph?seconds=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "sampled for 1s"
    );
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.body.contains("<svg"), "not an SVG: {:.200}", r.body);
    assert!(
        r.body.contains("tollgate CPU, 1s"),
        "titled: {:.400}",
        r.body
    );

    // The protobuf, byte-exact: field 1 (sample_type), length-delimited.
    let raw = raw_request(
        gw.admin,
        b"GET /debug/pprof/profile?seconds=1 HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    );
    let (status, head, body) = split(&raw);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/octet-stream"),
        "{head}"
    );
    assert!(head.contains("content-disposition: attachment"), "{head}");
    assert!(
        body.len() > 16 && body[0] == 0x0a,
        "not a pprof protobuf: {:?}",
        &body[..body.len().min(16)]
    );

    // Bounds on seconds.
    for q in ["seconds=0", "seconds=61", "seconds=abc"] {
        let r = gw.admin(&format!("/debug/pprof/flamegraph?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body.contains("seconds"), "{}", r.body);
    }

    // One profile at a time: once the gateway has started a 2 s profile
    // (its log says so), another request is refused at once.
    let started_profiles = || {
        std::fs::read_to_string(&gw.log)
            .unwrap_or_default()
            .matches("CPU profile started")
            .count()
    };
    let before = started_profiles();
    let admin = gw.admin;
    let long = std::thread::spawn(move || {
        http_request(
            "GET",
            &format!("http://{admin}/debug/pprof/flamegraph?seconds=2"),
            &[],
            None,
        )
        .map(|r| r.status)
    });
    wait_for("the 2 s profile started", Duration::from_secs(5), || {
        started_profiles() > before
    });
    let r = gw.admin("/debug/pprof/profile?seconds=1");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("already"), "{}", r.body);
    assert_eq!(long.join().unwrap(), Ok(200));

    // The rest of the admin listener kept answering meanwhile, and the
    // gateway still proxies.
    assert_eq!(gw.admin("/healthz").status, 200);
    let r = http_request("GET", &format!("http://{}/echo", gw.proxy), &[], None).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn profiling_is_off_by_default_and_when_disabled() {
    let backend = Backend::start("b1");
    for setting in [None, Some(false)] {
        let gw = Gw::start(setting, &backend);
        // A minute's sample asked for: answered long before one would
        // end (the bound is the sample's length, not a speed).
        for path in [
            "/debug/pprof/profile?seconds=60",
            "/debug/pprof/flamegraph?seconds=60",
        ] {
            let started = Instant::now();
            let r = gw.admin(path);
            assert_eq!(r.status, 404, "{setting:?} {path}: {}", r.body);
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "answered without sampling"
            );
        }
        assert_eq!(gw.admin("/metrics").status, 200);
    }
}
