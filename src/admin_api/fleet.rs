//! The fleet as etcd shows it: every live gateway node (its leased record
//! under `<prefix>/gateways/`), the config revision it applied, and how far
//! that is behind the newest config write, and its state: `up_to_date`,
//! `behind`, `holding` (waiting for an apply under way to finish, see
//! `tollgate apply`) or `stale` (serving its last config while its watch
//! cannot reach etcd). A node cut off from etcd entirely drops out of the
//! list when its lease ends (10 s). Also which node holds each lock or
//! election (`<prefix>/locks/`, `<prefix>/election/`: the candidate that
//! came first). Served at `/admin/v1/gateways` and printed by
//! `tollgate status --etcd`.

use serde_json::{json, Value};

use super::etcd::{Etcd, EtcdError};

/// What lives under the prefix besides config: written by the nodes and
/// tools, never applied as config, so never what a node is behind on.
const NOT_CONFIG: [&str; 6] = [
    "gateways/",
    "batches/",
    "health/",
    "acme/",
    "locks/",
    "election/",
];

pub async fn view(etcd: &Etcd, prefix: &str) -> Result<Value, EtcdError> {
    let prefix = prefix.trim_end_matches('/');
    let config = format!("{prefix}/");
    let gateways = format!("{prefix}/gateways/");
    let batches = format!("{prefix}/batches/");
    let (keys, _, revision) = etcd.range(&config, &config, 0, true).await?;
    let is_config = |key: &str| {
        let rest = key.strip_prefix(&config).unwrap_or(key);
        !NOT_CONFIG.iter().any(|n| rest.starts_with(n))
    };
    // The newest config write still visible (a delete's revision is not:
    // a node may be ahead of this, never behind it unseen).
    let latest = keys
        .iter()
        .filter(|k| is_config(&k.key))
        .map(|k| k.mod_revision)
        .max()
        .unwrap_or(0);
    let mut held = std::collections::BTreeMap::new();
    for area in ["locks/", "election/"] {
        let under = format!("{config}{area}");
        let (candidates, _, _) = etcd.range(&under, &under, 0, false).await?;
        for c in &candidates {
            let Some((name, _lease)) = c.key.rsplit_once('/') else {
                continue;
            };
            let name = name.strip_prefix(&config).unwrap_or(name).to_string();
            let first = held.entry(name).or_insert((i64::MAX, Value::Null));
            if c.mod_revision < first.0 {
                *first = (
                    c.mod_revision,
                    String::from_utf8_lossy(&c.value).into_owned().into(),
                );
            }
        }
    }
    let held: serde_json::Map<String, Value> = held.into_iter().map(|(k, (_, v))| (k, v)).collect();
    let (nodes, _, _) = etcd.range(&gateways, &gateways, 0, false).await?;
    let list: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let record: Value = serde_json::from_slice(&n.value).unwrap_or(Value::Null);
            let applied = record["config_revision"].as_i64().unwrap_or(0);
            let holding = record["holding"] == true;
            let state = if record["stale"] == true {
                "stale"
            } else if holding {
                "holding"
            } else if applied >= latest {
                "up_to_date"
            } else {
                "behind"
            };
            json!({
                "node_id": record["node_id"],
                "version": record["version"],
                "config_revision": applied,
                "lag": (latest - applied).max(0),
                "up_to_date": applied >= latest && !holding,
                "state": state,
                "started_unix_ms": record["started_unix_ms"],
            })
        })
        .collect();
    let applies = keys.iter().filter(|k| k.key.starts_with(&batches)).count();
    Ok(json!({
        "config_revision": latest,
        "etcd_revision": revision,
        "applies_under_way": applies,
        "gateways": list,
        "held_by": held,
    }))
}
