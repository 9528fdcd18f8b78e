//! The handlers: list, read, create or replace, merge-patch and delete one
//! resource, and the fleet view. Every write is checked by the gateways'
//! own validator first and written in one etcd transaction.

use http::Method;
use serde_json::{json, Value};

use super::etcd::{EtcdError, Written};
use super::{secrets, AdminApi, Answer, Call};
use crate::source::document::{self, Document, Kind};

/// Ids become etcd key segments and metric labels.
fn check_id(id: &str) -> Result<(), Answer> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Answer::error(
            400,
            format!(
                "id {id:?}: 1 to 256 of letters, digits, '-', '_', '.', '@' (no '/', not '..')"
            ),
        ))
    }
}

pub(super) fn etcd_failed(e: EtcdError) -> Answer {
    match e {
        EtcdError::Unavailable(why) => {
            Answer::error(503, format!("etcd unavailable, nothing written: {why}"))
        }
        EtcdError::Conflict => Answer::error(
            412,
            "the resource changed since the version in If-Match (read it again)",
        ),
    }
}

/// `GET /admin/v1/<kind>?prefix=&after=&limit=`: ids in order, a page at
/// a time (`next` is the `after` of the following page).
pub async fn list(api: &AdminApi, call: &Call<'_>, kind: Kind) -> Answer {
    if call.method != Method::GET {
        return Answer::error(405, "only GET on a collection");
    }
    let limit = call
        .param("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let folder = api.space.folder(kind);
    let prefix = format!("{folder}{}", call.param("prefix").unwrap_or(""));
    let from = match call.param("after") {
        Some(after) => format!("{folder}{after}\0"),
        None => prefix.clone(),
    };
    let (entries, more, revision) = match api.etcd.range(&prefix, &from, limit, false).await {
        Ok(r) => r,
        Err(e) => return etcd_failed(e),
    };
    let items: Vec<Value> = entries
        .iter()
        .map(|e| {
            let id = e.key.strip_prefix(&folder).unwrap_or(&e.key);
            let mut value = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
            secrets::redact(kind, &mut value);
            json!({ "id": id, "revision": e.mod_revision, "value": value })
        })
        .collect();
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|i| i["id"].as_str())
                .map(str::to_string)
        })
        .flatten();
    Answer::ok(200, json!({ "items": items, "next": next }))
        .header("x-etcd-revision", revision.to_string())
}

/// One resource: GET, PUT, PATCH or DELETE.
pub async fn one(api: &AdminApi, call: &Call<'_>, kind: Kind, id: &str) -> Answer {
    if kind != Kind::Settings {
        if let Err(a) = check_id(id) {
            return a;
        }
    }
    let key = api.space.key(kind, id);
    let if_match = match call.if_match {
        Some(Err(())) => return Answer::error(400, "If-Match must be an ETag this API gave"),
        Some(Ok(rev)) => Some(rev),
        None => None,
    };
    match call.method {
        Method::GET => get(api, kind, &key).await,
        Method::PUT => {
            let Some(body) = call.body.clone() else {
                return Answer::error(400, "PUT needs a body");
            };
            write(api, call, kind, id, &key, body, if_match).await
        }
        Method::PATCH => patch(api, call, kind, id, &key, if_match).await,
        Method::DELETE => delete(api, call, kind, id, &key, if_match).await,
        _ => Answer::error(405, "GET, PUT, PATCH or DELETE"),
    }
}

async fn get(api: &AdminApi, kind: Kind, key: &str) -> Answer {
    match api.etcd.get(key).await {
        Ok(Some(e)) => {
            let mut value = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
            secrets::redact(kind, &mut value);
            Answer::ok(200, value).header("etag", format!("\"{}\"", e.mod_revision))
        }
        Ok(None) => Answer::error(404, format!("no {} {key:?}", kind.name())),
        Err(e) => etcd_failed(e),
    }
}

/// Routes naming `upstream` (for a DELETE's 409).
async fn users_of(api: &AdminApi, upstream: &str) -> Result<Vec<String>, EtcdError> {
    let folder = api.space.folder(Kind::Route);
    let (routes, _, _) = api.etcd.range(&folder, &folder, 0, false).await?;
    Ok(routes
        .iter()
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.value)
                .is_ok_and(|v| v["upstream"] == upstream || v["canary"]["upstream"] == upstream)
        })
        .map(|r| r.key.strip_prefix(&folder).unwrap_or(&r.key).to_string())
        .collect())
}

/// A route's upstreams must exist as a policy or a registry service: the
/// warnings for registry-only ones, or the 400.
async fn check_references(api: &AdminApi, doc: &Document) -> Result<Vec<String>, Answer> {
    let Document::Route(route) = doc else {
        return Ok(Vec::new());
    };
    let mut warnings = Vec::new();
    for name in route.upstream_names() {
        let policy = api.space.key(Kind::Upstream, name);
        let service = format!("{}/{name}/", api.space.registry);
        let has_policy = api.etcd.get(&policy).await.map_err(etcd_failed)?.is_some();
        if has_policy {
            continue;
        }
        let (instances, _, _) = api
            .etcd
            .range(&service, &service, 1, true)
            .await
            .map_err(etcd_failed)?;
        if instances.is_empty() {
            return Err(Answer::ok(
                400,
                json!({
                    "error": format!("upstream {name:?} is neither an upstream policy nor a registry service (?force=true writes it anyway)"),
                    "fields": [{ "path": "upstream", "message": format!("{name:?} does not exist") }],
                }),
            ));
        }
        warnings.push(format!(
            "upstream {name:?} has no policy: its registry instances are served with the defaults"
        ));
    }
    Ok(warnings)
}

/// Checks `body` as the gateways will and writes it (PUT, and PATCH's
/// result).
async fn write(
    api: &AdminApi,
    call: &Call<'_>,
    kind: Kind,
    id: &str,
    key: &str,
    mut body: Value,
    expect: Option<i64>,
) -> Answer {
    if let Err(e) = secrets::harden(kind, &mut body).await {
        return Answer::invalid(std::slice::from_ref(&e));
    }
    let raw = match serde_json::to_vec(&body) {
        Ok(r) => r,
        Err(e) => return Answer::error(400, e.to_string()),
    };
    let doc = match document::check_all(kind, id, &body, &api.key_ring) {
        Ok(d) => d,
        Err(errors) => return Answer::invalid(&errors),
    };
    let warnings = if call.flag("force") {
        Vec::new()
    } else {
        match check_references(api, &doc).await {
            Ok(w) => w,
            Err(a) => return a,
        }
    };
    // A certificate's key sent in clear is stored encrypted when the key
    // ring is on.
    let stored = match doc {
        Document::Cert(_, Some(kept)) => kept.into_bytes(),
        _ => raw,
    };
    let mut shown: Value = serde_json::from_slice(&stored).unwrap_or(Value::Null);
    secrets::redact(kind, &mut shown);
    if call.flag("dry_run") {
        return Answer::ok(
            200,
            json!({ "dry_run": true, "value": shown, "warnings": warnings }),
        );
    }
    match api.etcd.put(key, stored, expect).await {
        Ok(Written { revision, created }) => {
            audit(call, kind, id, revision);
            Answer::ok(
                if created { 201 } else { 200 },
                json!({ "revision": revision, "value": shown, "warnings": warnings }),
            )
            .header("etag", format!("\"{revision}\""))
            .header("x-etcd-revision", revision.to_string())
        }
        Err(e) => etcd_failed(e),
    }
}

/// RFC 7396 merge patch on the stored value, written only if nobody wrote
/// in between (the caller's If-Match, or the version just read; a race
/// without If-Match is retried).
async fn patch(
    api: &AdminApi,
    call: &Call<'_>,
    kind: Kind,
    id: &str,
    key: &str,
    if_match: Option<i64>,
) -> Answer {
    let Some(patch) = call.body.as_ref() else {
        return Answer::error(400, "PATCH needs a body (a JSON merge patch)");
    };
    for _ in 0..3 {
        let current = match api.etcd.get(key).await {
            Ok(Some(e)) => e,
            Ok(None) => return Answer::error(404, format!("no {} {key:?}", kind.name())),
            Err(e) => return etcd_failed(e),
        };
        if if_match.is_some_and(|rev| rev != current.mod_revision) {
            return etcd_failed(EtcdError::Conflict);
        }
        let mut value: Value = match serde_json::from_slice(&current.value) {
            Ok(v) => v,
            Err(e) => return Answer::error(409, format!("the stored value is not JSON: {e}")),
        };
        json_patch::merge(&mut value, patch);
        let answer = write(api, call, kind, id, key, value, Some(current.mod_revision)).await;
        if answer.status == 412 && if_match.is_none() {
            continue;
        }
        return answer;
    }
    etcd_failed(EtcdError::Conflict)
}

async fn delete(
    api: &AdminApi,
    call: &Call<'_>,
    kind: Kind,
    id: &str,
    key: &str,
    expect: Option<i64>,
) -> Answer {
    if kind == Kind::Upstream && !call.flag("force") {
        match users_of(api, id).await {
            Ok(users) if !users.is_empty() => {
                return Answer::ok(
                    409,
                    json!({
                        "error": format!("upstream {id:?} is used by routes {users:?} (?force=true deletes it anyway)"),
                        "fields": [],
                        "used_by": users,
                    }),
                )
            }
            Ok(_) => {}
            Err(e) => return etcd_failed(e),
        }
    }
    match api.etcd.delete(key, expect).await {
        Ok((true, revision)) => {
            audit(call, kind, id, revision);
            Answer::ok(200, json!({ "revision": revision }))
                .header("x-etcd-revision", revision.to_string())
        }
        Ok((false, _)) => Answer::error(404, format!("no {} {key:?}", kind.name())),
        Err(e) => etcd_failed(e),
    }
}

/// One structured line per write, for the audit trail.
fn audit(call: &Call<'_>, kind: Kind, id: &str, revision: i64) {
    tracing::info!(
        target: "tollgate::audit",
        key = %call.caller.name,
        method = %call.method,
        kind = kind.name(),
        id,
        revision,
        client = ?call.client,
        "admin write"
    );
}

/// `GET /admin/v1/gateways`: every live node's applied revision and how
/// far behind the config it is.
pub async fn gateways(api: &AdminApi, call: &Call<'_>) -> Answer {
    if call.method != Method::GET {
        return Answer::error(405, "only GET");
    }
    match super::fleet::view(&api.etcd, &api.space.prefix).await {
        Ok(v) => Answer::ok(200, v),
        Err(e) => etcd_failed(e),
    }
}
