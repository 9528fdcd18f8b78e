//! A fleet of gateways with managed certificates and a real ACME CA
//! (Debian's `pebble`), for `tests/cluster_acme*.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::bin;
use super::etcd_gw::{body, metric, wait_connected, wait_ok};
use testkit::{free_port, Etcd, Gateway, Pebble, PebbleOptions, Relay};

pub const CERT: &str = "/tollgate/certs/api";
pub const NAME: &str = "api.acme.test";
pub const ISSUE: Duration = Duration::from_secs(60);

pub struct Fleet {
    pub etcd: Etcd,
    pub pebble: Pebble,
    pub gws: Vec<Gateway>,
    /// The port pebble validates HTTP-01 on, relayed to the last node's
    /// HTTP listener (as a load balancer in front of the fleet would).
    pub http01: Relay,
    pub root: super::TempFile,
}

/// The bootstrap `acme` defaults pointing at `pebble`.
pub fn acme_defaults(pebble: &Pebble) -> String {
    format!(
        "acme: {{ directory: {:?}, email: \"ops@acme.test\", tls_roots: {:?} }}\n",
        pebble.directory_url(),
        pebble.tls_roots_pem()
    )
}

/// Gateway `acme-<n>` with a TLS listener, on `endpoint`, with `env`.
pub fn node(pebble: &Pebble, n: usize, endpoint: &str, env: &[(&str, &str)]) -> Gateway {
    node_with(pebble, n, endpoint, env, "")
}

/// [`node`] with more bootstrap settings.
pub fn node_with(
    pebble: &Pebble,
    n: usize,
    endpoint: &str,
    env: &[(&str, &str)],
    extra: &str,
) -> Gateway {
    let b = format!(
        "{}{}{extra}",
        body(&format!("acme-{n}"), &[endpoint.to_string()]),
        acme_defaults(pebble)
    );
    let gw = Gateway::start_with_env_and_listeners(bin(), &b, env, &["tls: true"]);
    wait_connected(&gw, Duration::from_secs(15));
    gw
}

/// `n` gateways (`env[i]`: node i's extra environment) on one etcd, and a
/// fresh pebble validating through a relay to the last node.
pub fn fleet_with(n: usize, opts: PebbleOptions, env: &[&[(&str, &str)]]) -> Fleet {
    fleet_with_bootstrap(n, opts, env, "")
}

/// [`fleet_with`], each node with `extra` bootstrap settings.
pub fn fleet_with_bootstrap(
    n: usize,
    opts: PebbleOptions,
    env: &[&[(&str, &str)]],
    extra: &str,
) -> Fleet {
    let etcd = Etcd::start();
    let port = free_port();
    let pebble = Pebble::start_with(port, opts);
    let gws: Vec<Gateway> = (0..n)
        .map(|i| {
            node_with(
                &pebble,
                i + 1,
                &etcd.endpoint(),
                env.get(i).copied().unwrap_or(&[]),
                extra,
            )
        })
        .collect();
    let http01 = Relay::start_on(
        SocketAddr::from(([127, 0, 0, 1], port)),
        gws[n - 1].proxy_addr(),
    );
    let root = super::TempFile::new(&pebble.issuer_roots_pem());
    Fleet {
        etcd,
        pebble,
        gws,
        http01,
        root,
    }
}

pub fn fleet(n: usize, opts: PebbleOptions) -> Fleet {
    fleet_with(n, opts, &[])
}

pub fn ask_for_cert(etcd: &Etcd) {
    let spec = serde_json::json!({ "snis": [NAME], "acme": { "challenge": "http-01" } });
    etcd.put(CERT, &spec.to_string());
}

/// The serial of the certificate `addr` presents for `sni`, if it verifies
/// against `root` (pebble's issuing root).
pub fn served_serial(addr: SocketAddr, sni: &str, root: &Path) -> Option<String> {
    let script = format!(
        "openssl s_client -connect {addr} -servername {sni} -verify_hostname {sni} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
        root.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_string)
}

/// Waits until every node serves one certificate for NAME that verifies,
/// other than `not`; returns its serial.
pub fn wait_served_everywhere(f: &Fleet, not: Option<&str>, timeout: Duration) -> String {
    let mut serial = String::new();
    for gw in &f.gws {
        serial = wait_ok(
            "the issued certificate served",
            timeout,
            || match served_serial(gw.listener(0), NAME, f.root.path()) {
                Some(s) if Some(s.as_str()) != not => Ok(s),
                other => Err(format!("serving {other:?}")),
            },
        );
    }
    for gw in &f.gws {
        assert_eq!(
            served_serial(gw.listener(0), NAME, f.root.path()).as_deref(),
            Some(serial.as_str())
        );
    }
    serial
}

pub fn orders_issued(gws: &[&Gateway]) -> f64 {
    gws.iter()
        .map(|g| metric(g, "tollgate_acme_orders_total{result=\"issued\"}"))
        .sum()
}

/// Which node holds the certificate's lock now (from the lock's leader key).
pub fn holder(gws: &[&Gateway]) -> Option<usize> {
    gws.iter()
        .position(|g| g.status()["roles"].get("acme/api").is_some())
}

/// `tollgate status --etcd <etcd>`: the fleet view as JSON.
pub fn fleet_view(etcd: &Etcd) -> serde_json::Value {
    let out = Command::new(bin())
        .args([
            "status",
            "--etcd",
            &etcd.endpoint(),
            "-c",
            "/nonexistent.yaml",
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}
