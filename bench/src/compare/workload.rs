//! The comparison's workloads: each one's name, etcd `benchmark` argv
//! (connections, clients, subcommand and flags, in full and `--quick`
//! sizes), the key it needs preloaded, and which target of the bench issue
//! it is judged by. Both generators get exactly this argv. Full sizes make
//! each run last ≥ ~1.5 s against the faster server (until 2026-12-06 a
//! 10/100 range run was 20k requests, 0.4 s, of which connection setup and
//! warm-up were a fair part).
//!
//! Data only; `compare::run` drives them and `stats` judges them.

use anyhow::{bail, Result};
use serde::Serialize;

/// The target of the bench issue a workload is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// put 1/1: throughput ≥ etcd and p50 ≤ 1.5 × (fdatasync p50 + loopback RTT).
    SingleClientPut,
    /// Concurrent put: throughput ≥ 2× etcd and p99 ≤ etcd's.
    ConcurrentPut,
    /// Throughput ≥ 2× etcd (range, txn, lease-keepalive).
    TwiceThroughput,
    /// p99 ≤ etcd's and no dropped events.
    WatchLatency,
    /// No dropped events (the issue sets no ratio for the watch fan-out).
    NoDrops,
}

/// One workload of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: &'static str,
    pub title: &'static str,
    pub conns: u32,
    pub clients: u32,
    pub target: Target,
    /// Key written (256-byte value) before the run, for range workloads.
    pub preload_key: Option<&'static str>,
    /// Whether etcd 3.4.23's `benchmark` has this subcommand.
    pub in_etcd_benchmark: bool,
    /// Subcommand and flags, full size.
    full: &'static [&'static str],
    /// Subcommand and flags for `--quick`.
    quick: &'static [&'static str],
}

impl Workload {
    /// The subcommand and its flags (after the global flags).
    pub fn command_args(&self, quick: bool) -> Vec<String> {
        let a = if quick { self.quick } else { self.full };
        a.iter().map(|s| s.to_string()).collect()
    }
}

macro_rules! args {
    ($($s:expr),* $(,)?) => { &[$($s),*] };
}

/// Every workload, in table order.
pub fn all() -> Vec<Workload> {
    let put = |name, title, conns, clients, target, full, quick| Workload {
        name,
        title,
        conns,
        clients,
        target,
        preload_key: None,
        in_etcd_benchmark: true,
        full,
        quick,
    };
    let range = |name, title, conns, clients, full, quick| Workload {
        name,
        title,
        conns,
        clients,
        target: Target::TwiceThroughput,
        preload_key: Some("foo"),
        in_etcd_benchmark: true,
        full,
        quick,
    };
    vec![
        put(
            "put-1-1",
            "put 1 conn/1 client, 256 B",
            1,
            1,
            Target::SingleClientPut,
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "5000"
            ],
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "100"
            ],
        ),
        put(
            "put-10-100",
            "put 10 conns/100 clients, 256 B",
            10,
            100,
            Target::ConcurrentPut,
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "60000"
            ],
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "1000"
            ],
        ),
        put(
            "put-100-1000",
            "put 100 conns/1000 clients, 256 B",
            100,
            1000,
            Target::ConcurrentPut,
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "100000"
            ],
            args![
                "put",
                "--key-size",
                "8",
                "--sequential-keys",
                "--val-size",
                "256",
                "--total",
                "2000"
            ],
        ),
        range(
            "range-l-10-100",
            "range linearizable 10/100",
            10,
            100,
            args!["range", "foo", "--consistency", "l", "--total", "100000"],
            args!["range", "foo", "--consistency", "l", "--total", "1000"],
        ),
        range(
            "range-s-10-100",
            "range serializable 10/100",
            10,
            100,
            args!["range", "foo", "--consistency", "s", "--total", "100000"],
            args!["range", "foo", "--consistency", "s", "--total", "1000"],
        ),
        range(
            "range-l-100-1000",
            "range linearizable 100/1000",
            100,
            1000,
            args!["range", "foo", "--consistency", "l", "--total", "150000"],
            args!["range", "foo", "--consistency", "l", "--total", "2000"],
        ),
        range(
            "range-s-100-1000",
            "range serializable 100/1000",
            100,
            1000,
            args!["range", "foo", "--consistency", "s", "--total", "150000"],
            args!["range", "foo", "--consistency", "s", "--total", "2000"],
        ),
        put(
            "txn-put",
            "txn-put, 4 puts per txn, 10/100",
            10,
            100,
            Target::TwiceThroughput,
            args![
                "txn-put",
                "--txn-ops",
                "4",
                "--key-space-size",
                "100000",
                "--key-size",
                "8",
                "--val-size",
                "256",
                "--total",
                "30000"
            ],
            args![
                "txn-put",
                "--txn-ops",
                "4",
                "--key-space-size",
                "100000",
                "--key-size",
                "8",
                "--val-size",
                "256",
                "--total",
                "500"
            ],
        ),
        Workload {
            in_etcd_benchmark: false,
            ..put(
                "txn-mixed",
                "txn-mixed, half reads (rw-ratio 1), 10/100",
                10,
                100,
                Target::TwiceThroughput,
                args![
                    "txn-mixed",
                    "--rw-ratio",
                    "1",
                    "--key-space-size",
                    "1000",
                    "--key-size",
                    "8",
                    "--val-size",
                    "256",
                    "--limit",
                    "10",
                    "--total",
                    "30000"
                ],
                args![
                    "txn-mixed",
                    "--rw-ratio",
                    "1",
                    "--key-space-size",
                    "1000",
                    "--key-size",
                    "8",
                    "--val-size",
                    "256",
                    "--limit",
                    "10",
                    "--total",
                    "500"
                ],
            )
        },
        put(
            "watch-latency",
            "watch latency, 100 watchers, 100 puts/s",
            10,
            100,
            Target::WatchLatency,
            args!["watch-latency", "--put-rate", "100", "--total", "500"],
            args!["watch-latency", "--put-rate", "100", "--total", "20"],
        ),
        put(
            "watch-10k",
            "watch: 10k watchers on 100 streams, one key",
            10,
            100,
            Target::NoDrops,
            args![
                "watch",
                "--streams",
                "100",
                "--watch-per-stream",
                "100",
                "--watched-key-total",
                "1",
                "--key-space-size",
                "1",
                "--put-total",
                "100",
                "--put-rate",
                "100"
            ],
            args![
                "watch",
                "--streams",
                "100",
                "--watch-per-stream",
                "100",
                "--watched-key-total",
                "1",
                "--key-space-size",
                "1",
                "--put-total",
                "5",
                "--put-rate",
                "100"
            ],
        ),
        put(
            "lease-keepalive",
            "lease keepalive 10/100",
            10,
            100,
            Target::TwiceThroughput,
            args!["lease-keepalive", "--total", "60000"],
            args!["lease-keepalive", "--total", "1000"],
        ),
    ]
}

/// The workloads named in a comma-separated `--workloads` filter (all when
/// empty), in table order.
pub fn select(filter: &[String]) -> Result<Vec<Workload>> {
    let all = all();
    if filter.is_empty() {
        return Ok(all);
    }
    for f in filter {
        if !all.iter().any(|w| w.name == f) {
            let names: Vec<_> = all.iter().map(|w| w.name).collect();
            bail!("unknown workload {f:?}; known: {}", names.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|w| filter.iter().any(|f| f == w.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        let all = all();
        let mut names: Vec<_> = all.iter().map(|w| w.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let sel = select(&["range-l-10-100".into(), "put-1-1".into()]).unwrap();
        assert_eq!(
            sel.iter().map(|w| w.name).collect::<Vec<_>>(),
            ["put-1-1", "range-l-10-100"]
        );
        assert!(select(&["nope".into()]).is_err());
    }

    /// Every workload's argv, full and quick, is one strata-bench accepts
    /// (txn-mixed once carried flags neither strata-bench nor etcd's
    /// `benchmark` has, and failed every repetition).
    #[test]
    fn every_argv_parses_as_a_strata_bench_command() {
        use clap::Parser as _;
        for w in all() {
            for quick in [false, true] {
                let argv = super::super::generator::argv(
                    super::super::generator::Generator::StrataBench,
                    &["127.0.0.1:2379".to_string()],
                    w.conns,
                    w.clients,
                    &w.command_args(quick),
                );
                let r = crate::cli::Cli::try_parse_from(
                    std::iter::once("strata-bench".to_string()).chain(argv),
                );
                if let Err(e) = r {
                    panic!("{} (quick {quick}): {e}", w.name);
                }
            }
        }
    }

    #[test]
    fn quick_is_smaller_and_same_shape() {
        for w in all() {
            let (f, q) = (w.command_args(false), w.command_args(true));
            assert_eq!(f[0], q[0], "{}", w.name);
            assert_eq!(f.len(), q.len(), "{}", w.name);
        }
        let put11 = &all()[0];
        assert_eq!(put11.conns, 1);
        assert!(put11.command_args(false).contains(&"256".to_string()));
    }
}
