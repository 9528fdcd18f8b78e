//! Orders and renews managed certificates for the fleet. Every node looks
//! at the managed certificates once a second; for one that is due (nothing
//! issued, two thirds of its lifetime gone, or a renewal asked for) and not
//! backing off, it campaigns for the certificate's lock
//! (`<prefix>/locks/acme/<cert>`, through the election helper). The winner
//! reads the entry afresh (the previous holder may just have renewed it),
//! orders, and writes the certificate and key into the entry in a
//! transaction fenced by its lock revision and by the entry's revision: a
//! holder that lost its lease, or an operator's edit made meanwhile, makes
//! the write fail instead of being overwritten. The order runs against the
//! lock: a lost session stops it at once.
//!
//! Failures back off (5 s doubling to an hour) in
//! `<prefix>/acme/attempts/<cert>`, which every node shows in `/status` and
//! `tollgate_acme_failures`; the old certificate keeps serving.

use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{AcmeClient, AcmeError, ChallengeBoard, Directory};
use super::Defaults;
use crate::cluster::election::{self, Leadership};
use crate::cluster::session::SessionWatch;
use crate::metrics::METRICS;
use crate::model::acme::{AcmeAttempt, ManagedCert};
use crate::model::cert::CertSpec;
use crate::snapshot::acme::AcmeView;
use crate::snapshot::SnapshotCell;
use crate::source::etcd::Keyspace;
use crate::tls::KeyRing;

/// How often due certificates are looked for.
const TICK: Duration = Duration::from_secs(1);
/// After a turn with the lock that found nothing to do (the entry changed
/// or another node did it), this long before this node looks again.
const NOTHING_TO_DO_COOLDOWN: Duration = Duration::from_secs(30);
/// One order's bound (validation, finalization, download).
const ORDER_DEADLINE: Duration = Duration::from_secs(120);
const BACKOFF_BASE_MS: u64 = 5_000;
const BACKOFF_MAX_MS: u64 = 3_600_000;

pub struct Manager {
    pub sessions: SessionWatch,
    pub keys: Keyspace,
    pub node_id: String,
    pub cell: Arc<SnapshotCell>,
    pub key_ring: Arc<KeyRing>,
    pub defaults: Defaults,
}

fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(clock_offset_ms())
}

/// Test-only: a wall clock this far off (`TOLLGATE_TEST_CLOCK_OFFSET_S`),
/// to test a fleet with skewed clocks. Release builds have no such switch.
#[cfg(feature = "test-hooks")]
fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("TOLLGATE_TEST_CLOCK_OFFSET_S")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |s| s * 1000)
    })
}

#[cfg(not(feature = "test-hooks"))]
fn clock_offset_ms() -> i64 {
    0
}

/// A renewal needs the entry unchanged, by this node's own monotonic
/// clock, for a tenth of the certificate's lifetime (unless the node found
/// it so at start-up, or an operator asked). Wall clocks decide when a
/// renewal is due; a node whose clock runs ahead would otherwise renew at
/// once after every issuance, forever. With this it renews early at most
/// once per tenth of a lifetime (or per restart).
/// A certificate in its last tenth of life (by this node's clock) is
/// renewed whatever: a certificate converted to a managed one, or pasted in
/// days before it expires, must not wait.
fn settled(first_seen: Instant, found_at_start: bool, issued: (i64, i64), now_s: i64) -> bool {
    let tenth_s = (issued.1 - issued.0).max(0) / 10;
    let tenth = Duration::from_secs(tenth_s as u64);
    found_at_start || first_seen.elapsed() >= tenth || now_s >= issued.1 - tenth_s
}

/// The back-off after `failures` failed attempts in a row.
fn backoff_ms(failures: u32) -> u64 {
    BACKOFF_BASE_MS
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_MS)
}

/// Whether `cert` should be ordered now: due (or a renewal asked for),
/// and not backing off after a failure (a renewal request waits too, or a
/// CA that is down would be asked every second; deleting the attempt
/// record ends a back-off).
fn is_due(cert: &ManagedCert, attempt: Option<&AcmeAttempt>, renew: bool, now_ms: u64) -> bool {
    let due = renew || (now_ms / 1000) as i64 >= cert.renew_at();
    let waiting = attempt.is_some_and(|a| a.failures > 0 && now_ms < a.next_attempt_unix_ms);
    due && !waiting
}

pub async fn run(m: Manager) {
    let m = Arc::new(m);
    let mut running: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    // Per certificate: the validity last seen, when this node first saw
    // it, and whether that was at start-up.
    let mut seen: std::collections::HashMap<String, Seen> = Default::default();
    // Whether the entries found at start-up (the first scan once a config
    // is applied) have been taken.
    let mut baseline_taken = false;
    // Certificates whose leftover attempt and renewal records were deleted.
    let mut cleaned: std::collections::HashSet<String> = Default::default();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        running.retain(|_, h| !h.is_finished());
        let view = m.cell.acme.load_full();
        if !m.cell.status.is_ready() {
            continue;
        }
        seen.retain(|id, _| view.managed.contains_key(id));
        m.forget_deleted(&view, &mut cleaned);
        let now = now_ms();
        for (id, cert) in &view.managed {
            let at_start = !baseline_taken;
            let first = seen
                .entry(id.clone())
                .or_insert((cert.issued, Instant::now(), at_start));
            if first.0 != cert.issued {
                *first = (cert.issued, Instant::now(), false);
            }
            if running.contains_key(id) {
                continue;
            }
            let renew = view.renew.contains(id);
            if !is_due(cert, view.attempts.get(id), renew, now) {
                continue;
            }
            // (A certificate that lacks a name is due whatever the clocks.)
            if let (Some(issued), true) = (cert.issued, cert.covers_snis) {
                if !renew && !settled(first.1, first.2, issued, (now / 1000) as i64) {
                    continue;
                }
            }
            let (m, cert_id, seen_issued) = (m.clone(), id.clone(), cert.issued);
            running.insert(
                id.clone(),
                tokio::spawn(async move { m.order_under_lock(&cert_id, seen_issued).await }),
            );
        }
        baseline_taken = true;
    }
}

/// A managed certificate as this node last saw it: its validity, when it
/// first saw that, and whether that was at start-up.
type Seen = (Option<(i64, i64)>, Instant, bool);

/// Why an attempt failed, for the attempt record and the log.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Acme(Box<AcmeError>),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Config(String),
}

impl From<AcmeError> for Failed {
    fn from(e: AcmeError) -> Self {
        Failed::Acme(Box::new(e))
    }
}

impl Manager {
    /// Deletes the attempt and renewal records of certificates that are no
    /// longer managed (every node may; deletes are idempotent), so a
    /// certificate made again under the same id starts afresh.
    fn forget_deleted(&self, view: &AcmeView, cleaned: &mut std::collections::HashSet<String>) {
        cleaned.retain(|id| !view.managed.contains_key(id));
        let leftover: Vec<String> = (view.attempts.keys().chain(view.renew.iter()))
            .filter(|id| !view.managed.contains_key(*id) && !cleaned.contains(*id))
            .cloned()
            .collect();
        let Some(live) = self.sessions.borrow().clone() else {
            return;
        };
        for id in leftover {
            cleaned.insert(id.clone());
            let keys = [
                self.keys.acme_attempt_key(&id),
                self.keys.acme_renew_key(&id),
            ];
            let mut client = live.client.clone();
            tokio::spawn(async move {
                for key in keys {
                    let _ = crate::cluster::session::bounded(client.delete(key, None)).await;
                }
            });
        }
    }

    /// Orders `id` under its lock, if what this node decided on (the
    /// certificate it saw, `seen_issued`) is still so once it holds it.
    async fn order_under_lock(&self, id: &str, seen_issued: Option<(i64, i64)>) {
        let lock = self.keys.lock_key(&format!("acme/{id}"));
        let role = format!("acme/{id}");
        // Not cancelled on a timer: a campaign given up server-side could
        // delete the candidate key a next campaign on the same lease took
        // over. It ends when won (then the entry is read afresh) or when
        // the session goes.
        let Some(lead) = election::campaign(&self.sessions, &lock, &self.node_id, &role).await
        else {
            return;
        };
        let outcome = tokio::select! {
            r = self.attempt(&lead, id, seen_issued) => r,
            _ = lead.lost() => {
                tracing::warn!(cert = id, "lost the ACME lock mid-order (etcd session lost); stopped");
                return;
            }
        };
        let mut idle = false;
        match outcome {
            Ok(false) => idle = true,
            Ok(true) => {
                METRICS.acme_orders.with_label_values(&["issued"]).inc();
            }
            Err((e, previous)) => {
                METRICS.acme_orders.with_label_values(&["failed"]).inc();
                let failures = previous.map_or(0, |a| a.failures) + 1;
                let wait = backoff_ms(failures);
                tracing::error!(cert = id, failures, retry_in_s = wait / 1000, error = %e, "ordering the managed certificate failed; the current certificate (if any) keeps serving");
                let record = AcmeAttempt {
                    failures,
                    last_error: Some(e.to_string()),
                    next_attempt_unix_ms: now_ms() + wait,
                    node: self.node_id.clone(),
                    issued_unix_ms: None,
                };
                let value = serde_json::to_string(&record).unwrap_or_default();
                let put = TxnOp::put(self.keys.acme_attempt_key(id), value, None);
                // Not for a certificate deleted meanwhile.
                let exists = Compare::version(self.keys.cert_key(id), CompareOp::Greater, 0);
                if let Err(e) = lead.txn(vec![exists], vec![put]).await {
                    tracing::warn!(cert = id, error = %e, "cannot record the failed attempt");
                }
            }
        }
        lead.resign().await;
        if idle {
            // This node's view and etcd disagree (its watch lags, or the
            // entry changed): not every second.
            tokio::time::sleep(NOTHING_TO_DO_COOLDOWN).await;
        }
    }

    /// One attempt while holding the lock: Ok(true) issued, Ok(false)
    /// nothing to do after all.
    async fn attempt(
        &self,
        lead: &Leadership,
        id: &str,
        seen_issued: Option<(i64, i64)>,
    ) -> Result<bool, (Failed, Option<AcmeAttempt>)> {
        let mut client = lead.live().client.clone();
        let cert_key = self.keys.cert_key(id);
        let attempt_key = self.keys.acme_attempt_key(id);
        let fresh = async {
            let c = client.get(cert_key.as_str(), None).await?;
            let a = client.get(attempt_key.as_str(), None).await?;
            let r = client.get(self.keys.acme_renew_key(id), None).await?;
            Ok::<_, etcd_client::Error>((c, a, r))
        };
        let (c, a, r) = fresh.await.map_err(|e| (Failed::from(e), None))?;
        let previous: Option<AcmeAttempt> = a
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok());
        let Some(kv) = c.kvs().first() else {
            return Ok(false);
        };
        let revision = kv.mod_revision();
        let Ok((doc, _)) = crate::tls::cert::from_json(id, kv.value(), &self.key_ring) else {
            return Ok(false);
        };
        let Some(managed) = doc.managed else {
            return Ok(false);
        };
        let renew = !r.kvs().is_empty();
        // The previous holder may have done it while this node waited: a
        // certificate other than the one this node decided on is not
        // this job (a renewal still asked for is).
        if (managed.issued != seen_issued && !renew)
            || !is_due(&managed, previous.as_ref(), renew, now_ms())
        {
            return Ok(false);
        }
        let fail = |e: Failed| (e, previous.clone());
        let issued = self.order(lead, id, &managed).await.map_err(fail)?;
        let key = if self.key_ring.is_enabled() {
            self.key_ring
                .encrypt(issued.key_pem.as_bytes())
                .map_err(|e| fail(Failed::Config(format!("cannot encrypt the key: {e}"))))?
        } else {
            issued.key_pem
        };
        let spec = CertSpec {
            id: None,
            snis: managed.snis.clone(),
            cert: issued.cert_pem,
            key,
            acme: Some(managed.acme.clone()),
        };
        let record = AcmeAttempt {
            failures: 0,
            last_error: None,
            next_attempt_unix_ms: 0,
            node: self.node_id.clone(),
            issued_unix_ms: Some(now_ms()),
        };
        let ops = vec![
            TxnOp::put(
                cert_key.as_str(),
                serde_json::to_string(&spec).unwrap_or_default(),
                None,
            ),
            TxnOp::put(
                attempt_key,
                serde_json::to_string(&record).unwrap_or_default(),
                None,
            ),
            TxnOp::delete(self.keys.acme_renew_key(id), None),
        ];
        let fence = vec![Compare::mod_revision(
            cert_key.as_str(),
            CompareOp::Equal,
            revision,
        )];
        match lead.txn(fence, ops).await {
            Ok(true) => {
                tracing::info!(cert = id, snis = ?managed.snis, "managed certificate issued and stored");
                Ok(true)
            }
            Ok(false) => Err(fail(Failed::Config(
                "the certificate entry changed while ordering (or the lock was lost); the new certificate was not stored".into(),
            ))),
            Err(e) => Err(fail(e.into())),
        }
    }

    async fn order(
        &self,
        lead: &Leadership,
        id: &str,
        cert: &ManagedCert,
    ) -> Result<super::client::Issued, Failed> {
        let url = cert
            .acme
            .directory
            .as_deref()
            .or(self.defaults.directory.as_deref())
            .ok_or_else(|| Failed::Config("no ACME directory: set acme.directory on the certificate or in the bootstrap file".into()))?;
        let email = cert
            .acme
            .email
            .as_deref()
            .or(self.defaults.email.as_deref());
        let dir = Directory {
            url,
            email,
            tls_roots_pem: self.defaults.tls_roots.as_deref(),
        };
        let account = self.account(lead, &dir).await?;
        let board = EtcdBoard {
            lead,
            keys: &self.keys,
            cell: &self.cell,
        };
        tracing::info!(cert = id, directory = url, snis = ?cert.snis, "ordering a managed certificate");
        Ok(account.order(&cert.snis, &board, ORDER_DEADLINE).await?)
    }

    /// Stored account credentials in clear (decrypted if encrypted).
    fn decrypt_account(&self, key: &str, stored: &str) -> Result<String, Failed> {
        if !crate::tls::keyring::is_encrypted(stored) {
            return Ok(stored.to_string());
        }
        let plain = self.key_ring.decrypt(stored).map_err(|e| {
            Failed::Config(format!("cannot decrypt the ACME account at {key}: {e}"))
        })?;
        String::from_utf8(plain)
            .map_err(|_| Failed::Config(format!("the ACME account at {key} is not UTF-8")))
    }

    /// The account for this directory and contact: restored from etcd, or
    /// registered and stored (encrypted when key encryption is on) if none.
    async fn account(&self, lead: &Leadership, dir: &Directory<'_>) -> Result<AcmeClient, Failed> {
        let who = format!("{}\n{}", dir.url, dir.email.unwrap_or(""));
        let digest = ring::digest::digest(&ring::digest::SHA256, who.as_bytes());
        let name: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = self.keys.acme_account_key(&name);
        let mut client = lead.live().client.clone();
        for _ in 0..2 {
            // A stored account, unless the CA has forgotten it (then it is
            // registered again and replaces the stored one).
            let mut replace = None;
            if let Some(kv) = client.get(key.as_str(), None).await?.kvs().first() {
                let json = self.decrypt_account(&key, kv.value_str().map_err(Failed::from)?)?;
                match AcmeClient::restore(&json, dir).await {
                    Ok(account) => return Ok(account),
                    Err(e) if account_gone(&e) => {
                        tracing::warn!(
                            key,
                            directory = dir.url,
                            "the CA no longer knows the stored ACME account; registering a new one"
                        );
                        replace = Some(kv.mod_revision());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let (account, credentials) = AcmeClient::create(dir).await?;
            let stored = if self.key_ring.is_enabled() {
                self.key_ring.encrypt(credentials.as_bytes()).map_err(|e| {
                    Failed::Config(format!("cannot encrypt the ACME account key: {e}"))
                })?
            } else {
                tracing::warn!(
                    key,
                    "ACME account key stored in clear: set tls.key_encryption_keys to encrypt it"
                );
                credentials
            };
            // Only if no other node stored (or replaced) one meanwhile:
            // then use theirs.
            let unchanged = match replace {
                Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
                None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            };
            if lead
                .txn(
                    vec![unchanged],
                    vec![TxnOp::put(key.as_str(), stored, None)],
                )
                .await?
            {
                tracing::info!(key, directory = dir.url, "ACME account registered");
                return Ok(account);
            }
        }
        Err(Failed::Config(format!(
            "cannot settle the ACME account at {key}"
        )))
    }
}

/// Whether the CA says the account does not exist (a CA that was reset,
/// or a test CA restarted).
fn account_gone(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Ca { problem, .. }
        if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

/// HTTP-01 tokens through etcd, on the lock holder's session lease (a
/// holder that dies leaves none behind): every node answers them.
struct EtcdBoard<'a> {
    lead: &'a Leadership,
    keys: &'a Keyspace,
    cell: &'a SnapshotCell,
}

#[async_trait::async_trait]
impl ChallengeBoard for EtcdBoard<'_> {
    async fn publish(&self, token: &str, key_authorization: &str) -> anyhow::Result<()> {
        let live = self.lead.live();
        let mut client = live.client.clone();
        client
            .put(
                self.keys.acme_challenge_key(token),
                key_authorization,
                Some(PutOptions::new().with_lease(live.lease)),
            )
            .await?;
        // Served here once this node's watch applied it; the others apply
        // the same event within milliseconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !has_token(&self.cell.acme.load(), token) {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the challenge token did not come back through the watch within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn withdraw(&self, token: &str) {
        let mut client = self.lead.live().client.clone();
        if let Err(e) = client
            .delete(self.keys.acme_challenge_key(token), None)
            .await
        {
            tracing::debug!(error = %e, "challenge token not withdrawn; it goes with the lease");
        }
    }
}

fn has_token(view: &AcmeView, token: &str) -> bool {
    view.challenges.contains_key(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::acme::AcmeSpec;

    fn cert(issued: Option<(i64, i64)>) -> ManagedCert {
        ManagedCert {
            snis: vec!["a.example".into()],
            acme: AcmeSpec::default(),
            issued,
            covers_snis: true,
        }
    }

    #[test]
    fn due_when_unissued_or_two_thirds_old_and_not_backing_off() {
        let now = 1_000_000_000u64;
        let s = (now / 1000) as i64;
        assert!(is_due(&cert(None), None, false, now));
        assert!(!is_due(&cert(Some((s - 10, s + 90))), None, false, now));
        assert!(is_due(&cert(Some((s - 70, s + 30))), None, false, now));
        let backing_off = AcmeAttempt {
            failures: 2,
            next_attempt_unix_ms: now + 1,
            ..Default::default()
        };
        assert!(!is_due(&cert(None), Some(&backing_off), false, now));
        assert!(
            !is_due(&cert(None), Some(&backing_off), true, now),
            "a renewal request waits too"
        );
        assert!(is_due(&cert(Some((s - 10, s + 90))), None, true, now));
    }

    #[test]
    fn a_renewal_waits_a_tenth_of_the_lifetime_after_the_last_change() {
        let lifetime = (0, 1000);
        assert!(
            settled(Instant::now(), true, lifetime, 500),
            "found at start-up"
        );
        assert!(!settled(Instant::now(), false, lifetime, 700));
        let long_ago = Instant::now() - Duration::from_secs(100);
        assert!(settled(long_ago, false, lifetime, 700));
        assert!(
            settled(Instant::now(), false, lifetime, 900),
            "in its last tenth"
        );
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff_ms(1), 5_000);
        assert_eq!(backoff_ms(2), 10_000);
        assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    }
}
