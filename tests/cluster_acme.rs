//! Managed certificates ordered by the fleet from a real ACME CA (Debian's
//! `pebble`, Let's Encrypt's RFC 8555 test server) under an etcd lock,
//! against real etcd and real gateways: one order, every node serves the
//! issued certificate (checked with `openssl s_client` against pebble's
//! root), a forced renewal replaces it everywhere, the CA's HTTP-01
//! validation reaches a node that did not order (the token is shared
//! through etcd), a holder SIGKILLed or cut off mid-order is taken over, a
//! CA that is down or answers errors backs off and keeps the old
//! certificate serving, and a node with a skewed clock renews early at
//! most once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::acme::*;
use common::etcd_gw::{etcd_relay, metric, wait_ok, wait_status};
use testkit::{free_port, Etcd, Gateway, Pebble, PebbleOptions, Relay};

#[test]
fn one_order_every_node_serves_it_and_a_forced_renewal_replaces_it() {
    // Keys encrypted at rest: the issued key and the account's are stored
    // `enc:v1:`.
    let keys = "tls: { key_encryption_keys: [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"] }\n";
    let f = fleet_with_bootstrap(3, PebbleOptions::default(), &[], keys);
    let all: Vec<&Gateway> = f.gws.iter().collect();
    ask_for_cert(&f.etcd);
    let first = wait_served_everywhere(&f, None, ISSUE);
    assert_eq!(orders_issued(&all), 1.0, "exactly one order");
    // Stored with its key, and the attempt recorded on every node's status.
    let stored: serde_json::Value = serde_json::from_str(&f.etcd.get(CERT).unwrap()).unwrap();
    assert!(
        stored["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE"),
        "{stored}"
    );
    assert!(
        stored["key"].as_str().unwrap().starts_with("enc:v1:"),
        "{stored}"
    );
    let accounts = f.etcd.get_prefix("/tollgate/acme/accounts/");
    assert_eq!(accounts.len(), 1);
    assert!(accounts[0].1.starts_with("enc:v1:"), "account key in clear");
    assert_eq!(stored["acme"]["challenge"], "http-01");
    for gw in &f.gws {
        let s = wait_status(gw, "issued", Duration::from_secs(10), |s| {
            s["managed_certs"]["api"]["issued"] == true
        });
        assert_eq!(s["managed_certs"]["api"]["failures"], 0, "{s}");
        assert_eq!(metric(gw, "tollgate_acme_failures{cert=\"api\"}"), 0.0);
    }
    // The tokens went with the order.
    assert!(f.etcd.get_prefix("/tollgate/acme/challenges/").is_empty());

    // Forced renewal: a new certificate, on every node, one more order.
    f.etcd.put("/tollgate/acme/renew/api", "now");
    let second = wait_served_everywhere(&f, Some(&first), ISSUE);
    assert_ne!(first, second);
    wait_ok(
        "the renewal request consumed",
        Duration::from_secs(10),
        || {
            f.etcd
                .get("/tollgate/acme/renew/api")
                .is_none()
                .then_some(())
                .ok_or("still there".to_string())
        },
    );
    assert_eq!(orders_issued(&all), 2.0);

    // A name added to the entry (the issued pair kept, as `tollgate apply`
    // keeps it): the served certificate does not cover it, so a new one
    // is ordered at once, for both names.
    let mut spec: serde_json::Value = serde_json::from_str(&f.etcd.get(CERT).unwrap()).unwrap();
    spec["snis"] = serde_json::json!([NAME, "www.acme.test"]);
    f.etcd.put(CERT, &spec.to_string());
    for gw in &f.gws {
        wait_ok("the new name served", ISSUE, || {
            served_serial(gw.listener(0), "www.acme.test", f.root.path())
                .ok_or("not yet".to_string())
        });
    }
    let third = served_serial(f.gws[0].listener(0), NAME, f.root.path()).unwrap();
    assert_ne!(third, second, "one certificate for both names");
    assert_eq!(orders_issued(&all), 3.0);
}

#[test]
fn a_holder_killed_mid_order_is_taken_over_within_its_lease() {
    let mut f = fleet(3, PebbleOptions::default());
    // Validation hangs (connections to the fleet held open, unanswered):
    // whoever holds the lock is mid-order.
    f.http01.stall();
    ask_for_cert(&f.etcd);
    let all: Vec<&Gateway> = f.gws.iter().collect();
    let h = wait_ok("a holder mid-order", ISSUE, || {
        let token = !f.etcd.get_prefix("/tollgate/acme/challenges/").is_empty();
        match (holder(&all), token) {
            (Some(h), true) => Ok(h),
            other => Err(format!("{other:?}")),
        }
    });
    f.gws[h].signal(testkit::SIGKILL);
    let _ = f.gws[h].wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    // Validation works again, through a node still alive.
    f.http01.retarget(f.gws[(h + 1) % 3].proxy_addr());
    f.http01.restore();
    let rest: Vec<&Gateway> = f
        .gws
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != h)
        .map(|(_, g)| g)
        .collect();
    for gw in &rest {
        wait_ok("the certificate served by the survivors", ISSUE, || {
            served_serial(gw.listener(0), NAME, f.root.path()).ok_or("not yet".to_string())
        });
    }
    // Another node finished it: within the dead holder's lease (10 s) plus
    // an order, with no second order.
    assert!(
        killed.elapsed() < Duration::from_secs(40),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(orders_issued(&rest), 1.0);
    let attempt: serde_json::Value =
        serde_json::from_str(&f.etcd.get("/tollgate/acme/attempts/api").unwrap()).unwrap();
    assert_ne!(attempt["node"], format!("acme-{}", h + 1), "{attempt}");
}

#[test]
fn a_holder_cut_off_from_etcd_gives_the_lock_up_before_another_node_takes_it() {
    // Node 1 reaches etcd through a relay the test cuts, and is alone when
    // the certificate is asked for, so it takes the lock; validation hangs
    // so it is mid-order. Then node 2 joins and waits for the lock.
    let etcd = Etcd::start();
    let cut = etcd_relay(&etcd);
    let port = free_port();
    let pebble = Pebble::start(port);
    let root = common::TempFile::new(&pebble.issuer_roots_pem());
    let held = node(&pebble, 1, &cut.url(), &[]);
    let http01 = Relay::start_on(SocketAddr::from(([127, 0, 0, 1], port)), held.proxy_addr());
    http01.stall();
    ask_for_cert(&etcd);
    wait_ok("node 1 holds the lock mid-order", ISSUE, || {
        holder(&[&held]).ok_or("not yet".to_string())
    });
    // The fleet view names the holder.
    wait_ok(
        "the fleet view names the holder",
        Duration::from_secs(10),
        || {
            let v = fleet_view(&etcd);
            (v["held_by"]["locks/acme/api"] == "acme-1")
                .then_some(())
                .ok_or(format!("{v}"))
        },
    );
    let other = node(&pebble, 2, &etcd.endpoint(), &[]);
    http01.retarget(other.proxy_addr());
    // A silent partition (packets dropped, nothing refused): the holder
    // learns of it only from its keep-alives going unanswered.
    cut.freeze();
    // Never two holders: the cut node gives the role up before the other
    // takes it (its local deadline falls before its lease's expiry on the
    // server), and within the lease's TTL.
    let t0 = Instant::now();
    let mut dropped = None;
    wait_ok(
        "the other node takes the lock",
        Duration::from_secs(40),
        || {
            let mine = held.status()["roles"].get("acme/api").is_some();
            let theirs = other.status()["roles"].get("acme/api").is_some();
            assert!(!(mine && theirs), "two holders at once");
            if !mine && dropped.is_none() {
                dropped = Some(t0.elapsed());
            }
            theirs
                .then_some(())
                .ok_or(format!("cut node holds: {mine}"))
        },
    );
    let dropped = dropped.unwrap();
    assert!(
        dropped < Duration::from_secs(10),
        "gave the role up after {dropped:?}"
    );
    http01.restore();
    wait_ok("issued by the other node", ISSUE, || {
        served_serial(other.listener(0), NAME, root.path()).ok_or("not yet".to_string())
    });
    assert_eq!(
        metric(&other, "tollgate_acme_orders_total{result=\"issued\"}"),
        1.0
    );
    // The cut node could write nothing meanwhile: the attempt is node 2's.
    let attempt: serde_json::Value =
        serde_json::from_str(&etcd.get("/tollgate/acme/attempts/api").unwrap()).unwrap();
    assert_eq!(attempt["node"], "acme-2", "{attempt}");
}

#[test]
fn renewal_starts_at_two_thirds_of_the_lifetime_by_one_node() {
    // 30-second certificates: due 20 s after their notBefore.
    let opts = PebbleOptions {
        cert_validity: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let f = fleet(2, opts);
    let all: Vec<&Gateway> = f.gws.iter().collect();
    ask_for_cert(&f.etcd);
    let first = wait_served_everywhere(&f, None, ISSUE);
    let issued = Instant::now();
    let s = f.gws[0].status();
    let api = &s["managed_certs"]["api"];
    let (renew_at, not_after) = (
        api["renew_at_unix_s"].as_i64().unwrap(),
        api["not_after_unix_s"].as_i64().unwrap(),
    );
    assert_eq!(not_after - renew_at, 10, "two thirds of 30 s: {s}");
    // Renewed by itself, without being asked, by one node.
    let second = wait_served_everywhere(&f, Some(&first), ISSUE);
    assert_ne!(first, second);
    assert!(
        issued.elapsed() > Duration::from_secs(10),
        "renewed after {:?}",
        issued.elapsed()
    );
    assert_eq!(orders_issued(&all), 2.0);
}

#[test]
fn a_holder_shut_down_gracefully_gives_its_lock_up_at_once() {
    let f = fleet(2, PebbleOptions::default());
    f.http01.stall();
    ask_for_cert(&f.etcd);
    let all: Vec<&Gateway> = f.gws.iter().collect();
    let h = wait_ok("a holder mid-order", ISSUE, || {
        holder(&all).ok_or("none".to_string())
    });
    let other = &f.gws[1 - h];
    f.gws[h].signal(testkit::SIGTERM);
    let t0 = Instant::now();
    // Its session's lease is revoked on the way out: the lock and its
    // tokens go now, not after the 10 s TTL.
    wait_ok(
        "the other node takes the lock",
        Duration::from_secs(20),
        || {
            other.status()["roles"]
                .get("acme/api")
                .map(|_| ())
                .ok_or("not yet".to_string())
        },
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}
