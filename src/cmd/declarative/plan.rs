//! What an apply changes: each document checked by the gateways' validator,
//! compared with etcd field by field, and ordered so that nothing a
//! gateway serves ever names what is not there yet.

use anyhow::bail;
use serde_json::Value;
use std::collections::BTreeSet;
use std::future::Future;

use super::docs::Doc;
use crate::source::document::{self, Document, Kind};
use crate::tls::KeyRing;

pub enum Change {
    Add(Doc),
    /// The document, the fields that differ, the mod_revision it replaces.
    Update(Doc, Vec<String>, i64),
    Remove(Doc, i64),
}

pub struct Plan {
    pub changes: Vec<Change>,
}

/// The paths at which `a` and `b` differ (`paths[0]`, `timeout.read_ms`).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(l, r, &join(k), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => out.push(if at.is_empty() {
            "(whole value)".into()
        } else {
            at.to_string()
        }),
        _ => {}
    }
}

/// A managed certificate in the files (`acme`, no `cert`): the `cert` and
/// `key` the fleet issued into etcd are the fleet's, kept through an
/// apply (else every apply would drop the served certificate and order a
/// new one, into the CA's rate limits).
fn keep_issued(desired: &Doc, now: &Doc) -> Doc {
    let mut d = desired.clone();
    let managed =
        d.kind == Kind::Cert && d.spec.get("acme").is_some() && d.spec.get("cert").is_none();
    if let (true, Some(spec)) = (managed, d.spec.as_object_mut()) {
        for field in ["cert", "key"] {
            if let Some(v) = now.spec.get(field) {
                spec.insert(field.to_string(), v.clone());
            }
        }
    }
    d
}

/// The order writes go in: what others name first.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Upstream => 0,
        Kind::Consumer => 1,
        Kind::Cert => 2,
        Kind::Settings => 3,
        Kind::Route => 4,
    }
}

impl Plan {
    /// Checks every desired document (the first bad one is the error,
    /// naming its file and field) and compares with etcd's `now`.
    pub fn make(
        desired: &[Doc],
        now: &[(Doc, i64)],
        prune: bool,
        keys: &KeyRing,
    ) -> anyhow::Result<Plan> {
        for d in desired {
            let raw = serde_json::to_vec(&d.spec)?;
            if let Err(e) = document::check(d.kind, &d.id, &raw, keys) {
                bail!("{} ({} {:?}): {e}", d.origin, d.kind.name(), d.id);
            }
        }
        let mut changes = Vec::new();
        for d in desired {
            match now.iter().find(|(n, _)| n.kind == d.kind && n.id == d.id) {
                None => changes.push(Change::Add(d.clone())),
                Some((n, rev)) => {
                    let d = keep_issued(d, n);
                    let mut fields = Vec::new();
                    differences(&n.spec, &d.spec, "", &mut fields);
                    if !fields.is_empty() {
                        changes.push(Change::Update(d, fields, *rev));
                    }
                }
            }
        }
        if prune {
            for (n, rev) in now {
                if !desired.iter().any(|d| d.kind == n.kind && d.id == n.id) {
                    changes.push(Change::Remove(n.clone(), *rev));
                }
            }
        }
        // Writes: what is named before what names it; removals the other
        // way round (a route goes before its upstream).
        changes.sort_by_key(|c| match c {
            Change::Add(d) | Change::Update(d, _, _) => (0, rank(d.kind)),
            Change::Remove(d, _) => (1, 4 - rank(d.kind)),
        });
        Ok(Plan { changes })
    }

    /// Every route's upstream must be in the files, stay in etcd, or be a
    /// registry service with instances.
    pub async fn check_references<F, Fut>(
        &self,
        desired: &[Doc],
        now: &[(Doc, i64)],
        registry_has: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = bool>,
    {
        let removed: BTreeSet<(u8, &str)> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove(d, _) => Some((rank(d.kind), d.id.as_str())),
                _ => None,
            })
            .collect();
        let upstream_exists = |name: &str| {
            desired
                .iter()
                .any(|d| d.kind == Kind::Upstream && d.id == name)
                || (now
                    .iter()
                    .any(|(n, _)| n.kind == Kind::Upstream && n.id == name)
                    && !removed.contains(&(rank(Kind::Upstream), name)))
        };
        for d in desired.iter().filter(|d| d.kind == Kind::Route) {
            let raw = serde_json::to_vec(&d.spec)?;
            let Ok(Document::Route(route)) =
                document::check(d.kind, &d.id, &raw, &KeyRing::empty())
            else {
                continue;
            };
            for name in route.upstream_names() {
                if !upstream_exists(name) && !registry_has(name.to_string()).await {
                    bail!("{} (route {:?}): upstream: {name:?} is neither an upstream in the files or etcd nor a registry service", d.origin, d.id);
                }
            }
        }
        Ok(())
    }

    /// The diff, one line per change.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            match c {
                Change::Add(d) => out.push_str(&format!("+ {} {}\n", d.kind.name(), d.id)),
                Change::Update(d, fields, _) => out.push_str(&format!(
                    "~ {} {}: {}\n",
                    d.kind.name(),
                    d.id,
                    fields.join(", ")
                )),
                Change::Remove(d, _) => out.push_str(&format!("- {} {}\n", d.kind.name(), d.id)),
            }
        }
        if self.changes.is_empty() {
            out.push_str("no changes\n");
        }
        out
    }

    /// `(key, value or None, mod_revision it must have)` in write order.
    pub fn writes(&self, prefix: &str) -> Vec<(String, Option<Vec<u8>>, i64)> {
        let key = |d: &Doc| match d.kind {
            Kind::Settings => format!("{prefix}/settings"),
            k => format!("{prefix}/{}/{}", k.folder(), d.id),
        };
        self.changes
            .iter()
            .map(|c| match c {
                Change::Add(d) => (key(d), Some(d.spec.to_string().into_bytes()), 0),
                Change::Update(d, _, rev) => (key(d), Some(d.spec.to_string().into_bytes()), *rev),
                Change::Remove(d, rev) => (key(d), None, *rev),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_each_changed_field() {
        let mut out = Vec::new();
        differences(
            &json!({"paths": ["/a"], "timeout": {"read_ms": 1}, "x": 1}),
            &json!({"paths": ["/b"], "timeout": {"read_ms": 2}, "y": 1}),
            "",
            &mut out,
        );
        assert_eq!(out, vec!["paths[0]", "timeout.read_ms", "x", "y"]);
    }

    #[test]
    fn an_apply_keeps_the_certificate_the_fleet_issued() {
        let doc = |spec: Value| Doc {
            kind: Kind::Cert,
            id: "api".into(),
            spec,
            origin: "f.yaml[0]".into(),
        };
        let issued = doc(json!({"snis": ["a.example"], "acme": {}, "cert": "C", "key": "K"}));
        // Unchanged in the files: nothing to write.
        let same = keep_issued(&doc(json!({"snis": ["a.example"], "acme": {}})), &issued);
        let mut out = Vec::new();
        differences(&issued.spec, &same.spec, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Edited: the edit lands with the issued pair kept.
        let edited = keep_issued(
            &doc(json!({"snis": ["a.example", "b.example"], "acme": {}})),
            &issued,
        );
        assert_eq!(edited.spec["cert"], "C");
        // Not managed, or given its own pair: the files win.
        let plain = keep_issued(
            &doc(json!({"snis": ["a.example"], "cert": "X", "key": "Y"})),
            &issued,
        );
        assert_eq!(plain.spec["cert"], "X");
    }
}
