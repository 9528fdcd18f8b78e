//! Probes preserved instances (see `preserve`): an HTTP GET of the
//! registration's `health_path` or the upstream's active check path, else
//! a TCP connect, at each target's interval. Answers go back to the watch
//! loop, the store's one writer, which drops an instance that failed
//! enough. Runs for the life of the etcd source, across reconnects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;

use super::preserve::{Probed, Target, Targets};

/// How often the target list is looked at.
const TICK: Duration = Duration::from_millis(50);
/// ...while it is empty.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// One probe of `t`.
async fn probe(t: &Target) -> bool {
    match &t.path {
        Some(path) => crate::http_probe::get_ok(t.addr, &t.authority, path, t.timeout).await,
        None => matches!(
            tokio::time::timeout(t.timeout, tokio::net::TcpStream::connect(t.addr)).await,
            Ok(Ok(_))
        ),
    }
}

pub async fn run(targets: Targets, answers: Sender<Probed>) {
    let mut due: HashMap<Target, Instant> = HashMap::new();
    loop {
        let list = targets.load_full();
        tokio::time::sleep(if list.is_empty() { IDLE_TICK } else { TICK }).await;
        let now = Instant::now();
        let listed: std::collections::HashSet<&Target> = list.iter().collect();
        due.retain(|t, _| listed.contains(t));
        for t in list.iter() {
            let next = due.entry(t.clone()).or_insert(now);
            if *next > now {
                continue;
            }
            *next = now + t.interval;
            let (t, answers) = (t.clone(), answers.clone());
            tokio::spawn(async move {
                let ok = probe(&t).await;
                // Full (the watch loop is away: etcd down): this answer is
                // dropped; the next round brings a fresh one.
                let _ = answers.try_send(Probed {
                    service: t.service,
                    id: t.id,
                    addr: t.addr,
                    ok,
                });
            });
        }
        if answers.is_closed() {
            return;
        }
    }
}
