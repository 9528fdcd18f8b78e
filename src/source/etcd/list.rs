//! Paged listing of a prefix at one revision (sync rule 1).

use etcd_client::{Client, GetOptions};
use std::time::Duration;

const PAGE: i64 = 1000;

/// What a listing saw: its revision and the cluster it came from.
#[derive(Debug, Clone, Copy)]
pub struct Listed {
    pub revision: i64,
    pub cluster_id: u64,
}

fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Lists every key under each prefix, all at the revision of the first
/// page, `PAGE` keys per request so a large registry never makes one huge
/// response. Each key goes to `each(key, value, lease, mod_revision)` as
/// its page arrives, so the whole listing is never held at once. Returns
/// what the listing saw and how many keys it listed.
pub async fn list(
    client: &mut Client,
    prefixes: &[String],
    timeout: Duration,
    mut each: impl FnMut(&str, &[u8], i64, i64) + Send,
) -> anyhow::Result<(Listed, usize)> {
    let mut count = 0;
    let mut at: Option<Listed> = None;
    for prefix in prefixes {
        let end = range_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if let Some(l) = at {
                opts = opts.with_revision(l.revision);
            }
            let resp = tokio::time::timeout(timeout, client.get(from.clone(), Some(opts)))
                .await
                .map_err(|_| anyhow::anyhow!("listing {prefix} timed out"))??;
            let header = resp
                .header()
                .ok_or_else(|| anyhow::anyhow!("etcd answered without a header"))?;
            if at.is_none() {
                at = Some(Listed {
                    revision: header.revision(),
                    cluster_id: header.cluster_id(),
                });
            }
            let kvs = resp.kvs();
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key());
                each(&key, kv.value(), kv.lease(), kv.mod_revision());
            }
            count += kvs.len();
            match kvs.last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    let listed = at.ok_or_else(|| anyhow::anyhow!("nothing to list"))?;
    Ok((listed, count))
}
