//! What every node knows of managed certificates: which ones the fleet
//! orders (for the orderer), the HTTP-01 tokens being validated (answered
//! from `/.well-known/acme-challenge/` on any node), how the last attempts
//! went and which renewals an operator asked for. Swapped whole on change
//! (a handful of entries, changed rarely).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::acme::{AcmeAttempt, ManagedCert};

#[derive(Debug, Clone, Default)]
pub struct AcmeView {
    pub managed: BTreeMap<String, ManagedCert>,
    /// Token → key authorization.
    pub challenges: ahash::AHashMap<String, String>,
    pub attempts: BTreeMap<String, AcmeAttempt>,
    /// Certificates an operator asked to renew now.
    pub renew: BTreeSet<String>,
}

impl AcmeView {
    /// Whether challenge paths are this gateway's to answer: it manages a
    /// certificate or validates a token (else they route as any path, so
    /// an application's own ACME client behind the gateway keeps working).
    pub fn answers_challenges(&self) -> bool {
        !self.managed.is_empty() || !self.challenges.is_empty()
    }
}
