//! Running a load generator once: `strata-bench ... --output json` or etcd's
//! own `benchmark` (3.4.23's tools/benchmark), with the same global flags
//! (`--endpoints`, `--conns`, `--clients`) and workload argv, under a time
//! limit, and parsing what it printed into a [`Measurement`].
//!
//! Output goes to files in a work dir (never pipes that could fill up); the
//! process is killed by PID when it overruns.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::parse::{self, Measurement};
use super::server::log_tail;

/// Which load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// This repo's `strata-bench --output json`.
    StrataBench,
    /// etcd's own `benchmark` tool (text report).
    Etcd,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::StrataBench => "strata-bench",
            Generator::Etcd => "etcd-benchmark",
        }
    }
}

/// Full argv (after the binary) for one run.
pub fn argv(
    generator: Generator,
    endpoints: &[String],
    conns: u32,
    clients: u32,
    command: &[String],
) -> Vec<String> {
    let mut a = vec![
        "--endpoints".to_string(),
        endpoints.join(","),
        "--conns".to_string(),
        conns.to_string(),
        "--clients".to_string(),
        clients.to_string(),
    ];
    match generator {
        // Full float precision instead of 4 decimals of a second.
        Generator::Etcd => a.push("--precise".to_string()),
        Generator::StrataBench => {
            a.push("--output".to_string());
            a.push("json".to_string());
        }
    }
    a.extend(command.iter().cloned());
    a
}

/// Runs `bin argv` with stdout/stderr in `workdir/<stem>.{out,err}`, killing
/// it after `timeout`, and parses its report.
pub fn run(
    generator: Generator,
    bin: &Path,
    argv: &[String],
    workdir: &Path,
    stem: &str,
    timeout: Duration,
) -> Result<Measurement> {
    std::fs::create_dir_all(workdir)?;
    let out_path: PathBuf = workdir.join(format!("{stem}.out"));
    let err_path: PathBuf = workdir.join(format!("{stem}.err"));
    let mut child = Command::new(bin)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {:?}; stderr tail:\n{}",
                generator.name(),
                timeout,
                log_tail(&err_path, 5)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path)?;
    if !status.success() {
        bail!(
            "{} exited with {status}; stderr tail:\n{}",
            generator.name(),
            log_tail(&err_path, 5)
        );
    }
    match generator {
        Generator::StrataBench => parse::parse_strata_bench_json(&stdout),
        Generator::Etcd => parse::parse_etcd_benchmark_text(&stdout),
    }
    .with_context(|| format!("parse {}", out_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_global_flags_before_the_command() {
        let eps = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let cmd = vec!["put".to_string(), "--total".to_string(), "5".to_string()];
        let a = argv(Generator::Etcd, &eps, 10, 100, &cmd);
        assert_eq!(
            &a[..6],
            [
                "--endpoints",
                "127.0.0.1:1,127.0.0.1:2",
                "--conns",
                "10",
                "--clients",
                "100"
            ]
        );
        assert!(a.contains(&"--precise".to_string()));
        assert_eq!(&a[a.len() - 3..], cmd.as_slice());
        let j = argv(Generator::StrataBench, &eps, 1, 1, &cmd);
        let i = j.iter().position(|s| s == "--output").unwrap();
        assert_eq!(j[i + 1], "json");
        assert!(i < j.len() - 3);
    }

    #[test]
    fn run_reports_failures_and_timeouts() {
        let d = tempfile::tempdir().unwrap();
        let sh = Path::new("/bin/sh");
        let err = run(
            Generator::Etcd,
            sh,
            &["-c".into(), "echo boom >&2; exit 3".into()],
            d.path(),
            "f",
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("boom"), "{err:#}");
        let err = run(
            Generator::Etcd,
            sh,
            &["-c".into(), "sleep 5".into()],
            d.path(),
            "t",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
        let sample = include_str!("testdata/etcd-lease-keepalive.txt");
        std::fs::write(d.path().join("s.txt"), sample).unwrap();
        let cat = format!("cat {}", d.path().join("s.txt").display());
        let m = run(
            Generator::Etcd,
            sh,
            &["-c".into(), cat],
            d.path(),
            "ok",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(m.ok, 2000);
    }

    #[test]
    fn strata_bench_json_goes_through_the_json_parser() {
        let d = tempfile::tempdir().unwrap();
        let doc = r#"{"tool": "strata-bench", "command": "range", "total": 10, "ok": 9, "errors": 1,
            "errors_by_message": {"etcdserver: request timed out": 1}, "elapsed_secs": 0.5,
            "requests_per_sec": 18.0, "latency_ms": {"min": 0.1, "mean": 1.0, "stddev": 0.2,
            "p50": 0.9, "p90": 1.5, "p99": 2.0, "p99_9": 2.0, "max": 2.1}, "extra": {}}"#;
        std::fs::write(d.path().join("r.json"), doc).unwrap();
        let cat = format!(
            "echo progress >&2; cat {}",
            d.path().join("r.json").display()
        );
        let sh = Path::new("/bin/sh");
        let m = run(
            Generator::StrataBench,
            sh,
            &["-c".into(), cat],
            d.path(),
            "j",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((m.ok, m.errors), (9, 1));
        assert_eq!(m.requests_per_sec, 18.0);
        // etcd's text report is not JSON.
        let text = format!("cat {}", d.path().join("r.json").display());
        assert!(run(
            Generator::Etcd,
            sh,
            &["-c".into(), text],
            d.path(),
            "t",
            Duration::from_secs(5)
        )
        .is_err());
    }
}
