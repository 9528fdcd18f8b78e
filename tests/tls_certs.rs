//! TLS with certificates from etcd (both engines: scripts/test.sh runs
//! this file again with TOLLGATE_PROXY_ENGINE=pingora): chosen by SNI
//! (exact, wildcard, default), rotated by a put and served on the next
//! handshake, each validated on its own (a bad one is refused and the last
//! good one keeps serving), keys stored encrypted, TLS versions, and
//! connections that never finish a handshake. Real clients: curl and
//! `openssl s_client`; certificates are made at test time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::bin;
use common::etcd_gw::{body, metric, wait_connected, TempDir};
use common::tls::{cert_value, cert_value_with_key, curl_https, make_cert, presented, s_client};
use testkit::{wait_for, Backend, Etcd, Gateway};

const CERTS: &str = "/tollgate/certs/";
const CONVERGE: Duration = Duration::from_secs(10);

/// A gateway on `etcd` with one TLS listener (`listener(0)`), a route to
/// `b` for every path, and `tls` as the bootstrap `tls:` section.
fn tls_gateway(etcd: &Etcd, b: &Backend, tls: &str) -> Gateway {
    let gw = Gateway::start_with_listeners(
        bin(),
        &format!("{}tls: {tls}\n", body("tls", &[etcd.endpoint()])),
        &["tls: true"],
    );
    wait_connected(&gw, CONVERGE);
    etcd.put(
        "/tollgate/upstreams/b",
        &format!("{{\"nodes\": [\"{}\"]}}", b.url()),
    );
    etcd.put(
        "/tollgate/routes/all",
        r#"{"paths": ["/*rest"], "upstream": "b"}"#,
    );
    gw
}

fn wait_presented(gw: &Gateway, sni: &str, subject: &str) {
    let addr = gw.listener(0);
    wait_for(&format!("{sni} to present {subject}"), CONVERGE, || {
        presented(addr, Some(sni)).as_deref() == Some(subject)
    });
}

#[test]
fn certificates_are_chosen_by_sni_exact_over_wildcard_over_default() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-sni");
    let default = make_cert(dir.path(), "default", &["default.test"]);
    let gw = tls_gateway(
        &etcd,
        &b,
        &format!(
            "{{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}",
            default.cert_file, default.key_file
        ),
    );
    let api = make_cert(dir.path(), "api", &["api.example.test"]);
    let wild = make_cert(dir.path(), "wild", &["*.example.test"]);
    etcd.put(
        &format!("{CERTS}api"),
        &cert_value(&["api.example.test"], &api),
    );
    etcd.put(
        &format!("{CERTS}wild"),
        &cert_value(&["*.example.test"], &wild),
    );
    wait_presented(&gw, "www.example.test", "CN = wild");
    let addr = gw.listener(0);
    assert_eq!(
        presented(addr, Some("api.example.test")).as_deref(),
        Some("CN = api")
    );
    // Upper case is the same name.
    assert_eq!(
        presented(addr, Some("API.Example.test")).as_deref(),
        Some("CN = api")
    );
    // A wildcard covers one label only; no SNI at all gets the default.
    assert_eq!(
        presented(addr, Some("a.b.example.test")).as_deref(),
        Some("CN = default")
    );
    assert_eq!(presented(addr, None).as_deref(), Some("CN = default"));

    // A real request, verified against the certificate the name selects.
    let r = curl_https(addr, "api.example.test", &api.cert_file, "/hello", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"backend\":\"b\""), "{r:?}");
    assert!(r.body.contains("\"x-forwarded-proto\":\"https\""), "{r:?}");
    // Verification against the wrong certificate fails: it really is api's.
    let wrong = curl_https(addr, "api.example.test", &wild.cert_file, "/", &[]);
    assert_eq!(wrong.status, 0, "{wrong:?}");

    // Each certificate's expiry is a metric.
    let not_after = metric(&gw, "tollgate_tls_cert_not_after_seconds{cert=\"api\"}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after > now + 86_400.0, "{not_after}");
    assert!(metric(&gw, "tollgate_tls_cert_not_after_seconds{cert=\"default\"}") > now);

    // Deleted: the name falls back to the wildcard on the next handshake.
    etcd.delete(&format!("{CERTS}api"));
    wait_presented(&gw, "api.example.test", "CN = wild");
}

#[test]
fn a_put_rotates_the_certificate_for_the_next_handshake_and_open_connections_stay() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-rotate");
    let gw = tls_gateway(&etcd, &b, "{}");
    let v1 = make_cert(dir.path(), "v1", &["api.test"]);
    etcd.put(&format!("{CERTS}api"), &cert_value(&["api.test"], &v1));
    wait_presented(&gw, "api.test", "CN = v1");

    // A connection made with v1 keeps working through the rotation.
    let mut open = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &gw.listener(0).to_string(),
        ])
        .args(["-servername", "api.test"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = open.stdin.take().unwrap();
    stdin
        .write_all(b"GET /first HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .unwrap();

    let v2 = make_cert(dir.path(), "v2", &["api.test"]);
    let put_at = Instant::now();
    etcd.put(&format!("{CERTS}api"), &cert_value(&["api.test"], &v2));
    wait_presented(&gw, "api.test", "CN = v2");
    eprintln!("rotation seen after {:?}", put_at.elapsed());

    stdin
        .write_all(b"GET /second HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    open.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = open.wait();
    assert!(out.contains("\"path\":\"/first\""), "{out}");
    assert!(out.contains("\"path\":\"/second\""), "{out}");
}

#[test]
fn a_bad_certificate_is_refused_with_its_reason_and_the_last_good_one_keeps_serving() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-bad");
    let gw = tls_gateway(&etcd, &b, "{}");
    let good = make_cert(dir.path(), "good", &["api.test"]);
    let other = make_cert(dir.path(), "other", &["api.test"]);
    etcd.put(&format!("{CERTS}api"), &cert_value(&["api.test"], &good));
    wait_presented(&gw, "api.test", "CN = good");

    let garbage = serde_json::json!({"snis": ["api.test"], "cert": "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "key": good.key_pem}).to_string();
    let no_pem =
        serde_json::json!({"snis": ["api.test"], "cert": "hello", "key": good.key_pem}).to_string();
    let mismatch = cert_value_with_key(&["api.test"], &good, &other.key_pem);
    let no_snis = cert_value(&[], &good);
    let bad_sni = cert_value(&["10.0.0.1"], &good);
    let encrypted_without_keys = cert_value_with_key(&["api.test"], &good, "enc:v1:AAAA");
    let cases = [
        (garbage.as_str(), "cert: PEM does not parse"),
        (no_pem.as_str(), "cert: no PEM CERTIFICATE block"),
        (
            mismatch.as_str(),
            "key: the key does not match the certificate",
        ),
        (no_snis.as_str(), "snis: must name at least one"),
        (bad_sni.as_str(), "snis[0]"),
        (
            encrypted_without_keys.as_str(),
            "tls.key_encryption_keys is empty",
        ),
        ("{\"snis\": [\"api.test\"]}", "missing field"),
    ];
    for (i, (value, reason)) in cases.iter().enumerate() {
        let before = metric(&gw, "tollgate_config_rejected_total{kind=\"cert\"}");
        etcd.put(&format!("{CERTS}api"), value);
        wait_for(&format!("case {i} to be rejected"), CONVERGE, || {
            metric(&gw, "tollgate_config_rejected_total{kind=\"cert\"}") > before
        });
        // The count comes just before the log line.
        wait_for(
            &format!("case {i}: {reason:?} in the log"),
            CONVERGE,
            || gw.logs().contains(reason),
        );
        assert_eq!(
            presented(gw.listener(0), Some("api.test")).as_deref(),
            Some("CN = good"),
            "case {i}"
        );
    }
    // The private key never reaches the log.
    let key_body = good.key_pem.lines().nth(1).unwrap();
    assert!(!gw.logs().contains(key_body));
}

#[test]
fn certificates_overlapping_on_a_name_go_to_the_lowest_id_and_say_so() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-overlap");
    let gw = tls_gateway(&etcd, &b, "{}");
    let zed = make_cert(dir.path(), "zed", &["api.test"]);
    let abe = make_cert(dir.path(), "abe", &["api.test"]);
    etcd.put(&format!("{CERTS}zed"), &cert_value(&["api.test"], &zed));
    wait_presented(&gw, "api.test", "CN = zed");
    etcd.put(&format!("{CERTS}abe"), &cert_value(&["api.test"], &abe));
    wait_presented(&gw, "api.test", "CN = abe");
    wait_for("the overlap warning", CONVERGE, || {
        gw.logs().contains("certificates overlap")
    });
    etcd.delete(&format!("{CERTS}abe"));
    wait_presented(&gw, "api.test", "CN = zed");
}

#[test]
fn without_a_default_an_unknown_name_gets_an_alert_and_old_tls_versions_are_refused() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-versions");
    let gw = tls_gateway(&etcd, &b, "{ min_version: \"1.3\" }");
    let api = make_cert(dir.path(), "api", &["api.test"]);
    etcd.put(&format!("{CERTS}api"), &cert_value(&["api.test"], &api));
    wait_presented(&gw, "api.test", "CN = api");
    let addr = gw.listener(0);

    let (ok, text) = s_client(addr, &["-servername", "nobody.test"]);
    assert!(!ok, "{text}");
    assert!(text.contains("alert"), "{text}");
    assert!(metric(&gw, "tollgate_tls_no_certificate_total") >= 1.0);
    let (ok, text) = s_client(addr, &["-noservername"]);
    assert!(!ok, "{text}");

    // min_version 1.3: a 1.2 client is refused, a 1.3 one served.
    let (ok, text) = s_client(addr, &["-servername", "api.test", "-tls1_2"]);
    assert!(!ok, "{text}");
    let (ok, text) = s_client(addr, &["-servername", "api.test", "-tls1_3"]);
    assert!(ok, "{text}");
}

#[test]
fn tls_1_1_is_refused_and_1_2_served_by_default() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-default-versions");
    let gw = tls_gateway(&etcd, &b, "{}");
    let api = make_cert(dir.path(), "api", &["api.test"]);
    etcd.put(&format!("{CERTS}api"), &cert_value(&["api.test"], &api));
    wait_presented(&gw, "api.test", "CN = api");
    let addr = gw.listener(0);
    // OpenSSL 3 refuses TLS 1.1 itself at its default security level;
    // level 0 lets it offer 1.1 only, which the gateway must refuse.
    let (ok, text) = s_client(
        addr,
        &[
            "-servername",
            "api.test",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(!ok, "{text}");
    let (ok, text) = s_client(addr, &["-servername", "api.test", "-tls1_2"]);
    assert!(ok, "{text}");
    assert!(text.contains("TLSv1.2"), "{text}");
}

#[test]
fn plaintext_on_a_tls_port_and_a_stalled_handshake_are_closed_not_held() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let gw = tls_gateway(&etcd, &b, "{ handshake_timeout_ms: 500 }");
    let addr = gw.listener(0);

    // Plain HTTP to the TLS port: closed (after a TLS alert), no hang.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let read = c.read_to_end(&mut buf);
    assert!(read.is_ok(), "not closed: {read:?}");
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "answered in plaintext"
    );

    // Half a ClientHello, then silence: closed after the handshake timeout.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let n = c.read(&mut byte);
    assert!(
        matches!(n, Ok(0)) || n.is_err() && started.elapsed() < Duration::from_secs(5),
        "{n:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "held {:?}",
        started.elapsed()
    );
    wait_for("the timeout to be counted", CONVERGE, || {
        metric(&gw, "tollgate_tls_handshakes_total{result=\"timeout\"}") >= 1.0
    });
}

#[test]
fn encrypted_keys_are_served_and_no_key_is_kept_in_clear() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-encrypted");
    // Two keys: the first encrypts, both decrypt.
    let k1 = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=";
    let k2 = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI=";
    let gw = tls_gateway(
        &etcd,
        &b,
        &format!("{{ key_encryption_keys: [\"{k1}\", \"{k2}\"] }}"),
    );
    let sealed_cert = make_cert(dir.path(), "sealed", &["sealed.test"]);
    let clear_cert = make_cert(dir.path(), "clear", &["clear.test"]);

    // `tollgate encrypt-key` with a config that encrypts with k2 (an old
    // key, still in the gateway's list).
    let conf = dir.path().join("old.yaml");
    std::fs::write(
        &conf,
        format!("tls: {{ key_encryption_keys: [\"{k2}\"] }}\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["encrypt-key", "-c"])
        .arg(&conf)
        .arg(&sealed_cert.key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(sealed.starts_with("enc:v1:"), "{sealed}");
    assert!(!sealed.contains("PRIVATE KEY"));

    etcd.put(
        &format!("{CERTS}sealed"),
        &cert_value_with_key(&["sealed.test"], &sealed_cert, &sealed),
    );
    etcd.put(
        &format!("{CERTS}clear"),
        &cert_value(&["clear.test"], &clear_cert),
    );
    wait_presented(&gw, "sealed.test", "CN = sealed");
    wait_presented(&gw, "clear.test", "CN = clear");
    let r = curl_https(
        gw.listener(0),
        "sealed.test",
        &sealed_cert.cert_file,
        "/",
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // A key sealed with a key the gateway does not have is refused.
    let stranger = std::process::Command::new(bin())
        .args(["encrypt-key", "-c"])
        .arg({
            let p = dir.path().join("stranger.yaml");
            std::fs::write(&p, "tls: { key_encryption_keys: [\"MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM=\"] }\n").unwrap();
            p
        })
        .arg(&sealed_cert.key_file)
        .output()
        .unwrap();
    let stranger = String::from_utf8(stranger.stdout)
        .unwrap()
        .trim()
        .to_string();
    etcd.put(
        &format!("{CERTS}stranger"),
        &cert_value_with_key(&["stranger.test"], &sealed_cert, &stranger),
    );
    wait_for("the stranger key to be refused", CONVERGE, || {
        gw.logs()
            .contains("no key in tls.key_encryption_keys decrypts it")
    });

    // The last-known-good file holds every certificate, no key in clear.
    let lkg = gw.state_dir().join("last-known-good.json");
    wait_for(
        "the last-known-good file to hold both certs",
        CONVERGE,
        || {
            std::fs::read_to_string(&lkg)
                .is_ok_and(|t| t.contains("/certs/sealed") && t.contains("/certs/clear"))
        },
    );
    let text = std::fs::read_to_string(&lkg).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "a key in clear in {}",
        lkg.display()
    );
    assert!(gw.logs().contains("private key stored in clear"));
}

#[test]
fn encrypt_key_refuses_without_keys_and_for_what_is_not_a_key() {
    let dir = TempDir::new("tls-encrypt-cli");
    let cert = make_cert(dir.path(), "c", &["c.test"]);
    let run = |conf: &str, input: &std::path::Path| {
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, conf).unwrap();
        std::process::Command::new(bin())
            .args(["encrypt-key", "-c"])
            .arg(&p)
            .arg(input)
            .output()
            .unwrap()
    };
    let out = run("tls: {}\n", &cert.key_file);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.key_encryption_keys is empty"));
    let keys = "tls: { key_encryption_keys: [\"MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=\"] }\n";
    let out = run(keys, &cert.cert_file);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PEM private key"));
    assert!(out.stdout.is_empty());
}

#[test]
fn sessions_resume_and_an_expired_certificate_is_served_with_a_warning() {
    let etcd = Etcd::start();
    let b = Backend::start("b");
    let dir = TempDir::new("tls-resume");
    let gw = tls_gateway(&etcd, &b, "{}");
    let old = common::tls::make_expired_cert(dir.path(), "old", &["old.test"]);
    etcd.put(&format!("{CERTS}old"), &cert_value(&["old.test"], &old));
    wait_presented(&gw, "old.test", "CN = old");
    wait_for("the expiry warning", CONVERGE, || {
        gw.logs()
            .contains("certificate has expired; serving it until it is replaced")
    });

    // A session saved, then offered again: resumed (TLS 1.2 from the
    // ticket or id, TLS 1.3 from a ticket), not a full handshake.
    let addr = gw.listener(0).to_string();
    for version in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path().join(format!("session{version}.pem"));
        let openssl = |io: &str| {
            let mut out = std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr,
                    "-servername",
                    "old.test",
                    version,
                    io,
                ])
                .arg(&sess)
                // A whole request, answered and closed by the gateway: the
                // TLS 1.3 tickets (sent after the handshake) are in by then.
                .arg("-ign_eof")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = out.stdin.take().unwrap();
            stdin
                .write_all(b"GET / HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n")
                .unwrap();
            drop(stdin);
            let out = out.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let first = openssl("-sess_out");
        assert!(first.contains("New, TLSv1."), "{version}: {first}");
        assert!(first.contains("HTTP/1.1 200"), "{version}: {first}");
        let again = openssl("-sess_in");
        assert!(
            again.contains("Reused, TLSv1."),
            "{version} not resumed: {again}"
        );
    }
}
