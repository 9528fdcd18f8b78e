//! One config value (a route, upstream, consumer, certificate or the
//! settings) checked the way the gateway will serve it. The etcd source
//! applies what this accepts; the admin API refuses what it does not,
//! before anything is written: one validator, not two.

use crate::field_error::from_json;
use crate::model::consumer::ConsumerEntry;
use crate::model::settings::{SettingsSpec, ValidSettings};
use crate::model::{FieldError, Node, Route, RouteSpec, UpstreamSpec};
use crate::tls::{KeyRing, LoadedCert};

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
    Cert(LoadedCert, Option<String>),
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
