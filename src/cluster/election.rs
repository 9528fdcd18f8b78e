//! The one election helper every leader-only job runs through: campaign
//! on etcd's election API with this node's kept-alive session lease, act
//! only through writes fenced by the leader key's revision, give the role
//! up the moment the session is lost, resign when done.
//!
//! Pitfalls it is built against (each has bitten etcd users):
//! - A campaign on a lease nobody keeps alive ends silently after the
//!   lease's TTL: here the lease is the node's session lease, kept alive by
//!   `session`, and losing it ends the session for every role at once.
//! - A lost keep-alive stream means the lease may be gone: the session
//!   ends on it (or on its local deadline, which falls before the server's
//!   expiry), and [`Leadership::lost`] resolves, before the next write.
//! - A campaign can answer "won" to several callers around a lease expiry:
//!   so nothing is written except in a transaction that compares the leader
//!   key's create revision ([`Leadership::txn`]); a deposed leader's write
//!   fails instead of overwriting a newer result.
//!
//! For the next job: `campaign(&mut sessions, &name, &node_id)`, then do
//! the work in a `select!` against `leadership.lost()`, write with
//! `leadership.txn(..)`, and `leadership.resign()` at the end.

use etcd_client::{Compare, CompareOp, LeaderKey, ResignOptions, Txn, TxnOp};

use super::session::{self, Live, SessionWatch};
use crate::metrics::METRICS;

/// Holding an election (or a lock, which is an election given up when its
/// job is done). The role shows in `/status` and `tollgate_cluster_roles`
/// while held.
pub struct Leadership {
    live: Live,
    leader: LeaderKey,
    sessions: SessionWatch,
    role: String,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("role", &self.role)
            .field("rev", &self.leader.rev())
            .finish()
    }
}

/// Campaigns for `name` as `value` until this node wins (Some) or its
/// session is lost first (None). `role` names it in `/status` and metrics.
pub async fn campaign(
    sessions: &SessionWatch,
    name: &str,
    value: &str,
    role: &str,
) -> Option<Leadership> {
    let mut sessions = sessions.clone();
    loop {
        let live = session::wait_live(&mut sessions).await?;
        let mut client = live.client.clone();
        let won = tokio::select! {
            r = client.campaign(name, value, live.lease) => r,
            _ = session::lost(&mut sessions, live.epoch) => continue,
        };
        match won {
            Ok(resp) => {
                let Some(leader) = resp.leader().cloned() else {
                    tracing::warn!(
                        election = name,
                        "campaign answered without a leader key; retrying"
                    );
                    continue;
                };
                // Won on a lease that is no longer this node's live one:
                // not ours to act on.
                if leader.lease() != live.lease || !is_current(&sessions, live.epoch) {
                    continue;
                }
                METRICS.cluster_roles.with_label_values(&[role]).set(1);
                tracing::info!(election = name, role, rev = leader.rev(), "won election");
                return Some(Leadership {
                    live,
                    leader,
                    sessions,
                    role: role.to_string(),
                });
            }
            Err(e) => {
                tracing::debug!(election = name, error = %e, "campaign failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = session::lost(&mut sessions, live.epoch) => {}
                }
            }
        }
    }
}

fn is_current(sessions: &SessionWatch, epoch: u64) -> bool {
    sessions.borrow().as_ref().map(|l| l.epoch) == Some(epoch)
}

impl Leadership {
    /// The fencing token: the leader key's create revision.
    pub fn revision(&self) -> i64 {
        self.leader.rev()
    }

    /// Whether this node may still act (its session is the one it won on).
    pub fn is_held(&self) -> bool {
        is_current(&self.sessions, self.live.epoch)
    }

    /// Resolves when the role is lost (the session ended).
    pub async fn lost(&self) {
        let mut s = self.sessions.clone();
        session::lost(&mut s, self.live.epoch).await
    }

    /// The session client, for reads and for writes under the lease.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Runs `ops` only if this node still holds the election (its leader
    /// key exists with the revision it won with) and `also` holds; whether
    /// they ran. A deposed leader's write fails here instead of landing.
    pub async fn txn(
        &self,
        also: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, etcd_client::Error> {
        if !self.is_held() {
            return Ok(false);
        }
        let mut when = vec![Compare::create_revision(
            self.leader.key(),
            CompareOp::Equal,
            self.leader.rev(),
        )];
        when.extend(also);
        let mut client = self.live.client.clone();
        let resp = client.txn(Txn::new().when(when).and_then(ops)).await?;
        Ok(resp.succeeded())
    }

    /// Gives the role up (best effort: if etcd cannot be reached the key
    /// goes with the session's lease).
    pub async fn resign(self) {
        let mut client = self.live.client.clone();
        let opts = ResignOptions::new().with_leader(self.leader.clone());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.resign(Some(opts)))
            .await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let _ = METRICS.cluster_roles.remove_label_values(&[&self.role]);
    }
}
