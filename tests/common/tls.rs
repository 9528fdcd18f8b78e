//! TLS test helpers: certificates made at test time (rcgen; never checked
//! in) and the real clients, `curl` and `openssl s_client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A self-signed ECDSA P-256 certificate and its key, as PEM and as files
/// (the certificate file is also what a client trusts to verify it). Its
/// subject is `CN = <name>`, so a client can tell which one it was shown.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn make_cert(dir: &Path, name: &str, snis: &[&str]) -> TestCert {
    make_cert_with(dir, name, snis, |_| {})
}

/// Like [`make_cert`], expired since 2021.
pub fn make_expired_cert(dir: &Path, name: &str, snis: &[&str]) -> TestCert {
    make_cert_with(dir, name, snis, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })
}

fn make_cert_with(
    dir: &Path,
    name: &str,
    snis: &[&str],
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> TestCert {
    let names: Vec<String> = snis.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("rcgen params");
    edit(&mut params);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    TestCert {
        cert_pem,
        key_pem,
        cert_file,
        key_file,
    }
}

/// Like [`make_cert`], valid for `days` from now (the `openssl` CLI:
/// rcgen would need a date crate for it).
pub fn make_cert_days(dir: &Path, name: &str, sni: &str, days: u32) -> TestCert {
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", &days.to_string(), "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{sni}")])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert_file)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    TestCert {
        cert_pem: std::fs::read_to_string(&cert_file).unwrap(),
        key_pem: std::fs::read_to_string(&key_file).unwrap(),
        cert_file,
        key_file,
    }
}

/// The `/tollgate/certs/<id>` value for a certificate.
pub fn cert_value(snis: &[&str], cert: &TestCert) -> String {
    cert_value_with_key(snis, cert, &cert.key_pem)
}

pub fn cert_value_with_key(snis: &[&str], cert: &TestCert, key: &str) -> String {
    serde_json::json!({ "snis": snis, "cert": cert.cert_pem, "key": key }).to_string()
}

/// What curl saw: the status (0 when no response) and the body, or the
/// error it printed.
#[derive(Debug)]
pub struct CurlOut {
    pub status: u16,
    pub version: String,
    pub body: String,
    pub headers: String,
    pub stderr: String,
    pub ok: bool,
}

/// `curl` to `https://<sni>:<port><path>` resolved to `addr`, trusting
/// `ca` only, plus `extra` arguments.
pub fn curl_https(addr: SocketAddr, sni: &str, ca: &Path, path: &str, extra: &[&str]) -> CurlOut {
    let url = format!("https://{sni}:{}{path}", addr.port());
    let resolve = format!("{sni}:{}:{}", addr.port(), addr.ip());
    let ca = ca.display().to_string();
    let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// `curl -s` with a 10 s cap, the response head on stdout's first part.
pub fn curl(args: &[&str]) -> CurlOut {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-D",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (rest, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut t = tail.split(' ');
    let status = t.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = t.next().unwrap_or("").to_string();
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    CurlOut {
        status,
        version,
        body: body.to_string(),
        headers: headers.to_ascii_lowercase(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        ok: out.status.success(),
    }
}

/// `openssl s_client` to `addr` with `args`; whether the handshake
/// completed, and everything it printed.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-brief"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = text.contains("CONNECTION ESTABLISHED");
    (ok, text)
}

/// The subject (`CN = <name>`) of the certificate the server presented for `sni`
/// (openssl's "Peer certificate:" line).
pub fn presented(addr: SocketAddr, sni: Option<&str>) -> Option<String> {
    let mut args = vec![];
    match sni {
        Some(s) => args.extend(["-servername", s]),
        None => args.push("-noservername"),
    }
    let (ok, text) = s_client(addr, &args);
    if !ok {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Peer certificate: "))
        .map(str::to_string)
}
