//! Following etcd after a listing: one watch per prefix from R+1, with
//! progress notifications; compaction, a revision going backwards or a new
//! cluster id ask for a re-list (rule 2); a stream that stops answering
//! progress requests is declared dead (rule 5).
//!
//! The watch does not ask for previous values: [`EtcdState`] holds every
//! key's current value, so a delete needs only its key. Each previous value
//! costs etcd a read of its backend per event and per watching gateway; on
//! etcd 3.4 that read copies the whole write buffer (after a burst of writes
//! ~0.5 MB per event), which doubled etcd's CPU at 100 route updates/s.

use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
use futures_util::FutureExt;
use std::time::{Duration, Instant};

use super::list::Listed;
use super::preserve::Probed;
use super::progress::Held;
use super::state::EtcdState;
use crate::metrics::METRICS;

/// Why a watch session ended without an error.
#[derive(Debug)]
pub enum Relist {
    Compacted(i64),
    RevisionBackwards { seen: i64, had: i64 },
    NewCluster { seen: u64, had: u64 },
}

impl std::fmt::Display for Relist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Relist::Compacted(r) => write!(f, "watch fell behind compaction at revision {r}"),
            Relist::RevisionBackwards { seen, had } => {
                write!(f, "etcd revision went backwards from {had} to {seen}")
            }
            Relist::NewCluster { seen, had } => {
                write!(f, "etcd cluster id changed from {had:x} to {seen:x}")
            }
        }
    }
}

impl Relist {
    pub fn reason(&self) -> &'static str {
        match self {
            Relist::Compacted(_) => "compacted",
            Relist::RevisionBackwards { .. } => "revision_backwards",
            Relist::NewCluster { .. } => "new_cluster",
        }
    }
}

/// How often idle streams are asked for progress, and how many unanswered
/// asks make a stream silent.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
const SILENT_AFTER: u32 = 3;
/// Messages taken from already-buffered input before one publish.
const MAX_BATCH: usize = 4096;
/// Least time between two publishes while changes keep arriving: a change
/// after a quiet moment is published at once, a burst at most this often.
/// Taking only what is already buffered is not enough: with a fast
/// rebuild, a burst of 1,000 separate puts still cost hundreds of router
/// rebuilds. Kept short (a publish costs ~0.1 ms) so that a steady stream
/// of changes (an operator's script, a deploy) converges in about a
/// millisecond each: at 2 ms, back-to-back changes waited 2.4 ms (p50).
pub const MIN_PUBLISH_GAP: Duration = Duration::from_millis(1);
/// Least time between two progress requests sent because one stream got
/// ahead of the other (see `nudge_at` in [`follow`]). A lone change is
/// followed by one at once; under a steady stream of changes each answer
/// costs etcd and the gateway about what an event costs: at 100 route
/// updates/s, asking every 50 ms took ~2% of a core from each and 2–3% of
/// the proxy's throughput. The reported revision then lags by at most this.
const NUDGE_EVERY: Duration = Duration::from_millis(250);

struct Stream {
    name: &'static str,
    inner: WatchStream,
    /// Everything up to here has been applied from this stream.
    revision: i64,
    /// The revision of the last event received: events never go below it.
    last_event: i64,
    last_message: Instant,
    /// Progress answers not counted yet (`progress`).
    held: Held,
}

/// What a caller learns after each applied batch, and deferred work it
/// wants to run from the watch loop (never cancelling the watch).
pub trait OnApplied {
    fn applied(&mut self, state: &EtcdState, revision: i64);
    /// When [`OnApplied::run_due`] next wants to run.
    fn due(&self) -> Option<Instant>;
    fn run_due(&mut self, state: &EtcdState);
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

pub async fn follow(
    client: &mut Client,
    prefixes: [(&'static str, String); 2],
    from: Listed,
    hold: Option<Duration>,
    state: &mut EtcdState,
    on_applied: &mut (dyn OnApplied + Send),
    probes: &mut tokio::sync::mpsc::Receiver<Probed>,
) -> anyhow::Result<Relist> {
    let mut streams = Vec::with_capacity(2);
    for (name, prefix) in prefixes {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.revision + 1)
            .with_progress_notify();
        let inner = client.watch(prefix, Some(opts)).await?;
        streams.push(Stream {
            name,
            inner,
            revision: from.revision,
            last_event: from.revision,
            last_message: Instant::now(),
            held: Held::default(),
        });
    }
    // The first progress request goes out one period in, not at once: the
    // watches start at the listed revision already, and an answer asked for
    // now could overtake the events of writes made just after the list
    // (etcd #15220, see `handle`), reporting their revision as applied
    // before they are.
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_publish: Option<Instant> = None;
    // The reported revision is the lower of the two streams'. A change under
    // one prefix moves only its stream; the other catches up on a progress
    // answer, asked for soon after instead of at the next tick, so that the
    // applied revision is not reported up to PROGRESS_EVERY late.
    let mut nudge_at: Option<Instant> = None;
    let mut last_nudge: Option<Instant> = None;
    loop {
        let (a, b) = streams.split_at_mut(1);
        let (first, second) = (&mut a[0], &mut b[0]);
        tokio::select! {
            m = first.inner.message() => {
                if let Some(r) = handle(first, m?, from, hold, state)? { return Ok(r); }
            }
            m = second.inner.message() => {
                if let Some(r) = handle(second, m?, from, hold, state)? { return Ok(r); }
            }
            Some(p) = probes.recv() => {
                // Preserved instances' probes: publish only if one was dropped.
                let mut changed = state.probed(&p);
                while let Ok(p) = probes.try_recv() {
                    changed |= state.probed(&p);
                }
                if !changed {
                    continue;
                }
            }
            _ = sleep_until(state.hold_deadline()) => {
                // An apply held config changes too long: serve them now.
                state.release_overdue();
            }
            _ = sleep_until(on_applied.due()) => {
                on_applied.run_due(state);
                continue;
            }
            _ = sleep_until(first.held.next_due().into_iter().chain(second.held.next_due()).min()) => {
                let now = Instant::now();
                for s in [&mut *first, &mut *second] {
                    s.held.release(&mut s.revision, now);
                }
            }
            _ = sleep_until(nudge_at) => {
                nudge_at = None;
                last_nudge = Some(Instant::now());
                let ahead = first.revision.max(second.revision);
                for s in [&mut *first, &mut *second] {
                    if s.revision < ahead {
                        s.inner.request_progress().await?;
                    }
                }
                continue;
            }
            _ = ticker.tick() => {
                for s in [&mut *first, &mut *second] {
                    if s.last_message.elapsed() > PROGRESS_EVERY * SILENT_AFTER {
                        anyhow::bail!("{} watch stream is silent", s.name);
                    }
                    s.inner.request_progress().await?;
                }
                continue;
            }
        }
        // Coalesce: take what is already buffered, then publish once.
        for _ in 0..MAX_BATCH {
            let mut got = false;
            for s in [&mut *first, &mut *second] {
                if let Some(m) = s.inner.message().now_or_never() {
                    got = true;
                    if let Some(r) = handle(s, m?, from, hold, state)? {
                        return Ok(r);
                    }
                }
            }
            if !got {
                break;
            }
        }
        // Right after a publish, keep collecting until the gap has passed.
        if let Some(until) = last_publish.map(|t| t + MIN_PUBLISH_GAP) {
            while Instant::now() < until {
                tokio::select! {
                    m = first.inner.message() => {
                        if let Some(r) = handle(first, m?, from, hold, state)? { return Ok(r); }
                    }
                    m = second.inner.message() => {
                        if let Some(r) = handle(second, m?, from, hold, state)? { return Ok(r); }
                    }
                    _ = tokio::time::sleep_until(until.into()) => break,
                }
            }
        }
        let revision = first.revision.min(second.revision);
        state.publish(revision);
        last_publish = Some(Instant::now());
        on_applied.applied(state, revision);
        if first.revision != second.revision && nudge_at.is_none() {
            let now = Instant::now();
            nudge_at = Some(last_nudge.map_or(now, |t| (t + NUDGE_EVERY).max(now)));
        }
    }
}

fn handle(
    s: &mut Stream,
    msg: Option<WatchResponse>,
    from: Listed,
    hold: Option<Duration>,
    state: &mut EtcdState,
) -> anyhow::Result<Option<Relist>> {
    let Some(resp) = msg else {
        anyhow::bail!("{} watch stream closed", s.name);
    };
    s.last_message = Instant::now();
    state.purges.heard();
    if resp.canceled() {
        if resp.compact_revision() > 0 {
            return Ok(Some(Relist::Compacted(resp.compact_revision())));
        }
        anyhow::bail!("{} watch cancelled: {}", s.name, resp.cancel_reason());
    }
    if let Some(h) = resp.header() {
        if h.cluster_id() != from.cluster_id {
            return Ok(Some(Relist::NewCluster {
                seen: h.cluster_id(),
                had: from.cluster_id,
            }));
        }
        // A progress notification: everything up to here was sent. It only
        // ever moves the revision forward and never counts as the revision
        // going backwards: etcd before 3.4.24 / 3.5.8 (Debian ships 3.4.23)
        // answers a progress request out of band with the events (etcd
        // #15220), so the answer can overtake events still queued or trail
        // events already sent; re-listing on either was a full re-list every
        // few seconds under write load. The "created" answer is no progress
        // at all: its header is the current revision, and the events from
        // the start revision up to it may still be on their way. On those
        // etcd versions the answer is held briefly (`progress`), so that
        // the events it may have overtaken are applied first.
        if resp.events().is_empty() && !resp.created() && h.revision() > s.revision {
            match hold {
                Some(hold) => s.held.hold(h.revision(), Instant::now() + hold),
                None => s.revision = h.revision(),
            }
        }
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        METRICS.watch_events.with_label_values(&[s.name]).inc();
        let key = String::from_utf8_lossy(kv.key());
        let rev = kv.mod_revision();
        // Events of one stream come in revision order (several per revision
        // in a transaction); one below an earlier event is a real anomaly.
        if rev < s.last_event && rev > 0 {
            return Ok(Some(Relist::RevisionBackwards {
                seen: rev,
                had: s.last_event,
            }));
        }
        match ev.event_type() {
            EventType::Put => state.put(&key, kv.value(), kv.lease(), rev),
            EventType::Delete => state.delete(&key, rev),
        }
        s.last_event = s.last_event.max(rev);
        s.revision = s.revision.max(rev);
    }
    s.held.forget_up_to(s.revision);
    Ok(None)
}
