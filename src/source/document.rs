//! One config value (a route, upstream, consumer, certificate or the
//! settings) checked the way the gateway will serve it. The etcd source
//! applies what this accepts; the admin API refuses what it does not,
//! before anything is written: one validator, not two.

use crate::field_error::from_json;
use crate::model::consumer::ConsumerEntry;
use crate::model::settings::{SettingsSpec, ValidSettings};
use crate::model::{FieldError, Node, Route, RouteSpec, UpstreamSpec};
use crate::tls::cert::CertDoc;
use crate::tls::KeyRing;

/// The kinds of value under the config prefix, by their keyspace folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Route,
    Upstream,
    Consumer,
    Cert,
    Settings,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Route,
        Kind::Upstream,
        Kind::Consumer,
        Kind::Cert,
        Kind::Settings,
    ];

    /// The keyspace folder (`routes`), also the admin API's path segment.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Upstream => "upstreams",
            Kind::Consumer => "consumers",
            Kind::Cert => "certs",
            Kind::Settings => "settings",
        }
    }

    /// The name in logs and `tollgate_config_rejected_total{kind}`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Upstream => "upstream",
            Kind::Consumer => "consumer",
            Kind::Cert => "cert",
            Kind::Settings => "settings",
        }
    }

    pub fn from_folder(folder: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.folder() == folder)
    }
}

/// A value that passed, ready for the store.
pub enum Document {
    Route(Route),
    Upstream(UpstreamSpec, Vec<Node>),
    Consumer(ConsumerEntry),
    /// With the value to keep as last-known-good when not the one given
    /// (a key stored in clear, kept encrypted).
    Cert(CertDoc, Option<String>),
    Settings(SettingsSpec, ValidSettings),
}

/// Checks `value` as a `kind` called `id` (ignored for settings).
pub fn check(kind: Kind, id: &str, value: &[u8], keys: &KeyRing) -> Result<Document, FieldError> {
    match kind {
        Kind::Route => {
            let spec: RouteSpec = from_json(value)?;
            if spec.id.as_deref().is_some_and(|x| x != id) {
                return Err(FieldError::new(
                    "id",
                    format!("must be absent or equal the key's id {id:?}"),
                ));
            }
            spec.compile(id, "").map(Document::Route)
        }
        Kind::Upstream => {
            let spec: UpstreamSpec = from_json(value)?;
            let nodes = spec.compile("")?;
            Ok(Document::Upstream(spec, nodes))
        }
        Kind::Consumer => crate::model::consumer::from_json(id, value).map(Document::Consumer),
        Kind::Cert => crate::tls::cert::from_json(id, value, keys)
            .map(|(cert, kept)| Document::Cert(cert, kept)),
        Kind::Settings => {
            let spec: SettingsSpec = from_json(value)?;
            let valid = spec.validate("")?;
            Ok(Document::Settings(spec, valid))
        }
    }
}

/// Most bad fields reported for one value.
const MAX_ERRORS: usize = 20;

/// [`check`], reporting every bad field it can find: after each error
/// the offending object field is set aside and the value checked again,
/// so independent mistakes are named together (a bad list element, or
/// an error that leaves nothing to set aside, ends the search: its
/// siblings' paths would no longer be the caller's).
pub fn check_all(
    kind: Kind,
    id: &str,
    value: &serde_json::Value,
    keys: &KeyRing,
) -> Result<Document, Vec<FieldError>> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut v = value.clone();
    loop {
        let raw = serde_json::to_vec(&v).unwrap_or_default();
        let e = match check(kind, id, &raw, keys) {
            Ok(doc) if errors.is_empty() => return Ok(doc),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        // "missing field `x`" after `x` was set aside is our doing.
        let missing = e
            .message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(|name| crate::field_error::field(&e.path, name));
        if missing.is_some_and(|m| removed.contains(&m)) {
            return Err(errors);
        }
        let again = errors.iter().any(|x| x.path == e.path);
        let path = e.path.clone();
        if !again {
            errors.push(without_position(e));
        }
        if again || errors.len() >= MAX_ERRORS || !remove(&mut v, &path) {
            return Err(errors);
        }
        removed.push(path);
    }
}

/// The error without serde's " at line L column C": the text checked is
/// the value re-encoded, not what the caller sent.
fn without_position(mut e: FieldError) -> FieldError {
    if let Some(i) = e.message.rfind(" at line ") {
        if e.message[i..].contains(" column ") {
            e.message.truncate(i);
        }
    }
    e
}

/// Removes the object field at `path` (`a.b.c`, `a[0].b`); `false` when
/// the path ends in a list element or does not lead to a field.
fn remove(v: &mut serde_json::Value, path: &str) -> bool {
    if path.is_empty() || path.ends_with(']') {
        return false;
    }
    let (parent, name) = match path.rsplit_once('.') {
        Some((p, n)) => (p, n),
        None => ("", path),
    };
    let mut at = v;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(next) = at.get_mut(key) else {
            return false;
        };
        at = next;
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Some(next) = idx.parse::<usize>().ok().and_then(|i| at.get_mut(i)) else {
                return false;
            };
            at = next;
        }
    }
    at.as_object_mut().is_some_and(|o| o.remove(name).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn independent_mistakes_are_named_together() {
        let keys = KeyRing::empty();
        let v = json!({"paths": ["/a"], "upstream": "u", "retriez": 1, "timeout": {"read_ms": 0}, "priority": "high"});
        let errors = check_all(Kind::Route, "r", &v, &keys).err().unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["priority", "retriez", "timeout.read_ms"],
            "{errors:?}"
        );
        assert!(!errors[0].message.contains("line 1"), "{errors:?}");
        // A required field that is bad is named once, not again as missing.
        let errors = check_all(
            Kind::Route,
            "r",
            &json!({"paths": "x", "upstream": "u"}),
            &keys,
        )
        .err()
        .unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(check_all(
            Kind::Route,
            "r",
            &json!({"paths": ["/a"], "upstream": "u"}),
            &keys
        )
        .is_ok());
    }
}
