//! Whether key-auth's lookup time says how much of a guessed key is right:
//! `ConsumerTable::by_key` with the real key, a key wrong in its first
//! byte, and one wrong in its last byte, among 10,000 consumers. The
//! lookup hashes the whole presented key (SHA-256) before comparing, so
//! the two wrong keys should cost the same; the report's figures for
//! `wrong_first` and `wrong_last` are the check.
//!
//! `cargo bench --bench key_lookup -- --quick`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::plugins::consumer::{sha256_hex, ConsumerSpec, ConsumerTable};

fn table() -> ConsumerTable {
    let consumers: Vec<_> = (0..10_000)
        .map(|i| {
            let hex = sha256_hex(format!("key-{i:05}-0123456789abcdef0123456789").as_bytes());
            let spec: ConsumerSpec =
                serde_json::from_str(&format!(r#"{{"key_auth": {{"key_sha256": "{hex}"}}}}"#))
                    .unwrap();
            Arc::new(spec.compile(&format!("c{i}"), "").unwrap())
        })
        .collect();
    ConsumerTable::build(consumers.iter()).0
}

fn lookups(c: &mut Criterion) {
    let t = table();
    let right = b"key-04242-0123456789abcdef0123456789".to_vec();
    assert!(t.by_key(&right).is_some());
    let mut wrong_first = right.clone();
    wrong_first[0] ^= 1;
    let mut wrong_last = right.clone();
    *wrong_last.last_mut().unwrap() ^= 1;
    let mut g = c.benchmark_group("key_auth_lookup");
    for (name, key) in [
        ("right", &right),
        ("wrong_first", &wrong_first),
        ("wrong_last", &wrong_last),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(t.by_key(black_box(key)))));
    }
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
