//! Cost of one rate-limit decision: `Gcra::take` on one bucket, alone and
//! with 2 and 4 threads hammering the same bucket, and
//! `RouteLimiter::check` keyed by client IP (a hash plus a papaya lookup).
//!
//! Contended figures are the wall time per decision as each thread sees it
//! (every thread makes `iters` decisions; the slowest thread's wall time
//! is reported). On a 2-core machine, 4 threads are oversubscribed, so
//! that row also measures the scheduler.
//!
//! `cargo bench --bench limiter -- --quick`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::limiter::{now_ns, Client, FleetSize, Gcra, Params, RouteLimiter};
use tollgate::model::rate_limit::RateLimitSpec;

/// One token per nanosecond and a huge bucket: every decision is an
/// admission, so every decision writes the atomic (the contended case).
fn always_allow() -> Params {
    Params::new(1e9, u32::MAX)
}

/// 1,000/s: under a hammering loop nearly every decision is a refusal,
/// which only reads the atomic.
fn mostly_deny() -> Params {
    Params::new(1_000.0, 100)
}

fn gcra_single(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_take/1_thread");
    for (name, p) in [("allow", always_allow()), ("deny", mostly_deny())] {
        let bucket = Gcra::default();
        g.bench_function(BenchmarkId::new(name, "real_clock"), |b| {
            b.iter(|| black_box(bucket.take(black_box(p), now_ns())))
        });
    }
    // The decision alone, without reading the clock.
    let bucket = Gcra::default();
    let mut now = 1_000_000_000u64;
    g.bench_function(BenchmarkId::new("allow", "fixed_clock"), |b| {
        b.iter(|| {
            now += 2;
            black_box(bucket.take(black_box(always_allow()), now))
        })
    });
    g.finish();
}

/// `threads` threads each make `iters` decisions on one shared bucket;
/// returns the slowest thread's wall time.
fn hammer(bucket: &Arc<Gcra>, p: Params, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (bucket, barrier) = (bucket.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(bucket.take(p, now_ns()));
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn gcra_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_take/contended");
    for threads in [2usize, 4] {
        for (name, p) in [("allow", always_allow()), ("deny", mostly_deny())] {
            let bucket = Arc::new(Gcra::default());
            g.bench_function(BenchmarkId::new(name, format!("{threads}_threads")), |b| {
                b.iter_custom(|iters| hammer(&bucket, p, threads, iters))
            });
        }
    }
    g.finish();
}

fn route_limiter(json: &str) -> RouteLimiter {
    let spec: RateLimitSpec = serde_json::from_str(json).expect("spec");
    let key = spec.validate("bench").expect("valid spec");
    let fleet: FleetSize = Arc::new(AtomicUsize::new(1));
    RouteLimiter::new(spec, key, &fleet, None, now_ns())
}

fn route_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_limiter_check");
    let route = route_limiter(r#"{"rate": 1000000, "burst": 1000000}"#);
    let anyone = Client {
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        header: None,
        consumer: None,
    };
    g.bench_function("key_route", |b| {
        b.iter(|| black_box(route.check(black_box(&anyone), now_ns())))
    });
    // Client tables of 1,000 and 100,000 live keys (all within max_keys),
    // visited round-robin so the lookups are not all one cache line.
    for clients in [1_000u32, 100_000] {
        let l = route_limiter(
            r#"{"rate": 1000000, "burst": 1000000, "key": "client_ip", "max_keys": 1000000}"#,
        );
        let ips: Vec<IpAddr> = (0..clients)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        for ip in &ips {
            l.check(
                &Client {
                    ip: Some(*ip),
                    header: None,
                    consumer: None,
                },
                now_ns(),
            );
        }
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("key_client_ip", clients), |b| {
            b.iter(|| {
                i = (i + 1) % ips.len();
                let c = Client {
                    ip: Some(ips[i]),
                    header: None,
                    consumer: None,
                };
                black_box(l.check(black_box(&c), now_ns()))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = gcra_single, gcra_contended, route_check
}
criterion_main!(benches);
