//! Phases 2 and 3: registry instances re-pointed or added (time to the first
//! answer from the new backend), and lease revokes (time to the first 503).

use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use testkit::{Backend, Etcd};

use crate::gateway::{as_usize, Gw};
use crate::keyspace::{clean, ROUTES, SERVICES};
use crate::opts::Opts;
use crate::progress::log;
use crate::stats::{ms, summarize, Summary};
use crate::{Plan, APPLY_TIMEOUT, SAMPLE_TIMEOUT};

pub struct InstanceRun {
    pub moved: Summary,
    pub added: Summary,
    pub all: Summary,
    pub lease: Summary,
    pub baseline_rss: (u64, u64),
}

fn other<'a>(cur: &str, a: &'a Backend, b: &'a Backend) -> &'a Backend {
    if cur == a.name() {
        b
    } else {
        a
    }
}

pub fn phase_instances_and_leases(
    etcd: &Etcd,
    opts: &Opts,
    plan: &Plan,
    a: &Backend,
    b: &Backend,
) -> Result<InstanceRun> {
    let c = etcd.client();
    log("instance propagation and lease revoke");
    clean(c);
    let lease = c.keep_alive(30);
    c.put(
        &format!("{ROUTES}inst"),
        &json!({ "paths": ["/inst/*rest"], "upstream": "isvc" }).to_string(),
    );
    c.put(
        &format!("{ROUTES}lease"),
        &json!({ "paths": ["/lease/*rest"], "upstream": "lsvc" }).to_string(),
    );
    let i0 = format!("{SERVICES}isvc/i0");
    c.put_with_lease(&i0, &a.url(), lease.id);

    let mut gw = Gw::start(opts, "prop-instances", &etcd.endpoint())?;
    gw.wait_status("/status routes == 2", APPLY_TIMEOUT, |s| {
        s["etcd"] == "connected" && as_usize(&s["routes"]) == 2 && as_usize(&s["instances"]) == 1
    })?;
    let a_name = a.name().to_string();
    gw.poll_until("/inst/x", Instant::now(), SAMPLE_TIMEOUT, |r| {
        r.status == 200 && r.backend.as_deref() == Some(a_name.as_str())
    })?;
    let baseline_rss = gw.rss()?;

    // 2. Alternately move i0 to the other backend, and add a second
    //    instance on the other backend (then remove it again).
    let mut current = a.name().to_string();
    let (mut moved, mut added) = (Vec::new(), Vec::new());
    for k in 0..plan.instance_samples {
        let target = other(&current, a, b);
        let want = target.name().to_string();
        // Even samples re-point the one instance, odd ones add a second.
        let repoint = k % 2 == 0;
        let key = if repoint {
            i0.clone()
        } else {
            format!("{SERVICES}isvc/add{k}")
        };
        c.put_with_lease(&key, &target.url(), lease.id);
        let t0 = Instant::now();
        let (d, _) = gw.poll_until("/inst/x", t0, SAMPLE_TIMEOUT, |r| {
            r.status == 200 && r.backend.as_deref() == Some(want.as_str())
        })?;
        if repoint {
            moved.push(d);
            current = want;
        } else {
            added.push(d);
            // Remove it; with one instance left, 4 answers in a row from
            // the old backend show the removal applied (round-robin over
            // two would alternate).
            c.delete(&key);
            let t0 = Instant::now();
            let mut streak = 0;
            while streak < 4 {
                let (_, _, r) =
                    gw.poll_reply("/inst/x", t0, SAMPLE_TIMEOUT, |r| r.status == 200)?;
                if r.backend.as_deref() == Some(current.as_str()) {
                    streak += 1;
                } else {
                    streak = 0;
                }
                if t0.elapsed() > SAMPLE_TIMEOUT {
                    return Err(gw.fail(format!("instance {key} still served after its delete")));
                }
            }
        }
    }
    let mut all = moved.clone();
    all.extend_from_slice(&added);
    log(format!(
        "  instance change -> new backend: p50 {} ms p99 {} ms",
        ms(summarize(&all).p50),
        ms(summarize(&all).p99)
    ));

    // 3. Lease revoke -> 503, re-registering on a fresh lease each time.
    let l0 = format!("{SERVICES}lsvc/l0");
    let mut revoked = Vec::new();
    for _ in 0..plan.lease_samples {
        let id = c.grant(30);
        c.put_with_lease(&l0, &a.url(), id);
        gw.poll_until("/lease/x", Instant::now(), SAMPLE_TIMEOUT, |r| {
            r.status == 200
        })?;
        c.revoke(id);
        let t0 = Instant::now();
        let (d, _) = gw.poll_until("/lease/x", t0, SAMPLE_TIMEOUT, |r| r.status == 503)?;
        revoked.push(d);
    }
    let lease_sum = summarize(&revoked);
    log(format!(
        "  lease revoke -> 503: p50 {} ms p99 {} ms",
        ms(lease_sum.p50),
        ms(lease_sum.p99)
    ));
    gw.note_log("instances and leases");
    drop(gw);
    c.revoke(lease.id);
    Ok(InstanceRun {
        moved: summarize(&moved),
        added: summarize(&added),
        all: summarize(&all),
        lease: lease_sum,
        baseline_rss,
    })
}
