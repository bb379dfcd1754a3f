//! Checkers: each judges a recorded run (see [`crate::history`]) and returns
//! a [`CheckResult`]. [`check_run`] runs every checker that applies to the
//! files found in a run directory.

pub mod linear;
pub mod models;
pub mod porcupine;
pub mod revision;

use std::path::Path;

pub mod elle;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::history::{pair_ops, read_jsonl, Op};

/// A checker's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker ran out of its time budget (or could not decide).
    Unknown,
}

/// What one checker concluded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Checker name, e.g. `linearizable`, `revision-order`, `elle-append`.
    pub checker: String,
    pub valid: Validity,
    /// One line for humans.
    pub summary: String,
    /// Anomalies found, each a JSON object with at least a `"type"` field.
    #[serde(default)]
    pub anomalies: Vec<serde_json::Value>,
    /// History indexes (`Op::index`) of the smallest failing sub-history
    /// found, for the report to show.
    #[serde(default)]
    pub witness: Vec<usize>,
}

impl CheckResult {
    pub fn valid(checker: &str, summary: impl Into<String>) -> Self {
        CheckResult {
            checker: checker.to_string(),
            valid: Validity::Valid,
            summary: summary.into(),
            anomalies: Vec::new(),
            witness: Vec::new(),
        }
    }
}

/// Every invoke has at most one completion, from the same process, and no
/// process has two operations open at once.
pub fn check_well_formed(ops: &[Op]) -> CheckResult {
    match pair_ops(ops) {
        Ok(pairs) => CheckResult::valid(
            "well-formed",
            format!(
                "{} operations, every completion matches an invoke",
                pairs.len()
            ),
        ),
        Err(e) => CheckResult {
            checker: "well-formed".into(),
            valid: Validity::Invalid,
            summary: e.to_string(),
            anomalies: vec![
                serde_json::json!({"type": "malformed-history", "error": e.to_string()}),
            ],
            witness: Vec::new(),
        },
    }
}

/// No server log in `<dir>/logs/` holds a panic.
pub fn check_server_logs(dir: &Path) -> anyhow::Result<CheckResult> {
    let mut anomalies = Vec::new();
    let logs = dir.join("logs");
    if logs.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(&logs)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path())?).into_owned();
            for (n, line) in text.lines().enumerate() {
                if line.contains("panicked at") || line.starts_with("panic:") {
                    anomalies.push(serde_json::json!({
                        "type": "server-panic",
                        "file": entry.file_name().to_string_lossy(),
                        "line": n + 1,
                        "text": line,
                    }));
                }
            }
        }
    }
    Ok(if anomalies.is_empty() {
        CheckResult::valid("server-logs", "no panic in any server log")
    } else {
        CheckResult {
            checker: "server-logs".into(),
            valid: Validity::Invalid,
            summary: format!("{} panic line(s) in server logs", anomalies.len()),
            anomalies,
            witness: Vec::new(),
        }
    })
}

/// The `register` workload's operations (read/write/cas on its keys, which
/// the `watch` workload writes too), with their original indexes.
pub fn register_ops(ops: &[Op]) -> Vec<Op> {
    ops.iter()
        .filter(|o| {
            matches!(o.f.as_str(), "read" | "write" | "cas")
                && o.key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(crate::workload::register::PREFIX))
        })
        .cloned()
        .collect()
}

/// Runs every checker that applies to the run directory `dir`.
pub fn check_run(dir: &Path) -> anyhow::Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    let history = dir.join("history.jsonl");
    if history.exists() {
        let ops: Vec<Op> = read_jsonl(&history)?;
        results.push(check_well_formed(&ops));
        results.extend(elle::check(&ops));
        // Register ops are judged on their own: other workloads run in the
        // same history use other keys and op names.
        let registers = register_ops(&ops);
        if !registers.is_empty() {
            results.push(linear::check_register(&registers, linear::RUN_BUDGET));
            results.push(revision::check(&registers));
        }
        let watches = dir.join("watches.jsonl");
        if watches.exists() {
            results.push(watch::check(&read_jsonl(&watches)?, &ops));
        }
    }
    results.push(check_server_logs(dir)?);
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_in_server_logs_are_reported_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("logs/n1.log"), "started\nall good\n").unwrap();
        assert_eq!(
            check_server_logs(dir.path()).unwrap().valid,
            Validity::Valid
        );
        std::fs::write(
            dir.path().join("logs/n2.log"),
            "x\nthread 'apply' panicked at store/src/raft/apply.rs:10:5\n",
        )
        .unwrap();
        let r = check_server_logs(dir.path()).unwrap();
        assert_eq!(r.valid, Validity::Invalid);
        assert_eq!(r.anomalies[0]["file"], "n2.log");
        assert_eq!(r.anomalies[0]["line"], 2);
    }
}
