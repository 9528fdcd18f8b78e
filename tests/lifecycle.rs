//! The process around the proxy: the admin endpoints and a graceful
//! SIGTERM that lets the request in flight finish.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{backend_of, start, upstream, weighted_upstream};
use testkit::{http_get, http_request, wait_for, Backend, Mode, SIGTERM};

#[test]
fn admin_endpoints_report_the_standalone_config() {
    let (u1, u2, web) = (
        Backend::start("u1"),
        Backend::start("u2"),
        Backend::start("web"),
    );
    let gw = start(&format!(
        "routes:\n\
         - {{ id: users, paths: [\"/api/users/:id\", \"/api/users\"], upstream: users, strip_prefix: /api }}\n\
         - {{ id: static, paths: [\"/static/*path\"], upstream: web }}\n\
         - {{ id: catch-all, paths: [\"/*rest\"], priority: -1, upstream: web }}\n\
         upstreams:\n{}{}",
        weighted_upstream("users", &[(&u1, 1), (&u2, 2)]),
        upstream("web", &[&web]),
    ));

    let r = http_get(&gw.admin_url("/healthz"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let r = http_get(&gw.admin_url("/readyz"));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["state"], "ready", "{j}");
    assert_eq!(j["ready"], true, "{j}");

    let s = gw.status();
    assert_eq!(s["revision"], 0, "{s}");
    assert_eq!(s["routes"], 3, "{s}");
    assert_eq!(s["upstreams"], 2, "{s}");
    assert_eq!(s["instances"], 3, "{s}");
    assert_eq!(s["etcd"], "standalone", "{s}");
    assert_eq!(s["rejected"], 0, "{s}");
    assert_eq!(s["draining"], false, "{s}");

    let r = http_get(&gw.admin_url("/nope"));
    assert_eq!(r.status, 404, "{r:?}");

    // The admin listener is not the proxy: its paths are not routed.
    assert_eq!(backend_of(&gw.get("/healthz")), "web");
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let slow = Backend::start("slow");
    let mut gw = start(&format!(
        "routes:\n- {{ id: slow, paths: [\"/slow\"], upstream: slow }}\nupstreams:\n{}",
        upstream("slow", &[&slow])
    ));
    slow.set_mode(Mode::Stall(Duration::from_millis(1500)));
    let url = gw.url("/slow");
    let started = Instant::now();
    let in_flight = std::thread::spawn(move || http_request("GET", &url, &[], None));
    wait_for(
        "the request to reach the backend",
        Duration::from_secs(5),
        || slow.hits() == 1,
    );
    gw.signal(SIGTERM);
    let signalled = started.elapsed();
    // Draining: the listener closes at once, so new connections are refused
    // (a load balancer moves on) while the request in flight carries on.
    wait_for(
        "the proxy listener to close",
        Duration::from_secs(5),
        || TcpStream::connect_timeout(&gw.proxy_addr(), Duration::from_secs(1)).is_err(),
    );

    let r = in_flight
        .join()
        .expect("request thread")
        .expect("the in-flight request failed during the drain");
    assert_eq!(backend_of(&r), "slow");
    assert!(
        signalled < Duration::from_millis(1200),
        "SIGTERM was sent only after {signalled:?}; the request was not in flight"
    );

    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the gateway did not exit cleanly after draining; log:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("drained"), "{}", gw.logs());
    let refused = TcpStream::connect_timeout(&gw.proxy_addr(), Duration::from_secs(2));
    assert!(refused.is_err(), "the proxy port still accepts connections");
    assert!(gw.request("GET", "/slow", &[], None).is_err());
    assert_eq!(slow.hits(), 1);
}

#[test]
fn the_allocator_runs_with_the_server_tuning_and_the_environment_can_override_it() {
    // jemalloc prints its options at exit when asked to; the binary's own
    // tuning must be among them, and an operator's setting must win.
    let run = |conf: &str| {
        let out = std::process::Command::new(common::bin())
            .arg("--version")
            .env("_RJEM_MALLOC_CONF", conf)
            .output()
            .expect("run tollgate --version");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stats = run("stats_print:true");
    assert!(
        stats.contains("opt.tcache_gc_incr_bytes: 4194304"),
        "{stats}"
    );
    assert!(stats.contains("opt.tcache_nslots_small_min: 64"), "{stats}");
    let stats = run("stats_print:true,tcache_gc_incr_bytes:65536");
    assert!(stats.contains("opt.tcache_gc_incr_bytes: 65536"), "{stats}");
}
