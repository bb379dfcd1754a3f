//! `strata-jepsen`: command-line entry point.
//!
//! - `strata-jepsen test ...`: start a cluster, run workloads under a seeded
//!   nemesis schedule, check, and write the run directory (see
//!   [`jepsen::runner`]). Exits 1 when any checker finds the run invalid.
//! - `strata-jepsen check <run dir>`: re-run the checkers on a saved run.
//! - `strata-jepsen cleanup`: remove namespaces and bridges left by a
//!   harness that was killed.
//! - `strata-jepsen kube ...`: a real kube-apiserver on a fresh cluster (of
//!   Strata, etcd or each in turn): the Kubernetes end-to-end scenario,
//!   optionally traffic under faults, and a table of kube-apiserver's request
//!   latencies (see [`jepsen::kube`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen::checker::Validity;
use jepsen::cluster::{self, ServerKind};
use jepsen::nemesis::NemesisKind;
use jepsen::runner::{self, TestOpts};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "strata-jepsen",
    version,
    about = "Jepsen-style fault-injection tests for etcd-compatible clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a test against a fresh cluster.
    Test(TestArgs),
    /// Re-run the checkers on a saved run directory.
    Check {
        /// The run directory (holding history.jsonl).
        dir: PathBuf,
    },
    /// Remove network namespaces and bridges left by a killed harness.
    Cleanup,
    /// Run kube-apiserver (scripts/install-kube.sh) on a fresh cluster: the
    /// Kubernetes end-to-end scenario, optionally traffic under faults, and
    /// kube-apiserver's request latencies (Markdown table on stdout).
    Kube(KubeArgs),
}

/// The cluster flags of `test` and `kube`.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Strata binary (default: the newest of target/{release,debug}/strata).
    #[arg(long, env = "STRATA_BIN")]
    strata_bin: Option<PathBuf>,
    /// etcd binary (default: 3.5 from ~/.cache/strata/etcd-3.5, else /usr/bin/etcd).
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// 127.0.0.1 ports and userspace proxies instead of network namespaces.
    #[arg(long)]
    no_netns: bool,
}

impl ClusterArgs {
    /// The binary to run for `server`: the flag, else the default.
    fn bin(&self, server: ServerKind) -> anyhow::Result<PathBuf> {
        let flag = match server {
            ServerKind::Strata => &self.strata_bin,
            ServerKind::Etcd => &self.etcd_bin,
        };
        match flag {
            Some(b) => Ok(b.clone()),
            None => cluster::default_bin(server),
        }
    }
}

#[derive(clap::Args)]
struct KubeArgs {
    /// Which store(s), in order: strata, etcd, both (= strata,etcd) or
    /// etcd,strata.
    #[arg(long, default_value = "both", value_parser = ["strata", "etcd", "both", "strata,etcd", "etcd,strata"])]
    server: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Also run Kubernetes traffic while the leader is killed, a member is
    /// partitioned and a member restarts.
    #[arg(long)]
    faults: bool,
    /// After the scenario, this many configmaps are created, read, replaced,
    /// listed and deleted one request at a time, for the latency table.
    #[arg(long, default_value_t = 0)]
    load: usize,
    /// Run directory (default: jepsen-runs/kube-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TestArgs {
    /// Which server to run.
    #[arg(long, value_enum, default_value_t = ServerKind::Strata)]
    server: ServerKind,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Comma-separated workloads: register, append, wr, set, watch, k8s, lease, mix.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Comma-separated nemeses: partition, kill, pause, member, compact, disk,
    /// clock, failpoint; or all, or none.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seeds the fault schedule and the workloads (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Clients per workload.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Keys per workload.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Run directory (default: jepsen-runs/<server>-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Serializable (not linearizable) reads: expected to be caught as
    /// linearizability violations under partitions.
    #[arg(long)]
    serializable_reads: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-jepsen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Validity::Valid) => std::process::ExitCode::SUCCESS,
        Ok(Validity::Unknown) => std::process::ExitCode::from(3),
        Ok(Validity::Invalid) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("strata-jepsen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Validity> {
    let outcome = match cli.cmd {
        Cmd::Cleanup => {
            cluster::netns::cleanup_stale();
            return Ok(Validity::Valid);
        }
        Cmd::Check { dir } => runner::recheck(&dir).await?,
        Cmd::Kube(a) => return kube(a).await,
        Cmd::Test(a) => {
            let bin = a.cluster.bin(a.server)?;
            let seed = a.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 % 1_000_000)
                    .unwrap_or(0)
            });
            let out = a
                .out
                .unwrap_or_else(|| PathBuf::from(format!("jepsen-runs/{}-{seed}", a.server)));
            let abort = CancellationToken::new();
            {
                let abort = abort.clone();
                tokio::spawn(async move {
                    interrupted().await;
                    eprintln!("interrupted: healing and tearing down");
                    abort.cancel();
                });
            }
            eprintln!("seed {seed}");
            runner::run_test(TestOpts {
                server: a.server,
                bin,
                nodes: a.cluster.nodes,
                workloads: a
                    .workload
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                nemeses: NemesisKind::parse_list(&a.nemesis)?,
                time_limit: Duration::from_secs(a.time_limit),
                seed,
                concurrency: a.concurrency,
                keys: a.keys,
                out,
                netns: !a.cluster.no_netns,
                serializable_reads: a.serializable_reads,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                abort,
            })
            .await?
        }
    };
    print!("{}", runner::summary_table(&outcome));
    Ok(outcome.valid)
}

async fn kube(a: KubeArgs) -> anyhow::Result<Validity> {
    let bins = jepsen::kube::KubeBins::find()?;
    let servers = match a.server.as_str() {
        "strata" => vec![ServerKind::Strata],
        "etcd" => vec![ServerKind::Etcd],
        "etcd,strata" => vec![ServerKind::Etcd, ServerKind::Strata],
        _ => vec![ServerKind::Strata, ServerKind::Etcd],
    };
    let out = a.out.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("jepsen-runs/kube-{t}"))
    });
    let mut runs = Vec::new();
    for server in servers {
        let bin = a.cluster.bin(server)?;
        let dir = out.join(server.to_string());
        eprintln!("{server}: {} ({})", bin.display(), dir.display());
        let run = jepsen::kube::run_on(
            cluster::ClusterOpts {
                server,
                bin,
                nodes: a.cluster.nodes,
                netns: !a.cluster.no_netns,
                dir,
            },
            &bins,
            a.load,
            a.faults,
        );
        // Dropping the run kills its processes and removes its network.
        let summary = tokio::select! {
            r = run => r.map_err(|e| e.context(format!("{server}")))?,
            _ = interrupted() => anyhow::bail!("interrupted: {server} run torn down"),
        };
        for (step, took) in &summary.e2e.steps {
            eprintln!("{server}: {step} ok ({took:.1?})");
        }
        if let Some(f) = &summary.faults {
            eprintln!(
                "{server}: faults ok: {} writes ok, {} failed, longest outage {:.1?}, {} watch events over {} watches, {} lists; {}",
                f.writes_ok,
                f.writes_failed,
                f.longest_outage,
                f.events,
                f.watch_segments,
                f.relists,
                f.faults.join(", ")
            );
        }
        runs.push(summary);
    }
    print!("{}", jepsen::kube::latency_table(&runs));
    Ok(Validity::Valid)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
