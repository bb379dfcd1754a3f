//! `strata-compare`: Strata against real etcd on this machine, in one run.
//!
//! For each topology (1 or 3 members), etcd version, workload and load
//! generator, it runs `--reps` repetitions interleaved Strata, etcd,
//! Strata, etcd, each on a freshly started server with a fresh data dir,
//! then reports medians, the Strata/etcd ratio and the bench issue's target
//! per workload, with the CPU per request of server and generator
//! (`table.md`, `results.json` with every raw run, and the
//! `ratios.svg` chart), plus the put 1/1 floor (fdatasync + loopback RTT)
//! and, with `--resources`, RSS / restart / snapshot / disk figures.
//!
//! Module map: [`workload`] (what runs), [`server`] (starting members),
//! [`client`] (readiness and preload calls), [`generator`] (running a load
//! generator), [`parse`] (its reports), [`cpu`] (CPU per request of the
//! server and the generator), [`floor`], [`resources`],
//! [`stats`] (medians, ratios, verdicts), [`report`] (table and chart).
//! Entry points: [`main_with_args`] (the `strata-compare` binary) and
//! [`run`] with parsed [`CompareArgs`]. It never touches servers it did not
//! start; everything it starts is stopped by PID before it returns.

pub mod client;
pub mod cpu;
pub mod floor;
pub mod generator;
pub mod parse;
pub mod report;
pub mod resources;
pub mod server;
pub mod stats;
pub mod workload;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use generator::Generator;
use server::{Cluster, ServerSpec, Timing};
use stats::RunRecord;

const LONG_ABOUT: &str = "\
Compare Strata with real etcd on this machine, in one run.

For every topology × etcd version × workload × generator, it starts a fresh
Strata and a fresh etcd (same flags: fsync on, --snapshot-count, heartbeat and
election timing; 127.0.0.1 on free ports; fresh data dirs under a temp dir or
--data-root) and drives each with the same load-generator argv, --reps times,
interleaved Strata/etcd/Strata/etcd. It prints a markdown table of median
req/s, the Strata/etcd ratio, p50/p99 of each and the bench issue's target
with pass/FAIL, and writes --out DIR/{results.json,table.md,ratios.svg}.
A second table gives the CPU per request of the server (all members) and
of the load generator in each run, and the throughput ratio they imply when
the generator shares the server's cores.

Workloads (etcd benchmark argv; see --list): put-1-1, put-10-100, put-100-1000,
range-{l,s}-10-100, range-{l,s}-100-1000, txn-put, txn-mixed, watch-latency,
watch-10k, lease-keepalive.

Targets: put 1/1 ≥ 1× etcd and p50 ≤ 1.5 × (fdatasync p50 + loopback RTT p50);
concurrent put ≥ 2× and p99 ≤ etcd; range, txn, lease-keepalive ≥ 2×;
watch-latency p99 ≤ etcd with no dropped events; --resources: RSS ≤ 0.5× etcd,
restart ≤ etcd.

Examples:
  strata-compare --generator etcd --topology 1,3 --etcd 3.5 --reps 3 --out /tmp/cmp
  strata-compare --quick --generator etcd --topology 1 --workloads put-1-1 --reps 1
  strata-compare --resources --resource-keys 200000 --workloads put-1-1";

/// Which generators to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorChoice {
    /// `strata-bench --output json` (target/release/strata-bench).
    StrataBench,
    /// etcd's own `benchmark` tool.
    Etcd,
    /// Both, one after the other, each on its own fresh servers.
    Both,
}

/// Command-line flags of `strata-compare`.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "strata-compare", about = "Compare Strata with real etcd on this machine (interleaved runs, medians, ratios, targets)", long_about = LONG_ABOUT)]
pub struct CompareArgs {
    /// etcd versions to compare with: 3.5 (3.5.1, the tests' etcd), 3.5.16
    /// and/or 3.4. etcd 3.5.1 answers a write on a one-member cluster
    /// before its WAL fsync ends (etcd issue 14370, fixed in 3.5.5);
    /// 3.5.16 waits for it, as Strata does.
    #[arg(long, value_delimiter = ',', default_value = "3.5")]
    pub etcd: Vec<String>,
    /// Cluster sizes to run (members on 127.0.0.1).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub topology: Vec<usize>,
    /// Only these workloads (comma-separated names; see --list).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Repetitions per server (each on a fresh server), interleaved.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Tiny totals (for CI and smoke tests).
    #[arg(long)]
    pub quick: bool,
    /// Load generator(s).
    #[arg(long, value_enum, default_value = "strata-bench")]
    pub generator: GeneratorChoice,
    /// Strata binary [default: target/release/strata, built if missing].
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    /// strata-bench binary [default: target/release/strata-bench].
    #[arg(long)]
    pub strata_bench_bin: Option<PathBuf>,
    /// etcd's benchmark binary [default: ~/.cache/strata/etcd-benchmark/benchmark].
    #[arg(long)]
    pub etcd_benchmark_bin: Option<PathBuf>,
    /// etcd 3.5 binary [default: ~/.cache/strata/etcd-3.5/bin/etcd].
    #[arg(long)]
    pub etcd35_bin: Option<PathBuf>,
    /// etcd 3.5.16 binary [default: ~/.cache/strata/etcd-3.5.16/bin/etcd,
    /// fetched by bench/scripts/install-etcd-3.5.16.sh].
    #[arg(long)]
    pub etcd3516_bin: Option<PathBuf>,
    /// etcd 3.4 binary [default: /usr/bin/etcd].
    #[arg(long)]
    pub etcd34_bin: Option<PathBuf>,
    /// etcdctl (3.5) for `snapshot save` [default: ~/.cache/strata/etcd-3.5/bin/etcdctl].
    #[arg(long)]
    pub etcdctl_bin: Option<PathBuf>,
    /// Put the servers' data dirs (and the fdatasync probe) in a temp dir here.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Output directory for results.json, table.md and ratios.svg.
    #[arg(long, default_value = "target/strata-compare")]
    pub out: PathBuf,
    /// --snapshot-count given to both servers.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// --heartbeat-interval (ms) given to both servers.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// --election-timeout (ms) given to both servers.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Also measure RSS, restart time, snapshot time and data dir size after
    /// loading --resource-keys keys (single node, Strata vs etcd 3.5).
    #[arg(long)]
    pub resources: bool,
    /// Keys (256 B values) loaded for --resources.
    #[arg(long, default_value_t = 1_000_000)]
    pub resource_keys: u64,
    /// Iterations of the fdatasync and loopback probes.
    #[arg(long, default_value_t = 1000)]
    pub floor_iterations: usize,
    /// Time limit of one load-generator run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub run_timeout: u64,
    /// Print the workloads and their argv, then exit.
    #[arg(long)]
    pub list: bool,
    /// Redraw --out/ratios.svg and --out/table-replot.md from an earlier
    /// run's results.json (no servers are started).
    #[arg(long, value_name = "RESULTS_JSON")]
    pub replot: Option<PathBuf>,
}

/// Parses `args` (program name first) and runs the comparison. `--help`
/// and `--version` print and return Ok; invalid flags print clap's usage
/// error and exit with status 2.
pub fn main_with_args<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match CompareArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            // A closed stdout (`--help | head`) is not an error.
            let _ = e.print();
            return Ok(());
        }
        // Usage errors print clap's message and exit 2, like any CLI.
        Err(e) => e.exit(),
    };
    run(args)
}

/// The workspace root (this crate's parent directory) when it exists,
/// else the current directory.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if root.join("Cargo.toml").exists() {
        root.canonicalize().unwrap_or(root)
    } else {
        PathBuf::from(".")
    }
}

fn home_cache(rel: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/strata").join(rel)
}

/// First line of `bin --version`.
fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// `bin` when it exists; else builds it with `cargo build --release <args>`
/// in the workspace root when `default` (a default path), or fails.
fn ensure_built(bin: &Path, default: bool, cargo_args: &[&str], log: &Log) -> Result<()> {
    if bin.exists() {
        return Ok(());
    }
    if !default {
        bail!("{} does not exist", bin.display());
    }
    log.line(&format!(
        "{} missing: cargo build {}",
        bin.display(),
        cargo_args.join(" ")
    ));
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("build")
        .args(cargo_args)
        .current_dir(workspace_root())
        .status()
        .context("run cargo")?;
    if !status.success() || !bin.exists() {
        bail!(
            "cargo build {} did not produce {}",
            cargo_args.join(" "),
            bin.display()
        );
    }
    Ok(())
}

/// Progress bar plus log lines on stderr (plain lines when it is hidden).
struct Log {
    pb: ProgressBar,
}

impl Log {
    fn line(&self, s: &str) {
        if self.pb.is_hidden() {
            eprintln!("{s}");
        } else {
            self.pb.println(s);
        }
    }
}

fn machine_info() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        });
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_gib": mem_kb.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").trim(),
    })
}

/// One cell of the plan: a (topology, etcd version, workload, generator).
struct Cell<'a> {
    topology: usize,
    etcd: &'a ServerSpec,
    workload: &'a workload::Workload,
    generator: Generator,
}

/// Everything `run` writes to results.json.
#[derive(Serialize)]
struct Results<'a> {
    tool: &'static str,
    date: String,
    command: Vec<String>,
    machine: serde_json::Value,
    args: &'a CompareArgs,
    strata: &'a ServerSpec,
    etcd: &'a [ServerSpec],
    timing: &'a Timing,
    /// The lower of the two floor measurements (used for the verdict).
    floor: Option<&'a floor::Floor>,
    floor_start: Option<&'a floor::Floor>,
    floor_end: Option<&'a floor::Floor>,
    /// Measured right before each put 1/1 repetition.
    floor_beside_put_1_1: &'a [floor::Floor],
    summary: &'a [stats::SummaryRow],
    skipped: &'a [String],
    runs: &'a [RunRecord],
    resources: Option<&'a [resources::ResourceFigures; 2]>,
    loadavg_at_end: String,
}

/// Runs the comparison described by `args`.
pub fn run(args: CompareArgs) -> Result<()> {
    let workloads = workload::select(&args.workloads)?;
    if args.list {
        for w in &workloads {
            println!(
                "{:<18} --conns {} --clients {} {}   ({})",
                w.name,
                w.conns,
                w.clients,
                w.command_args(args.quick).join(" "),
                w.title
            );
        }
        return Ok(());
    }
    if let Some(path) = &args.replot {
        return replot(path, &args.out);
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.topology.contains(&0) {
        bail!("--topology sizes must be at least 1");
    }
    let started = Instant::now();
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let root = workspace_root();
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("invariant: static template")
            .progress_chars("=> "),
    );
    let log = Log { pb: pb.clone() };

    // Binaries.
    let strata_default = args.strata_bin.is_none();
    let strata_bin = args
        .strata_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/strata"));
    ensure_built(
        &strata_bin,
        strata_default,
        &["--release", "-p", "store", "--bin", "strata"],
        &log,
    )?;
    let strata = ServerSpec {
        server: "strata".into(),
        version: version_of(&strata_bin),
        bin: strata_bin,
    };
    let mut etcds = Vec::new();
    for v in &args.etcd {
        let bin = match v.as_str() {
            "3.5" => args
                .etcd35_bin
                .clone()
                .unwrap_or_else(|| home_cache("etcd-3.5/bin/etcd")),
            "3.5.16" => args
                .etcd3516_bin
                .clone()
                .unwrap_or_else(|| home_cache("etcd-3.5.16/bin/etcd")),
            "3.4" => args
                .etcd34_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
            other => bail!("unknown --etcd version {other:?} (3.5, 3.5.16 or 3.4)"),
        };
        if !bin.exists() {
            let installer = if v == "3.5.16" {
                "bench/scripts/install-etcd-3.5.16.sh fetches it"
            } else {
                "scripts/install-peers.sh installs it"
            };
            bail!("etcd {v} not found at {} ({installer})", bin.display());
        }
        etcds.push(ServerSpec {
            server: "etcd".into(),
            version: v.clone(),
            bin,
        });
    }
    let generators: Vec<Generator> = match args.generator {
        GeneratorChoice::StrataBench => vec![Generator::StrataBench],
        GeneratorChoice::Etcd => vec![Generator::Etcd],
        GeneratorChoice::Both => vec![Generator::StrataBench, Generator::Etcd],
    };
    let sb_default = args.strata_bench_bin.is_none();
    let strata_bench_bin = args
        .strata_bench_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/strata-bench"));
    if generators.contains(&Generator::StrataBench) {
        ensure_built(
            &strata_bench_bin,
            sb_default,
            &["--release", "-p", "bench", "--bin", "strata-bench"],
            &log,
        )
        .context(
            "strata-bench is needed for --generator strata-bench/both (or use --generator etcd)",
        )?;
    }
    let etcd_benchmark_bin = args
        .etcd_benchmark_bin
        .clone()
        .unwrap_or_else(|| home_cache("etcd-benchmark/benchmark"));
    if generators.contains(&Generator::Etcd) && !etcd_benchmark_bin.exists() {
        bail!(
            "etcd's benchmark not found at {} (bench/scripts/install-etcd-benchmark.sh builds it)",
            etcd_benchmark_bin.display()
        );
    }
    let gen_bin = |g: Generator| -> &Path {
        match g {
            Generator::StrataBench => &strata_bench_bin,
            Generator::Etcd => &etcd_benchmark_bin,
        }
    };
    let timing = Timing {
        snapshot_count: args.snapshot_count,
        heartbeat_ms: args.heartbeat_interval,
        election_ms: args.election_timeout,
    };
    let tmp = match &args.data_root {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("strata-compare")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("strata-compare")
            .tempdir()?,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run_timeout = Duration::from_secs(args.run_timeout);

    // Floor for put 1/1: measured at the start, at the end, and right before
    // each repetition of put 1/1. Others share this disk, so the floor moves;
    // the verdict uses the median of the measurements taken beside the put
    // 1/1 runs (or the lower of start/end when there were none).
    let machine = machine_info();
    log.line("measuring the put 1/1 floor (fdatasync in the data root + loopback RTT)");
    let measure_floor = |when: &str| match floor::measure(tmp.path(), args.floor_iterations) {
        Ok(f) => {
            log.line(&format!("{when}: {}", report::floor_line(&f)));
            Some(f)
        }
        Err(e) => {
            log.line(&format!("floor not measured: {e:#}"));
            None
        }
    };
    let floor_start = measure_floor("at start");

    // The plan.
    let mut cells = Vec::new();
    let mut skipped = Vec::new();
    for &topology in &args.topology {
        for etcd in &etcds {
            for w in &workloads {
                for &g in &generators {
                    if g == Generator::Etcd && !w.in_etcd_benchmark {
                        skipped.push(format!(
                            "{} ({} node(s), etcd {}): skipped with etcd's benchmark (3.4.23's tools/benchmark has no {} command)",
                            w.name,
                            topology,
                            etcd.version,
                            w.command_args(false)[0]
                        ));
                        continue;
                    }
                    cells.push(Cell {
                        topology,
                        etcd,
                        workload: w,
                        generator: g,
                    });
                }
            }
        }
    }
    let resource_steps = if args.resources { 2 } else { 0 };
    pb.set_length((cells.len() * args.reps * 2 + resource_steps) as u64);

    let mut cell_results: Vec<Vec<RunRecord>> = Vec::new();
    let mut beside: Vec<floor::Floor> = Vec::new();
    let mut counter = 0usize;
    for cell in &cells {
        let mut cell_runs = Vec::new();
        for rep in 0..args.reps {
            if cell.workload.target == workload::Target::SingleClientPut {
                pb.set_message("measuring the floor");
                let when = format!(
                    "before {} {}n rep {}",
                    cell.workload.name,
                    cell.topology,
                    rep + 1
                );
                beside.extend(measure_floor(&when));
            }
            for spec in [&strata, cell.etcd] {
                counter += 1;
                pb.set_message(format!(
                    "{} {}n etcd{} {} rep {}: {}",
                    cell.workload.name,
                    cell.topology,
                    cell.etcd.version,
                    cell.generator.name(),
                    rep + 1,
                    spec.server
                ));
                let dir = tmp.path().join(format!("run{counter:04}-{}", spec.server));
                let rec = one_run(
                    &rt,
                    cell,
                    spec,
                    rep,
                    &dir,
                    &timing,
                    args.quick,
                    gen_bin(cell.generator),
                    run_timeout,
                );
                match (&rec.measurement, &rec.error) {
                    (Some(m), _) => log.line(&format!(
                        "{:<16} {}n etcd{} {:<14} rep {} {:<6} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
                        cell.workload.name,
                        cell.topology,
                        cell.etcd.version,
                        cell.generator.name(),
                        rep + 1,
                        spec.server,
                        m.requests_per_sec,
                        m.latency_ms.p50,
                        m.latency_ms.p99,
                        if m.errors > 0 { format!("  ({} errors)", m.errors) } else { String::new() }
                    )),
                    (None, Some(e)) => log.line(&format!(
                        "{} {}n etcd{} {} rep {} {}: FAILED: {e}",
                        cell.workload.name,
                        cell.topology,
                        cell.etcd.version,
                        cell.generator.name(),
                        rep + 1,
                        spec.server
                    )),
                    (None, None) => {}
                }
                let _ = std::fs::remove_dir_all(&dir);
                cell_runs.push(rec);
                pb.inc(1);
            }
        }
        cell_results.push(cell_runs);
    }
    let floor_end = measure_floor("at end");
    let floor = if beside.is_empty() {
        [floor_start.clone(), floor_end.clone()]
            .into_iter()
            .flatten()
            .min_by(|a, b| a.floor_ms.total_cmp(&b.floor_ms))
    } else {
        let mut v = beside.clone();
        v.sort_by(|a, b| a.floor_ms.total_cmp(&b.floor_ms));
        Some(v[(v.len() - 1) / 2].clone())
    };
    let mut summary = Vec::new();
    let mut runs: Vec<RunRecord> = Vec::new();
    for (cell, cell_runs) in cells.iter().zip(cell_results) {
        summary.push(stats::summarize(
            cell.workload.name,
            cell.workload.target,
            cell.topology,
            &cell.etcd.version,
            cell.generator.name(),
            &cell_runs,
            floor.as_ref(),
        ));
        runs.extend(cell_runs);
    }

    // Resources.
    let resource_figs = if args.resources {
        let etcd35 = match etcds.iter().find(|e| e.version == "3.5") {
            Some(e) => e.clone(),
            None => {
                let bin = args
                    .etcd35_bin
                    .clone()
                    .unwrap_or_else(|| home_cache("etcd-3.5/bin/etcd"));
                if !bin.exists() {
                    bail!("--resources needs etcd 3.5 ({} is missing)", bin.display());
                }
                ServerSpec {
                    server: "etcd".into(),
                    version: "3.5".into(),
                    bin,
                }
            }
        };
        let etcdctl = args
            .etcdctl_bin
            .clone()
            .unwrap_or_else(|| home_cache("etcd-3.5/bin/etcdctl"));
        let g = generators[0];
        let rr = resources::ResourceRun {
            rt: &rt,
            generator: g,
            generator_bin: gen_bin(g),
            etcdctl: &etcdctl,
            timing: &timing,
            keys: args.resource_keys,
            workdir: tmp.path().join("resources"),
            timeout: Duration::from_secs(args.run_timeout.max(1800)),
        };
        let mut figs = Vec::new();
        for spec in [&strata, &etcd35] {
            pb.set_message(format!(
                "resources: {} keys into {}",
                args.resource_keys, spec.server
            ));
            let f = rr.measure(spec);
            log.line(&format!(
                "resources {}: RSS {:?} B, restart {:?} ms, snapshot {:?} ms, data dir {:?} B{}",
                spec.server,
                f.rss_after_load_bytes,
                f.restart_ms.map(|v| v.round()),
                f.snapshot_ms.map(|v| v.round()),
                f.data_dir_bytes,
                if f.errors.is_empty() {
                    String::new()
                } else {
                    format!(" (errors: {})", f.errors.join("; "))
                }
            ));
            figs.push(f);
            pb.inc(1);
        }
        let [a, b]: [resources::ResourceFigures; 2] = figs
            .try_into()
            .map_err(|_| anyhow!("invariant: two resource figures"))?;
        Some([a, b])
    } else {
        None
    };
    pb.finish_and_clear();

    // Reports.
    let command: Vec<String> = std::env::args().collect();
    let table = report::markdown_table(&summary);
    let mut md = String::new();
    md.push_str(&format!(
        "# strata-compare, {date}\n\nCommand: `{}`\n\nStrata: {} ({}); etcd: {}. Generator(s): {}. {} rep(s) per server, interleaved Strata/etcd, each on a fresh server.{}\n\n",
        command.join(" "),
        strata.version,
        strata.bin.display(),
        etcds
            .iter()
            .map(|e| format!("{} ({})", version_of(&e.bin), e.bin.display()))
            .collect::<Vec<_>>()
            .join(", "),
        generators.iter().map(|g| g.name()).collect::<Vec<_>>().join(", "),
        args.reps,
        if args.quick { " --quick totals." } else { "" }
    ));
    for (when, f) in [("At start", &floor_start), ("At end", &floor_end)] {
        if let Some(f) = f {
            md.push_str(&format!("{when}: {}\n\n", report::floor_line(f)));
        }
    }
    if !beside.is_empty() {
        md.push_str(&format!(
            "Floor measured right before each put 1/1 repetition (fdatasync p50 + RTT p50): {} ms.\n\n",
            beside
                .iter()
                .map(|f| format!("{:.3}", f.floor_ms))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(f) = &floor {
        md.push_str(&format!(
            "The put 1/1 verdict uses a floor of {:.3} ms ({}), so its target is p50 ≤ {:.3} ms.\n\n",
            f.floor_ms,
            if beside.is_empty() { "the lower of start and end" } else { "the median of those beside the put 1/1 runs" },
            1.5 * f.floor_ms
        ));
    }
    md.push_str(&table);
    let cpu_table = report::cpu_table(&summary);
    if !cpu_table.is_empty() {
        md.push('\n');
        md.push_str(&cpu_table);
    }
    for s in &skipped {
        md.push_str(&format!("\n- {s}"));
    }
    if !skipped.is_empty() {
        md.push('\n');
    }
    if let Some([s, e]) = &resource_figs {
        md.push('\n');
        md.push_str(&report::resources_table(s, e));
    }
    md.push_str(&format!(
        "\nWall time: {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    let results = Results {
        tool: "strata-compare",
        date: date.clone(),
        command,
        machine,
        args: &args,
        strata: &strata,
        etcd: &etcds,
        timing: &timing,
        floor: floor.as_ref(),
        floor_start: floor_start.as_ref(),
        floor_end: floor_end.as_ref(),
        floor_beside_put_1_1: &beside,
        summary: &summary,
        skipped: &skipped,
        runs: &runs,
        resources: resource_figs.as_ref(),
        loadavg_at_end: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(args.out.join("table.md"), &md)?;
    let title = format!("Strata vs etcd: throughput ratio ({})", &date[..10]);
    std::fs::write(
        args.out.join("ratios.svg"),
        report::ratios_svg(&summary, &title),
    )?;
    println!("{md}");
    eprintln!(
        "wrote {}/{{results.json,table.md,ratios.svg}}",
        args.out.display()
    );
    if !runs.is_empty() && runs.iter().all(|r| r.measurement.is_none()) {
        bail!(
            "every run failed (see {})",
            args.out.join("results.json").display()
        );
    }
    Ok(())
}

/// Redraws the chart and table of an earlier run from its results.json.
fn replot(results: &Path, out: &Path) -> Result<()> {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results).with_context(|| format!("read {}", results.display()))?,
    )
    .with_context(|| format!("parse {}", results.display()))?;
    let summary: Vec<stats::SummaryRow> = serde_json::from_value(doc["summary"].clone())
        .context("results.json has no valid \"summary\"")?;
    let date = doc["date"].as_str().unwrap_or("unknown date");
    std::fs::create_dir_all(out)?;
    let title = format!(
        "Strata vs etcd: throughput ratio ({})",
        date.get(..10).unwrap_or(date)
    );
    std::fs::write(out.join("ratios.svg"), report::ratios_svg(&summary, &title))?;
    std::fs::write(
        out.join("table-replot.md"),
        format!(
            "{}\n{}",
            report::markdown_table(&summary),
            report::cpu_table(&summary)
        ),
    )?;
    eprintln!("wrote {}/{{ratios.svg,table-replot.md}}", out.display());
    Ok(())
}

/// Starts a fresh `spec` server for `cell`, preloads, runs the generator
/// once and stops the server.
#[allow(clippy::too_many_arguments)]
fn one_run(
    rt: &tokio::runtime::Runtime,
    cell: &Cell<'_>,
    spec: &ServerSpec,
    rep: usize,
    dir: &Path,
    timing: &Timing,
    quick: bool,
    gen_bin: &Path,
    timeout: Duration,
) -> RunRecord {
    let mut rec = RunRecord {
        workload: cell.workload.name.to_string(),
        topology: cell.topology,
        etcd_version: cell.etcd.version.clone(),
        generator: cell.generator.name().to_string(),
        rep,
        server: spec.server.clone(),
        server_version: spec.version.clone(),
        argv: Vec::new(),
        startup_ms: 0.0,
        measurement: None,
        server_cpu_us: None,
        generator_cpu_us: None,
        error: None,
    };
    let mut cpu_spent: Option<(Duration, Duration)> = None;
    let result = (|| -> Result<parse::Measurement> {
        let mut cluster = Cluster::start(spec, cell.topology, dir, timing)?;
        rec.startup_ms = cluster
            .wait_ready(rt, Duration::from_secs(60))?
            .as_secs_f64()
            * 1000.0;
        let eps = cluster.endpoints();
        if let Some(key) = cell.workload.preload_key {
            rt.block_on(client::put(&eps[0], key, 256, Duration::from_secs(10)))
                .context("preload")?;
        }
        rec.argv = generator::argv(
            cell.generator,
            &eps,
            cell.workload.conns,
            cell.workload.clients,
            &cell.workload.command_args(quick),
        );
        let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
        let (server0, gen0) = (cpu::processes_cpu(&pids), cpu::children_cpu());
        let m = generator::run(cell.generator, gen_bin, &rec.argv, dir, "load", timeout);
        let (server1, gen1) = (cpu::processes_cpu(&pids), cpu::children_cpu());
        if let (Some(a), Some(b)) = (server0, server1) {
            cpu_spent = Some((b.saturating_sub(a), gen1.saturating_sub(gen0)));
        }
        cluster.stop();
        m
    })();
    match result {
        Ok(m) => {
            let requests = m.ok + m.errors;
            if let Some((server, gen)) = cpu_spent.filter(|_| requests > 0) {
                let per = |d: Duration| d.as_secs_f64() * 1e6 / requests as f64;
                rec.server_cpu_us = Some(per(server));
                rec.generator_cpu_us = Some(per(gen));
            }
            rec.measurement = Some(m)
        }
        Err(e) => rec.error = Some(format!("{e:#}")),
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replot_redraws_from_results_json() {
        let d = tempfile::tempdir().unwrap();
        let results = d.path().join("results.json");
        std::fs::write(
            &results,
            r#"{"date": "2026-12-04T17:27:30Z", "summary": [{"workload": "put-10-100", "topology": 3,
                "etcd_version": "3.5", "generator": "etcd-benchmark", "strata_runs": 3, "etcd_runs": 3,
                "strata_rps": 7719.0, "etcd_rps": 6520.0, "ratio": 1.18, "strata_p50_ms": 10.7,
                "strata_p99_ms": 37.5, "etcd_p50_ms": 13.8, "etcd_p99_ms": 45.9,
                "target": "≥ 2× etcd, p99 ≤ etcd", "pass": false, "note": ""}]}"#,
        )
        .unwrap();
        let out = d.path().join("out");
        main_with_args(
            ["strata-compare", "--replot"]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    results.display().to_string(),
                    "--out".into(),
                    out.display().to_string(),
                ]),
        )
        .unwrap();
        let svg = std::fs::read_to_string(out.join("ratios.svg")).unwrap();
        assert!(svg.contains("put-10-100 · 3n · 3.5") && svg.contains("2026-12-04"));
        let table = std::fs::read_to_string(out.join("table-replot.md")).unwrap();
        assert!(
            table.contains("| put-10-100 | 3 | 3.5 | etcd-benchmark | 7719 | 6520 | 1.18× |"),
            "{table}"
        );
        std::fs::write(&results, "{}").unwrap();
        assert!(run(
            CompareArgs::try_parse_from(["x", "--replot", results.to_str().unwrap()]).unwrap()
        )
        .is_err());
    }
}
