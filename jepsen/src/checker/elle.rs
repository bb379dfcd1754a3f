//! Elle-style transactional checker for the `append` (list-append) and `wr`
//! (read/write register) workloads, under strict serializability.
//!
//! It owns the inference of each key's version order, the transaction
//! dependency graph (ww, wr, rw and real-time edges) and the search for
//! cycles in it; it never talks to a cluster and never trusts an `info`
//! transaction's outcome. [`super::check_run`] calls [`check`] when a history
//! holds `txn` operations.
//!
//! # What it infers, and from what
//! - **append**: every appended element is unique per key, so a read list
//!   names the writer of each element. Reads of one key must be prefixes of
//!   one another (else `incompatible-order`); the longest read is that key's
//!   version order. Consecutive elements by different transactions give ww
//!   edges; the last element of a read gives a wr edge from its writer; the
//!   element after it in the version order gives an rw edge to its writer.
//! - **wr**: written values are unique per key, so a read names its writer.
//!   Reads alone barely order versions, so the version order of a key is
//!   taken from etcd's revision: an `ok` transaction that writes creates
//!   exactly one revision, and the `revision` on its completion orders it
//!   against every other `ok` writer (the revision-order checker verifies
//!   those revisions independently). Besides, a transaction that reads a key
//!   and then writes it installs a version after the one it read
//!   (writes-follow-reads). Writers without a revision (`info`) are placed
//!   only by that second rule, so rw edges towards them can be missed: the
//!   checker may miss anomalies involving them, never invent them. Keys are
//!   assumed absent before the run (a read of nil observes the initial
//!   version).
//! - **real time**: an `ok` transaction that completed before another was
//!   invoked (strictly, by the ops' `time`) precedes it. Only the frontier
//!   of latest completions is linked, which keeps the edge count linear; the
//!   rest follows by transitivity.
//!
//! `info` transactions are in the graph: their writes may be observed (then
//! they committed), they have real-time edges into them but never out of them,
//! and their reads carry no values. An `info` transaction whose writes nobody
//! observed therefore has no outgoing edges and is never in a cycle.
//! `fail` transactions are not in the graph; observing their writes is G1a.
//!
//! # What it reports
//! Cycles, found by Tarjan's SCC algorithm on the graph restricted to the
//! edge kinds each class allows, then a short cycle per component by BFS
//! back from a seed edge of the kind the class needs. Classes are tried in
//! this order, and a component whose txns were all reported under an earlier
//! class is not reported again: G0
//! (ww only), G1c (ww+wr), G-single (exactly one rw), G2 (two or more rw;
//! Adya's G2 also covers G-single, which is reported as such), then the same
//! with `-realtime` appended (and `realtime: true`) when the cycle needs a
//! real-time edge. The witness is the smallest anomaly's txns (invoke and
//! completion indexes); each cycle lists its txns and explains every edge.
//! Besides cycles: G1a (aborted read), G1b
//! (intermediate read), `internal` (a read disagreeing with the transaction's
//! own earlier write), `incompatible-order`, `duplicate-elements`,
//! `lost-append` (an acknowledged append missing from a read that began after
//! it completed), `garbage-read` (a value nobody wrote) and
//! `revision-conflict` (two writers acknowledged at one revision). A
//! `duplicate-write` (one value written twice to a key) breaks the
//! workload's uniqueness promise: alone it makes the verdict Unknown, as
//! does a malformed history.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::{CheckResult, Validity};
use crate::history::{pair_ops, Op, OpType};

/// Which transactional workload a history holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// List-append: micro-ops `append` and `r` (reads return lists).
    Append,
    /// Read/write registers: micro-ops `w` and `r` (reads return a value or nil).
    Wr,
}

/// Most anomalies of one type kept in the result (all are counted).
const MAX_PER_TYPE: usize = 8;
/// Most seed edges tried when looking for a cycle of one class in one
/// strongly connected component.
const MAX_SEEDS: usize = 256;

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;

/// The workload of `ops`' transactions: `append` if any micro-op appends,
/// else `wr`; `None` when there are no `txn` operations.
pub fn detect_workload(ops: &[Op]) -> Option<Workload> {
    let mut any = false;
    for op in ops.iter().filter(|o| o.f == "txn") {
        any = true;
        if let Some(mops) = op.value.as_array() {
            for m in mops {
                match m.get(0).and_then(Value::as_str) {
                    Some("append") => return Some(Workload::Append),
                    Some("w") => return Some(Workload::Wr),
                    _ => {}
                }
            }
        }
    }
    any.then_some(Workload::Wr)
}

/// Checks the `txn` operations of `ops` with the detected workload; `None`
/// when the history has none.
pub fn check(ops: &[Op]) -> Option<CheckResult> {
    detect_workload(ops).map(|w| check_workload(ops, w))
}

/// Checks `ops` as a list-append history.
pub fn check_append(ops: &[Op]) -> CheckResult {
    check_workload(ops, Workload::Append)
}

/// Checks `ops` as a read/write-register history.
pub fn check_wr(ops: &[Op]) -> CheckResult {
    check_workload(ops, Workload::Wr)
}

/// Checks the `txn` operations of `ops` as `workload`.
pub fn check_workload(ops: &[Op], workload: Workload) -> CheckResult {
    let name = match workload {
        Workload::Append => "elle-append",
        Workload::Wr => "elle-wr",
    };
    let hist = match History::parse(ops, workload) {
        Ok(h) => h,
        Err(e) => {
            return CheckResult {
                checker: name.into(),
                valid: Validity::Unknown,
                summary: format!("cannot check: {e}"),
                anomalies: vec![json!({"type": "malformed-history", "error": e})],
                witness: Vec::new(),
            }
        }
    };
    let mut an = Anomalies::default();
    let mut g = Graph::new(hist.txns.len());
    match workload {
        Workload::Append => analyze_append(&hist, &mut g, &mut an),
        Workload::Wr => analyze_wr(&hist, &mut g, &mut an),
    }
    add_realtime(&hist, &mut g);
    g.finish();
    find_cycles(&hist, &g, &mut an);
    an.into_result(name, &hist, &g)
}

// ---------------------------------------------------------------------------
// Parsed history

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Debug)]
enum Mop {
    Append(u32, i64),
    Write(u32, i64),
    /// A list read (append).
    ReadList(u32, Vec<i64>),
    /// A register read (wr): `None` is nil.
    ReadReg(u32, Option<i64>),
    /// A read whose result is unknown (`info`/`fail`).
    ReadUnknown,
}

struct Txn {
    /// Position of the invoke in the ops slice.
    inv_pos: usize,
    /// Position of the completion, if any.
    comp_pos: Option<usize>,
    status: Status,
    revision: Option<i64>,
    mops: Vec<Mop>,
}

struct History<'a> {
    ops: &'a [Op],
    workload: Workload,
    txns: Vec<Txn>,
    keys: Vec<String>,
}

impl<'a> History<'a> {
    fn parse(ops: &'a [Op], workload: Workload) -> Result<Self, String> {
        let pairs = pair_ops(ops).map_err(|e| e.to_string())?;
        let mut key_ids: HashMap<String, u32> = HashMap::new();
        let mut keys = Vec::new();
        let mut txns = Vec::new();
        for (inv, comp) in pairs {
            if ops[inv].f != "txn" {
                continue;
            }
            let status = match comp.map(|c| ops[c].kind) {
                Some(OpType::Ok) => Status::Ok,
                Some(OpType::Fail) => Status::Fail,
                _ => Status::Info,
            };
            let source = match (status, comp) {
                (Status::Ok, Some(c)) => &ops[c],
                _ => &ops[inv],
            };
            let raw = source
                .value
                .as_array()
                .ok_or_else(|| format!("op {}: txn value is not a list", source.index))?;
            let mut mops = Vec::with_capacity(raw.len());
            for m in raw {
                let bad = || format!("op {}: bad micro-op {m}", source.index);
                let parts = m.as_array().filter(|p| p.len() == 3).ok_or_else(bad)?;
                let key_name = match &parts[1] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(bad()),
                };
                let next = key_ids.len() as u32;
                let key = *key_ids.entry(key_name.clone()).or_insert_with(|| {
                    keys.push(key_name);
                    next
                });
                let arg = &parts[2];
                let mop = match parts[0].as_str() {
                    Some("append") => Mop::Append(key, arg.as_i64().ok_or_else(bad)?),
                    Some("w") => Mop::Write(key, arg.as_i64().ok_or_else(bad)?),
                    Some("r") if status != Status::Ok => Mop::ReadUnknown,
                    Some("r") => match workload {
                        Workload::Append => Mop::ReadList(
                            key,
                            match arg {
                                Value::Null => Vec::new(),
                                Value::Array(xs) => xs
                                    .iter()
                                    .map(|x| x.as_i64().ok_or_else(bad))
                                    .collect::<Result<_, _>>()?,
                                _ => return Err(bad()),
                            },
                        ),
                        Workload::Wr => Mop::ReadReg(
                            key,
                            match arg {
                                Value::Null => None,
                                _ => Some(arg.as_i64().ok_or_else(bad)?),
                            },
                        ),
                    },
                    _ => return Err(bad()),
                };
                mops.push(mop);
            }
            txns.push(Txn {
                inv_pos: inv,
                comp_pos: comp,
                status,
                revision: comp.and_then(|c| ops[c].revision),
                mops,
            });
        }
        Ok(History {
            ops,
            workload,
            txns,
            keys,
        })
    }

    /// How humans find a transaction in the history: its completion line (or
    /// its invoke when it never completed).
    fn label(&self, t: u32) -> String {
        let t = &self.txns[t as usize];
        let line = t.comp_pos.unwrap_or(t.inv_pos);
        format!("T{}", self.ops[line].index)
    }

    fn op_indexes(&self, t: u32) -> Vec<usize> {
        let t = &self.txns[t as usize];
        std::iter::once(t.inv_pos)
            .chain(t.comp_pos)
            .map(|p| self.ops[p].index)
            .collect()
    }

    fn txn_json(&self, t: u32) -> Value {
        let txn = &self.txns[t as usize];
        let line = &self.ops[txn.comp_pos.unwrap_or(txn.inv_pos)];
        json!({
            "txn": self.label(t),
            "invoke": self.ops[txn.inv_pos].index,
            "complete": txn.comp_pos.map(|p| self.ops[p].index),
            "process": line.process,
            "type": match txn.status { Status::Ok => "ok", Status::Fail => "fail", Status::Info => "info" },
            "revision": txn.revision,
            "value": line.value,
        })
    }

    /// When the txn was invoked.
    fn invoked(&self, t: u32) -> u64 {
        self.ops[self.txns[t as usize].inv_pos].time
    }

    fn in_graph(&self, t: u32) -> bool {
        self.txns[t as usize].status != Status::Fail
    }
}

// ---------------------------------------------------------------------------
// Dependency graph

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: u32,
    to: u32,
    kind: u8,
    key: u32,
    /// ww: the earlier value; wr: the value read; rw: the value read (None:
    /// the initial version).
    a: Option<i64>,
    /// ww: the later value; rw: the next version's value.
    b: Option<i64>,
}

struct Graph {
    n: usize,
    raw: Vec<Edge>,
    /// Per node: (target, union of edge kinds).
    adj: Vec<Vec<(u32, u8)>>,
}

impl Graph {
    fn new(n: usize) -> Self {
        Graph {
            n,
            raw: Vec::new(),
            adj: Vec::new(),
        }
    }

    fn add(&mut self, from: u32, to: u32, kind: u8, key: u32, a: Option<i64>, b: Option<i64>) {
        if from != to {
            self.raw.push(Edge {
                from,
                to,
                kind,
                key,
                a,
                b,
            });
        }
    }

    fn finish(&mut self) {
        self.raw.sort_unstable();
        self.raw
            .dedup_by(|x, y| x.from == y.from && x.to == y.to && x.kind == y.kind);
        self.adj = vec![Vec::new(); self.n];
        for e in &self.raw {
            let list = &mut self.adj[e.from as usize];
            match list.last_mut() {
                Some((to, kinds)) if *to == e.to => *kinds |= e.kind,
                _ => list.push((e.to, e.kind)),
            }
        }
    }

    fn edge_count(&self) -> usize {
        self.adj.iter().map(Vec::len).sum()
    }

    fn why(&self, from: u32, to: u32, kind: u8) -> Option<&Edge> {
        let i = self
            .raw
            .partition_point(|e| (e.from, e.to, e.kind) < (from, to, kind));
        self.raw
            .get(i)
            .filter(|e| e.from == from && e.to == to && e.kind == kind)
    }
}

// ---------------------------------------------------------------------------
// Anomaly collection

#[derive(Default)]
struct Anomalies {
    /// Per type: how many were found.
    counts: Vec<(String, usize)>,
    /// Kept anomalies with the op indexes they involve.
    kept: Vec<(Value, Vec<usize>)>,
    /// Anomalies that mean the checker's assumptions broke (Unknown, not
    /// Invalid, when alone).
    notes: usize,
}

impl Anomalies {
    fn push(&mut self, kind: &str, mut body: Value, ops: Vec<usize>) {
        let count = match self.counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, c)) => c,
            None => {
                self.counts.push((kind.to_string(), 0));
                &mut self.counts.last_mut().expect("just pushed").1
            }
        };
        *count += 1;
        if *count <= MAX_PER_TYPE {
            body["type"] = json!(kind);
            self.kept.push((body, ops));
        }
    }

    fn note(&mut self, kind: &str, body: Value, ops: Vec<usize>) {
        self.notes += 1;
        self.push(kind, body, ops);
    }

    fn into_result(self, name: &str, hist: &History, g: &Graph) -> CheckResult {
        let (mut ok, mut fail, mut info) = (0, 0, 0);
        for t in &hist.txns {
            match t.status {
                Status::Ok => ok += 1,
                Status::Fail => fail += 1,
                Status::Info => info += 1,
            }
        }
        let base = format!(
            "{} txns ({ok} ok, {info} info, {fail} fail) on {} keys, {} dependency edges",
            hist.txns.len(),
            hist.keys.len(),
            g.edge_count()
        );
        let total: usize = self.counts.iter().map(|(_, c)| c).sum();
        if total == 0 {
            return CheckResult::valid(name, format!("{base}: no anomalies"));
        }
        let valid = if total > self.notes {
            Validity::Invalid
        } else {
            Validity::Unknown
        };
        let list: Vec<String> = self
            .counts
            .iter()
            .map(|(k, c)| format!("{k} x{c}"))
            .collect();
        let witness = self
            .kept
            .iter()
            .map(|(_, ops)| ops)
            .filter(|ops| !ops.is_empty())
            .min_by_key(|ops| ops.len())
            .cloned()
            .unwrap_or_default();
        CheckResult {
            checker: name.into(),
            valid,
            summary: format!("{base}: {}", list.join(", ")),
            anomalies: self.kept.into_iter().map(|(a, _)| a).collect(),
            witness,
        }
    }
}

fn ops_of(hist: &History, txns: &[u32]) -> Vec<usize> {
    let mut v: Vec<usize> = txns.iter().flat_map(|&t| hist.op_indexes(t)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------
// list-append

/// Who appended an element, and whether it was that txn's last append to
/// the key.
#[derive(Clone, Copy)]
struct Writer {
    txn: u32,
    last: bool,
}

fn writers(hist: &History, an: &mut Anomalies) -> HashMap<(u32, i64), Writer> {
    let mut writes: HashMap<(u32, i64), Writer> = HashMap::new();
    for (t, txn) in hist.txns.iter().enumerate() {
        let t = t as u32;
        let n = txn.mops.len();
        for (i, m) in txn.mops.iter().enumerate() {
            let (Mop::Append(k, v) | Mop::Write(k, v)) = *m else {
                continue;
            };
            let last = !txn.mops[i + 1..n]
                .iter()
                .any(|m| matches!(*m, Mop::Append(k2, _) | Mop::Write(k2, _) if k2 == k));
            if let Some(prev) = writes.insert((k, v), Writer { txn: t, last }) {
                an.note(
                    "duplicate-write",
                    json!({"key": hist.keys[k as usize], "value": v,
                           "txns": [hist.label(prev.txn), hist.label(t)],
                           "explanation": "two txns wrote the same value to one key; the workload promises unique values, so the checker cannot tell them apart"}),
                    ops_of(hist, &[prev.txn, t]),
                );
            }
        }
    }
    writes
}

/// A read, with where its list or value lives.
struct ReadRef {
    txn: u32,
    mop: usize,
    key: u32,
    /// How many leading elements (append) were not the reader's own appends.
    external: usize,
    /// The read list conflicts with the key's version order.
    incompatible: bool,
}

fn read_list<'h>(hist: &'h History, r: &ReadRef) -> &'h [i64] {
    match &hist.txns[r.txn as usize].mops[r.mop] {
        Mop::ReadList(_, xs) => xs,
        _ => &[],
    }
}

/// Reports a read of `value` written by `w` into `reader` as G1a/G1b, or
/// of a value nobody wrote as a garbage read. Returns the writer when the
/// read may yield a wr edge.
fn classify_read(
    hist: &History,
    an: &mut Anomalies,
    reported: &mut HashSet<(u32, u32, i64)>,
    reader: u32,
    (key, value): (u32, i64),
    writer: Option<&Writer>,
    check_intermediate: bool,
) -> Option<Writer> {
    let kname = &hist.keys[key as usize];
    let Some(w) = writer.copied() else {
        if reported.insert((u32::MAX, key, value)) {
            an.push(
                "garbage-read",
                json!({"key": kname, "value": value, "reader": hist.txn_json(reader),
                       "explanation": format!("{} read {value} from key {kname}, which no txn wrote", hist.label(reader))}),
                ops_of(hist, &[reader]),
            );
        }
        return None;
    };
    if hist.txns[w.txn as usize].status == Status::Fail {
        if reported.insert((w.txn, key, value)) {
            an.push(
                "G1a",
                json!({"key": kname, "value": value,
                       "writer": hist.txn_json(w.txn), "reader": hist.txn_json(reader),
                       "explanation": format!("{} read {value} from key {kname}, written by {}, which failed (aborted read)",
                                              hist.label(reader), hist.label(w.txn))}),
                ops_of(hist, &[w.txn, reader]),
            );
        }
        return None;
    }
    if check_intermediate && !w.last && w.txn != reader {
        an.push(
            "G1b",
            json!({"key": kname, "value": value,
                   "writer": hist.txn_json(w.txn), "reader": hist.txn_json(reader),
                   "explanation": format!("{} observed {value} as the latest value of key {kname}, but {} wrote it and then wrote {kname} again (intermediate read)",
                                          hist.label(reader), hist.label(w.txn))}),
            ops_of(hist, &[w.txn, reader]),
        );
    }
    Some(w)
}

fn analyze_append(hist: &History, g: &mut Graph, an: &mut Anomalies) {
    let writes = writers(hist, an);
    let nkeys = hist.keys.len();
    // Reads of ok txns, with the reader's own appends split off.
    let mut reads: Vec<ReadRef> = Vec::new();
    for (t, txn) in hist.txns.iter().enumerate() {
        if txn.status != Status::Ok {
            continue;
        }
        let t = t as u32;
        let mut own: Vec<(u32, Vec<i64>)> = Vec::new();
        for (i, m) in txn.mops.iter().enumerate() {
            match m {
                Mop::Append(k, v) => match own.iter_mut().find(|(k2, _)| k2 == k) {
                    Some((_, vs)) => vs.push(*v),
                    None => own.push((*k, vec![*v])),
                },
                Mop::ReadList(k, xs) => {
                    let mine: &[i64] = own
                        .iter()
                        .find(|(k2, _)| k2 == k)
                        .map(|(_, vs)| vs.as_slice())
                        .unwrap_or(&[]);
                    let external = if xs.ends_with(mine) {
                        xs.len() - mine.len()
                    } else {
                        an.push(
                            "internal",
                            json!({"key": hist.keys[*k as usize], "read": xs, "own_appends": mine, "txn": hist.txn_json(t),
                                   "explanation": format!("{} read key {} without its own earlier appends {:?} at the end", hist.label(t), hist.keys[*k as usize], mine)}),
                            ops_of(hist, &[t]),
                        );
                        xs.len()
                    };
                    reads.push(ReadRef {
                        txn: t,
                        mop: i,
                        key: *k,
                        external,
                        incompatible: false,
                    });
                }
                _ => {}
            }
        }
    }

    // Version order: the longest read of each key; every read must be a
    // prefix of it.
    let mut longest: Vec<Option<usize>> = vec![None; nkeys];
    for (i, r) in reads.iter().enumerate() {
        let len = read_list(hist, r).len();
        let slot = &mut longest[r.key as usize];
        if slot.is_none_or(|j| read_list(hist, &reads[j]).len() < len) {
            *slot = Some(i);
        }
    }
    let mut incompatible_keys: HashSet<u32> = HashSet::new();
    for i in 0..reads.len() {
        let Some(j) = longest[reads[i].key as usize] else {
            continue;
        };
        let (xs, order) = (read_list(hist, &reads[i]), read_list(hist, &reads[j]));
        if !order.starts_with(xs) {
            reads[i].incompatible = true;
            let key = reads[i].key;
            if incompatible_keys.insert(key) {
                let (a, b) = (reads[i].txn, reads[j].txn);
                an.push(
                    "incompatible-order",
                    json!({"key": hist.keys[key as usize], "reads": [xs, order],
                           "txns": [hist.txn_json(a), hist.txn_json(b)],
                           "explanation": format!("{} and {} read key {} as lists neither of which is a prefix of the other",
                                                  hist.label(a), hist.label(b), hist.keys[key as usize])}),
                    ops_of(hist, &[a, b]),
                );
            }
        }
    }

    // Aborted, intermediate and garbage reads; wr and rw edges.
    let mut reported = HashSet::new();
    let mut observed: HashSet<(u32, i64)> = HashSet::new();
    for (i, r) in reads.iter().enumerate() {
        let xs = read_list(hist, r);
        // A compatible read is a prefix of its key's longest read, so only
        // the longest and the incompatible reads need their elements
        // examined one by one.
        if r.incompatible || longest[r.key as usize] == Some(i) {
            let mut seen = HashSet::with_capacity(xs.len());
            if let Some(dup) = xs.iter().find(|x| !seen.insert(**x)) {
                let k = &hist.keys[r.key as usize];
                an.push(
                    "duplicate-elements",
                    json!({"key": k, "element": dup, "read": xs, "txn": hist.txn_json(r.txn),
                           "explanation": format!("{} read key {k} holding {dup} more than once", hist.label(r.txn))}),
                    ops_of(hist, &[r.txn]),
                );
            }
        }
        for &x in xs
            .iter()
            .filter(|_| r.incompatible || longest[r.key as usize] == Some(i))
        {
            if observed.insert((r.key, x)) {
                let w = writes.get(&(r.key, x));
                if w.is_none_or(|w| hist.txns[w.txn as usize].status == Status::Fail) {
                    classify_read(hist, an, &mut reported, r.txn, (r.key, x), w, false);
                }
            }
        }
        let ext = &xs[..r.external];
        let last = ext.last().copied();
        if let Some(x) = last {
            if let Some(w) = classify_read(
                hist,
                an,
                &mut reported,
                r.txn,
                (r.key, x),
                writes.get(&(r.key, x)),
                true,
            ) {
                g.add(w.txn, r.txn, WR, r.key, Some(x), None);
            }
        }
        if r.incompatible {
            continue;
        }
        let order = read_list(
            hist,
            &reads[longest[r.key as usize].expect("a key with a read has a longest read")],
        );
        if let Some(&next) = order.get(ext.len()) {
            if let Some(w) = writes.get(&(r.key, next)) {
                if hist.in_graph(w.txn) {
                    g.add(r.txn, w.txn, RW, r.key, last, Some(next));
                }
            }
        }
    }

    // ww edges along each version order.
    for (k, slot) in longest.iter().enumerate() {
        let Some(j) = slot else { continue };
        let order = read_list(hist, &reads[*j]);
        let mut prev: Option<(u32, i64)> = None;
        for &x in order {
            let Some(w) = writes.get(&(k as u32, x)) else {
                continue;
            };
            if !hist.in_graph(w.txn) {
                continue;
            }
            if let Some((pt, px)) = prev {
                g.add(pt, w.txn, WW, k as u32, Some(px), Some(x));
            }
            prev = Some((w.txn, x));
        }
    }

    // Lost appends: an acknowledged append that no read shows although a
    // read of that key began after the append completed.
    let mut latest_reader: Vec<Option<u32>> = vec![None; nkeys];
    for r in &reads {
        let slot = &mut latest_reader[r.key as usize];
        if slot.is_none_or(|s| hist.invoked(s) < hist.invoked(r.txn)) {
            *slot = Some(r.txn);
        }
    }
    let mut lost: Vec<(&(u32, i64), &Writer)> = writes
        .iter()
        .filter(|(kv, w)| hist.txns[w.txn as usize].status == Status::Ok && !observed.contains(kv))
        .collect();
    lost.sort_by_key(|((k, v), _)| (*k, *v));
    for (&(k, v), w) in lost {
        let Some(r) = latest_reader[k as usize] else {
            continue;
        };
        let wt = &hist.txns[w.txn as usize];
        if wt
            .comp_pos
            .is_some_and(|c| hist.ops[c].time < hist.invoked(r))
        {
            an.push(
                "lost-append",
                json!({"key": hist.keys[k as usize], "element": v,
                       "writer": hist.txn_json(w.txn), "reader": hist.txn_json(r),
                       "explanation": format!("{} appended {v} to key {} and was acknowledged, but {}, invoked after that, read the key without it (and no read ever saw it)",
                                              hist.label(w.txn), hist.keys[k as usize], hist.label(r))}),
                ops_of(hist, &[w.txn, r]),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// read/write registers

fn analyze_wr(hist: &History, g: &mut Graph, an: &mut Anomalies) {
    let writes = writers(hist, an);
    let nkeys = hist.keys.len();

    // Version order from revisions: per key, ok writers by revision, each
    // with the txn's final value for that key.
    let mut chains: Vec<Vec<(i64, u32, i64)>> = vec![Vec::new(); nkeys];
    for (t, txn) in hist.txns.iter().enumerate() {
        let (Status::Ok, Some(rev)) = (txn.status, txn.revision) else {
            continue;
        };
        let mut finals: Vec<(u32, i64)> = Vec::new();
        for m in &txn.mops {
            if let Mop::Write(k, v) = *m {
                match finals.iter_mut().find(|(k2, _)| *k2 == k) {
                    Some(slot) => slot.1 = v,
                    None => finals.push((k, v)),
                }
            }
        }
        for (k, v) in finals {
            chains[k as usize].push((rev, t as u32, v));
        }
    }
    let mut chain_pos: HashMap<(u32, u32), usize> = HashMap::new();
    let mut conflicts = HashSet::new();
    for (k, chain) in chains.iter_mut().enumerate() {
        chain.sort_unstable();
        for i in 0..chain.len() {
            chain_pos.insert((k as u32, chain[i].1), i);
            if i == 0 {
                continue;
            }
            let ((r1, t1, v1), (r2, t2, v2)) = (chain[i - 1], chain[i]);
            if r1 == r2 {
                if conflicts.insert((t1.min(t2), t1.max(t2))) {
                    an.push(
                        "revision-conflict",
                        json!({"revision": r1, "txns": [hist.txn_json(t1), hist.txn_json(t2)],
                               "explanation": format!("{} and {} both wrote and were both acknowledged at revision {r1}", hist.label(t1), hist.label(t2))}),
                        ops_of(hist, &[t1, t2]),
                    );
                }
                continue;
            }
            g.add(t1, t2, WW, k as u32, Some(v1), Some(v2));
        }
    }

    let mut reported = HashSet::new();
    for (t, txn) in hist.txns.iter().enumerate() {
        if txn.status != Status::Ok {
            continue;
        }
        let t = t as u32;
        let mut own: Vec<(u32, i64)> = Vec::new();
        let mut read_first: Vec<(u32, Option<i64>)> = Vec::new();
        for m in &txn.mops {
            match *m {
                Mop::Write(k, v) => {
                    // Writes follow reads: the version this txn read of k
                    // precedes the one it installs.
                    if let Some(&(_, Some(prev))) = read_first.iter().find(|(k2, _)| *k2 == k) {
                        if let Some(w) = writes.get(&(k, prev)) {
                            if hist.in_graph(w.txn) {
                                g.add(w.txn, t, WW, k, Some(prev), Some(v));
                            }
                        }
                    }
                    match own.iter_mut().find(|(k2, _)| *k2 == k) {
                        Some(slot) => slot.1 = v,
                        None => own.push((k, v)),
                    }
                }
                Mop::ReadReg(k, val) => {
                    if let Some(&(_, mine)) = own.iter().find(|(k2, _)| *k2 == k) {
                        if val != Some(mine) {
                            an.push(
                                "internal",
                                json!({"key": hist.keys[k as usize], "read": val, "own_write": mine, "txn": hist.txn_json(t),
                                       "explanation": format!("{} wrote {mine} to key {} and then read {val:?}", hist.label(t), hist.keys[k as usize])}),
                                ops_of(hist, &[t]),
                            );
                        }
                        continue;
                    }
                    if !read_first.iter().any(|(k2, _)| *k2 == k) {
                        read_first.push((k, val));
                    }
                    let chain = &chains[k as usize];
                    match val {
                        None => {
                            if let Some(&(_, w2, v2)) = chain.first() {
                                g.add(t, w2, RW, k, None, Some(v2));
                            }
                        }
                        Some(v) => {
                            let w = writes.get(&(k, v));
                            if w.is_some_and(|w| w.txn == t) {
                                an.push(
                                    "internal",
                                    json!({"key": hist.keys[k as usize], "read": v, "txn": hist.txn_json(t),
                                           "explanation": format!("{} read {v} from key {} before writing it itself", hist.label(t), hist.keys[k as usize])}),
                                    ops_of(hist, &[t]),
                                );
                                continue;
                            }
                            let Some(w) =
                                classify_read(hist, an, &mut reported, t, (k, v), w, true)
                            else {
                                continue;
                            };
                            g.add(w.txn, t, WR, k, Some(v), None);
                            if let Some(&p) = chain_pos.get(&(k, w.txn)) {
                                if let Some(&(_, w2, v2)) = chain.get(p + 1) {
                                    g.add(t, w2, RW, k, Some(v), Some(v2));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Real time

fn add_realtime(hist: &History, g: &mut Graph) {
    // By time, invokes before completions at equal times (so that equal
    // timestamps imply no order), then by file position.
    let mut events: Vec<(u64, bool, usize, u32)> = Vec::new();
    for (t, txn) in hist.txns.iter().enumerate() {
        if txn.status == Status::Fail {
            continue;
        }
        events.push((hist.ops[txn.inv_pos].time, false, txn.inv_pos, t as u32));
        if let (Status::Ok, Some(c)) = (txn.status, txn.comp_pos) {
            events.push((hist.ops[c].time, true, c, t as u32));
        }
    }
    events.sort_unstable();
    // The completed ok txns not yet implied by a later completion.
    let mut frontier: Vec<u32> = Vec::new();
    let mut preds: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut superseded = vec![false; hist.txns.len()];
    for (_, done, _, t) in events {
        if done {
            if let Some(ps) = preds.remove(&t) {
                for p in ps {
                    superseded[p as usize] = true;
                }
            }
            frontier.retain(|p| !superseded[*p as usize]);
            frontier.push(t);
        } else {
            for &p in &frontier {
                g.add(p, t, RT, 0, None, None);
            }
            if hist.txns[t as usize].status == Status::Ok && !frontier.is_empty() {
                preds.insert(t, frontier.clone());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Cycle search

/// A class of cycles to look for: the edges the component may use, the
/// kind of the seed edge the cycle must go through, and the edges the path
/// back from the seed may use.
struct Class {
    allowed: u8,
    seed: u8,
    path: u8,
}

const CLASSES: [Class; 8] = [
    // G0
    Class {
        allowed: WW,
        seed: WW,
        path: WW,
    },
    // G1c
    Class {
        allowed: WW | WR,
        seed: WR,
        path: WW | WR,
    },
    // G-single
    Class {
        allowed: WW | WR | RW,
        seed: RW,
        path: WW | WR,
    },
    // G2
    Class {
        allowed: WW | WR | RW,
        seed: RW,
        path: WW | WR | RW,
    },
    // G0-realtime
    Class {
        allowed: WW | RT,
        seed: RT,
        path: WW | RT,
    },
    // G1c-realtime
    Class {
        allowed: WW | WR | RT,
        seed: RT,
        path: WW | WR | RT,
    },
    // G-single-realtime
    Class {
        allowed: WW | WR | RW | RT,
        seed: RW,
        path: WW | WR | RT,
    },
    // G2-realtime
    Class {
        allowed: WW | WR | RW | RT,
        seed: RW,
        path: WW | WR | RW | RT,
    },
];

/// The kind an edge counts as when it has several: the one that makes the
/// weakest claim about the cycle (ww, then wr, then rw, then real time).
fn label(kinds: u8) -> u8 {
    [WW, WR, RW, RT]
        .into_iter()
        .find(|k| kinds & k != 0)
        .unwrap_or(0)
}

/// Tarjan's strongly connected components of the graph restricted to
/// `allowed` edge kinds (and to the nodes marked in `within`), iteratively so
/// that long real-time chains cannot overflow the stack. Returns only
/// components of two or more nodes (self-loops are never added).
fn sccs(g: &Graph, allowed: u8, within: Option<&[bool]>) -> Vec<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = g.n;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    // The DFS call stack: (node, position of its next edge).
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut next = 0u32;
    let mut out = Vec::new();
    let inside = |v: u32| within.is_none_or(|w| w[v as usize]);
    for root in 0..n as u32 {
        if index[root as usize] != UNSEEN || !inside(root) {
            continue;
        }
        index[root as usize] = next;
        low[root as usize] = next;
        next += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        calls.push((root, 0));
        while let Some(&(v, pos)) = calls.last() {
            let edges = &g.adj[v as usize];
            if pos < edges.len() {
                calls.last_mut().expect("non-empty").1 += 1;
                let (w, kinds) = edges[pos];
                if kinds & allowed == 0 || !inside(w) {
                    continue;
                }
                if index[w as usize] == UNSEEN {
                    index[w as usize] = next;
                    low[w as usize] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w as usize] = true;
                    calls.push((w, 0));
                } else if on_stack[w as usize] {
                    low[v as usize] = low[v as usize].min(index[w as usize]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent as usize] = low[parent as usize].min(low[v as usize]);
            }
            if low[v as usize] == index[v as usize] {
                let mut comp = Vec::new();
                loop {
                    let w = stack.pop().expect("invariant: v is on the stack");
                    on_stack[w as usize] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// Breadth-first search for a shortest path `from` → `to` inside the
/// component marked `comp_id` using `path` edges; returns its nodes.
struct Bfs {
    seen: Vec<u32>,
    prev: Vec<u32>,
    epoch: u32,
}

impl Bfs {
    fn path(
        &mut self,
        g: &Graph,
        comp: &[u32],
        comp_id: u32,
        path: u8,
        from: u32,
        to: u32,
    ) -> Option<Vec<u32>> {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut queue = std::collections::VecDeque::new();
        self.seen[from as usize] = epoch;
        queue.push_back(from);
        while let Some(n) = queue.pop_front() {
            if n == to {
                let mut nodes = vec![to];
                let mut cur = to;
                while cur != from {
                    cur = self.prev[cur as usize];
                    nodes.push(cur);
                }
                nodes.reverse();
                return Some(nodes);
            }
            for &(m, kinds) in &g.adj[n as usize] {
                if kinds & path != 0
                    && comp[m as usize] == comp_id
                    && self.seen[m as usize] != epoch
                {
                    self.seen[m as usize] = epoch;
                    self.prev[m as usize] = n;
                    queue.push_back(m);
                }
            }
        }
        None
    }
}

fn find_cycles(hist: &History, g: &Graph, an: &mut Anomalies) {
    let full = sccs(g, WW | WR | RW | RT, None);
    if full.is_empty() {
        return;
    }
    let mut in_cyclic = vec![false; g.n];
    for c in &full {
        for &n in c {
            in_cyclic[n as usize] = true;
        }
    }
    let mut covered = vec![false; g.n];
    let mut comp = vec![u32::MAX; g.n];
    let mut bfs = Bfs {
        seen: vec![0; g.n],
        prev: vec![0; g.n],
        epoch: 0,
    };
    let mut next_comp = 0u32;
    for class in &CLASSES {
        for c in sccs(g, class.allowed, Some(&in_cyclic)) {
            if c.iter().all(|&n| covered[n as usize]) {
                continue;
            }
            next_comp += 1;
            for &n in &c {
                comp[n as usize] = next_comp;
            }
            let mut tries = 0;
            let mut best: Option<Vec<(u32, u32, u8)>> = None;
            'seeds: for &a in &c {
                for &(b, kinds) in &g.adj[a as usize] {
                    if kinds & class.seed == 0 || comp[b as usize] != next_comp {
                        continue;
                    }
                    tries += 1;
                    if tries > MAX_SEEDS {
                        break 'seeds;
                    }
                    if let Some(back) = bfs.path(g, &comp, next_comp, class.path, b, a) {
                        let mut cycle = vec![(a, b, label(kinds & class.allowed))];
                        for w in back.windows(2) {
                            let kinds = g.adj[w[0] as usize]
                                .iter()
                                .find(|(to, _)| *to == w[1])
                                .map(|(_, k)| *k)
                                .unwrap_or(0);
                            cycle.push((w[0], w[1], label(kinds & class.path)));
                        }
                        if best.as_ref().is_none_or(|b| cycle.len() < b.len()) {
                            best = Some(cycle);
                        }
                        if best.as_ref().is_some_and(|b| b.len() <= 2) {
                            break 'seeds;
                        }
                        if tries >= 8 {
                            break 'seeds;
                        }
                    }
                }
            }
            if let Some(cycle) = best {
                for &n in &c {
                    covered[n as usize] = true;
                }
                report_cycle(hist, g, an, &cycle, c.len());
            }
        }
    }
}

fn report_cycle(
    hist: &History,
    g: &Graph,
    an: &mut Anomalies,
    cycle: &[(u32, u32, u8)],
    scc_size: usize,
) {
    let rw = cycle.iter().filter(|e| e.2 == RW).count();
    let realtime = cycle.iter().any(|e| e.2 == RT);
    let has_wr = cycle.iter().any(|e| e.2 == WR);
    let base = match rw {
        0 if has_wr => "G1c",
        0 => "G0",
        1 => "G-single",
        _ => "G2",
    };
    let name = if realtime {
        format!("{base}-realtime")
    } else {
        base.to_string()
    };
    let steps: Vec<String> = cycle
        .iter()
        .map(|&(a, b, kind)| explain(hist, g, a, b, kind))
        .collect();
    let txns: Vec<u32> = cycle.iter().map(|e| e.0).collect();
    an.push(
        &name,
        json!({
            "realtime": realtime,
            "cycle": txns.iter().map(|&t| hist.txn_json(t)).collect::<Vec<_>>(),
            "steps": steps,
            "scc_size": scc_size,
            "explanation": format!("{} cannot be serialized: {}", txns.iter().map(|&t| hist.label(t)).collect::<Vec<_>>().join(", "), steps.join("; ")),
        }),
        ops_of(hist, &txns),
    );
}

fn explain(hist: &History, g: &Graph, a: u32, b: u32, kind: u8) -> String {
    let (la, lb) = (hist.label(a), hist.label(b));
    let show = |v: Option<i64>| v.map_or("nil".to_string(), |v| v.to_string());
    let Some(e) = g.why(a, b, kind) else {
        return format!("{la} -> {lb}");
    };
    let key = &hist.keys[e.key as usize];
    let (x, y) = (show(e.a), show(e.b));
    match (kind, hist.workload) {
        (WW, Workload::Append) => {
            format!("{la} -ww-> {lb}: {la} appended {x} to key {key}, and {lb} appended {y} right after it")
        }
        (WW, Workload::Wr) => {
            let (ra, rb) = (
                hist.txns[a as usize].revision,
                hist.txns[b as usize].revision,
            );
            match (ra, rb) {
                (Some(ra), Some(rb)) if ra < rb => format!(
                    "{la} -ww-> {lb}: {la} wrote {key}={x} at revision {ra}, and {lb} wrote {key}={y} at revision {rb}, a later one"
                ),
                _ => format!(
                    "{la} -ww-> {lb}: {lb} read {key}={x}, written by {la}, and then overwrote it with {y}"
                ),
            }
        }
        (WR, Workload::Append) => {
            format!("{la} -wr-> {lb}: {lb} read key {key} ending in {x}, appended by {la}")
        }
        (WR, Workload::Wr) => format!("{la} -wr-> {lb}: {lb} read {key}={x}, written by {la}"),
        (RW, Workload::Append) => {
            let read =
                e.a.map_or("empty".to_string(), |v| format!("ending in {v}"));
            format!("{la} -rw-> {lb}: {la} read key {key} {read}, and {lb} appended {y}, the next element")
        }
        (RW, Workload::Wr) => {
            format!(
                "{la} -rw-> {lb}: {la} read {key}={x}, and {lb} wrote {key}={y}, the next version"
            )
        }
        _ => {
            let done = hist.txns[a as usize].comp_pos.map(|p| hist.ops[p].index);
            let began = hist.ops[hist.txns[b as usize].inv_pos].index;
            format!(
                "{la} -realtime-> {lb}: {la} completed (op {}) before {lb} was invoked (op {began})",
                done.map_or("?".into(), |d| d.to_string())
            )
        }
    }
}
