//! The workloads, one module per subcommand, and the closed-loop driver
//! most of them share: `--clients` tasks, each owning a [`Worker`] on its
//! connection, take request indices from one atomic counter until
//! `--total` are issued (the order of etcd's request channel, without the
//! channel), optionally paced by a shared [`Limiter`], and record into
//! private [`Stats`] merged at the end.
//!
//! Watch workloads (`watch`, `watch-latency`, `watch-get`) are in
//! [`watch`]; they count events per watcher instead of requests.

pub mod lease;
pub mod put;
pub mod range;
pub mod txn;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Map, Value};

use crate::cli::{Cli, Command, Global};
use crate::conn::Conns;
use crate::limiter::Limiter;
use crate::progress::Progress;
use crate::report::{Block, Report, Stats};

/// One client's request loop body.
pub trait Worker: Send + 'static {
    /// Issues request number `i`; returns its class (index into the
    /// per-class stats: 0, or e.g. 0 = read / 1 = write for `txn-mixed`)
    /// and its result.
    fn call(&mut self, i: u64) -> impl Future<Output = (usize, Result<(), tonic::Status>)> + Send;
}

/// What a closed-loop run measured.
pub struct Outcome {
    /// Stats per class (at least one).
    pub classes: Vec<Stats>,
    /// From the first request to the last response.
    pub elapsed: Duration,
}

impl Outcome {
    /// All classes together.
    pub fn merged(&self) -> Stats {
        let mut all = Stats::default();
        for c in &self.classes {
            all.merge(c);
        }
        all
    }
}

/// Runs `total` requests over `workers` (one task each), at most `rate`
/// per second (0: no limit).
pub async fn closed_loop<W: Worker>(
    workers: Vec<W>,
    total: u64,
    rate: u64,
    progress: &Progress,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let limiter = Limiter::new(rate).map(Arc::new);
    let start = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let next = next.clone();
            let limiter = limiter.clone();
            let counter = progress.counter();
            tokio::spawn(async move {
                let mut classes: Vec<Stats> = vec![Stats::default()];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if let Some(l) = &limiter {
                        l.wait().await;
                    }
                    let t = Instant::now();
                    let (class, r) = w.call(i).await;
                    let d = t.elapsed();
                    if classes.len() <= class {
                        classes.resize_with(class + 1, Stats::default);
                    }
                    classes[class].record(d, r);
                    counter.add(1);
                }
                classes
            })
        })
        .collect();
    let mut classes: Vec<Stats> = vec![Stats::default()];
    for t in tasks {
        let mine = t.await.expect("invariant: worker tasks do not panic");
        if classes.len() < mine.len() {
            classes.resize_with(mine.len(), Stats::default);
        }
        for (c, s) in mine.iter().enumerate() {
            classes[c].merge(s);
        }
    }
    Outcome {
        classes,
        elapsed: start.elapsed(),
    }
}

/// A run's connections and flags.
pub struct Ctx {
    pub global: Global,
    pub conns: Conns,
}

impl Ctx {
    /// A report of `main` with the run's identity filled in.
    pub fn report(&self, command: &str, total: u64, main: Stats, elapsed: Duration) -> Report {
        Report {
            command: command.to_string(),
            endpoints: self.conns.endpoints.clone(),
            conns: self.global.conns,
            clients: self.global.clients,
            total,
            main,
            elapsed,
            extra: Map::new(),
            blocks: vec![],
            preface: vec![],
            notes: vec![],
        }
    }

    /// A progress bar (unless `--no-progress`).
    pub fn progress(&self, len: u64, what: &str) -> Progress {
        Progress::start(len, what, !self.global.no_progress)
    }
}

/// Connects and runs the chosen workload.
pub async fn run(cli: Cli) -> Result<Report> {
    if cli.global.sample {
        eprintln!("note: --sample is accepted for compatibility and does nothing");
    }
    // Validate flags before dialling.
    match &cli.command {
        Command::Put(a) => put::validate(a)?,
        Command::TxnPut(a) => txn::validate_put(a)?,
        Command::TxnMixed(a) => txn::validate_mixed(a)?,
        Command::Watch(a) => watch::validate_watch(a)?,
        Command::WatchLatency(a) => watch::validate_latency(a)?,
        Command::WatchGet(a) => watch::validate_get(a)?,
        Command::Range(_) | Command::LeaseKeepalive(_) => {}
    }
    let conns = Conns::connect(&cli.global).await?;
    let ctx = Ctx {
        global: cli.global,
        conns,
    };
    match cli.command {
        Command::Put(a) => put::run(&ctx, a).await,
        Command::Range(a) => range::run(&ctx, a).await,
        Command::TxnPut(a) => txn::run_put(&ctx, a).await,
        Command::TxnMixed(a) => txn::run_mixed(&ctx, a).await,
        Command::Watch(a) => watch::run_watch(&ctx, a).await,
        Command::WatchLatency(a) => watch::run_latency(&ctx, a).await,
        Command::WatchGet(a) => watch::run_get(&ctx, a).await,
        Command::LeaseKeepalive(a) => lease::run(&ctx, a).await,
    }
}

/// A JSON object of latency figures, for `extra`.
pub fn latency_json(s: &Stats) -> Value {
    serde_json::to_value(s.latency()).expect("invariant: latency serialises")
}

/// A titled text block.
pub fn block(title: impl Into<String>, stats: Stats, elapsed: Duration) -> Block {
    Block {
        title: title.into(),
        stats,
        elapsed,
    }
}
