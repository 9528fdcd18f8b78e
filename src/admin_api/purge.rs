//! Cache purges (`POST /admin/v1/purge`, `tollgate purge`): a checked
//! record under `<prefix>/purges/<id>` with a lease of
//! `cache.purge_record_ttl_s`; every node applies it from its watch. The
//! answer carries the record's etcd revision: `/admin/v1/gateways` (or
//! `tollgate apply --wait`'s check) shows when every node has it.

use serde_json::{json, Value};

use super::etcd::{Etcd, EtcdError};
use super::{AdminApi, Answer, Call};
use crate::cache::purge::PurgeSpec;

/// Why a purge was not written.
#[derive(Debug)]
pub enum PurgeError {
    /// A malformed record (400).
    Invalid(String),
    /// No such route, or it caches nothing (400).
    Route(String),
    Etcd(EtcdError),
}

impl std::fmt::Display for PurgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PurgeError::Invalid(m) | PurgeError::Route(m) => f.write_str(m),
            PurgeError::Etcd(EtcdError::Unavailable(why)) => write!(f, "etcd unavailable: {why}"),
            PurgeError::Etcd(EtcdError::Conflict) => f.write_str("conflict"),
        }
    }
}

/// Checks `spec` (its route must exist and cache) and writes the record:
/// its id and etcd revision.
pub async fn write(
    etcd: &Etcd,
    prefix: &str,
    spec: Value,
    ttl_s: i64,
) -> Result<(String, i64), PurgeError> {
    let parsed: PurgeSpec =
        serde_json::from_value(spec.clone()).map_err(|e| PurgeError::Invalid(e.to_string()))?;
    let purge = parsed.compile().map_err(PurgeError::Invalid)?;
    let route_key = format!("{prefix}/routes/{}", purge.route());
    let route = etcd.get(&route_key).await.map_err(PurgeError::Etcd)?;
    let Some(route) = route else {
        return Err(PurgeError::Route(format!("no route {:?}", purge.route())));
    };
    let caches = serde_json::from_slice::<Value>(&route.value)
        .is_ok_and(|r| r.get("cache").is_some_and(|c| !c.is_null()));
    if !caches {
        return Err(PurgeError::Route(format!(
            "route {:?} caches nothing",
            purge.route()
        )));
    }
    let id = format!(
        "{:x}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        rand::random::<u32>()
    );
    let lease = etcd.kept_lease(ttl_s).await.map_err(PurgeError::Etcd)?;
    let key = format!("{prefix}/purges/{id}");
    let revision = etcd
        .put_leased(&key, spec.to_string().into_bytes(), lease.id)
        .await
        .map_err(PurgeError::Etcd)?;
    // The lease is not kept alive: the record goes after its TTL.
    drop(lease);
    Ok((id, revision))
}

/// `POST /admin/v1/purge`.
pub async fn post(api: &AdminApi, call: &Call<'_>) -> Answer {
    if call.method != http::Method::POST {
        return Answer::error(405, "only POST");
    }
    let Some(body) = call.body.clone() else {
        return Answer::error(
            400,
            "a purge needs a body: {\"route\", \"key\" | \"prefix\" | \"tag\"}",
        );
    };
    match write(&api.etcd, &api.space.prefix, body.clone(), api.purge_ttl_s).await {
        Ok((id, revision)) => {
            tracing::info!(
                target: "tollgate::audit",
                key = %call.caller.name,
                method = "POST",
                kind = "purge",
                id,
                revision,
                client = ?call.client,
                "admin write"
            );
            Answer::ok(
                202,
                json!({ "id": id, "revision": revision, "purge": body }),
            )
            .header("x-etcd-revision", revision.to_string())
        }
        Err(PurgeError::Etcd(e)) => super::resources::etcd_failed(e),
        Err(e) => Answer::error(400, e.to_string()),
    }
}
