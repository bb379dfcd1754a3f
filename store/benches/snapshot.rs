//! snapshot: criterion benchmarks of Strata's state-machine snapshot
//! format (`store::snapshot`): writing a view to memory and to a snapshot
//! file (fsynced, renamed, as the member saves them), and loading it back
//! (every record's CRC verified, the key index and event log rebuilt).
//! The state machine holds 100k keys of 35 bytes with 256-byte values
//! (10k in test mode).

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use store::apply::StateMachine;
use store::snapshot::{self, SnapDir};

fn state(n: usize) -> StateMachine {
    let (mvcc, _) = support::preloaded(n, 1);
    let mut sm = StateMachine {
        mvcc,
        ..Default::default()
    };
    sm.applied_index = n as u64 + 2;
    sm.applied_term = 2;
    sm.conf_state.voters = vec![1];
    sm
}

fn snapshots(c: &mut Criterion) {
    let n = support::size(100_000, 10_000);
    let sm = state(n);
    let view = sm.view();
    let mut bytes = Vec::new();
    let len = snapshot::write_to(&view, &mut bytes).unwrap() as usize;
    assert_eq!(len, bytes.len());
    let back = snapshot::read_from(bytes.as_slice()).unwrap();
    assert_eq!(back.mvcc.live_keys(), n);
    assert_eq!(back.mvcc.hash_kv(0), sm.mvcc.hash_kv(0));
    drop(back);

    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(len as u64));
    g.bench_function(BenchmarkId::new("write_mem", n), |b| {
        b.iter_with_large_drop(|| {
            let mut out = Vec::with_capacity(len);
            snapshot::write_to(&view, &mut out).unwrap();
            out
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let snaps = SnapDir::open(dir.path().to_path_buf(), 2).unwrap();
    g.bench_function(BenchmarkId::new("save_file_fsync", n), |b| {
        b.iter(|| snaps.save(&view, true).unwrap())
    });
    g.bench_function(BenchmarkId::new("load_mem", n), |b| {
        b.iter_with_large_drop(|| snapshot::read_from(bytes.as_slice()).unwrap())
    });
    g.bench_function(BenchmarkId::new("load_file", n), |b| {
        b.iter_with_large_drop(|| snaps.load(view.applied_index).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = snapshots
}
criterion_main!(benches);
