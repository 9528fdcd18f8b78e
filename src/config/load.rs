//! Reading and validating the bootstrap file, with errors that name the
//! field (`routes[2].paths[0]: ...`) like `nginx -t` names the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::Bootstrap;
use crate::model::error::{deserialize_at, field, index};
use ipnet::IpNet;

use crate::model::consumer::ConsumerEntry;
use crate::model::rate_limit::{LimitKey, RateLimitSpec};
use crate::model::settings::SettingsSpec;
use crate::model::{FieldError, Node, Route, Timeouts, UpstreamSpec};
use crate::plugins::PluginList;
use crate::snapshot::{build, UpstreamTable};
use crate::tls::{KeyRing, LoadedCert};

/// Why a bootstrap file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// A validated bootstrap file, ready to feed the store.
#[derive(Debug, Clone)]
pub struct ConfigModel {
    pub bootstrap: Bootstrap,
    /// In file order.
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, (UpstreamSpec, Vec<Node>)>,
    /// Proxy-wide default timeouts.
    pub timeouts: Timeouts,
    /// The default rate limit (standalone `settings.rate_limit`).
    pub default_limit: Option<(RateLimitSpec, LimitKey)>,
    /// Standalone `settings.plugins`, compiled.
    pub global_plugins: PluginList,
    /// Standalone `consumers:`, checked.
    pub consumers: Vec<ConsumerEntry>,
    pub trusted_proxies: Vec<IpNet>,
    /// `tls.key_encryption_keys`, ready to decrypt stored keys.
    pub keys: Arc<KeyRing>,
    /// `tls.default_cert`, loaded, and when it expires (Unix seconds).
    pub default_cert: Option<(Arc<rustls::sign::CertifiedKey>, i64)>,
    /// Standalone `certs:`, loaded.
    pub certs: Vec<Arc<LoadedCert>>,
}

pub fn load_file(path: &Path) -> Result<ConfigModel, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse(&text)?)
}

/// Parses and validates a bootstrap file's text.
pub fn parse(text: &str) -> Result<ConfigModel, FieldError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let bootstrap: Bootstrap = deserialize_at(de)?;
    validate(bootstrap)
}

fn check_addr(path: &str, addr: &str) -> Result<SocketAddr, FieldError> {
    addr.parse::<SocketAddr>()
        .map_err(|_| FieldError::new(path, format!("{addr:?} is not an ip:port address")))
}

/// A bare word must be a level: tracing would read `verbose` as a target
/// name and log almost nothing. Directive lists (`tollgate=debug,warn`) are
/// checked by the filter parser.
fn check_log_level(level: &str) -> Result<(), FieldError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let bare = !level.contains(['=', ',', '[', ':']);
    if bare && !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
        return Err(FieldError::new(
            "log.level",
            format!("{level:?} is not one of {}", LEVELS.join(", ")),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| FieldError::new("log.level", format!("{level:?}: {e}")))
}

/// Two listeners on one port clash when their IPs are equal or either is a
/// wildcard (`0.0.0.0` or `::`, which on Linux also takes IPv4). Caught here
/// so that `check` reports it, not a bind failure at start.
fn check_no_overlap(addrs: &[(String, SocketAddr)]) -> Result<(), FieldError> {
    for (i, (field, a)) in addrs.iter().enumerate() {
        let earlier = addrs[..i].iter().find(|(_, b)| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        });
        if let Some((other, b)) = earlier {
            return Err(FieldError::new(
                field,
                format!("{a} clashes with {other} ({b}): one port, one listener"),
            ));
        }
    }
    Ok(())
}

fn validate(b: Bootstrap) -> Result<ConfigModel, FieldError> {
    if b.listen.is_empty() {
        return Err(FieldError::new(
            "listen",
            "at least one address is required",
        ));
    }
    let addrs = b
        .listen_addresses()
        .map(|(field, a)| check_addr(&field, a).map(|addr| (field, addr)))
        .collect::<Result<Vec<_>, _>>()?;
    check_no_overlap(&addrs)?;
    if b.threads == 0 || b.threads > 1024 {
        return Err(FieldError::new("threads", "must be between 1 and 1024"));
    }
    b.proxy.timeout.validate("proxy.timeout")?;
    for (field, secs) in [
        ("proxy.client_keepalive_secs", b.proxy.client_keepalive_secs),
        ("proxy.client_timeout_secs", b.proxy.client_timeout_secs),
    ] {
        if !(1..=86_400).contains(&secs) {
            return Err(FieldError::new(field, "must be between 1 and 86400"));
        }
    }
    crate::model::route::check_body_limit("proxy.max_body_bytes", b.proxy.max_body_bytes)?;
    if let Some(id) = &b.node_id {
        // The node's name is a key segment (`<prefix>/gateways/<id>`): one
        // with `/` would never be read back as this node's record.
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c));
        if !ok {
            return Err(FieldError::new(
                "node_id",
                format!("{id:?}: 1 to 128 letters, digits, '-', '_', '.' or ':'"),
            ));
        }
    }
    if b.acme.directory.is_some() || b.acme.email.is_some() {
        let spec = crate::model::acme::AcmeSpec {
            directory: b.acme.directory.clone(),
            email: b.acme.email.clone(),
            challenge: None,
        };
        spec.check("acme", &[])?;
    }
    if let Some(roots) = &b.acme.tls_roots {
        if !roots.is_file() {
            return Err(FieldError::new(
                "acme.tls_roots",
                format!("{}: not a readable file", roots.display()),
            ));
        }
    }
    if !(5..=86_400).contains(&b.cache.purge_record_ttl_s) {
        return Err(FieldError::new(
            "cache.purge_record_ttl_s",
            "must be between 5 and 86400 seconds",
        ));
    }
    if !((1 << 20)..=(1 << 40)).contains(&b.cache.max_bytes) {
        return Err(FieldError::new(
            "cache.max_bytes",
            "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)",
        ));
    }
    if !(1..=10_000_000).contains(&b.proxy.max_connections) {
        return Err(FieldError::new(
            "proxy.max_connections",
            "must be between 1 and 10000000",
        ));
    }
    if b.proxy.max_connections_per_ip == Some(0) {
        return Err(FieldError::new(
            "proxy.max_connections_per_ip",
            "must be at least 1 (leave it out for no cap)",
        ));
    }
    if !(0.0..=1.0).contains(&b.access_log.sample) {
        return Err(FieldError::new(
            "access_log.sample",
            "must be between 0 and 1",
        ));
    }
    check_log_level(&b.log.level)?;
    if b.reload.poll_ms < 10 {
        return Err(FieldError::new("reload.poll_ms", "must be at least 10"));
    }
    if let Some(etcd) = &b.etcd {
        if etcd.endpoints.is_empty() {
            return Err(FieldError::new(
                "etcd.endpoints",
                "at least one endpoint is required",
            ));
        }
        for (name, p) in [
            ("prefix", &etcd.prefix),
            ("registry_prefix", &etcd.registry_prefix),
        ] {
            if !p.starts_with('/') || p.ends_with('/') {
                return Err(FieldError::new(
                    field("etcd", name),
                    format!("{p:?} must start with '/' and not end with '/'"),
                ));
            }
        }
        etcd.self_preservation.validate("etcd.self_preservation")?;
        if !b.routes.is_empty() {
            return Err(FieldError::new(
                "routes",
                "routes come from etcd when `etcd:` is set; remove them from the file",
            ));
        }
        if !b.upstreams.is_empty() {
            return Err(FieldError::new(
                "upstreams",
                "upstreams come from etcd (<prefix>/upstreams/<name>) when `etcd:` is set; remove them from the file",
            ));
        }
    }

    let mut upstreams = BTreeMap::new();
    for (name, spec) in &b.upstreams {
        let at = field("upstreams", name);
        if name.is_empty() || name.contains('/') {
            return Err(FieldError::new(
                at,
                "upstream names must be non-empty and contain no '/'",
            ));
        }
        let nodes = spec.compile(&at)?;
        upstreams.insert(name.clone(), (spec.clone(), nodes));
    }

    let mut routes: Vec<Route> = Vec::with_capacity(b.routes.len());
    for (i, spec) in b.routes.iter().enumerate() {
        let at = index("routes", i);
        let id = spec.id.clone().ok_or_else(|| {
            FieldError::new(field(&at, "id"), "every route in the file needs an id")
        })?;
        if let Some(j) = routes.iter().position(|r| r.id == id) {
            return Err(FieldError::new(
                field(&at, "id"),
                format!("duplicate route id {id:?} (also routes[{j}])"),
            ));
        }
        let route = spec.clone().compile(&id, &at)?;
        let has_nodes = upstreams
            .get(&route.spec.upstream)
            .is_some_and(|(_, n): &(UpstreamSpec, Vec<Node>)| !n.is_empty());
        if !has_nodes && b.etcd.is_none() {
            return Err(FieldError::new(
                field(&at, "upstream"),
                format!(
                    "upstream {:?} has no nodes, and without `etcd:` there is no registry to find instances in",
                    route.spec.upstream
                ),
            ));
        }
        routes.push(route);
    }

    // Conflicting routes are an error in a file (in etcd, the later write loses).
    let refs: Vec<&Route> = routes.iter().collect();
    let (_, rejected) = build(&refs, &mut UpstreamTable::new(Timeouts::default()));
    if let Some(r) = rejected.first() {
        let i = routes.iter().position(|x| x.id == r.id).unwrap_or(0);
        return Err(FieldError::new(
            field(&index("routes", i), "paths"),
            r.reason.clone(),
        ));
    }

    let mut trusted_proxies = Vec::with_capacity(b.trusted_proxies.len());
    for (i, p) in b.trusted_proxies.iter().enumerate() {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                FieldError::new(
                    index("trusted_proxies", i),
                    format!("{p:?} is not an IP address or CIDR"),
                )
            })?;
        trusted_proxies.push(net);
    }
    if b.etcd.is_some() && b.settings != SettingsSpec::default() {
        return Err(FieldError::new(
            "settings",
            "settings come from etcd (<prefix>/settings) when `etcd:` is set",
        ));
    }
    check_tls(&b)?;
    let keys = Arc::new(
        KeyRing::new(&b.tls.key_encryption_keys)
            .map_err(|e| FieldError::new("tls.key_encryption_keys", e.to_string()))?,
    );
    let default_cert = load_default_cert(&b, &keys)?;
    let certs = load_certs(&b, &keys)?;
    let consumers = load_consumers(&b)?;
    if let Some(api) = &b.admin_api {
        if b.etcd.is_none() {
            return Err(FieldError::new(
                "admin_api",
                "the admin API writes to etcd: set `etcd:` (a standalone file is edited as a file)",
            ));
        }
        crate::admin_api::auth::Keys::new(&api.keys, "admin_api.keys")?;
    }
    let settings = b.settings.validate("settings")?;
    let default_limit = b.settings.rate_limit.clone().zip(settings.limit_key);
    let base = b.proxy.timeout.apply(Timeouts::default());
    let timeouts = b.settings.timeout.map_or(base, |t| t.apply(base));
    Ok(ConfigModel {
        bootstrap: b,
        routes,
        upstreams,
        timeouts,
        default_limit,
        global_plugins: settings.plugins,
        consumers,
        trusted_proxies,
        keys,
        default_cert,
        certs,
    })
}

/// The `tls:` section's own fields (certificates are loaded after).
fn check_tls(b: &Bootstrap) -> Result<(), FieldError> {
    let tls = &b.tls;
    if tls.alpn.is_empty() {
        return Err(FieldError::new(
            "tls.alpn",
            "offer at least one of h2, http/1.1",
        ));
    }
    for (i, p) in tls.alpn.iter().enumerate() {
        if !matches!(p.as_str(), "h2" | "http/1.1") {
            return Err(FieldError::new(
                index("tls.alpn", i),
                format!("{p:?}: the gateway speaks h2 and http/1.1"),
            ));
        }
    }
    if !(100..=120_000).contains(&tls.handshake_timeout_ms) {
        return Err(FieldError::new(
            "tls.handshake_timeout_ms",
            "must be between 100 and 120000",
        ));
    }
    let h2 = &b.proxy.http2;
    if !(1..=10_000).contains(&h2.max_concurrent_streams) {
        return Err(FieldError::new(
            "proxy.http2.max_concurrent_streams",
            "must be between 1 and 10000",
        ));
    }
    if !(1024..=16 << 20).contains(&h2.max_header_list_bytes) {
        return Err(FieldError::new(
            "proxy.http2.max_header_list_bytes",
            "must be between 1024 and 16777216",
        ));
    }
    if !(1..=100_000).contains(&h2.max_resets_per_second) {
        return Err(FieldError::new(
            "proxy.http2.max_resets_per_second",
            "must be between 1 and 100000",
        ));
    }
    Ok(())
}

fn load_default_cert(
    b: &Bootstrap,
    keys: &KeyRing,
) -> Result<Option<(Arc<rustls::sign::CertifiedKey>, i64)>, FieldError> {
    let Some(files) = &b.tls.default_cert else {
        return Ok(None);
    };
    let read = |f: &str, p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            FieldError::new(
                format!("tls.default_cert.{f}"),
                format!("cannot read {}: {e}", p.display()),
            )
        })
    };
    let cert = read("cert_file", &files.cert_file)?;
    let key = read("key_file", &files.key_file)?;
    let (pair, _, not_after) = crate::tls::cert::load_pair(&cert, &key, keys, "tls.default_cert")?;
    Ok(Some((pair, not_after)))
}

fn load_consumers(b: &Bootstrap) -> Result<Vec<ConsumerEntry>, FieldError> {
    if b.etcd.is_some() && !b.consumers.is_empty() {
        return Err(FieldError::new(
            "consumers",
            "consumers come from etcd (<prefix>/consumers/<name>) when `etcd:` is set",
        ));
    }
    let mut out: Vec<ConsumerEntry> = Vec::with_capacity(b.consumers.len());
    for (i, spec) in b.consumers.iter().enumerate() {
        let at = index("consumers", i);
        let name = spec.name.clone().ok_or_else(|| {
            FieldError::new(
                field(&at, "name"),
                "every consumer in the file needs a name",
            )
        })?;
        if out.iter().any(|c| *c.consumer.name == *name) {
            return Err(FieldError::new(
                field(&at, "name"),
                format!("duplicate consumer {name:?}"),
            ));
        }
        out.push(crate::model::consumer::compile(spec, &name, &at)?);
    }
    Ok(out)
}

fn load_certs(b: &Bootstrap, keys: &KeyRing) -> Result<Vec<Arc<LoadedCert>>, FieldError> {
    if b.etcd.is_some() && !b.certs.is_empty() {
        return Err(FieldError::new(
            "certs",
            "certificates come from etcd (<prefix>/certs/<id>) when `etcd:` is set",
        ));
    }
    let mut certs: Vec<Arc<LoadedCert>> = Vec::with_capacity(b.certs.len());
    for (i, spec) in b.certs.iter().enumerate() {
        let at = index("certs", i);
        let id = spec.id.clone().ok_or_else(|| {
            FieldError::new(
                field(&at, "id"),
                "every certificate in the file needs an id",
            )
        })?;
        if certs.iter().any(|c| *c.id == *id) {
            return Err(FieldError::new(
                field(&at, "id"),
                format!("duplicate certificate id {id:?}"),
            ));
        }
        certs.push(Arc::new(crate::tls::cert::load(&id, spec, keys, &at)?));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
