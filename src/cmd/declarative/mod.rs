//! The declarative CLI (GitOps): `tollgate apply -f`, `diff -f`, `get`,
//! `export` and `status --etcd`. It talks to etcd directly, not to the
//! admin API: it needs only etcd access (as the gateways do), runs where no
//! gateway does (CI), and checks every document with the validator the
//! gateways use before writing anything.
//!
//! Atomicity: the documents are written in transactions of at most
//! [`BATCH`] changes (etcd refuses more than 128 operations in one), each
//! all-or-nothing and each guarded by the mod_revisions read when the plan
//! was made (a concurrent writer fails the apply with exit code 2, and
//! later batches are not written), kinds in the order upstreams, consumers,
//! certs, settings, routes (a new route never lands before its upstream).
//! An apply of more than one transaction first puts a batch marker
//! (`<prefix>/batches/<apply>`, on a lease it keeps alive), and removes it
//! when done: gateways hold config changes while a marker exists and
//! publish the whole apply at once (see `source::etcd::batch_hold`). If the
//! apply dies, the lease ends within [`MARKER_TTL_S`] seconds and gateways
//! serve what was written: whole transactions, never half of one.

pub mod docs;
mod plan;

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin_api::etcd::{Etcd, EtcdError};
use crate::source::document::Kind;
use crate::tls::KeyRing;
use docs::Doc;
use plan::Plan;

/// Changes per etcd transaction.
pub const BATCH: usize = 100;

/// Where the config lives.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// etcd endpoints (default: the `-c` bootstrap file's `etcd.endpoints`).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The config prefix (default: the bootstrap file's, else /tollgate).
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Files or directories of YAML documents.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Delete what etcd has and the files do not.
    #[arg(long)]
    pub prune: bool,
    /// Check and print the diff; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After writing, wait up to this many seconds for every live gateway
    /// to apply the write (exit 3 naming the laggards).
    #[arg(long)]
    pub wait: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// routes, upstreams, consumers, certs or settings.
    pub kind: String,
    pub id: Option<String>,
    /// yaml (apply's documents) or json.
    #[arg(short = 'o', long, default_value = "yaml")]
    pub output: String,
}

/// `tollgate purge`: one of --key, --prefix, --tag.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The route whose cached answers go.
    #[arg(long)]
    pub route: String,
    /// An exact request target (path and query), e.g. /a?b=1.
    #[arg(long)]
    pub key: Option<String>,
    /// Every target starting with this (`--prefix` names the config prefix).
    #[arg(long = "path-prefix")]
    pub path_prefix: Option<String>,
    /// Every answer that carried this tag (Cache-Tag, Surrogate-Key).
    #[arg(long)]
    pub tag: Option<String>,
    /// Wait up to this many seconds for every live gateway to apply it.
    #[arg(long)]
    pub wait: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Endpoints, prefix, registry prefix and key ring, from the flags and the
/// bootstrap file (`config`) when it can be read.
struct Place {
    etcd: Etcd,
    prefix: String,
    registry: String,
    keys: Arc<KeyRing>,
    /// `cache.purge_record_ttl_s`.
    purge_ttl_s: u64,
}

fn place(target: &Target, config: &Path) -> anyhow::Result<Place> {
    let model = crate::config::load_file(config).ok();
    let purge_ttl_s = model
        .as_ref()
        .map_or(crate::cache::purge::RECORD_TTL_SECS as u64, |m| {
            m.bootstrap.cache.purge_record_ttl_s
        });
    let etcd_cfg = model.as_ref().and_then(|m| m.bootstrap.etcd.clone());
    let endpoints = if target.etcd.is_empty() {
        etcd_cfg
            .as_ref()
            .map(|e| e.endpoints.clone())
            .unwrap_or_default()
    } else {
        target.etcd.clone()
    };
    if endpoints.is_empty() {
        bail!("no etcd: pass --etcd URLS or -c a bootstrap file with etcd.endpoints");
    }
    let prefix = target
        .prefix
        .clone()
        .or_else(|| etcd_cfg.as_ref().map(|e| e.prefix.clone()))
        .unwrap_or_else(|| "/tollgate".into());
    let registry = etcd_cfg.map_or_else(|| "/services".into(), |e| e.registry_prefix);
    let keys = model.map_or_else(|| Arc::new(KeyRing::empty()), |m| m.keys);
    Ok(Place {
        etcd: Etcd::new(endpoints),
        prefix: prefix.trim_end_matches('/').to_string(),
        registry: registry.trim_end_matches('/').to_string(),
        keys,
        purge_ttl_s,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

fn etcd_error(e: EtcdError) -> anyhow::Error {
    match e {
        EtcdError::Unavailable(why) => anyhow::anyhow!("etcd unavailable: {why}"),
        EtcdError::Conflict => anyhow::anyhow!("conflict"),
    }
}

/// What etcd has now: every resource with its mod_revision.
async fn current(p: &Place) -> anyhow::Result<Vec<(Doc, i64)>> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::Settings {
            let key = format!("{}/settings", p.prefix);
            if let Some(e) = p.etcd.get(&key).await.map_err(etcd_error)? {
                let spec = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
                out.push((doc(kind, String::new(), spec, key), e.mod_revision));
            }
            continue;
        }
        let folder = format!("{}/{}/", p.prefix, kind.folder());
        let (entries, _, _) = p
            .etcd
            .range(&folder, &folder, 0, false)
            .await
            .map_err(etcd_error)?;
        for e in entries {
            let id = e.key.strip_prefix(&folder).unwrap_or(&e.key).to_string();
            let spec = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
            out.push((doc(kind, id, spec, e.key.clone()), e.mod_revision));
        }
    }
    Ok(out)
}

fn doc(kind: Kind, id: String, spec: Value, origin: String) -> Doc {
    Doc {
        kind,
        id,
        spec,
        origin,
    }
}

/// `tollgate apply` (and `diff`: `dry_run`). Exit codes: 0 done (or
/// nothing to do), 1 a bad document or no etcd, 2 a concurrent writer, 3
/// a gateway that did not apply in time.
pub fn apply(args: &ApplyArgs, config: &Path) -> anyhow::Result<i32> {
    let mut desired = docs::read(&args.files)?;
    let p = place(&args.target, config)?;
    runtime()?.block_on(async {
        for d in &mut desired {
            crate::admin_api::secrets::harden(d.kind, &mut d.spec)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", d.origin))?;
        }
        let now = current(&p).await?;
        let plan = Plan::make(&desired, &now, args.prune, &p.keys)?;
        plan.check_references(&desired, &now, |service| {
            let prefix = format!("{}/{service}/", p.registry);
            let etcd = &p.etcd;
            async move {
                etcd.range(&prefix, &prefix, 1, true)
                    .await
                    .map(|(e, _, _)| !e.is_empty())
                    .unwrap_or(false)
            }
        })
        .await?;
        print!("{}", plan.render());
        if args.dry_run || plan.changes.is_empty() {
            return Ok(0);
        }
        let writes = plan.writes(&p.prefix);
        let transactions = writes.len().div_ceil(BATCH);
        let revision = match write_all(&p, &writes).await? {
            Written::All(revision) => revision,
            Written::Conflict { done, revision } => {
                eprintln!(
                    "tollgate apply: conflict: something else changed these resources since the plan; {done} of {transactions} batches written (revision {revision}); run apply again"
                );
                return Ok(2);
            }
        };
        println!("applied at revision {revision} ({} changes, {transactions} transactions)", writes.len());
        match args.wait {
            None => Ok(0),
            Some(secs) => wait(&p, revision, Duration::from_secs(secs)).await,
        }
    })
}

enum Written {
    All(i64),
    /// A concurrent writer: `done` transactions landed, up to `revision`.
    Conflict {
        done: usize,
        revision: i64,
    },
}

/// Writes `writes` in transactions of [`BATCH`]. More than one is written
/// under a leased batch marker, for which the gateways hold their config
/// changes: they publish the whole apply at once when the marker goes (at
/// the end, or when this process dies and the lease expires).
async fn write_all(
    p: &Place,
    writes: &[(String, Option<Vec<u8>>, i64)],
) -> anyhow::Result<Written> {
    let transactions = writes.len().div_ceil(BATCH);
    let marker = if transactions > 1 {
        Some(place_marker(p, writes.len(), transactions).await?)
    } else {
        None
    };
    let mut outcome = Ok(Written::All(0));
    let mut revision = 0;
    for (done, batch) in writes.chunks(BATCH).enumerate() {
        match p.etcd.batch(batch).await {
            Ok(r) => {
                revision = r;
                outcome = Ok(Written::All(r));
            }
            Err(EtcdError::Conflict) => {
                outcome = Ok(Written::Conflict { done, revision });
                break;
            }
            Err(e) => {
                outcome = Err(etcd_error(e).context(format!(
                    "{done} of {transactions} transactions written (revision {revision})"
                )));
                break;
            }
        }
    }
    if let Some(lease) = marker {
        if let Err(e) = p.etcd.revoke(lease).await {
            eprintln!(
                "tollgate apply: could not remove the batch marker ({}); gateways publish when its lease expires ({MARKER_TTL_S} s)",
                etcd_error(e)
            );
        }
    }
    outcome
}

/// Seconds a batch marker outlives a dead apply.
const MARKER_TTL_S: i64 = 5;

async fn place_marker(
    p: &Place,
    changes: usize,
    transactions: usize,
) -> anyhow::Result<crate::admin_api::etcd::KeptLease> {
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = format!("{:x}-{:x}", started_unix_ms, rand::random::<u32>());
    let key = crate::source::etcd::Keyspace::new(&p.prefix, &p.registry).batch_key(&id);
    let value = serde_json::json!({
        "started_unix_ms": started_unix_ms,
        "changes": changes,
        "transactions": transactions,
        "pid": std::process::id(),
    });
    let lease = p.etcd.kept_lease(MARKER_TTL_S).await.map_err(etcd_error)?;
    p.etcd
        .put_leased(&key, value.to_string().into_bytes(), lease.id)
        .await
        .map_err(etcd_error)?;
    Ok(lease)
}

/// Waits for every live gateway to report `revision` applied. A read of
/// the fleet that fails (a slow or loaded etcd: each call has a few
/// seconds) is tried again until `timeout`; the changes are already
/// written, so one slow read must not report the apply as failed.
async fn wait(p: &Place, revision: i64, timeout: Duration) -> anyhow::Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        match crate::admin_api::fleet::view(&p.etcd, &p.prefix).await {
            Ok(view) => {
                let nodes = view["gateways"].as_array().cloned().unwrap_or_default();
                let behind: Vec<String> = nodes
                    .iter()
                    .filter(|n| n["config_revision"].as_i64().unwrap_or(0) < revision)
                    .map(|n| n["node_id"].as_str().unwrap_or("?").to_string())
                    .collect();
                if behind.is_empty() {
                    println!(
                        "every gateway ({}) applied revision {revision}",
                        nodes.len()
                    );
                    return Ok(0);
                }
                if Instant::now() >= deadline {
                    eprintln!(
                        "tollgate: gateways behind revision {revision}: {}",
                        behind.join(", ")
                    );
                    return Ok(3);
                }
            }
            Err(e) if Instant::now() >= deadline => return Err(etcd_error(e)),
            Err(e) => tracing::debug!(error = ?e, "reading the fleet failed; trying again"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tollgate get KIND [ID]`.
pub fn get(args: &GetArgs, config: &Path) -> anyhow::Result<String> {
    let kind = Kind::from_folder(&args.kind)
        .or_else(|| Kind::ALL.into_iter().find(|k| k.name() == args.kind))
        .with_context(|| {
            format!(
                "{:?}: routes, upstreams, consumers, certs or settings",
                args.kind
            )
        })?;
    let p = place(&args.target, config)?;
    let mut found: Vec<Doc> = runtime()?
        .block_on(current(&p))?
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| d.kind == kind && args.id.as_ref().is_none_or(|id| *id == d.id))
        .collect();
    for d in &mut found {
        crate::admin_api::secrets::redact(d.kind, &mut d.spec);
    }
    if args.id.is_some() && found.is_empty() {
        bail!("no {} {:?}", kind.name(), args.id.as_deref().unwrap_or(""));
    }
    match args.output.as_str() {
        "json" => {
            let v: Vec<Value> = found
                .iter()
                .map(|d| serde_json::json!({ "kind": d.kind.name(), "id": d.id, "spec": d.spec }))
                .collect();
            Ok(serde_json::to_string_pretty(&v)? + "\n")
        }
        "yaml" => docs::write(&found),
        other => bail!("-o {other:?}: yaml or json"),
    }
}

/// `tollgate export`: everything, as documents `apply` accepts (secrets
/// are exported as stored: hashes, encrypted keys).
pub fn export(args: &TargetArgs, config: &Path) -> anyhow::Result<String> {
    let p = place(&args.target, config)?;
    let all: Vec<Doc> = runtime()?
        .block_on(current(&p))?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    docs::write(&all)
}

/// `tollgate purge`: writes a purge record (checked as the admin API
/// checks it); exit 0 written (and applied everywhere with --wait), 1 bad
/// or no etcd, 3 a gateway that did not apply it in time.
pub fn purge(args: &PurgeArgs, config: &Path) -> anyhow::Result<i32> {
    let p = place(&args.target, config)?;
    let spec = serde_json::json!({
        "route": args.route, "key": args.key, "prefix": args.path_prefix, "tag": args.tag,
    });
    let spec = Value::Object(
        (spec.as_object().into_iter().flatten())
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    runtime()?.block_on(async {
        let ttl = i64::try_from(p.purge_ttl_s).unwrap_or(crate::cache::purge::RECORD_TTL_SECS);
        let (id, revision) = crate::admin_api::purge::write(&p.etcd, &p.prefix, spec, ttl)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("purge {id} written at revision {revision}");
        match args.wait {
            None => Ok(0),
            Some(secs) => wait(&p, revision, Duration::from_secs(secs)).await,
        }
    })
}

/// `tollgate status --etcd`: the fleet view.
pub fn status(args: &TargetArgs, config: &Path) -> anyhow::Result<String> {
    let p = place(&args.target, config)?;
    let v = runtime()?
        .block_on(crate::admin_api::fleet::view(&p.etcd, &p.prefix))
        .map_err(etcd_error)?;
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}
