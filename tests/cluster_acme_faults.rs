//! Managed certificates when things go wrong: a CA that is down or answers
//! errors (back-off, the old certificate keeps serving, every node says
//! so), a CA that forgot the fleet's account, a node whose clock runs
//! ahead, and bad input (unknown challenge tokens, malformed directory
//! URLs, wildcards for HTTP-01, managed certificates without etcd).

mod common;

use std::time::Duration;

use common::acme::*;
use common::bin;
use common::etcd_gw::{body, metric, start_gw, wait_ok, wait_status};
use testkit::{Backend, Etcd, Gateway, PebbleOptions};

fn attempt(f: &Fleet) -> serde_json::Value {
    f.etcd
        .get("/tollgate/acme/attempts/api")
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default()
}

/// Waits until every node reports at least `n` failed attempts in a row.
fn wait_failures(f: &Fleet, n: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for gw in &f.gws {
        last = wait_status(gw, &format!("{n} failures"), Duration::from_secs(60), |s| {
            s["managed_certs"]["api"]["failures"].as_u64() >= Some(n)
        });
        assert!(metric(gw, "tollgate_acme_failures{cert=\"api\"}") >= n as f64);
    }
    last
}

#[test]
fn a_ca_down_or_answering_errors_backs_off_while_the_old_certificate_serves() {
    let mut f = fleet(2, PebbleOptions::default());
    ask_for_cert(&f.etcd);
    let first = wait_served_everywhere(&f, None, ISSUE);

    // Down: the renewal fails, is recorded and backs off; the old
    // certificate keeps serving on every node.
    f.pebble.kill();
    f.etcd.put("/tollgate/acme/renew/api", "now");
    let s = wait_failures(&f, 1);
    let api = &s["managed_certs"]["api"];
    assert!(
        api["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    assert!(
        f.gws
            .iter()
            .any(|g| g.logs().contains("ordering the managed certificate failed")),
        "the failure is logged"
    );
    let a = attempt(&f);
    let backoff_ms = a["next_attempt_unix_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(backoff_ms > now_ms - 1_000, "a back-off in the future: {a}");
    for gw in &f.gws {
        assert_eq!(
            served_serial(gw.listener(0), NAME, f.root.path()),
            Some(first.clone())
        );
    }

    // Up but answering errors (every nonce refused): the failures count
    // on, after the back-off, and the old certificate still serves.
    f.pebble.restart_with(PebbleOptions {
        nonce_reject_percent: 100,
        ..Default::default()
    });
    let s = wait_failures(&f, 2);
    assert!(
        s["managed_certs"]["api"]["last_error"]
            .as_str()
            .unwrap()
            .contains("badNonce"),
        "{s}"
    );
    for gw in &f.gws {
        assert_eq!(
            served_serial(gw.listener(0), NAME, f.root.path()),
            Some(first.clone())
        );
    }

    // Back to health (a fresh CA that forgot the fleet's account): the
    // account is registered again, the renewal goes through after the
    // back-off and every node serves the new certificate.
    f.pebble.restart_with(PebbleOptions::default());
    f.root = common::TempFile::new(&f.pebble.issuer_roots_pem());
    wait_served_everywhere(&f, Some(&first), Duration::from_secs(90));
    for gw in &f.gws {
        wait_status(gw, "no failures", Duration::from_secs(10), |s| {
            s["managed_certs"]["api"]["failures"] == 0
        });
        assert_eq!(metric(gw, "tollgate_acme_failures{cert=\"api\"}"), 0.0);
    }
}

#[test]
fn a_node_whose_clock_runs_ahead_renews_early_at_most_once() {
    // One-hour certificates; node 2's clock is 50 minutes ahead, so to it
    // every certificate is past two thirds of its life.
    let opts = PebbleOptions {
        cert_validity: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let skew: &[(&str, &str)] = &[("TOLLGATE_TEST_CLOCK_OFFSET_S", "3000")];
    let mut f = fleet_with(2, opts, &[&[], skew]);
    ask_for_cert(&f.etcd);
    let first = wait_served_everywhere(&f, None, ISSUE);
    // An absence can only be seen over a while: without the guard node 2
    // renews again within a second or two of every issuance.
    let watch = |f: &Fleet, serial: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(6);
        while std::time::Instant::now() < until {
            for gw in &f.gws {
                assert_eq!(
                    served_serial(gw.listener(0), NAME, f.root.path()).as_deref(),
                    Some(serial),
                    "renewed early"
                );
            }
        }
    };
    watch(&f, &first);
    // Restarted, node 2 finds the certificate "due" and may renew it once;
    // then it waits a tenth of the lifetime by its own monotonic clock.
    let b = format!(
        "{}{}",
        body("acme-2", &[f.etcd.endpoint()]),
        acme_defaults(&f.pebble)
    );
    f.gws.pop();
    f.gws.push(Gateway::start_with_env_and_listeners(
        bin(),
        &b,
        skew,
        &["tls: true"],
    ));
    f.http01.retarget(f.gws[1].proxy_addr());
    let second = wait_served_everywhere(&f, Some(&first), ISSUE);
    watch(&f, &second);
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let etcd = Etcd::start();
    let b = Backend::start("app");
    let gw = start_gw("bad-acme", &[etcd.endpoint()]);
    etcd.put(
        "/tollgate/upstreams/app",
        &serde_json::json!({ "nodes": [b.url()] }).to_string(),
    );
    etcd.put(
        "/tollgate/routes/all",
        r#"{"paths": ["/*rest"], "upstream": "app"}"#,
    );
    let challenge_on = |host: &str, token: &str| {
        gw.request(
            "GET",
            &format!("/.well-known/acme-challenge/{token}"),
            &[("host", host)],
            None,
        )
    };
    let challenge = |token: &str| challenge_on(NAME, token);
    // No managed certificate: the path is the application's (its own ACME
    // client behind the gateway keeps working).
    wait_ok("routed to the app", Duration::from_secs(10), || {
        let r = challenge("app-token").map_err(|e| e.to_string())?;
        (r.status == 200 && r.header("x-backend") == Some("app"))
            .then_some(())
            .ok_or(format!("{r:?}"))
    });

    // Refused entries: a malformed directory URL, a wildcard for HTTP-01,
    // another challenge type; each named, none managed.
    let refused = |value: serde_json::Value, says: &str| {
        let before = metric(&gw, "tollgate_config_rejected_total{kind=\"cert\"}");
        etcd.put("/tollgate/certs/bad", &value.to_string());
        wait_ok("refused", Duration::from_secs(10), || {
            let n = metric(&gw, "tollgate_config_rejected_total{kind=\"cert\"}");
            (n > before).then_some(()).ok_or(format!("{n}"))
        });
        assert!(gw.logs().contains(says), "log should say {says:?}");
        assert!(gw.status()["managed_certs"].get("bad").is_none());
    };
    refused(
        serde_json::json!({"snis": ["a.test"], "acme": {"directory": "ftp://ca.test/dir"}}),
        "must be https://",
    );
    refused(
        serde_json::json!({"snis": ["a.test"], "acme": {"directory": "http://ca.test/dir"}}),
        "http:// only to a loopback CA",
    );
    refused(
        serde_json::json!({"snis": ["*.a.test"], "acme": {}}),
        "cannot be validated by http-01",
    );
    refused(
        serde_json::json!({"snis": ["a.test"], "acme": {"challenge": "tls-alpn-01"}}),
        "is supported (answered by every node",
    );
    refused(
        serde_json::json!({"snis": ["a.test"], "acme": {"email": "x@a.test\r\nBcc: y"}}),
        "not an email address",
    );

    // A managed certificate (no CA reachable: it stays unissued): the
    // challenge path is the gateway's now; unknown tokens are 404, never
    // echoed or routed; other methods 405.
    etcd.put(
        CERT,
        &serde_json::json!({"snis": [NAME], "acme": {"directory": "https://127.0.0.1:9/dir"}})
            .to_string(),
    );
    wait_status(&gw, "managed", Duration::from_secs(10), |s| {
        s["managed_certs"]["api"]["issued"] == false
    });
    for (token, status) in [
        ("nope", 404),
        ("app-token", 404),
        ("%3Cscript%3E", 404),
        ("a%2F..%2Fb", 400),
    ] {
        let r = challenge(token).unwrap();
        assert_eq!(r.status, status, "{token}: {r:?}");
        assert!(r.header("x-backend").is_none(), "{token} reached the app");
        assert!(!r.body.contains(token), "{token} echoed");
    }
    let r = gw
        .request(
            "POST",
            "/.well-known/acme-challenge/nope",
            &[("host", NAME)],
            Some(b"x"),
        )
        .unwrap();
    assert_eq!(r.status, 405);
    // A name the fleet does not manage keeps its own challenge path (an
    // application behind the gateway that gets its own certificates).
    let r = challenge_on("app.example", "app-token").unwrap();
    assert_eq!(
        (r.status, r.header("x-backend")),
        (200, Some("app")),
        "{r:?}"
    );
    // A token someone put in etcd is answered (as the orderer does), for
    // whatever host the CA's request names.
    etcd.put("/tollgate/acme/challenges/tok_1-A", "tok_1-A.thumbprint");
    wait_ok("the token answered", Duration::from_secs(10), || {
        let r = challenge_on("other.example", "tok_1-A").map_err(|e| e.to_string())?;
        (r.status == 200 && r.body == "tok_1-A.thumbprint")
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
    // The CA is unreachable: the failure is recorded, nothing else changes.
    wait_status(&gw, "a failed attempt", Duration::from_secs(30), |s| {
        s["managed_certs"]["api"]["failures"].as_u64() >= Some(1)
    });
    assert_eq!(gw.status()["certs"], 0);
    // Deleted: its failure record goes from etcd, its alert from /metrics.
    etcd.delete(CERT);
    wait_ok(
        "the attempt record deleted",
        Duration::from_secs(10),
        || {
            (etcd.get("/tollgate/acme/attempts/api").is_none())
                .then_some(())
                .ok_or("still there".to_string())
        },
    );
    assert!(!common::etcd_gw::metrics(&gw).contains("tollgate_acme_failures{cert=\"api\"}"));

    // Without etcd, managed certificates are refused at start-up, by field.
    let standalone =
        "certs:\n  - { id: a, snis: [\"a.test\"], acme: { directory: \"https://ca.test/dir\" } }\n";
    let e = Gateway::try_start(bin(), standalone)
        .err()
        .expect("refused");
    assert!(
        e.contains("certs[0].acme") && e.contains("need etcd mode"),
        "{e}"
    );
    // A malformed bootstrap default is refused at start-up too.
    let bad_default = format!(
        "{}acme: {{ directory: \"https://user:pw@ca.test/dir\" }}\n",
        body("x", &[etcd.endpoint()])
    );
    let e = Gateway::try_start(bin(), &bad_default)
        .err()
        .expect("refused");
    assert!(
        e.contains("acme.directory") && e.contains("credentials"),
        "{e}"
    );
}
