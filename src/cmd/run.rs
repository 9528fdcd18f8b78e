//! `tollgate run -c FILE`: the daemon.

use anyhow::Context;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::notify;
use super::shutdown::DrainOnSignal;
use crate::admin::{AdminApp, NodeInfo};
use crate::config::{load_file, ConfigModel, Listener, ProxyEngine};
use crate::proxy::access_log::AccessLog;
use crate::proxy::engine::CoreEngine;
use crate::proxy::{
    http2_settings, ClientLimits, ConnLimits, Connections, Gate, Gateway, Http1Loop, InFlight,
    ListenerKinds,
};
use crate::snapshot::{InstanceStates, SnapshotCell, SourceState};
use crate::source::etcd::EtcdSource;
use crate::source::file::{self, FileSource};
use crate::store::Store;
use crate::tls::{SniResolver, TlsAcceptor};

fn node_id(model: &ConfigModel) -> String {
    model.bootstrap.node_id.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "tollgate".into())
    })
}

fn server_conf(model: &ConfigModel) -> ServerConf {
    let b = &model.bootstrap;
    let state = &b.state_dir;
    ServerConf {
        threads: b.threads,
        work_stealing: b.work_stealing,
        upstream_keepalive_pool_size: b.proxy.keepalive_pool,
        // Our own drain watcher exits as soon as nothing is in flight; this
        // is only the upper bound.
        grace_period_seconds: Some(b.proxy.shutdown_timeout_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: state.join("tollgate.pid").display().to_string(),
        upgrade_sock: state.join("upgrade.sock").display().to_string(),
        // Upstream timeouts of a second or more (all the defaults) run on
        // tokio's timer wheel, not Pingora's shared fast-timeout map. Each
        // runtime thread has its own wheel, so nothing is contended, and a
        // cancelled timer is unlinked at once instead of staying in a map
        // (thousands of 10 ms buckets at 30 s and 60 s timeouts) until its
        // deadline. About 1,800 fewer instructions per proxied request
        // (README, Choices); `proxy::timer_tick` keeps arming them from
        // costing a syscall. Sub-second timeouts stay on fast timers.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}

/// The proxy service on every `listen` address. Every listener accepts
/// TCP; `Connections` does the TLS handshake on those that say `tls`.
fn add_proxy<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    server: &mut Server,
    listen: &[Listener],
    app: A,
) {
    let mut proxy = Service::new("proxy".into(), app);
    for l in listen {
        let mut endpoint = ListenerConfig::tcp(&l.addr);
        if !l.tls && !l.h2c {
            // No read buffer in front of a plaintext HTTP/1.1 connection:
            // both engines read into their own. pingora's default, 64 KiB
            // per connection (it helps TLS's small record reads), was a
            // copy of every request's bytes, and 4 KiB of every idle
            // connection's ~34 (`bench/README.md`, "Per-core cost").
            endpoint = endpoint.l4_buffer(L4BufferSettings::default().read(0));
        }
        proxy.add_listener(endpoint);
    }
    server.add_service(proxy);
}

/// The admin API's service, on one thread.
fn add_admin_api<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    server: &mut Server,
    addr: &str,
    app: A,
) {
    let mut service = Service::new("admin-api".into(), app);
    service.add_tcp(addr);
    service.threads = Some(1);
    server.add_service(service);
}

/// The TLS acceptor, when some listener says `tls: true`.
fn tls_acceptor(
    model: &ConfigModel,
    cell: &SnapshotCell,
) -> anyhow::Result<Option<Arc<TlsAcceptor>>> {
    let b = &model.bootstrap;
    let admin_tls = b.admin_api.as_ref().is_some_and(|a| a.listen.tls);
    if !b.listen.iter().any(|l| l.tls) && !admin_tls {
        return Ok(None);
    }
    match &model.default_cert {
        Some((_, not_after)) => crate::metrics::METRICS
            .tls_cert_not_after
            .with_label_values(&["default"])
            .set(*not_after),
        None => tracing::info!(
            "no tls.default_cert: a TLS client whose name no certificate serves gets a handshake alert"
        ),
    }
    let default = model.default_cert.as_ref().map(|(key, _)| key.clone());
    let resolver = Arc::new(SniResolver::new(cell.certs.clone(), default));
    Ok(Some(Arc::new(TlsAcceptor::new(
        &b.tls.listener(),
        resolver,
    )?)))
}

pub fn run(config: &Path, upgrade: bool) -> anyhow::Result<()> {
    let model =
        load_file(config).with_context(|| format!("{} is not a valid config", config.display()))?;
    super::logging::init(&model.bootstrap.log);
    let b = model.bootstrap.clone();
    let engine = ProxyEngine::from_env_or(b.proxy.engine).map_err(anyhow::Error::msg)?;
    if !upgrade {
        super::preflight::listeners_are_free(&b)?;
    }
    std::fs::create_dir_all(&b.state_dir)
        .with_context(|| format!("cannot create state_dir {}", b.state_dir.display()))?;

    crate::metrics::init();
    let cell = SnapshotCell::new();
    cell.set_cache_config(b.cache.max_bytes, b.cache.purge_record_ttl_s);
    crate::metrics::register(Box::new(InstanceStates::new(cell.services.clone())));
    let mut store = Store::new(cell.clone(), model.timeouts);
    let node_id = node_id(&model);
    // The active checker's fleet side (etcd mode): who probes what, and the
    // verdicts it hands the cluster's writer.
    let mut sharing = None;
    let mut cluster = None;
    let source: Box<dyn pingora::services::ServiceWithDependents> = match &b.etcd {
        Some(etcd) => {
            cell.status.set_source(SourceState::Disconnected);
            let (applied_tx, applied_rx) = tokio::sync::watch::channel(Default::default());
            let (verdicts_tx, verdicts_rx) = tokio::sync::watch::channel(Default::default());
            let (live_tx, live_rx) = tokio::sync::watch::channel(false);
            let watched = cell.clone();
            sharing = Some(crate::balance::sharing::Sharing {
                node_id: node_id.as_str().into(),
                members: cell.members.clone(),
                session_live: live_rx,
                in_sync: Box::new(move || {
                    watched.status.source() == SourceState::Connected && !watched.status.is_stale()
                }),
                verdicts: verdicts_tx,
            });
            cluster = Some(crate::cluster::ClusterService::new(
                etcd.endpoints.clone(),
                crate::source::etcd::Keyspace::new(&etcd.prefix, &etcd.registry_prefix),
                node_id.clone(),
                cell.clone(),
                model.keys.clone(),
                b.acme.clone(),
                applied_rx,
                verdicts_rx,
                live_tx,
            ));
            Box::new(background_service(
                "etcd-sync",
                EtcdSource::new(
                    etcd.clone(),
                    b.state_dir.clone(),
                    store,
                    model.timeouts,
                    model.keys.clone(),
                    applied_tx,
                ),
            ))
        }
        None => {
            cell.status.set_source(SourceState::Standalone);
            file::apply(&mut store, model.clone());
            Box::new(background_service(
                "config-file",
                FileSource::new(config.to_path_buf(), &model, store),
            ))
        }
    };

    let mut server = Server::new_with_opt_and_conf(
        Opt {
            upgrade,
            ..Opt::default()
        },
        server_conf(&model),
    );
    server.bootstrap();

    let in_flight = Arc::new(InFlight::default());
    let draining = Arc::new(AtomicBool::new(false));

    let acceptor = tls_acceptor(&model, &cell)?;
    let kinds = Arc::new(ListenerKinds::new(&b.listen, acceptor.clone()));
    let gate = Gate::new(
        cell.clone(),
        in_flight.clone(),
        model.trusted_proxies.clone(),
        AccessLog::start(&b.access_log)?,
        b.request_metrics,
        draining.clone(),
        ClientLimits {
            keepalive_secs: b.proxy.client_keepalive_secs,
            io: Duration::from_secs(b.proxy.client_timeout_secs),
            max_body_bytes: b.proxy.max_body_bytes,
            path: b.proxy.path,
            underscore_headers: b.proxy.underscore_headers,
            https_port: kinds.https_port(),
        },
    );
    // Either engine runs on the server's proxy threads (`threads`,
    // `work_stealing`), as `http_proxy_service` would.
    let connections = Arc::new(InFlight::default());
    let conf = server.configuration.clone();
    let idle = Duration::from_secs(b.proxy.client_keepalive_secs);
    let limits = Arc::new(ConnLimits::new(
        b.proxy.max_connections,
        b.proxy.max_connections_per_ip,
        b.listen.iter().filter_map(Listener::port),
    ));
    let http2 = http2_settings(&b.proxy.http2, &kinds, idle);
    match engine {
        ProxyEngine::Pingora => {
            let mut proxy = pingora::proxy::http_proxy(&conf, Gateway::new(gate));
            proxy.server_options = Some(http2.0);
            proxy.h2_options = Some(http2.1);
            add_proxy(
                &mut server,
                &b.listen,
                Connections::new(
                    proxy,
                    connections.clone(),
                    idle,
                    limits,
                    kinds,
                    b.proxy.http2.max_resets_per_second,
                ),
            )
        }
        ProxyEngine::Core => add_proxy(
            &mut server,
            &b.listen,
            Connections::new(
                CoreEngine::new(gate, &conf).with_http2(http2),
                connections.clone(),
                idle,
                limits,
                kinds,
                b.proxy.http2.max_resets_per_second,
            ),
        ),
    }

    let node = NodeInfo {
        node_id,
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut admin = Service::new(
        "admin".into(),
        AdminApp::new(cell.clone(), node, draining.clone()).with_profiling(b.admin.profiling),
    );
    admin.add_tcp(&b.admin.listen);
    admin.threads = Some(1);
    server.add_service(admin);
    if let (Some(api), Some(etcd)) = (&b.admin_api, &b.etcd) {
        let app = crate::admin_api::AdminApi::new(
            api,
            etcd.endpoints.clone(),
            crate::admin_api::Keyspace {
                prefix: etcd.prefix.clone(),
                registry: etcd.registry_prefix.clone(),
            },
            model.keys.clone(),
        )?
        .with_purge_ttl(b.cache.purge_record_ttl_s);
        if api.listen.tls {
            // Through the proxy's connection layer: its TLS acceptor
            // (certificates by SNI), HTTP/2 by ALPN, idle timeouts.
            let listen = std::slice::from_ref(&api.listen);
            let app = Connections::new(
                app,
                Arc::new(InFlight::default()),
                idle,
                Arc::new(ConnLimits::new(1024, None, api.listen.port())),
                Arc::new(ListenerKinds::new(listen, acceptor.clone())),
                b.proxy.http2.max_resets_per_second,
            );
            add_admin_api(&mut server, &api.listen.addr, app);
        } else {
            add_admin_api(&mut server, &api.listen.addr, app);
        }
    }

    server.add_boxed_service(source);
    server.add_service(background_service(
        "limiter-sweeper",
        crate::limiter::Sweeper,
    ));
    let mut checker = crate::balance::active::ActiveChecker::new(cell.checked.clone());
    if let Some(sharing) = sharing {
        checker = checker.sharing(sharing);
    }
    server.add_service(background_service("health-checks", checker));
    if let Some(cluster) = cluster {
        server.add_service(background_service("cluster", cluster));
    }

    // systemd Type=notify: READY=1 once a snapshot is applied and the
    // listeners are up (in --upgrade mode, after the hand-over above).
    notify::spawn_ready_watcher(cell.clone(), b.admin.listen.clone());

    tracing::info!(listen = ?b.listen, admin = %b.admin.listen, threads = b.threads, engine = engine.as_str(), "tollgate starting");
    let phases = std::sync::Mutex::new(Some(server.watch_execution_phase()));
    server.run(RunArgs {
        shutdown_signal: Box::new(notify::NotifyOnShutdown(DrainOnSignal {
            in_flight,
            connections,
            draining,
            phases,
        })),
    });
    Ok(())
}

// pingora-core's HTTP/1 loop for the `ProxyHttp` engine and the admin API;
// the core engine has its own (`proxy/engine/mod.rs`).
impl Http1Loop for pingora::proxy::HttpProxy<Gateway> {}
impl Http1Loop for crate::admin_api::AdminApi {}
