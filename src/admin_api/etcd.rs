//! The admin API's etcd: every write is one transaction that compares the
//! key's mod_revision when the caller said which version it changes
//! (`If-Match`), so two writers cannot silently overwrite each other.

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long one etcd call may take before the API answers 503.
const CALL: Duration = Duration::from_secs(3);

/// Why an etcd call did not do what was asked.
#[derive(Debug)]
pub enum EtcdError {
    /// etcd could not be reached or did not answer in time (503).
    Unavailable(String),
    /// The key's version was not the one compared (412).
    Conflict,
}

/// One key's value and versions.
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A write's outcome: the revision it made, and whether the key was new.
pub struct Written {
    pub revision: i64,
    pub created: bool,
}

/// A lease this process keeps alive; dropping it stops the keep-alives
/// (the lease then ends after its TTL).
pub struct KeptLease {
    pub id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

pub struct Etcd {
    endpoints: Vec<String>,
    client: Mutex<Option<Client>>,
}

fn unavailable(e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Unavailable(e.to_string())
}

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            client: Mutex::new(None),
        }
    }

    /// A connected client, made on first use and again after a failure.
    async fn client(&self) -> Result<Client, EtcdError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(CALL)
            .with_timeout(CALL)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let c = tokio::time::timeout(CALL, Client::connect(&self.endpoints, Some(opts)))
            .await
            .map_err(|_| unavailable("connecting to etcd timed out"))?
            .map_err(unavailable)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client after a failed call, so the next one reconnects.
    async fn failed(&self, e: impl std::fmt::Display) -> EtcdError {
        *self.client.lock().await = None;
        unavailable(e)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Entry>, EtcdError> {
        let mut c = self.client().await?;
        match tokio::time::timeout(CALL, c.get(key, None)).await {
            Ok(Ok(r)) => Ok(r.kvs().first().map(|kv| Entry {
                key: key.to_string(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            })),
            Ok(Err(e)) => Err(self.failed(e).await),
            Err(_) => Err(self.failed("etcd did not answer in time").await),
        }
    }

    /// Keys from `from` (inclusive) up to the end of `prefix`, in key
    /// order, at most `limit` (0: all); with the store's revision.
    pub async fn range(
        &self,
        prefix: &str,
        from: &str,
        limit: i64,
        keys_only: bool,
    ) -> Result<(Vec<Entry>, bool, i64), EtcdError> {
        let mut c = self.client().await?;
        let mut range_end = prefix.as_bytes().to_vec();
        if let Some(last) = range_end.last_mut() {
            *last += 1;
        }
        let mut opts = GetOptions::new()
            .with_range(range_end)
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(limit);
        if keys_only {
            opts = opts.with_keys_only();
        }
        match tokio::time::timeout(CALL, c.get(from, Some(opts))).await {
            Ok(Ok(r)) => {
                let revision = r.header().map_or(0, |h| h.revision());
                let more = r.more();
                let entries = r
                    .kvs()
                    .iter()
                    .map(|kv| Entry {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    })
                    .collect();
                Ok((entries, more, revision))
            }
            Ok(Err(e)) => Err(self.failed(e).await),
            Err(_) => Err(self.failed("etcd did not answer in time").await),
        }
    }

    /// Puts `value` at `key`; with `expect`, only if the key's
    /// mod_revision is that (0: only if the key does not exist).
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Option<i64>,
    ) -> Result<Written, EtcdError> {
        let compare = expect.map(|rev| Compare::mod_revision(key, CompareOp::Equal, rev));
        let put = TxnOp::put(key, value, None);
        let probe = TxnOp::get(key, None);
        let txn = Txn::new()
            .when(compare.into_iter().collect::<Vec<_>>())
            .and_then(vec![probe.clone(), put])
            .or_else(vec![probe]);
        let r = self.txn(txn).await?;
        if !r.succeeded() {
            return Err(EtcdError::Conflict);
        }
        let created = match r.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().is_empty(),
            _ => false,
        };
        let revision = r.header().map_or(0, |h| h.revision());
        Ok(Written { revision, created })
    }

    /// Deletes `key` (optionally only at mod_revision `expect`); `false`
    /// when there was nothing to delete.
    pub async fn delete(&self, key: &str, expect: Option<i64>) -> Result<(bool, i64), EtcdError> {
        let compare = expect.map(|rev| Compare::mod_revision(key, CompareOp::Equal, rev));
        let txn = Txn::new()
            .when(compare.into_iter().collect::<Vec<_>>())
            .and_then(vec![TxnOp::delete(key, None)]);
        let r = self.txn(txn).await?;
        if !r.succeeded() {
            return Err(EtcdError::Conflict);
        }
        let deleted = match r.op_responses().first() {
            Some(TxnOpResponse::Delete(d)) => d.deleted() > 0,
            _ => false,
        };
        Ok((deleted, r.header().map_or(0, |h| h.revision())))
    }

    /// Writes `changes` (key, value or `None` to delete, the mod_revision
    /// it must still have: 0 for "must not exist") in one transaction: all
    /// or none. Returns the revision made.
    pub async fn batch(
        &self,
        changes: &[(String, Option<Vec<u8>>, i64)],
    ) -> Result<i64, EtcdError> {
        let compares: Vec<Compare> = changes
            .iter()
            .map(|(k, _, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
            .collect();
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|(k, v, _)| match v {
                Some(v) => TxnOp::put(k.as_str(), v.clone(), None),
                None => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let r = self.txn(Txn::new().when(compares).and_then(ops)).await?;
        if !r.succeeded() {
            return Err(EtcdError::Conflict);
        }
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Grants a lease of `ttl` seconds, kept alive until the returned
    /// handle is dropped or revoked.
    pub async fn kept_lease(&self, ttl: i64) -> Result<KeptLease, EtcdError> {
        let mut c = self.client().await?;
        let id = match tokio::time::timeout(CALL, c.lease_grant(ttl, None)).await {
            Ok(Ok(r)) => r.id(),
            Ok(Err(e)) => return Err(self.failed(e).await),
            Err(_) => return Err(self.failed("etcd did not answer in time").await),
        };
        let every = Duration::from_secs((ttl as u64 / 3).max(1));
        let keeper = tokio::spawn(async move {
            let Ok((mut keeper, mut acks)) = c.lease_keep_alive(id).await else {
                return;
            };
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match acks.message().await {
                    Ok(Some(ack)) if ack.ttl() > 0 => {}
                    _ => {
                        tracing::warn!(
                            lease = id,
                            "lost the lease: gateways stop waiting for this apply"
                        );
                        return;
                    }
                }
            }
        });
        Ok(KeptLease { id, keeper })
    }

    /// Puts `value` at `key` under `lease`; the revision made.
    pub async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<i64, EtcdError> {
        let op = TxnOp::put(
            key,
            value,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        );
        let r = self.txn(Txn::new().and_then(vec![op])).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Ends a lease: its keys go at once.
    pub async fn revoke(&self, lease: KeptLease) -> Result<(), EtcdError> {
        lease.keeper.abort();
        let mut c = self.client().await?;
        match tokio::time::timeout(CALL, c.lease_revoke(lease.id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed(e).await),
            Err(_) => Err(self.failed("etcd did not answer in time").await),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, EtcdError> {
        let mut c = self.client().await?;
        match tokio::time::timeout(CALL, c.txn(txn)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.failed(e).await),
            Err(_) => Err(self.failed("etcd did not answer in time").await),
        }
    }
}
