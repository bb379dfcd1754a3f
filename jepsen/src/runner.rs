//! One test run, start to verdict: start the cluster, run the workloads
//! (one shared [`Recorder`]) and the seeded nemesis schedule side by side
//! for the time limit, heal, compare `Maintenance.HashKV` across members,
//! stop the cluster, run the checkers, and write `verdict.json` and the
//! HTML report into the run directory. [`recheck`] redoes the last part on
//! a saved run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use proto::etcdserverpb::HashKvRequest;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::checker::{self, CheckResult, Validity};
use crate::cluster::{Cluster, ClusterOpts, ServerKind};
use crate::nemesis::{self, FaultLog, NemesisKind, Schedule};
use crate::workload::{self, Recorder, WorkloadKind, WorkloadOpts};

/// Everything a `test` run is given.
#[derive(Clone, Debug)]
pub struct TestOpts {
    pub server: ServerKind,
    pub bin: PathBuf,
    pub nodes: usize,
    /// Names as given (`register`, `append`, ...), parsed into [`WorkloadKind`].
    pub workloads: Vec<String>,
    pub nemeses: Vec<NemesisKind>,
    pub time_limit: Duration,
    pub seed: u64,
    /// Clients per workload.
    pub concurrency: usize,
    pub keys: usize,
    /// The run directory.
    pub out: PathBuf,
    pub netns: bool,
    pub serializable_reads: bool,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Fires on Ctrl-C: the run stops early, heals, and tears down.
    pub abort: CancellationToken,
}

/// The run's overall verdict and every checker's result.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub dir: PathBuf,
    pub valid: Validity,
    pub results: Vec<CheckResult>,
    pub report: Option<PathBuf>,
}

/// Invalid beats Unknown beats Valid.
pub fn overall(results: &[CheckResult]) -> Validity {
    if results.iter().any(|r| r.valid == Validity::Invalid) {
        Validity::Invalid
    } else if results.iter().any(|r| r.valid == Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::Valid
    }
}

/// Runs a whole test; see the module docs.
pub async fn run_test(opts: TestOpts) -> anyhow::Result<Outcome> {
    let kinds: Vec<WorkloadKind> = opts
        .workloads
        .iter()
        .map(|w| w.parse::<WorkloadKind>())
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let dir = opts.out.clone();
    for stale in [
        "history.jsonl",
        "watches.jsonl",
        "faults.jsonl",
        "verdict.json",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    std::fs::write(
        dir.join("test.json"),
        serde_json::to_string_pretty(&json!({
            "server": opts.server,
            "bin": opts.bin,
            "nodes": opts.nodes,
            "workloads": opts.workloads,
            "nemeses": opts.nemeses,
            "time_limit_s": opts.time_limit.as_secs_f64(),
            "seed": opts.seed,
            "concurrency": opts.concurrency,
            "keys": opts.keys,
            "netns": opts.netns,
            "serializable_reads": opts.serializable_reads,
        }))?,
    )?;

    let schedule = Schedule::generate(opts.seed, &opts.nemeses, opts.nodes, opts.time_limit);
    let described = schedule.describe();
    eprint!("{described}");
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&schedule)?,
    )?;

    eprintln!(
        "starting {} {} nodes ({}) from {}",
        opts.nodes,
        opts.server,
        if opts.netns {
            "network namespaces"
        } else {
            "127.0.0.1 + proxies"
        },
        opts.bin.display()
    );
    let mut cluster = Cluster::start(ClusterOpts {
        server: opts.server,
        bin: opts.bin.clone(),
        nodes: opts.nodes,
        netns: opts.netns,
        dir: dir.clone(),
    })
    .await?;
    let endpoints = cluster.client_urls();
    eprintln!("cluster up: {}", endpoints.join(" "));

    let start = Instant::now();
    let recorder = Recorder::create(&dir, start)?;
    let faults = FaultLog::create(&dir, start)?;
    let wstop = opts.abort.child_token();
    let mut workers = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let w = WorkloadOpts {
            kind,
            endpoints: endpoints.clone(),
            concurrency: opts.concurrency,
            keys: opts.keys,
            seed: opts.seed.wrapping_add(i as u64 * 0x9e37_79b9),
            serializable_reads: opts.serializable_reads,
        };
        let name = opts.workloads[i].clone();
        workers.push((
            name,
            tokio::spawn(workload::run(w, recorder.clone(), wstop.clone())),
        ));
    }

    let bar = if opts.progress {
        let b = ProgressBar::new(opts.time_limit.as_secs());
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let ticker = {
        let bar = bar.clone();
        let limit = opts.time_limit.as_secs();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                bar.set_position(start.elapsed().as_secs().min(limit));
            }
        })
    };
    let nstop = opts.abort.child_token();
    let timer = {
        let nstop = nstop.clone();
        let limit = opts.time_limit;
        tokio::spawn(async move {
            tokio::time::sleep_until((start + limit).into()).await;
            nstop.cancel();
        })
    };
    let on_fault = {
        let bar = bar.clone();
        let progress = opts.progress;
        move |f: &str| {
            if f.is_empty() {
                bar.set_message("");
            } else if progress {
                bar.set_message(format!("fault: {f}"));
            } else {
                eprintln!("[{:>6.1}s] fault: {f}", start.elapsed().as_secs_f64());
            }
        }
    };
    let nem = nemesis::run(&mut cluster, &schedule, &faults, nstop.clone(), &on_fault).await;
    // The schedule may end before the time limit: the workloads run on.
    nstop.cancelled().await;
    timer.abort();
    ticker.abort();
    bar.finish_and_clear();
    if let Err(e) = nem {
        eprintln!("nemesis error: {e:#}");
    }

    eprintln!("healing");
    let healed = nemesis::heal_all(&mut cluster, &faults).await;
    if let Err(e) = &healed {
        eprintln!("cluster did not recover: {e:#}");
    }
    // Let the clients see the healed cluster for a moment, then stop them.
    if !opts.abort.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    wstop.cancel();
    let mut workload_errors = Vec::new();
    for (name, w) in workers {
        match tokio::time::timeout(Duration::from_secs(60), w).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => workload_errors.push(format!("{name}: {e:#}")),
            Ok(Err(e)) => workload_errors.push(format!("{name}: {e}")),
            Err(_) => workload_errors.push(format!("{name}: did not stop within 60 s")),
        }
    }
    recorder.flush()?;

    let hashkv = match &healed {
        Ok(()) => hashkv_check(&cluster).await,
        Err(e) => CheckResult {
            checker: "hashkv".into(),
            valid: Validity::Unknown,
            summary: format!("cluster unhealthy after healing: {e:#}"),
            anomalies: Vec::new(),
            witness: Vec::new(),
        },
    };
    drop(cluster);

    let mut extra = vec![hashkv];
    if !workload_errors.is_empty() {
        extra.push(CheckResult {
            checker: "workloads".into(),
            valid: Validity::Unknown,
            summary: format!("workload errors: {}", workload_errors.join("; ")),
            anomalies: workload_errors
                .iter()
                .map(|e| json!({"type": "workload-error", "error": e}))
                .collect(),
            witness: Vec::new(),
        });
    }
    finish(&dir, extra).await
}

/// Runs the checkers on `dir`, appends `extra` (results that need the live
/// cluster), and writes `verdict.json` and the report.
async fn finish(dir: &Path, extra: Vec<CheckResult>) -> anyhow::Result<Outcome> {
    eprintln!("checking {}", dir.display());
    let d = dir.to_path_buf();
    let mut results = tokio::task::spawn_blocking(move || checker::check_run(&d)).await??;
    results.extend(extra);
    let valid = overall(&results);
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_string_pretty(&json!({"valid": valid, "results": results}))?,
    )?;
    let report = match crate::report::write_html(dir, &results) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("HTML report failed: {e:#}");
            None
        }
    };
    Ok(Outcome {
        dir: dir.to_path_buf(),
        valid,
        results,
        report,
    })
}

/// Re-runs the checkers on a saved run; the HashKV result (which needed the
/// live cluster) is carried over from the saved `verdict.json`.
pub async fn recheck(dir: &Path) -> anyhow::Result<Outcome> {
    let mut extra = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("verdict.json")) {
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if let Some(rs) = v["results"].as_array() {
            for r in rs {
                let r: CheckResult = serde_json::from_value(r.clone())?;
                if r.checker == "hashkv" {
                    extra.push(r);
                }
            }
        }
    }
    finish(dir, extra).await
}

/// `Maintenance.HashKV` at one revision on every member must agree.
pub async fn hashkv_check(cluster: &Cluster) -> CheckResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match hashkv_once(cluster).await {
            Ok((rev, hashes)) => {
                let first = hashes[0].1;
                let agree = hashes.iter().all(|h| h.1 == first);
                let table: Vec<_> = hashes
                    .iter()
                    .map(|(n, (h, c))| json!({"node": n, "hash": h, "compact_revision": c}))
                    .collect();
                return if agree {
                    CheckResult::valid(
                        "hashkv",
                        format!(
                            "{} members agree at revision {rev} (hash {:08x})",
                            hashes.len(),
                            first.0
                        ),
                    )
                } else {
                    CheckResult {
                        checker: "hashkv".into(),
                        valid: Validity::Invalid,
                        summary: format!("members disagree on HashKV at revision {rev}"),
                        anomalies: vec![
                            json!({"type": "hashkv-mismatch", "revision": rev, "members": table}),
                        ],
                        witness: Vec::new(),
                    }
                };
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    CheckResult {
        checker: "hashkv".into(),
        valid: Validity::Unknown,
        summary: format!("could not get HashKV from every member: {last}"),
        anomalies: Vec::new(),
        witness: Vec::new(),
    }
}

type Hashes = Vec<(String, (u32, i64))>;

async fn hashkv_once(cluster: &Cluster) -> anyhow::Result<(i64, Hashes)> {
    // The lowest revision every member has reached.
    let mut rev = i64::MAX;
    for i in 0..cluster.len() {
        rev = rev.min(cluster.status(i).await?.3);
    }
    let mut out = Vec::new();
    // When `rev` itself was compacted away (no write since the last
    // compaction), hash the latest revision instead: nothing writes any
    // more, so it is the same revision everywhere (checked below).
    let mut at = rev;
    for i in 0..cluster.len() {
        let mut m = cluster.maintenance(i).await?;
        let r = match m.hash_kv(HashKvRequest { revision: at }).await {
            Err(e) if e.message().contains("compacted") && i == 0 => {
                at = 0;
                m.hash_kv(HashKvRequest { revision: 0 }).await
            }
            r => r,
        }
        .with_context(|| format!("HashKV on {}", cluster.nodes[i].name))?
        .into_inner();
        if at == 0 {
            let hrev = r.header.map(|h| h.revision).unwrap_or(0);
            anyhow::ensure!(
                hrev == rev,
                "{} moved to revision {hrev}",
                cluster.nodes[i].name
            );
        }
        out.push((cluster.nodes[i].name.clone(), (r.hash, r.compact_revision)));
    }
    Ok((rev, out))
}

/// The summary table printed at the end of a run.
pub fn summary_table(o: &Outcome) -> String {
    let mut s = String::new();
    let w = o
        .results
        .iter()
        .map(|r| r.checker.len())
        .max()
        .unwrap_or(8)
        .max(8);
    s.push_str(&format!("{:<w$}  {:<8}  summary\n", "checker", "verdict"));
    for r in &o.results {
        let v = match r.valid {
            Validity::Valid => "valid",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "unknown",
        };
        s.push_str(&format!("{:<w$}  {:<8}  {}\n", r.checker, v, r.summary));
    }
    s.push_str(&format!(
        "verdict: {:?}   run dir: {}{}\n",
        o.valid,
        o.dir.display(),
        o.report
            .as_ref()
            .map(|p| format!("   report: {}", p.display()))
            .unwrap_or_default()
    ));
    s
}
