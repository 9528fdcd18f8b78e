//! `tollgate register`, the registration sidecar, against a real etcd and a
//! real gateway: registers on a lease, re-registers after a lost lease and
//! an etcd restart, withdraws while its health URL fails, and deregisters
//! at once on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::bin;
use common::etcd_gw::{
    assert_gw_error, lease_of, put_route, start_gw, wait_gateway_status, wait_ok, wait_served_by,
    Proc, SERVICES,
};
use testkit::{run_cmd, Backend, Etcd, Mode, SIGTERM};

const APPLY: Duration = Duration::from_secs(10);

/// Wait until `key` exists on a lease other than `not` and return it.
fn wait_leased(etcd: &Etcd, key: &str, not: Option<i64>, timeout: Duration) -> i64 {
    wait_ok(
        &format!("{key} on a new lease"),
        timeout,
        || match lease_of(etcd.client(), key) {
            Some(l) if l != 0 && Some(l) != not => Ok(l),
            other => Err(format!("lease {other:?}")),
        },
    )
}

#[test]
fn register_survives_a_lost_lease_and_an_etcd_restart_and_deregisters_on_sigterm() {
    let mut etcd = Etcd::start();
    let svc = Backend::start("reg-1");
    let gw = start_gw("gw-register", &[etcd.endpoint()]);
    put_route(etcd.client(), "reg", &["/reg"], "regsvc");
    let r = wait_gateway_status(&gw, "/reg", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");

    let ep = etcd.endpoint();
    let url = svc.url();
    let args = [
        "register",
        "--etcd",
        &ep,
        "--service",
        "regsvc",
        "--addr",
        &url,
        "--id",
        "i1",
        "--ttl",
        "2",
    ];
    let mut reg = Proc::spawn(&args);
    let key = format!("{SERVICES}regsvc/i1");
    wait_served_by(&gw, "/reg", "reg-1", APPLY);
    assert_eq!(etcd.get(&key).as_deref(), Some(url.as_str()));
    let first = wait_leased(&etcd, &key, None, APPLY);

    // Its lease is revoked under it (as if it had expired): it notices at
    // its next keep-alive and registers again on a new lease.
    etcd.revoke(first);
    let second = wait_leased(&etcd, &key, Some(first), APPLY);
    wait_served_by(&gw, "/reg", "reg-1", APPLY);

    // etcd restarts: it registers again once etcd is back.
    etcd.stop();
    etcd.restart();
    let third = wait_leased(&etcd, &key, Some(second), Duration::from_secs(20));
    // Observed past the old lease's 2s TTL: the key stays, on the new lease.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(lease_of(etcd.client(), &key), Some(third), "{}", reg.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_served_by(&gw, "/reg", "reg-1", Duration::from_secs(20));
    assert!(reg.running(), "{}", reg.logs());

    // SIGTERM: exits 0 and the key is gone at once, its lease revoked (not
    // left to expire: the revoke's success is what "deregistered" logs; a
    // time bound here failed on a CI etcd's slow fdatasync).
    reg.signal(SIGTERM);
    assert_eq!(
        reg.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        reg.logs()
    );
    assert_eq!(
        etcd.get(&key),
        None,
        "key still there after exit: {}",
        reg.logs()
    );
    assert!(
        reg.logs().contains("deregistered"),
        "the lease was not revoked: {}",
        reg.logs()
    );
    let r = wait_gateway_status(&gw, "/reg", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");
}

#[test]
fn register_revokes_the_lease_it_abandons_when_it_registers_again() {
    let mut etcd = Etcd::start();
    let svc = Backend::start("reg-revoke");
    let (ep, url) = (etcd.endpoint(), svc.url());
    let args = [
        "register",
        "--etcd",
        &ep,
        "--service",
        "regsvc",
        "--addr",
        &url,
        "--id",
        "i1",
        "--ttl",
        "30",
    ];
    let reg = Proc::spawn(&args);
    let key = format!("{SERVICES}regsvc/i1");
    let old = wait_leased(&etcd, &key, None, APPLY);
    // etcd restarts: the lease survives it (with its 30 s), register's
    // keep-alive stream breaks and it registers again on a new lease.
    etcd.restart();
    let new = wait_leased(&etcd, &key, Some(old), Duration::from_secs(20));
    assert!(lease_ttl(&etcd, new) > 0);
    // The old lease is revoked once the key is under the new one, not left
    // to linger for its 30 s.
    wait_ok("the abandoned lease revoked", APPLY, || {
        match lease_ttl(&etcd, old) {
            -1 => Ok(()),
            ttl => Err(format!("abandoned lease still has {ttl} s: {}", reg.logs())),
        }
    });
    assert_eq!(lease_of(etcd.client(), &key), Some(new), "the key stays");
}

/// The seconds `lease` has left (-1: gone).
fn lease_ttl(etcd: &Etcd, lease: i64) -> i64 {
    etcd.client().run("lease ttl", |mut cl| async move {
        Ok(cl.lease_time_to_live(lease, None).await?.ttl())
    })
}

#[test]
fn register_withdraws_while_the_health_url_fails() {
    let etcd = Etcd::start();
    let svc = Backend::start("hc-1");
    let gw = start_gw("gw-health", &[etcd.endpoint()]);
    put_route(etcd.client(), "hc", &["/hc"], "hcsvc");

    let ep = etcd.endpoint();
    let url = svc.url();
    let health = format!("{url}/health");
    let mut reg = Proc::spawn(&[
        "register",
        "--etcd",
        &ep,
        "--service",
        "hcsvc",
        "--addr",
        &url,
        "--id",
        "h1",
        "--ttl",
        "10",
        "--health-url",
        &health,
        "--health-interval-ms",
        "100",
    ]);
    let key = format!("{SERVICES}hcsvc/h1");
    wait_served_by(&gw, "/hc", "hc-1", APPLY);

    // Health check fails: withdrawn (the key goes, the gateway answers 503
    // itself instead of passing on the backend's 500s).
    svc.set_mode(Mode::Status(500));
    wait_ok("withdrawn", APPLY, || match etcd.get(&key) {
        None => Ok(()),
        Some(v) => Err(v),
    });
    let r = wait_gateway_status(&gw, "/hc", 503, APPLY);
    assert_gw_error(&r, 503, "service has no live instance");

    // Healthy again: registered again.
    svc.set_mode(Mode::Normal);
    wait_served_by(&gw, "/hc", "hc-1", APPLY);
    assert_eq!(etcd.get(&key).as_deref(), Some(url.as_str()));

    // An unreachable health URL counts as failing too.
    svc.set_mode(Mode::Refuse);
    wait_ok("withdrawn while refused", APPLY, || match etcd.get(&key) {
        None => Ok(()),
        Some(v) => Err(v),
    });
    svc.set_mode(Mode::Normal);
    wait_served_by(&gw, "/hc", "hc-1", APPLY);

    // SIGTERM with a 10s TTL: the key goes at once.
    reg.signal(SIGTERM);
    assert_eq!(
        reg.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        reg.logs()
    );
    assert_eq!(etcd.get(&key), None);
    wait_gateway_status(&gw, "/hc", 503, APPLY);
}

#[test]
fn register_rejects_bad_arguments_naming_the_flag() {
    let bin = bin();
    let base = ["register", "--etcd", "http://127.0.0.1:1", "--service", "s"];
    for (extra, flag) in [
        (&["--addr", "ftp://x"][..], "--addr"),
        (&["--addr", "not a url"][..], "--addr"),
        (
            &["--addr", "http://127.0.0.1:8080", "--ttl", "1"][..],
            "--ttl",
        ),
        (
            &["--addr", "http://127.0.0.1:8080", "--id", "a/b"][..],
            "--id",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, out, err) = run_cmd(bin, &args);
        assert_ne!(code, 0, "{args:?} succeeded: {out}{err}");
        assert!(
            err.contains(flag),
            "{args:?}: stderr does not name {flag}: {err}"
        );
    }
    // A missing required flag is a usage error from the parser.
    let (code, _, err) = run_cmd(bin, &["register", "--etcd", "http://127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--service") || err.contains("--addr"), "{err}");
}
