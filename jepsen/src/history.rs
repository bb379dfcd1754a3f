//! The recorded history: client operations, watch observations and faults,
//! in the JSON-lines files of a run directory.
//!
//! This is the contract between workloads (which record) and checkers (which
//! judge), so every shape is spelled out here.
//!
//! # `history.jsonl`: one [`Op`] per line
//! Each client operation appears twice: an `invoke` line when the client
//! sends it, then a completion line with the same `process` and `f`:
//! - `ok`: the server acknowledged it; it took effect exactly once.
//! - `fail`: it definitely did not take effect (a failed CAS/txn compare, or
//!   an error the server returns before proposing, such as a compacted
//!   revision or a bad request).
//! - `info`: indefinite: it may or may not have taken effect (timeout,
//!   connection lost, leader lost after proposing). Checkers treat an `info`
//!   write as possibly applied at any time after its invoke, and an `info`
//!   read as carrying no information.
//!
//! A process runs one operation at a time; after an `info` the process is
//! retired and the worker continues as a new process number, as Jepsen does.
//!
//! Per workload (`f` and `value`; the invoke carries the request, the `ok`
//! carries the result):
//! - `register` (many independent keys, one register each): `f` is `read`,
//!   `write` or `cas`; `key` is set. `write` value: integer. `cas` value:
//!   `[from, to]`. `read` value: null on invoke, integer or null (absent key)
//!   on ok. `version` and `mod_revision` on an ok read/write hold the key's
//!   etcd version and mod revision.
//! - `append` (Elle list-append) and `wr` (read/write registers): `f` is
//!   `txn`; value is a list of micro-ops `[fn, key, arg]` with `fn` one of
//!   `"append"`, `"r"`, `"w"`. On invoke a read's arg is null; on ok it is the
//!   list read (append) or the integer/null read (wr).
//! - `set`: `f` is `add` (value: integer) or `read` (ok value: list of
//!   integers).
//! - `kv` (the reference histories): `f` is `get`, `put` or `append` with
//!   string values.
//! - `lease`: `f` is `grant` (ok value: lease id), `put` (value
//!   `{"lease": id, "value": v}`), `revoke` (value: lease id), `read`.
//!
//! `revision` on a completion is the response header's revision: for a
//! write, the revision it created (or the store revision if it created
//! none); for a read, the store revision the read observed.
//!
//! # `watches.jsonl`: one [`WatchRecord`] per line
//! A watcher is declared once (`kind: "start"`, with its range, start
//! revision and options) and then logs every response it receives, in
//! order, plus `disconnected`/`resumed` markers when it reconnects.
//!
//! # `faults.jsonl`: one [`Fault`] per line
//! Every nemesis action, with start and end time, the nodes it touched and
//! its parameters, so a run can be replayed from its seed and read against
//! the ops timeline.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How an operation line ended (or that it began).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (0, 1, 2, ... in file order).
    pub index: usize,
    /// The logical client process that issued the operation.
    pub process: u64,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// Operation name; see the module docs for each workload's names.
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Response header revision (completions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The key's version after a write / as read (register workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The key's mod revision after a write / as read (register workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    /// Index of the cluster node the client sent the request to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    /// Error text for `fail` and `info` completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// An operation line with no key, value or response fields yet.
    pub fn new(index: usize, process: u64, time: u64, kind: OpType, f: &str) -> Op {
        Op {
            index,
            process,
            time,
            kind,
            f: f.to_string(),
            key: None,
            value: Value::Null,
            revision: None,
            version: None,
            mod_revision: None,
            node: None,
            error: None,
        }
    }

    pub fn is_invoke(&self) -> bool {
        self.kind == OpType::Invoke
    }
}

/// A key-value as carried by a watch event (mirrors mvccpb.KeyValue; keys
/// and values are UTF-8 in every workload, so they are kept as strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchKv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Put,
    Delete,
}

/// One event of a watch response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// For a delete, `kv` holds the key and the delete's mod_revision.
    pub kv: WatchKv,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<WatchKv>,
}

/// What a watch log line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchRecordKind {
    /// The watcher was declared (fields `key`, `range_end`, `start_revision`,
    /// `prev_kv`, `progress_notify` are set).
    Start,
    /// The created response.
    Created,
    /// A response carrying events.
    Events,
    /// A progress notification (no events; `revision` is the header's).
    Progress,
    /// The server canceled the watch because `compact_revision` was compacted.
    Compacted,
    /// Any other cancel (with `error`).
    Canceled,
    /// The stream broke; the watcher will resume.
    Disconnected,
    /// A new watch was opened from `start_revision` to resume.
    Resumed,
}

/// One line of `watches.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// The watcher this belongs to (unique in the run).
    pub watcher: u64,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    pub kind: WatchRecordKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    /// Response header revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WatchEvent>,
    // Declaration fields (Start and Resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev_kv: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_notify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl WatchRecord {
    /// A record of `kind` with every optional field empty.
    pub fn new(watcher: u64, time: u64, kind: WatchRecordKind) -> Self {
        WatchRecord {
            watcher,
            time,
            kind,
            node: None,
            revision: None,
            compact_revision: None,
            events: Vec::new(),
            key: None,
            range_end: None,
            start_revision: None,
            prev_kv: false,
            progress_notify: false,
            error: None,
        }
    }
}

/// One line of `faults.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Nanoseconds since the start of the run when the fault began.
    pub start: u64,
    /// When it was healed or undone (None: instantaneous or never healed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// Nemesis name, e.g. `partition-leader`, `kill`, `pause`,
    /// `member-replace`, `compact`, `bitflip`.
    pub kind: String,
    /// Node indexes affected.
    #[serde(default)]
    pub nodes: Vec<usize>,
    /// Free-form parameters (partition groups, revision compacted, file and
    /// offset flipped, ...).
    #[serde(default)]
    pub detail: Value,
}

/// Reads a JSON-lines file of `T`; a line that does not parse is an error
/// naming the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        out.push(item);
    }
    Ok(out)
}

/// Writes `items` as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for item in items {
        serde_json::to_writer(&mut w, item)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Pairs every invoke with its completion (by process, in order). Returns
/// `(invoke_index, completion_index)` with `None` for an invoke that never
/// completed (the run ended first: treat it as `info`).
pub fn pair_ops(ops: &[Op]) -> anyhow::Result<Vec<(usize, Option<usize>)>> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut pairs: Vec<(usize, Option<usize>)> = Vec::new();
    let mut slot: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if op.kind == OpType::Invoke {
            if let Some(prev) = open.insert(op.process, i) {
                anyhow::bail!(
                    "process {} invoked op {i} while op {prev} was open",
                    op.process
                );
            }
            slot.insert(i, pairs.len());
            pairs.push((i, None));
        } else {
            let inv = open.remove(&op.process).ok_or_else(|| {
                anyhow::anyhow!(
                    "op {i}: completion for process {} with no invoke",
                    op.process
                )
            })?;
            pairs[slot[&inv]].1 = Some(i);
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: usize, process: u64, kind: OpType) -> Op {
        Op {
            key: Some("k".into()),
            ..Op::new(index, process, index as u64, kind, "read")
        }
    }

    #[test]
    fn op_round_trips_through_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut ok = op(1, 0, OpType::Ok);
        ok.value = serde_json::json!(3);
        ok.revision = Some(7);
        let ops = vec![op(0, 0, OpType::Invoke), ok];
        write_jsonl(&path, &ops).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"type\":\"invoke\""), "{text}");
        assert_eq!(read_jsonl::<Op>(&path).unwrap(), ops);
    }

    #[test]
    fn pairs_interleaved_processes_and_flags_protocol_errors() {
        let ops = vec![
            op(0, 0, OpType::Invoke),
            op(1, 1, OpType::Invoke),
            op(2, 1, OpType::Ok),
            op(3, 0, OpType::Info),
            op(4, 2, OpType::Invoke),
        ];
        assert_eq!(
            pair_ops(&ops).unwrap(),
            vec![(0, Some(3)), (1, Some(2)), (4, None)]
        );
        let bad = vec![op(0, 0, OpType::Invoke), op(1, 0, OpType::Invoke)];
        assert!(pair_ops(&bad).is_err());
        let orphan = vec![op(0, 5, OpType::Ok)];
        assert!(pair_ops(&orphan).is_err());
    }
}
