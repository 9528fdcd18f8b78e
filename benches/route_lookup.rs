//! `Router::lookup` cost against table size: a hit and a miss at 10, 1,000
//! and 10,000 routes. The trie walks one branch per path segment, so the
//! figures should stay flat (target: 10,000 routes within 2x of 10).
//!
//! `cargo bench --bench route_lookup -- --quick`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::model::pattern::PathPattern;
use tollgate::model::route::method_bit;
use tollgate::router::{RouteShape, Router};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// Route `i`'s hosts: any host, an exact host, a wildcard, or one of a few
/// internal service hosts.
fn hosts(i: usize) -> Vec<String> {
    match i % 4 {
        0 => vec![],
        1 => vec!["api.example.com".into()],
        2 => vec!["*.example.com".into()],
        _ => vec![format!("svc{}.internal", i % 8)],
    }
}

/// A Host header that route `i` accepts.
fn request_host(i: usize) -> String {
    match i % 4 {
        0 => "any.test".into(),
        1 => "api.example.com".into(),
        2 => "www.example.com".into(),
        _ => format!("svc{}.internal", i % 8),
    }
}

/// Route `i`'s path: static, `:param` or catch-all, by turns.
fn path(i: usize) -> String {
    match i % 3 {
        0 => format!("/api/v1/svc{i}/items"),
        1 => format!("/api/v1/svc{i}/items/:id"),
        _ => format!("/static/svc{i}/*path"),
    }
}

fn router(n: usize) -> Router {
    let mut r = Router::default();
    for i in 0..n {
        let patterns = [PathPattern::parse(&path(i)).expect("valid pattern")];
        let hosts = hosts(i);
        let methods = if i % 2 == 0 {
            0
        } else {
            method_bit("GET") | method_bit("POST")
        };
        r.add(
            i as u32,
            &RouteShape {
                patterns: &patterns,
                hosts: &hosts,
                methods,
                priority: 0,
            },
        )
        .expect("no conflicts");
    }
    assert_eq!(r.len(), n);
    r
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in SIZES {
        let r = router(n);
        // A `:param` route from the middle of the table, on its own host.
        let i = (n / 2) / 3 * 3 + 1;
        let (host, hit) = (request_host(i), format!("/api/v1/svc{i}/items/42"));
        assert_eq!(r.lookup(&host, "GET", &hit).copied(), Some(i as u32));
        // A miss that shares the hit's prefix and then finds nothing.
        let miss = format!("/api/v1/svc{i}/orders/42");
        assert_eq!(r.lookup(&host, "GET", &miss), None);

        group.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| r.lookup(black_box(&host), black_box("GET"), black_box(&hit)))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| r.lookup(black_box(&host), black_box("GET"), black_box(&miss)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
