//! Which etcd key means what: `<prefix>/routes/<id>`,
//! `<prefix>/upstreams/<name>`, `<prefix>/certs/<id>`, `<prefix>/settings`,
//! `<prefix>/gateways/<node>`, `<prefix>/batches/<apply>`,
//! `<prefix>/health/<service>/<instance>`, `<prefix>/acme/...`,
//! `<prefix>/locks/...`, `<prefix>/election/...` and
//! `<registry>/<service>/<instance>`.

/// A key, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Route(&'a str),
    Upstream(&'a str),
    Cert(&'a str),
    Consumer(&'a str),
    Settings,
    Gateway(&'a str),
    /// A multi-transaction apply under way (`tollgate apply`): config
    /// changes are held until it goes.
    Batch(&'a str),
    /// A cache purge record (`POST /admin/v1/purge`, `tollgate purge`).
    Purge(&'a str),
    Instance {
        service: &'a str,
        id: &'a str,
    },
    /// A shared active health check's verdict (present: unhealthy), on
    /// the lease of the node that probed it.
    Health {
        service: &'a str,
        id: &'a str,
    },
    /// An ACME HTTP-01 token's key authorization, answered by every node.
    AcmeChallenge(&'a str),
    /// How ordering a managed certificate went (failures, next attempt).
    AcmeAttempt(&'a str),
    /// An operator asks for a managed certificate to be renewed now.
    AcmeRenew(&'a str),
    /// Coordination state no gateway serves: election candidates, locks,
    /// the ACME account (skipped quietly).
    Coordination,
    /// Under a watched prefix but not ours to interpret (logged, skipped).
    Unknown,
}

impl Key<'_> {
    /// Config the gateway serves (what an apply writes).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Key::Route(_) | Key::Upstream(_) | Key::Cert(_) | Key::Consumer(_) | Key::Settings
        )
    }
}

/// The two prefixes we watch, normalised without a trailing slash.
#[derive(Debug, Clone)]
pub struct Keyspace {
    pub prefix: String,
    pub registry: String,
}

impl Keyspace {
    pub fn new(prefix: &str, registry: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
            registry: registry.trim_end_matches('/').to_string(),
        }
    }

    /// What we list and watch for config (routes, upstreams, settings, gateways).
    pub fn config_range(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// What we list and watch for registered instances.
    pub fn registry_range(&self) -> String {
        format!("{}/", self.registry)
    }

    pub fn gateway_key(&self, node: &str) -> String {
        format!("{}/gateways/{node}", self.prefix)
    }

    /// A cache purge record.
    pub fn purge_key(&self, id: &str) -> String {
        format!("{}/purges/{id}", self.prefix)
    }

    /// A shared health verdict.
    pub fn health_key(&self, service: &str, id: &str) -> String {
        format!("{}/health/{service}/{id}", self.prefix)
    }

    /// An ACME HTTP-01 challenge token.
    pub fn acme_challenge_key(&self, token: &str) -> String {
        format!("{}/acme/challenges/{token}", self.prefix)
    }

    /// How ordering managed certificate `cert` went.
    pub fn acme_attempt_key(&self, cert: &str) -> String {
        format!("{}/acme/attempts/{cert}", self.prefix)
    }

    /// A request to renew managed certificate `cert` now.
    pub fn acme_renew_key(&self, cert: &str) -> String {
        format!("{}/acme/renew/{cert}", self.prefix)
    }

    /// The ACME account for a directory (its credentials, encrypted).
    pub fn acme_account_key(&self, account: &str) -> String {
        format!("{}/acme/accounts/{account}", self.prefix)
    }

    /// A managed certificate.
    pub fn cert_key(&self, id: &str) -> String {
        format!("{}/certs/{id}", self.prefix)
    }

    /// A lock's name (an election given up when its job is done).
    pub fn lock_key(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix)
    }

    /// An election (or lock) name: candidates are keys below it.
    pub fn election_key(&self, name: &str) -> String {
        format!("{}/election/{name}", self.prefix)
    }

    /// The marker an apply of several transactions keeps while it writes.
    pub fn batch_key(&self, apply: &str) -> String {
        format!("{}/batches/{apply}", self.prefix)
    }

    pub fn classify<'a>(&self, key: &'a str) -> Key<'a> {
        let non_empty = |s: &'a str| (!s.is_empty() && !s.contains('/')).then_some(s);
        if let Some(rest) = key
            .strip_prefix(self.registry.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return match rest.split_once('/') {
                Some((service, id)) if !service.is_empty() && !id.is_empty() => {
                    Key::Instance { service, id }
                }
                _ => Key::Unknown,
            };
        }
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Key::Unknown;
        };
        if rest == "settings" {
            return Key::Settings;
        }
        let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
        match kind {
            "health" => {
                // An instance id may hold `/` (a static node's id is its URL).
                return match name.split_once('/') {
                    Some((service, id)) if !service.is_empty() && !id.is_empty() => {
                        Key::Health { service, id }
                    }
                    _ => Key::Unknown,
                };
            }
            "acme" => {
                return match name.split_once('/') {
                    Some(("challenges", t)) if non_empty(t).is_some() => Key::AcmeChallenge(t),
                    Some(("attempts", c)) if non_empty(c).is_some() => Key::AcmeAttempt(c),
                    Some(("renew", c)) if non_empty(c).is_some() => Key::AcmeRenew(c),
                    Some(("accounts", _)) => Key::Coordination,
                    _ => Key::Unknown,
                }
            }
            "locks" | "election" => return Key::Coordination,
            _ => {}
        }
        match (kind, non_empty(name)) {
            ("routes", Some(id)) => Key::Route(id),
            ("upstreams", Some(n)) => Key::Upstream(n),
            ("certs", Some(id)) => Key::Cert(id),
            ("consumers", Some(n)) => Key::Consumer(n),
            ("gateways", Some(n)) => Key::Gateway(n),
            ("batches", Some(n)) => Key::Batch(n),
            ("purges", Some(n)) => Key::Purge(n),
            _ => Key::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_kind() {
        let k = Keyspace::new("/tollgate", "/services/");
        assert_eq!(k.classify("/tollgate/routes/users"), Key::Route("users"));
        assert_eq!(
            k.classify("/tollgate/upstreams/users"),
            Key::Upstream("users")
        );
        assert_eq!(k.classify("/tollgate/settings"), Key::Settings);
        assert_eq!(k.classify("/tollgate/gateways/n1"), Key::Gateway("n1"));
        assert_eq!(k.classify(&k.batch_key("a-1")), Key::Batch("a-1"));
        assert_eq!(k.classify(&k.purge_key("p")), Key::Purge("p"));
        assert_eq!(
            k.classify(&k.health_key("users", "i-1")),
            Key::Health {
                service: "users",
                id: "i-1"
            }
        );
        assert_eq!(
            k.classify(&k.acme_challenge_key("tok")),
            Key::AcmeChallenge("tok")
        );
        assert_eq!(
            k.classify(&k.acme_attempt_key("api")),
            Key::AcmeAttempt("api")
        );
        assert_eq!(k.classify(&k.acme_account_key("a1")), Key::Coordination);
        assert_eq!(k.classify(&k.acme_renew_key("api")), Key::AcmeRenew("api"));
        assert_eq!(
            k.classify(&k.election_key("acme/api/694d")),
            Key::Coordination
        );
        assert_eq!(k.classify("/tollgate/locks/x/1"), Key::Coordination);
        assert_eq!(
            k.classify("/services/users/i-1"),
            Key::Instance {
                service: "users",
                id: "i-1"
            }
        );
        for unknown in [
            "/tollgate/routes/",
            "/tollgate/routes/a/b",
            "/tollgate/x/y",
            "/tollgate/health/users",
            "/tollgate/health/users/",
            "/tollgate/acme/challenges/",
            "/services/users",
            "/other",
        ] {
            assert_eq!(k.classify(unknown), Key::Unknown, "{unknown}");
        }
    }
}
