//! The fleet as etcd shows it: every live gateway node (its leased record
//! under `<prefix>/gateways/`), the config revision it applied, and how far
//! that is behind the newest config write, and its state: `up_to_date`,
//! `behind`, `holding` (waiting for an apply under way to finish, see
//! `tollgate apply`) or `stale` (serving its last config while its watch
//! cannot reach etcd). A node cut off from etcd entirely drops out of the
//! list when its lease ends (10 s). Served at `/admin/v1/gateways` and
//! printed by `tollgate status --etcd`.

use serde_json::{json, Value};

use super::etcd::{Etcd, EtcdError};

pub async fn view(etcd: &Etcd, prefix: &str) -> Result<Value, EtcdError> {
    let prefix = prefix.trim_end_matches('/');
    let config = format!("{prefix}/");
    let gateways = format!("{prefix}/gateways/");
    let batches = format!("{prefix}/batches/");
    let (keys, _, revision) = etcd.range(&config, &config, 0, true).await?;
    // The newest config write still visible (a delete's revision is not:
    // a node may be ahead of this, never behind it unseen).
    let latest = keys
        .iter()
        .filter(|k| !k.key.starts_with(&gateways) && !k.key.starts_with(&batches))
        .map(|k| k.mod_revision)
        .max()
        .unwrap_or(0);
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
    }))
}
