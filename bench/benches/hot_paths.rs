//! Criterion micro-benchmarks of Micro's per-request hot paths:
//! `cargo bench -p micro-bench --bench hot_paths`.
//!
//! Measurement is kept short (2 s per benchmark) so a full run takes well under a minute;
//! `cargo test`/clippy only compile this file.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn log_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_frame");
    for size in [64usize, 300, 4096] {
        let payload = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode+decode {size} B"), |b| {
            b.iter(|| {
                let raw = micro_log::frame::encode(black_box(42), black_box(&payload));
                let back = micro_log::frame::decode(42, &raw).expect("valid frame");
                black_box(back.len())
            })
        });
    }
    g.finish();
}

fn state_apply(c: &mut Criterion) {
    let base = micro_state::MemStore::default();
    let req = micro_state::Request {
        time_ms: 1_700_000_000_000,
        cmds: vec![micro_state::Command::Store(
            micro_state::views::store::Cmd::Put(micro_state::Put {
                key: "k".into(),
                value: vec![0; 256],
                ..Default::default()
            }),
        )],
    };
    c.bench_function("state_apply put 256 B (empty MemStore)", |b| {
        b.iter_batched_ref(
            || micro_state::Overlay::new(&base),
            |ov| {
                micro_state::apply(
                    ov,
                    black_box(micro_state::LogPos { index: 7, term: 1 }),
                    black_box(&req),
                )
                .expect("apply")
            },
            BatchSize::SmallInput,
        )
    });
}

fn gateway_resolve(c: &mut Criterion) {
    c.bench_function("gateway_resolve /store/read", |b| {
        b.iter(|| micro_services::gateway::resolve(black_box("/store/read")))
    });
    c.bench_function("gateway_resolve /v1/foo/bar-baz", |b| {
        b.iter(|| micro_services::gateway::resolve(black_box("/v1/foo/bar-baz")))
    });
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = log_frame, state_apply, gateway_resolve
}
criterion_main!(hot_paths);
