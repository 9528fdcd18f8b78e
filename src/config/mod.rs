//! The bootstrap file (`conf/tollgate.yaml`): listeners, admin, etcd,
//! state dir, and in standalone mode the routes and upstreams themselves.

mod listen;
mod load;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use listen::{CertFiles, Http2Config, Listener, TlsConfig};
pub use load::{load_file, parse, ConfigError, ConfigModel};

use crate::model::cert::CertSpec;
use crate::model::header_policy::UnderscoreHeaders;
use crate::model::path_policy::PathPolicy;
use crate::model::preservation::SelfPreservationSpec;
use crate::model::settings::SettingsSpec;
use crate::model::{RouteSpec, TimeoutSpec, UpstreamSpec};

/// The whole bootstrap file. Unknown fields are errors: a misspelt key
/// would otherwise silently fall back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default = "default_listen")]
    pub listen: Vec<Listener>,
    /// What every TLS listener shares (certificates, versions, ALPN).
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The admin REST API (etcd mode only); off unless set.
    #[serde(default)]
    pub admin_api: Option<crate::admin_api::AdminApiConfig>,
    /// Proxy worker threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Tokio work stealing between proxy threads; off measured faster for
    /// a proxy here (see bench/README.md).
    #[serde(default)]
    pub work_stealing: bool,
    /// Where the last applied snapshot is kept (fail-static start-up).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This node's name in `/tollgate/gateways/`; defaults to the hostname.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Absent: standalone, routes come from this file.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub reload: ReloadConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// The response cache's bound (routes opt in with `cache`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Defaults for managed certificates (`acme` in `<prefix>/certs/<id>`).
    #[serde(default)]
    pub acme: AcmeConfig,
    /// Per-request metrics (counters and histograms by route); `/metrics`
    /// still serves the sync and process families when off.
    #[serde(default = "default_true")]
    pub request_metrics: bool,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs), for
    /// `client_ip` rate limits.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Standalone defaults (in etcd mode: `<prefix>/settings`).
    #[serde(default)]
    pub settings: SettingsSpec,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Standalone only (etcd: `<prefix>/certs/<id>`).
    #[serde(default)]
    pub certs: Vec<CertSpec>,
    /// Standalone only (etcd: `<prefix>/consumers/<name>`).
    #[serde(default)]
    pub consumers: Vec<crate::plugins::consumer::ConsumerSpec>,
}

impl Bootstrap {
    /// Every address the process listens on, with the field that names it
    /// (`listen[0]`, …, `admin.listen`): what validation and the start-up
    /// bind check report.
    pub fn listen_addresses(&self) -> impl Iterator<Item = (String, &str)> {
        self.listen
            .iter()
            .enumerate()
            .map(|(i, l)| (crate::model::error::index("listen", i), l.addr.as_str()))
            .chain(std::iter::once((
                "admin.listen".to_string(),
                self.admin.listen.as_str(),
            )))
            .chain(
                self.admin_api
                    .iter()
                    .map(|a| ("admin_api.listen".to_string(), a.listen.addr.as_str())),
            )
    }
}

/// Managed certificates' defaults: a cert entry's `acme` block may leave
/// these out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    #[serde(default)]
    pub directory: Option<String>,
    /// The account's contact address.
    #[serde(default)]
    pub email: Option<String>,
    /// A PEM file of roots to trust for the directory's HTTPS (a private
    /// CA); unset: the system's roots.
    #[serde(default)]
    pub tls_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of cached answers this node keeps at most (bodies, headers
    /// and bookkeeping), 1 MiB to 1 TiB.
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: u64,
    /// How long a purge record lives in etcd (`POST /admin/v1/purge`,
    /// `tollgate purge`); a node out of touch with etcd for longer drops
    /// its whole cache. The same on every node and for the CLI.
    #[serde(default = "default_purge_record_ttl")]
    pub purge_record_ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_cache_max_bytes(),
            purge_record_ttl_s: default_purge_record_ttl(),
        }
    }
}

fn default_purge_record_ttl() -> u64 {
    crate::cache::purge::RECORD_TTL_SECS as u64
}

fn default_cache_max_bytes() -> u64 {
    crate::cache::DEFAULT_MAX_BYTES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Serve CPU profiles at `/debug/pprof/profile` and
    /// `/debug/pprof/flamegraph` (404 when off). Anyone who can reach the
    /// admin listener can then make the process sample itself.
    #[serde(default)]
    pub profiling: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            profiling: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_registry_prefix")]
    pub registry_prefix: String,
    #[serde(default = "default_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
    /// What happens when many registry leases expire together.
    #[serde(default)]
    pub self_preservation: SelfPreservationSpec,
}

/// Proxy-wide defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Default upstream timeouts; upstreams and routes override per field.
    #[serde(default)]
    pub timeout: TimeoutSpec,
    /// Idle upstream connections kept per process (the core engine shares
    /// them out between its threads).
    #[serde(default = "default_keepalive_pool")]
    pub keepalive_pool: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// How long a client connection may sit idle before its first request
    /// or between requests (nginx's `keepalive_timeout`); Pingora alone
    /// would keep an idle HTTP/1.1 connection open forever.
    #[serde(default = "default_client_keepalive_secs")]
    pub client_keepalive_secs: u64,
    /// How long a read of a client's request body or a write of its
    /// response may wait for the client (nginx's `client_body_timeout` and
    /// `send_timeout`); without it, a client that stops reading would hold
    /// its request and upstream connection forever.
    #[serde(default = "default_client_timeout_secs")]
    pub client_timeout_secs: u64,
    /// The largest request body a route takes unless it sets its own
    /// `max_body_bytes`: a declared larger one is answered 413 before any
    /// upstream is chosen, a chunked one when it grows past it.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// How request paths are normalized before routing.
    #[serde(default)]
    pub path: PathPolicy,
    /// Client connections open at once on each listener; a new one beyond
    /// it is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections open at once from one IP address (off unless set).
    #[serde(default)]
    pub max_connections_per_ip: Option<u32>,
    /// Which request loop serves the listeners; `TOLLGATE_PROXY_ENGINE`
    /// overrides it at start.
    #[serde(default)]
    pub engine: ProxyEngine,
    /// Bounds on each HTTP/2 client connection.
    #[serde(default)]
    pub http2: Http2Config,
    /// What becomes of a request header whose name has an underscore.
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            timeout: TimeoutSpec::default(),
            keepalive_pool: default_keepalive_pool(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            client_keepalive_secs: default_client_keepalive_secs(),
            client_timeout_secs: default_client_timeout_secs(),
            max_body_bytes: default_max_body_bytes(),
            path: PathPolicy::default(),
            max_connections: default_max_connections(),
            max_connections_per_ip: None,
            engine: ProxyEngine::default(),
            http2: Http2Config::default(),
            underscore_headers: UnderscoreHeaders::default(),
        }
    }
}

/// The request loop behind the proxy listeners. Both serve the same
/// routes with the same behaviour (`src/proxy/`); they differ in cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyEngine {
    /// pingora-proxy's `ProxyHttp` (`proxy::Gateway`), kept as a fallback.
    Pingora,
    /// Tollgate's own loop on pingora-core (`proxy::engine`): no per-request
    /// task channel, filter phases or boxed session, so a third fewer
    /// instructions per request.
    #[default]
    Core,
}

impl ProxyEngine {
    /// The environment variable that overrides `proxy.engine` at start (so
    /// a whole test suite can run against either engine unchanged).
    pub const ENV: &'static str = "TOLLGATE_PROXY_ENGINE";

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "pingora" => Some(Self::Pingora),
            "core" => Some(Self::Core),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pingora => "pingora",
            Self::Core => "core",
        }
    }

    /// `configured`, unless `TOLLGATE_PROXY_ENGINE` names an engine; an
    /// unknown value there is an error naming the variable.
    pub fn from_env_or(configured: Self) -> Result<Self, String> {
        match std::env::var(Self::ENV) {
            Err(_) => Ok(configured),
            Ok(v) if v.trim().is_empty() => Ok(configured),
            Ok(v) => Self::parse(&v)
                .ok_or_else(|| format!("{}={v:?} is not one of pingora, core", Self::ENV)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `tollgate=debug,pingora=warn`;
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One JSON line per request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A file to append to, or `-` for stdout.
    #[serde(default = "default_access_log_path")]
    pub path: String,
    /// Share of requests logged, 0 to 1.
    #[serde(default = "default_sample")]
    pub sample: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_access_log_path(),
            sample: default_sample(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_access_log_path() -> String {
    "-".into()
}
fn default_sample() -> f64 {
    1.0
}

/// How the file is watched for edits in standalone mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll interval; polling sees atomic renames and symlink swaps
    /// (Kubernetes ConfigMaps) that inotify watches on the file miss.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            poll_ms: default_poll_ms(),
        }
    }
}

fn default_listen() -> Vec<Listener> {
    vec![Listener::plain("0.0.0.0:8080")]
}
fn default_admin_listen() -> String {
    "127.0.0.1:9180".into()
}
fn default_threads() -> usize {
    2
}
fn default_state_dir() -> PathBuf {
    "/var/lib/tollgate".into()
}
fn default_prefix() -> String {
    "/tollgate".into()
}
fn default_registry_prefix() -> String {
    "/services".into()
}
fn default_dial_timeout_ms() -> u64 {
    2000
}
fn default_keepalive_pool() -> usize {
    256
}
fn default_client_keepalive_secs() -> u64 {
    60
}

/// 100 MiB: uploads through an API gateway beyond that are rare, and a
/// route that takes them says so.
fn default_max_body_bytes() -> u64 {
    100 << 20
}

/// Well under the systemd unit's `LimitNOFILE` (1,048,576), with room for
/// upstream connections; ~50 KiB each when busy, less idle (README).
fn default_max_connections() -> usize {
    100_000
}

fn default_client_timeout_secs() -> u64 {
    60
}

fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_log_level() -> String {
    "info".into()
}
fn default_poll_ms() -> u64 {
    500
}
