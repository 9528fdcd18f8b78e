//! What the benchmark writes to etcd: the key prefixes, the preloaded route
//! tables and registrations, and the bulk writer that loads them.

use etcd_client::{PutOptions, Txn, TxnOp};
use serde_json::json;
use testkit::rt::block_on;
use testkit::EtcdClient;

pub const ROUTES: &str = "/tollgate/routes/";
/// Where the control window writes: outside every prefix the gateway watches.
pub const UNWATCHED: &str = "/bench-control/routes/";
pub const SERVICES: &str = "/services/";
/// Registry services the preloaded routes are spread over.
pub const SERVICE_COUNT: usize = 100;
/// Puts per etcd transaction when preloading (etcd's default limit is 128).
const TXN_OPS: usize = 100;

/// Route `r<i>` of a preloaded table: a mix of exact, parameter, catch-all
/// and host-bound paths (many distinct first segments, as a gateway in
/// front of many services has), spread over [`SERVICE_COUNT`] services.
pub fn table_route(i: usize, read_ms: Option<u64>) -> String {
    let upstream = format!("svc-{}", i % SERVICE_COUNT);
    let mut v = match i % 4 {
        0 => json!({
            "paths": [format!("/api/v1/svc{i}/items/:id"), format!("/api/v1/svc{i}/items")],
            "upstream": upstream,
        }),
        1 => json!({ "paths": [format!("/svc{i}/*rest")], "upstream": upstream }),
        2 => json!({
            "hosts": [format!("svc{i}.example.com")],
            "paths": ["/shared/*rest"],
            "upstream": upstream,
        }),
        _ => json!({
            "paths": [format!("/static{i}/index.html")],
            "methods": ["GET", "HEAD"],
            "upstream": upstream,
        }),
    };
    if let Some(ms) = read_ms {
        v["timeout"] = json!({ "read_ms": ms });
    }
    v.to_string()
}

pub fn table(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{ROUTES}r{i}"), table_route(i, None)))
        .collect()
}

/// Writes `kvs` in transactions of [`TXN_OPS`] puts, 8 in flight.
pub fn put_all(c: &EtcdClient, kvs: &[(String, String)], lease: Option<i64>) {
    let txns: Vec<Vec<TxnOp>> = kvs
        .chunks(TXN_OPS)
        .map(|chunk| {
            chunk
                .iter()
                .map(|(k, v)| {
                    TxnOp::put(
                        k.as_str(),
                        v.as_str(),
                        lease.map(|l| PutOptions::new().with_lease(l)),
                    )
                })
                .collect()
        })
        .collect();
    block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for ops in txns {
            while set.len() >= 8 {
                let _ = set.join_next().await;
            }
            let c = c.clone();
            set.spawn(async move {
                c.run_async("txn put", |mut cl| {
                    let ops = ops.clone();
                    async move { cl.txn(Txn::new().and_then(ops)).await.map(|_| ()) }
                })
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                panic!("preload transaction failed: {e}");
            }
        }
    });
}

/// Removes every route and registration from earlier phases.
pub fn clean(c: &EtcdClient) {
    c.delete_prefix(ROUTES);
    c.delete_prefix(SERVICES);
}

/// The instance address of registration `i` (never contacted).
pub fn instance_value(i: usize) -> String {
    let addr = format!(
        "http://10.{}.{}.{}:8080",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    );
    if i % 2 == 0 {
        addr
    } else {
        json!({
            "addr": addr,
            "weight": 1 + i % 3,
            "meta": { "zone": format!("z{}", i % 3), "version": "1.4.2" },
        })
        .to_string()
    }
}
