//! Smoke test of `strata-compare`: a `--quick` run of two workloads against
//! a debug Strata and etcd 3.5 with etcd's own benchmark as generator, then
//! checks that the table and results.json hold both servers with nonzero
//! req/s and that the chart was written.
//!
//! Needs etcd 3.5 (`scripts/install-peers.sh`) and etcd's benchmark
//! (`bench/scripts/install-etcd-benchmark.sh`, run here when it is missing);
//! builds `target/debug/strata` when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

fn ensure(path: &Path, what: &str, cmd: &mut Command) {
    if path.exists() {
        return;
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the installer of {what}: {e}"));
    assert!(
        status.success() && path.exists(),
        "{what} missing at {} and {:?} did not provide it",
        path.display(),
        cmd
    );
}

#[test]
fn quick_compare_against_etcd_35() {
    let root = root();
    let strata = root.join("target/debug/strata");
    ensure(
        &strata,
        "debug strata",
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "-p", "store", "--bin", "strata"])
            .current_dir(&root),
    );
    let etcd = home().join(".cache/strata/etcd-3.5/bin/etcd");
    ensure(
        &etcd,
        "etcd 3.5",
        Command::new(root.join("scripts/install-peers.sh")).current_dir(&root),
    );
    let benchmark = home().join(".cache/strata/etcd-benchmark/benchmark");
    ensure(
        &benchmark,
        "etcd's benchmark tool",
        Command::new(root.join("bench/scripts/install-etcd-benchmark.sh")).current_dir(&root),
    );

    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_strata-compare"))
        .args([
            "--quick",
            "--generator",
            "etcd",
            "--topology",
            "1",
            "--etcd",
            "3.5",
            "--workloads",
            "put-1-1,range-l-10-100",
            "--reps",
            "1",
            "--floor-iterations",
            "200",
        ])
        .arg("--strata-bin")
        .arg(&strata)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run strata-compare");
    assert!(status.success(), "strata-compare failed: {status}");

    let table = std::fs::read_to_string(out.path().join("table.md")).unwrap();
    for w in ["put-1-1", "range-l-10-100"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {w} | 1 | 3.5 | etcd-benchmark |")))
            .unwrap_or_else(|| panic!("no row for {w} in:\n{table}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // cells[5], cells[6]: Strata and etcd req/s; cells[7]: the ratio.
        for (i, who) in [(5, "Strata"), (6, "etcd")] {
            let rps: f64 = cells[i]
                .parse()
                .unwrap_or_else(|_| panic!("{who} req/s in {line}"));
            assert!(rps > 0.0, "{who} req/s is zero in {line}");
        }
        assert!(cells[7].ends_with('×'), "ratio in {line}");
    }
    assert!(
        table.contains("Floor for put 1/1: fdatasync p50"),
        "{table}"
    );

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "2 workloads × 2 servers × 1 rep");
    for server in ["strata", "etcd"] {
        for w in ["put-1-1", "range-l-10-100"] {
            let run = runs
                .iter()
                .find(|r| r["server"] == server && r["workload"] == w)
                .unwrap_or_else(|| panic!("no {server} run of {w}"));
            let rps = run["measurement"]["requests_per_sec"]
                .as_f64()
                .unwrap_or(0.0);
            assert!(rps > 0.0, "{server} {w}: {run}");
            assert!(run["measurement"]["ok"].as_u64().unwrap() > 0);
        }
    }
    assert!(results["floor"]["floor_ms"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.path().join("ratios.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("put-1-1"), "{svg}");
}
