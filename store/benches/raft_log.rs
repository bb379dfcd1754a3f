//! raft_log: criterion benchmarks of the raft log as Strata writes it
//! (`store::raft::storage::RaftStorage` on raft-engine, in a temp dir): one
//! op appends a batch of 256-byte entries together with the HardState in
//! one write, as the raft thread does per Ready, with fsync (the default)
//! and without (`--unsafe-no-fsync`). The log is compacted untimed every
//! ~10k entries, as snapshots let a member do, so it stays small.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft::eraftpb::{Entry, HardState};
use store::raft::storage::RaftStorage;

const ENTRY_BYTES: usize = 256;
/// Entries kept when compacting.
const KEEP: u64 = 1000;

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft_log_append");
    // An fsync takes milliseconds: fewer samples keep the run short.
    g.sample_size(30);
    for sync in [false, true] {
        for batch in [1u64, 64] {
            let dir = tempfile::tempdir().unwrap();
            let s = RaftStorage::open(dir.path(), sync).unwrap();
            let data = bytes::Bytes::from(support::value(5));
            assert_eq!(data.len(), ENTRY_BYTES);
            let mut next = 1u64;
            let mut ops = move |iters: u64| {
                let chunk = (10_000 / batch).max(1);
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(chunk);
                    // Entries are built untimed: raft hands them over built.
                    let batches: Vec<Vec<Entry>> = (0..k)
                        .map(|j| {
                            (0..batch)
                                .map(|e| Entry {
                                    index: next + j * batch + e,
                                    term: 1,
                                    data: data.clone(),
                                    ..Default::default()
                                })
                                .collect()
                        })
                        .collect();
                    let t0 = Instant::now();
                    for ents in &batches {
                        let hs = HardState {
                            term: 1,
                            vote: 1,
                            commit: ents[0].index - 1,
                            ..Default::default()
                        };
                        s.append(ents, Some(&hs));
                    }
                    total += t0.elapsed();
                    next += k * batch;
                    left -= k;
                    assert_eq!(s.last_log_index(), next - 1);
                    if next > KEEP + 1 {
                        s.compact_to(next - 1 - KEEP);
                    }
                }
                total
            };
            let name = if sync { "fsync" } else { "no_fsync" };
            g.throughput(Throughput::Elements(batch));
            g.bench_function(BenchmarkId::new(format!("{name}/entries"), batch), |b| {
                b.iter_custom(&mut ops)
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = append
}
criterion_main!(benches);
