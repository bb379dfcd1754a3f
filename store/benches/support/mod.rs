//! support: setup shared by Strata's criterion benchmarks: realistic keys
//! and values, preloaded MVCC stores, an in-process single-member node,
//! and detection of criterion's test mode (`cargo test --benches`), in
//! which every benchmark runs once, untimed, in a debug build, so inputs
//! are made smaller.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use store::mvcc::Mvcc;

/// Whether criterion runs in test mode: as criterion decides it, `--bench`
/// absent (`cargo test --benches`) or `--test` given.
pub fn quick() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

/// `full` when benchmarking, `small` in test mode.
pub fn size(full: usize, small: usize) -> usize {
    if quick() {
        small
    } else {
        full
    }
}

/// Criterion settings sized so that a full `cargo bench -p store` stays
/// within a few minutes on a shared machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        // Bootstrap analysis is CPU work too; 20k resamples (criterion's
        // default is 100k) give the same medians and near-identical intervals.
        .nresamples(20_000)
        .configure_from_args()
}

/// Bytes of every value written by the benchmarks.
pub const VALUE_LEN: usize = 256;

/// Key `i`: a Kubernetes-style 35-byte key. Keys sort by `i`, so the keys
/// with one [`prefix`] are consecutive.
pub fn key(i: usize) -> Vec<u8> {
    format!("/registry/pods/default/pod-{i:08}").into_bytes()
}

/// The prefix shared by the `per` keys `first .. first + per` (`per` is 10,
/// 100, 1000...; `first` a multiple of it).
pub fn prefix(first: usize, per: usize) -> Vec<u8> {
    let digits = per.ilog10() as usize;
    assert!(
        10usize.pow(digits as u32) == per && first.is_multiple_of(per),
        "per must be a power of ten and first a multiple of it"
    );
    let mut k = key(first);
    k.truncate(k.len() - digits);
    k
}

/// etcd's range end for a prefix (the prefix with its last byte + 1).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut e = p.to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return e;
        }
    }
    vec![0]
}

/// A 256-byte value that differs per `seed` (not all zeros).
pub fn value(seed: usize) -> Vec<u8> {
    (0..VALUE_LEN)
        .map(|j| (seed.wrapping_mul(31).wrapping_add(j * 7) % 251) as u8)
        .collect()
}

/// All `n` keys, precomputed so that benchmarks do not time formatting.
pub fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(key).collect()
}

/// A store holding keys `0..n`, each written by its own request (one
/// revision per key, as clients write), `versions` times over. Returns
/// the store and the revision at which the first version of every key
/// was complete.
pub fn preloaded(n: usize, versions: usize) -> (Mvcc, i64) {
    let mut m = Mvcc::new();
    let mut first_done = 0;
    for v in 0..versions {
        for i in 0..n {
            let mut t = m.write();
            t.put(&key(i), &value(i + v), 0);
            t.commit();
        }
        if v == 0 {
            first_done = m.current_rev();
        }
    }
    (m, first_done)
}

/// Revisions of history the write benchmarks keep (see [`timed_chunks`]).
pub const KEEP_REVS: u64 = 10_000;

/// For `iter_custom`: time `iters` runs of `op` on `state`, and after every
/// [`KEEP_REVS`] runs call `upkeep` untimed. Write benchmarks compact there,
/// as a server's auto-compaction would: without it millions of timed
/// writes would keep every revision in memory.
pub fn timed_chunks<S>(
    state: &mut S,
    iters: u64,
    mut op: impl FnMut(&mut S),
    mut upkeep: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(KEEP_REVS);
        let t0 = Instant::now();
        for _ in 0..k {
            op(state);
        }
        total += t0.elapsed();
        left -= k;
        upkeep(state);
    }
    total
}

/// Compact `m` so it keeps the last [`KEEP_REVS`] revisions of history.
pub fn keep_recent(m: &mut Mvcc) {
    let rev = m.current_rev() - KEEP_REVS as i64;
    if rev > m.compact_rev() {
        m.compact(rev)
            .expect("compaction below the current revision");
    }
}

/// Walks `0..n` in a scattered but deterministic order (a stride
/// coprime with `n`), so consecutive operations hit unrelated keys.
pub struct Scatter {
    n: usize,
    i: usize,
}

impl Scatter {
    /// Start at 0.
    pub fn new(n: usize) -> Self {
        Scatter { n, i: 0 }
    }
}

impl Iterator for Scatter {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        // 7919 is a prime, so coprime with every n used (powers of ten).
        self.i = (self.i + 7919) % self.n;
        Some(self.i)
    }
}

/// A single-member Strata node running in this process on a temp data
/// dir, with its client listener on 127.0.0.1 (port chosen by the OS).
pub struct LocalNode {
    /// The node.
    pub node: Arc<store::node::Node>,
    /// `http://127.0.0.1:PORT` once [`LocalNode::serve`] ran.
    pub endpoint: Option<String>,
    /// The runtime the node's tasks run on.
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl LocalNode {
    /// Start a member with extra flags (e.g. `--unsafe-no-fsync`) and wait
    /// until it leads (a single member elects itself). Peer listeners are
    /// not started: a single member needs none.
    pub fn start(extra: &[&str]) -> LocalNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = [
            "strata",
            "--name",
            "bench",
            "--data-dir",
            &dir.path().join("data").to_string_lossy(),
            "--listen-client-urls",
            "http://127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let cfg = match store::config::parse(args) {
            Ok(store::config::Parsed::Run(c)) => *c,
            Ok(_) => panic!("unexpected --version"),
            Err(e) => panic!("bad flags: {e}"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let node = rt.block_on(async {
            let node = store::node::Node::start(cfg).await.expect("node start");
            node.spawn_background();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while node.linearizable().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no leader after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            node
        });
        LocalNode {
            node,
            endpoint: None,
            rt,
            _dir: dir,
        }
    }

    /// Serve the client gRPC API; returns the endpoint.
    pub fn serve(&mut self) -> String {
        let node = self.node.clone();
        self.rt.block_on(async {
            store::server::serve(node.clone()).await.expect("serve");
        });
        let url = self.node.local_client_urls.read()[0].clone();
        self.endpoint = Some(url.clone());
        url
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.node.stop();
    }
}
