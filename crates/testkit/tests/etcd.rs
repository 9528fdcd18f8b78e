//! The etcd launcher and client against a real etcd.

use std::time::{Duration, Instant};

use testkit::{wait_for, Etcd, EtcdClient, EtcdCluster};

#[test]
fn put_get_delete_and_revisions() {
    let etcd = Etcd::start();
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    let r1 = etcd.put("/t/a", "1");
    let r2 = etcd.put("/t/b", "2");
    assert_eq!(r2, r1 + 1);
    assert_eq!(etcd.revision(), r2);
    assert_eq!(etcd.get("/t/a").as_deref(), Some("1"));
    assert_eq!(etcd.get("/t/zzz"), None);
    assert_eq!(
        etcd.get_prefix("/t/"),
        vec![("/t/a".into(), "1".into()), ("/t/b".into(), "2".into())]
    );
    assert_eq!(etcd.delete("/t/a"), r2 + 1);
    etcd.put("/t/c", "3");
    etcd.delete_prefix("/t/");
    assert!(etcd.get_prefix("/t/").is_empty());

    let rev = etcd.revision();
    etcd.compact(rev);
    assert_eq!(etcd.revision(), rev);
}

#[test]
fn lease_expires_and_keepalive_holds_it() {
    let etcd = Etcd::start();
    let lease = etcd.grant(1);
    etcd.put_with_lease("/s/a", "x", lease);
    etcd.keep_alive_once(lease);
    let start = Instant::now();
    wait_for("leased key to expire", Duration::from_secs(6), || {
        etcd.get("/s/a").is_none()
    });
    assert!(start.elapsed() >= Duration::from_millis(500));

    let mut kept = etcd.keep_alive(1);
    etcd.put_with_lease("/s/b", "y", kept.id);
    // Observe the key for 2.5 TTLs: the keep-alive task must hold it.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(etcd.get("/s/b").as_deref(), Some("y"), "lease lapsed");
        std::thread::sleep(Duration::from_millis(100));
    }
    kept.stop_keepalive();
    wait_for("kept key to expire", Duration::from_secs(6), || {
        etcd.get("/s/b").is_none()
    });

    let lease = etcd.grant(30);
    etcd.put_with_lease("/s/c", "z", lease);
    etcd.revoke(lease);
    assert_eq!(etcd.get("/s/c"), None);
}

#[test]
fn restart_keeps_data_and_ports() {
    let mut etcd = Etcd::start();
    let ep = etcd.endpoint();
    let rev = etcd.put("/k", "v");
    etcd.stop();
    assert!(!etcd.is_running());
    assert!(std::net::TcpStream::connect(ep.trim_start_matches("http://")).is_err());
    etcd.restart();
    assert_eq!(etcd.endpoint(), ep);
    assert_eq!(etcd.get("/k").as_deref(), Some("v"));
    assert_eq!(etcd.revision(), rev);
    assert!(etcd.put("/k", "w") > rev);
}

#[test]
fn cluster_survives_losing_its_leader() {
    let mut c = EtcdCluster::start(3);
    assert_eq!(c.endpoints().len(), 3);
    let r1 = c.client_put("/c/a", "1");
    let old = c.leader();
    c.kill(old);
    let r2 = c.client_put("/c/b", "2");
    assert!(r2 > r1);
    let new = c.leader();
    assert_ne!(new, old);
    c.restart(old);
    let only_old = EtcdClient::new(vec![c.endpoints()[old].clone()]);
    wait_for(
        "restarted member caught up",
        Duration::from_secs(10),
        || only_old.get("/c/b").as_deref() == Some("2"),
    );
}
