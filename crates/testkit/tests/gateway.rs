//! The gateway launcher, exercised with stand-in binaries (the real
//! `tollgate` is tested from the root package).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::Gateway;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn failing_config_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "fail",
        "echo \"invalid config: routes[0].paths is required\" >&2; exit 2",
    );
    let err = Gateway::try_start(&bin, "routes: []\n")
        .err()
        .expect("must fail");
    assert!(err.contains("routes[0].paths"), "{err}");
    assert!(err.contains("exited with 2"), "{err}");
}

/// A fake gateway: the echo backend on the admin address answers 200 to
/// /healthz, /readyz and /status.
#[test]
fn healthy_fake_gateway_is_driven() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "fake",
        &format!(
            "cfg=\"$3\"\n\
             admin=$(sed -n 's/^admin: {{ listen: \"\\(.*\\)\" }}$/\\1/p' \"$cfg\")\n\
             proxy=$(sed -n 's/^listen: \\[\"\\(.*\\)\"\\]$/\\1/p' \"$cfg\")\n\
             echo \"fake starting: $1 $2 $cfg admin=$admin\"\n\
             {bin} --name proxy --listen \"$proxy\" & p=$!\n\
             {bin} --name fake --listen \"$admin\" & a=$!\n\
             trap 'kill $p $a; exit 143' TERM\n\
             wait $a",
            bin = env!("CARGO_BIN_EXE_echo-backend")
        ),
    );
    let mut gw = Gateway::start(&bin, "routes: []\n");
    gw.wait_ready(Duration::from_secs(5));
    assert_eq!(gw.status()["path"], "/status");
    let cfg = std::fs::read_to_string(gw.config_path()).unwrap();
    assert!(cfg.starts_with("listen: [\"127.0.0.1:"), "{cfg}");
    assert!(cfg.contains("threads: 1\nstate_dir: \""), "{cfg}");
    assert!(cfg.ends_with("routes: []\n"), "{cfg}");
    gw.rewrite_config("routes: [x]\n");
    let cfg2 = std::fs::read_to_string(gw.config_path()).unwrap();
    assert_eq!(cfg2, cfg.replace("routes: []", "routes: [x]"));
    assert!(gw.logs().contains("fake starting: run -c"), "{}", gw.logs());
    assert!(gw.state_dir().starts_with(gw.dir()));
    // start waited for the proxy port too (an echo backend in this fake).
    let r = gw.request("GET", "/", &[], None).unwrap();
    assert_eq!(r.header("x-backend"), Some("proxy"), "{r:?}");

    assert_eq!(gw.wait_exit(Duration::from_millis(50)), None);
    gw.signal(testkit::SIGTERM);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(5)),
        Some(128 + testkit::SIGTERM)
    );
}
