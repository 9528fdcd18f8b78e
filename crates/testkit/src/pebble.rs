//! A real ACME CA for tests: Debian's `pebble` (Let's Encrypt's RFC 8555
//! test server, 2.4) with `pebble-challtestsrv` as its DNS server, on free
//! loopback ports, so tests can run in parallel.
//!
//! Every name resolves to 127.0.0.1 (challtestsrv's `-defaultIPv4`, no AAAA
//! answers), so pebble validates HTTP-01 challenges by connecting to
//! `127.0.0.1:<http01_port>`: the test runs its challenge responder there.
//! Pebble's own HTTPS certificate is made here (rcgen) and signed by a root
//! written to [`Pebble::tls_roots_pem`]; the root that signs *issued*
//! certificates is another one, random per pebble start, served by the
//! management API ([`Pebble::issuer_roots_pem`]).
//!
//! Pebble runs with `PEBBLE_VA_NOSLEEP=1` (no random 0-15 s sleep before each
//! validation), `PEBBLE_WFE_NONCEREJECT=0` (by default it rejects 5 % of good
//! nonces as `badNonce`) and `PEBBLE_AUTHZREUSE=0` (by default it reuses a
//! valid authorization half of the time), so orders are fast and repeatable.
//! [`PebbleOptions`] changes those and the certificate validity.
//!
//! The binaries are `/usr/bin/pebble` and `/usr/bin/pebble-challtestsrv`
//! (Debian package `pebble`) unless `TESTKIT_PEBBLE_BIN` /
//! `TESTKIT_CHALLTESTSRV_BIN` name others.

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use tempfile::TempDir;

use crate::process::{kill_and_reap, run_cmd, tail_file};
use crate::wait::free_port;

/// Deadline for pebble (or challtestsrv) to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn pebble_bin() -> String {
    std::env::var("TESTKIT_PEBBLE_BIN").unwrap_or_else(|_| "/usr/bin/pebble".into())
}

fn challtestsrv_bin() -> String {
    std::env::var("TESTKIT_CHALLTESTSRV_BIN")
        .unwrap_or_else(|_| "/usr/bin/pebble-challtestsrv".into())
}

/// How pebble behaves; [`Default`] (all zero) is the fast, deterministic
/// setting described in the module docs.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Validity of issued certificates (pebble's `certificateValidityPeriod`,
    /// whole seconds); `None` keeps pebble's default of 157766400 s (5 years).
    pub cert_validity: Option<Duration>,
    /// Percentage of good nonces pebble rejects as `badNonce`
    /// (`PEBBLE_WFE_NONCEREJECT`). 100 makes every signed request fail with
    /// an ACME error: a CA that is up but answers errors.
    pub nonce_reject_percent: u8,
    /// Percentage of orders that reuse a valid authorization
    /// (`PEBBLE_AUTHZREUSE`).
    pub authz_reuse_percent: u8,
    /// More environment for pebble, e.g. `PEBBLE_CHAIN_LENGTH`.
    pub env: Vec<(String, String)>,
}

/// Pebble plus its DNS server; both killed on drop.
pub struct Pebble {
    dir: TempDir,
    http01_port: u16,
    acme_port: u16,
    mgmt_port: u16,
    dns_port: u16,
    dns_mgmt_port: u16,
    tls_port: u16,
    opts: PebbleOptions,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
}

impl Pebble {
    /// Starts challtestsrv and pebble with [`PebbleOptions::default`];
    /// pebble validates HTTP-01 at `127.0.0.1:<http01_port>`. Returns once
    /// pebble serves its directory.
    pub fn start(http01_port: u16) -> Pebble {
        Pebble::start_with(http01_port, PebbleOptions::default())
    }

    pub fn start_with(http01_port: u16, opts: PebbleOptions) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("testkit-pebble-")
            .tempdir()
            .expect("temp dir");
        write_tls_files(dir.path());
        let mut p = Pebble {
            dir,
            http01_port,
            acme_port: free_port(),
            mgmt_port: free_port(),
            dns_port: free_port(),
            dns_mgmt_port: free_port(),
            // Pebble only connects to it (TLS-ALPN-01 validation); nobody listens.
            tls_port: free_port(),
            opts,
            pebble: None,
            challtestsrv: None,
        };
        p.spawn_challtestsrv();
        p.spawn_pebble();
        p
    }

    /// `https://127.0.0.1:<port>/dir`
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// PEM file with the root that signed pebble's HTTPS certificate (for
    /// the ACME directory and the management API; valid for 127.0.0.1 and
    /// localhost).
    pub fn tls_roots_pem(&self) -> PathBuf {
        self.dir.path().join("tls-root.pem")
    }

    /// The root that signs issued certificates, from the management API
    /// (`/roots/0`). Pebble makes a new one at every start.
    pub fn issuer_roots_pem(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        let roots = self.tls_roots_pem();
        let roots = roots.to_str().expect("temp path is UTF-8");
        let (code, out, err) = run_cmd(
            Path::new("curl"),
            &["-sS", "--fail", "--max-time", "10", "--cacert", roots, &url],
        );
        assert!(code == 0, "GET {url} failed ({code}): {err}");
        assert!(out.contains("BEGIN CERTIFICATE"), "GET {url}: {out:?}");
        out
    }

    /// The port pebble validates HTTP-01 challenges on.
    pub fn http01_port(&self) -> u16 {
        self.http01_port
    }

    /// SIGKILLs pebble (the DNS server stays): the CA is down, connections
    /// to its ports are refused. [`Pebble::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            kill_and_reap(&mut c);
        }
    }

    /// Starts pebble again on the same ports with the same options (killing
    /// it first if it runs). Pebble keeps no state: accounts, orders and the
    /// issuer root are new.
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn_pebble();
    }

    /// Like [`Pebble::start_again`] with other options, e.g.
    /// `nonce_reject_percent: 100` for a CA that answers every request with
    /// an error.
    pub fn restart_with(&mut self, opts: PebbleOptions) {
        self.opts = opts;
        self.start_again();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.pebble.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Pebble's log (stdout and stderr, every start appended).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.pebble_log()).unwrap_or_default()
    }

    fn pebble_log(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    fn challtestsrv_log(&self) -> PathBuf {
        self.dir.path().join("challtestsrv.log")
    }

    fn spawn_challtestsrv(&mut self) {
        let log_path = self.challtestsrv_log();
        let log = open_log(&log_path);
        let child = Command::new(challtestsrv_bin())
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", self.dns_mgmt_port)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}`: {e} (is Debian's pebble installed?)",
                    challtestsrv_bin()
                )
            });
        self.challtestsrv = Some(child);
        let port = self.dns_port;
        self.wait_up(
            "pebble-challtestsrv",
            &log_path,
            |p| p.challtestsrv.as_mut(),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    fn spawn_pebble(&mut self) {
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.acme_port),
                "managementListenAddress": format!("127.0.0.1:{}", self.mgmt_port),
                "certificate": self.dir.path().join("tls-cert.pem"),
                "privateKey": self.dir.path().join("tls-key.pem"),
                "httpPort": self.http01_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                // 0 = pebble's default (5 years).
                "certificateValidityPeriod":
                    self.opts.cert_validity.map_or(0, |d| d.as_secs().max(1)),
            }
        });
        let config_path = self.dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let log_path = self.pebble_log();
        let log = open_log(&log_path);
        let child = Command::new(pebble_bin())
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                self.opts.nonce_reject_percent.to_string(),
            )
            .env(
                "PEBBLE_AUTHZREUSE",
                self.opts.authz_reuse_percent.to_string(),
            )
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}`: {e} (is Debian's pebble installed?)",
                    pebble_bin()
                )
            });
        self.pebble = Some(child);
        let url = self.directory_url();
        let roots = self.tls_roots_pem();
        self.wait_up(
            "pebble",
            &log_path,
            |p| p.pebble.as_mut(),
            || directory_answers(&url, &roots),
        );
    }

    /// Polls `ready` until true; panics with the log if the process exits or
    /// [`START_TIMEOUT`] passes.
    fn wait_up(
        &mut self,
        what: &str,
        log: &Path,
        child: impl Fn(&mut Pebble) -> Option<&mut Child>,
        mut ready: impl FnMut() -> bool,
    ) {
        let start = Instant::now();
        loop {
            if ready() {
                return;
            }
            if let Some(c) = child(self) {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "{what} exited ({st}) while starting; log {}:\n{}",
                        log.display(),
                        tail_file(log, 30)
                    );
                }
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{what} not up after {START_TIMEOUT:?}; log {}:\n{}",
                    log.display(),
                    tail_file(log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut c) = self.challtestsrv.take() {
            kill_and_reap(&mut c);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of pebble's log ({}) -----\n{}\n-----",
                self.pebble_log().display(),
                tail_file(&self.pebble_log(), 30)
            );
        }
    }
}

fn open_log(path: &Path) -> std::fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Does `url` answer 200 over HTTPS trusting `roots`? One short curl.
fn directory_answers(url: &str, roots: &Path) -> bool {
    let Some(roots) = roots.to_str() else {
        return false;
    };
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--fail", "--max-time", "2"])
        .args(["--cacert", roots, url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Writes tls-root.pem (a fresh ECDSA P-256 root) and tls-cert.pem /
/// tls-key.pem (pebble's HTTPS certificate for 127.0.0.1 and localhost,
/// signed by that root) into `dir`.
fn write_tls_files(dir: &Path) {
    let root_key = KeyPair::generate().expect("root key");
    let mut root = CertificateParams::new(Vec::<String>::new()).expect("root params");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root.distinguished_name
        .push(DnType::CommonName, "testkit pebble TLS root");
    let root_cert = root.self_signed(&root_key).expect("self-sign root");

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("server params");
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().expect("dns name")),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "testkit pebble");
    let cert = params
        .signed_by(&key, &root_cert, &root_key)
        .expect("sign server cert");

    for (name, pem) in [
        ("tls-root.pem", root_cert.pem()),
        ("tls-cert.pem", cert.pem()),
        ("tls-key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pebble TLS file");
    }
}
