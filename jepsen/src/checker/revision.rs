//! The revision-order checker: judges a register-style history (`f` of
//! `read`/`get` and `write`/`put`/`cas` on keys, no deletes) by the
//! revisions the server itself reported, in O(n log n) time, so it scales to
//! millions of operations where a linearizability search cannot.
//!
//! It checks that:
//! - every acknowledged write has its own revision (`duplicate-revision`);
//! - real-time order implies revision order: if `a` completed before `b`
//!   was invoked, `rev(a) <= rev(b)`, strictly when `b` is a write
//!   (`revision-inversion`). A write's revision is its `mod_revision` (else
//!   its response `revision`); a read's is its response `revision`;
//! - every ok read equals a replay of the writes up to its revision: the
//!   read's `mod_revision` is that of the last write to the key at or below
//!   the read's revision, with that write's value (`stale-read`, or
//!   `lost-write` when the missed write had completed before the read
//!   began; `read-value-mismatch`; `future-read`). An indefinite write that
//!   a read observes at revision `m` is given revision `m`; a value at a
//!   revision no write could have produced is a `phantom-read`;
//! - a successful cas found its `from` value in the replay
//!   (`cas-precondition`), and reported versions count the writes before
//!   them (`version-mismatch`), allowing for indefinite writes that nobody
//!   observed.
//!
//! Failed ops are ignored. This module reads only [`crate::history::Op`]s.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{CheckResult, Validity};
use crate::history::{pair_ops, Op, OpType};

/// The checker name in [`CheckResult::checker`].
pub const NAME: &str = "revision-order";

/// Anomalies kept in full per type; the rest are only counted.
const MAX_DETAILED: usize = 50;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// One paired operation.
struct Rec<'a> {
    kind: Kind,
    key: &'a str,
    /// Written value (writes) or value read (ok reads).
    value: Value,
    /// For a cas, the value it compared against.
    cas_from: Option<Value>,
    ok: bool,
    call: u64,
    /// Completion time of an ok op; `None` for an indefinite one.
    ret: Option<u64>,
    /// Write: its mod revision. Read: the response revision.
    rev: Option<i64>,
    /// Read: the mod revision of the value read.
    read_mod: Option<i64>,
    version: Option<i64>,
    /// History indexes (invoke, completion).
    indexes: Vec<usize>,
}

fn written_value(op: &Op) -> (Value, Option<Value>) {
    match op.f.as_str() {
        "cas" => match op.value.as_array().map(Vec::as_slice) {
            Some([from, to]) => (to.clone(), Some(from.clone())),
            _ => (Value::Null, None),
        },
        _ => match &op.value {
            Value::Object(m) if m.contains_key("value") => (m["value"].clone(), None),
            v => (v.clone(), None),
        },
    }
}

/// Collects anomalies by type, keeping the first few of each in full.
#[derive(Default)]
struct Anomalies {
    counts: Vec<(&'static str, usize)>,
    detailed: Vec<Value>,
    witness: Vec<usize>,
}

impl Anomalies {
    fn add(&mut self, kind: &'static str, mut detail: Value, recs: &[&Rec<'_>]) {
        let n = match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.push((kind, 1));
                1
            }
        };
        if self.witness.is_empty() {
            let mut w: Vec<usize> = recs
                .iter()
                .flat_map(|r| r.indexes.iter().copied())
                .collect();
            w.sort_unstable();
            w.dedup();
            self.witness = w;
        }
        if n <= MAX_DETAILED {
            detail["type"] = json!(kind);
            detail["indexes"] = json!(recs.iter().map(|r| r.indexes[0]).collect::<Vec<_>>());
            self.detailed.push(detail);
        }
    }
}

/// Checks a register-style history against the revisions the server
/// reported. Linear in the history size apart from sorting.
pub fn check(ops: &[Op]) -> CheckResult {
    let pairs = match pair_ops(ops) {
        Ok(p) => p,
        Err(e) => {
            return CheckResult {
                checker: NAME.into(),
                valid: Validity::Unknown,
                summary: format!("history cannot be checked: {e}"),
                anomalies: vec![json!({"type": "unreadable-history", "error": e.to_string()})],
                witness: Vec::new(),
            }
        }
    };
    let mut recs: Vec<Rec<'_>> = Vec::with_capacity(pairs.len());
    for (inv, comp) in pairs {
        let invoke = &ops[inv];
        let kind = match invoke.f.as_str() {
            "read" | "get" => Kind::Read,
            "write" | "put" | "cas" => Kind::Write,
            _ => continue,
        };
        let comp = comp.map(|c| &ops[c]);
        let ok = comp.is_some_and(|c| c.kind == OpType::Ok);
        if comp.is_some_and(|c| c.kind == OpType::Fail) || (kind == Kind::Read && !ok) {
            continue;
        }
        let (value, cas_from) = match (kind, comp) {
            (Kind::Read, Some(c)) => (c.value.clone(), None),
            _ => written_value(invoke),
        };
        let rev = match (kind, comp) {
            (Kind::Write, Some(c)) if ok => c.mod_revision.or(c.revision),
            (Kind::Read, Some(c)) => c.revision,
            _ => None,
        };
        recs.push(Rec {
            kind,
            key: invoke.key.as_deref().unwrap_or(""),
            value,
            cas_from,
            ok,
            call: invoke.time,
            ret: if ok { comp.map(|c| c.time) } else { None },
            rev,
            read_mod: if kind == Kind::Read {
                comp.and_then(|c| c.mod_revision)
            } else {
                None
            },
            version: comp.filter(|_| ok).and_then(|c| c.version),
            indexes: std::iter::once(invoke.index)
                .chain(comp.map(|c| c.index))
                .collect(),
        });
    }

    let mut anomalies = Anomalies::default();

    // Known writes per key, (revision, rec position); indefinite writes per
    // key, rec positions.
    let mut known: HashMap<&str, Vec<(i64, usize)>> = HashMap::new();
    let mut indefinite: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if r.kind != Kind::Write {
            continue;
        }
        match r.rev {
            Some(rev) => known.entry(r.key).or_default().push((rev, i)),
            None => indefinite.entry(r.key).or_default().push(i),
        }
    }
    for v in known.values_mut() {
        v.sort_unstable();
    }

    // The highest revision among ok ops completed by each time: (completion
    // time, running maximum), sorted by time.
    let completed_max: Vec<(u64, i64)> = {
        let mut c: Vec<(u64, i64)> = recs
            .iter()
            .filter_map(|r| {
                let rev = match r.kind {
                    Kind::Write => r.rev,
                    Kind::Read => r.rev.or(r.read_mod),
                };
                Some((r.ret?, rev?))
            })
            .collect();
        c.sort_unstable();
        let mut max = i64::MIN;
        for e in &mut c {
            max = max.max(e.1);
            e.1 = max;
        }
        c
    };
    // Highest revision of any ok op that completed strictly before `t`.
    let max_before = |t: u64| -> Option<i64> {
        let n = completed_max.partition_point(|&(ret, _)| ret < t);
        n.checked_sub(1).map(|i| completed_max[i].1)
    };

    // Bind indefinite writes to the revisions reads observed them at: per
    // key, revisions in order of the first read's completion, each taking
    // the latest-invoked unused candidate of the same value that could have
    // created it: invoked before that read completed, and after no op that
    // completed at or above that revision (feasible candidates form a
    // prefix in invoke order, so the sets are nested and this greedy
    // matching is maximal). Which same-valued candidate gets bound does not
    // matter to the replay, which counts every indefinite write as possible.
    let mut bound: Vec<Option<i64>> = vec![None; recs.len()];
    {
        // (key, mod_revision) -> (earliest read completion, reading rec).
        let mut unexplained: HashMap<(&str, i64), (u64, usize)> = HashMap::new();
        for (i, r) in recs.iter().enumerate() {
            let (Kind::Read, Some(m), Some(ret)) = (r.kind, r.read_mod, r.ret) else {
                continue;
            };
            if r.value.is_null() {
                continue;
            }
            let is_known = known
                .get(r.key)
                .is_some_and(|w| w.binary_search_by_key(&m, |&(rev, _)| rev).is_ok());
            if !is_known {
                let e = unexplained.entry((r.key, m)).or_insert((ret, i));
                if ret < e.0 {
                    *e = (ret, i);
                }
            }
        }
        let mut by_deadline: Vec<_> = unexplained.into_iter().collect();
        by_deadline.sort_unstable_by_key(|&((_, m), (t, _)): &((&str, i64), (u64, usize))| (t, m));
        // Unused candidates per key, sorted by invoke time.
        let mut used = vec![false; recs.len()];
        for ((key, m), (deadline, reader)) in by_deadline {
            let want = &recs[reader].value;
            let pick = indefinite.get(key).and_then(|cands| {
                cands
                    .iter()
                    .copied()
                    .filter(|&c| {
                        !used[c]
                            && recs[c].call <= deadline
                            && &recs[c].value == want
                            && max_before(recs[c].call).is_none_or(|x| x < m)
                    })
                    .max_by_key(|&c| recs[c].call)
            });
            match pick {
                Some(c) => {
                    used[c] = true;
                    bound[c] = Some(m);
                    known.entry(key).or_default().push((m, c));
                }
                None => anomalies.add(
                    "phantom-read",
                    json!({"key": key, "mod_revision": m, "value": want,
                           "detail": "no acknowledged or indefinite write could have produced this value at this revision"}),
                    &[&recs[reader]],
                ),
            }
        }
        for v in known.values_mut() {
            v.sort_unstable();
        }
        for v in indefinite.values_mut() {
            v.sort_unstable_by_key(|&c| recs[c].call);
        }
    }
    let write_rev = |i: usize| recs[i].rev.or(bound[i]);

    // Unique revisions across all writes.
    {
        let mut all: Vec<(i64, usize)> = known.values().flatten().copied().collect();
        all.sort_unstable();
        for w in all.windows(2) {
            if w[0].0 == w[1].0 {
                anomalies.add(
                    "duplicate-revision",
                    json!({"revision": w[0].0, "keys": [recs[w[0].1].key, recs[w[1].1].key]}),
                    &[&recs[w[0].1], &recs[w[1].1]],
                );
            }
        }
    }

    // Real-time order implies revision order. Ops sorted by completion feed
    // a running maximum; ops sorted by invocation are checked against the
    // maximum over everything that completed strictly before them.
    {
        let mut completed: Vec<(u64, i64, usize)> = Vec::new();
        let mut invoked: Vec<(u64, i64, usize)> = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let rev = match r.kind {
                Kind::Write => write_rev(i),
                Kind::Read => r.rev,
            };
            if let (Some(ret), Some(rev)) = (r.ret, rev.or(r.read_mod)) {
                completed.push((ret, rev, i));
            }
            if let Some(rev) = rev {
                invoked.push((r.call, rev, i));
            }
        }
        completed.sort_unstable();
        invoked.sort_unstable();
        let mut j = 0;
        let mut max: Option<(i64, usize)> = None;
        for &(call, rev, i) in &invoked {
            while j < completed.len() && completed[j].0 < call {
                let (_, r, k) = completed[j];
                if max.is_none_or(|(m, _)| r > m) {
                    max = Some((r, k));
                }
                j += 1;
            }
            let Some((m, k)) = max else { continue };
            let bad = match recs[i].kind {
                Kind::Write => rev <= m,
                Kind::Read => rev < m,
            };
            if bad {
                anomalies.add(
                    "revision-inversion",
                    json!({"earlier_revision": m, "later_revision": rev,
                           "detail": "the later op began after the earlier one completed, yet has a lower (or, for a write, not higher) revision"}),
                    &[&recs[k], &recs[i]],
                );
            }
        }
    }

    // Replay: every ok read matches the last write at or below its revision;
    // versions count the writes before; a cas found its `from` value.
    // Indefinite writes (bound or not) invoked by `t`: each may have taken
    // effect unobserved before a version was reported.
    let unbound_before = |key: &str, t: u64| -> usize {
        indefinite
            .get(key)
            .map_or(0, |v| v.partition_point(|&c| recs[c].call <= t))
    };
    for (i, r) in recs.iter().enumerate() {
        let Some(ret) = r.ret else { continue };
        let writes: &[(i64, usize)] = known.get(r.key).map_or(&[], Vec::as_slice);
        match r.kind {
            Kind::Read => {
                let Some(at) = r.rev.or(r.read_mod) else {
                    continue;
                };
                if let Some(m) = r.read_mod {
                    if m > at {
                        anomalies.add(
                            "future-read",
                            json!({"key": r.key, "mod_revision": m, "revision": at}),
                            &[r],
                        );
                        continue;
                    }
                }
                let upto = writes.partition_point(|&(rev, _)| rev <= at);
                let last = upto.checked_sub(1).map(|p| writes[p]);
                let read_rev = if r.value.is_null() { None } else { r.read_mod };
                match (last, read_rev) {
                    (None, None) => {}
                    (Some((wrev, w)), m) if m.is_none_or(|m| m < wrev) => {
                        if r.value.is_null() || m.is_some() || recs[w].value != r.value {
                            let missed = &recs[w];
                            let kind = if missed.ret.is_some_and(|t| t < r.call) {
                                "lost-write"
                            } else {
                                "stale-read"
                            };
                            anomalies.add(
                                kind,
                                json!({"key": r.key, "read_revision": at, "read_mod_revision": m,
                                       "read_value": r.value, "missed_write_revision": wrev,
                                       "missed_value": missed.value}),
                                &[missed, r],
                            );
                            continue;
                        }
                    }
                    (Some((wrev, w)), Some(m)) if m == wrev => {
                        if recs[w].value != r.value {
                            anomalies.add(
                                "read-value-mismatch",
                                json!({"key": r.key, "mod_revision": m, "read_value": r.value,
                                       "written_value": recs[w].value}),
                                &[&recs[w], r],
                            );
                            continue;
                        }
                    }
                    // A read of a revision nothing is known to have written
                    // there was reported as a phantom read above.
                    _ => continue,
                }
                if let (Some(version), Some(m)) = (r.version, read_rev) {
                    check_version(
                        &mut anomalies,
                        r,
                        version,
                        m,
                        writes,
                        unbound_before(r.key, ret),
                    );
                }
            }
            Kind::Write => {
                let Some(m) = write_rev(i) else { continue };
                if let Some(version) = r.version {
                    check_version(
                        &mut anomalies,
                        r,
                        version,
                        m,
                        writes,
                        unbound_before(r.key, ret),
                    );
                }
                if let Some(from) = &r.cas_from {
                    let before = writes.partition_point(|&(rev, _)| rev < m);
                    let prior = before.checked_sub(1).map(|p| &recs[writes[p].1]);
                    if prior.is_none_or(|p| &p.value != from) {
                        // An indefinite write of `from` could sit between
                        // them unobserved.
                        let excused = indefinite.get(r.key).is_some_and(|v| {
                            v.iter()
                                .any(|&c| recs[c].call <= ret && &recs[c].value == from)
                        });
                        if !excused {
                            let mut involved = vec![r];
                            involved.extend(prior);
                            anomalies.add(
                                "cas-precondition",
                                json!({"key": r.key, "revision": m, "from": from,
                                       "value_before": prior.map(|p| p.value.clone())}),
                                &involved,
                            );
                        }
                    }
                }
            }
        }
    }

    let total_ops = recs.len();
    if anomalies.counts.is_empty() {
        let writes = recs
            .iter()
            .filter(|r| r.kind == Kind::Write && r.ok)
            .count();
        return CheckResult::valid(
            NAME,
            format!("{total_ops} operations ({writes} acknowledged writes) agree with the server's revision order"),
        );
    }
    let counts: Vec<String> = anomalies
        .counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    CheckResult {
        checker: NAME.into(),
        valid: Validity::Invalid,
        summary: format!("{} in {total_ops} operations", counts.join(", ")),
        anomalies: anomalies.detailed,
        witness: anomalies.witness,
    }
}

/// A key's version at mod revision `m` is the number of writes at or below
/// `m`: at least the known ones, and at most those plus the `unbound`
/// indefinite writes that could have landed unobserved.
fn check_version(
    anomalies: &mut Anomalies,
    r: &Rec<'_>,
    version: i64,
    m: i64,
    writes: &[(i64, usize)],
    unbound: usize,
) {
    let known = writes.partition_point(|&(rev, _)| rev <= m) as i64;
    if version < known || version > known + unbound as i64 {
        anomalies.add(
            "version-mismatch",
            json!({"key": r.key, "mod_revision": m, "version": version,
                   "writes_at_or_below": known, "unobserved_indefinite_writes": unbound}),
            &[r],
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::checker::models::sim::{register_history, Builder};

    fn types(r: &CheckResult) -> Vec<String> {
        r.anomalies
            .iter()
            .map(|a| a["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn consistent_history_with_an_observed_indefinite_write_is_valid() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(1, "b", 1, 3, 1);
        // Indefinite write to a: it landed at revision 4, as a read shows.
        h.invoke(2, "write", "a", json!(5));
        h.complete(2, OpType::Info, json!(5));
        h.read(3, "a", Some(5), 4, 2, 4);
        // Concurrent write and read: the read may see before or after.
        h.invoke(0, "write", "b", json!(2));
        h.invoke(1, "read", "b", json!(null));
        h.ok_read(1, Some(1), 3, 1, 4);
        h.ok_write(0, 5, 2);
        h.invoke(4, "cas", "b", json!([2, 3]));
        h.ok_write(4, 6, 3);
        h.read(3, "c", None, 0, 0, 6);
        let r = check(&h.ops);
        assert_eq!(r.valid, Validity::Valid, "{} {:?}", r.summary, r.anomalies);
    }

    #[test]
    fn duplicate_revision_is_caught() {
        let mut h = Builder::default();
        let a = h.write(0, "a", 1, 2, 1);
        let b = h.write(1, "b", 1, 2, 1);
        let r = check(&h.ops);
        assert_eq!(r.valid, Validity::Invalid);
        assert!(
            types(&r).contains(&"duplicate-revision".to_string()),
            "{:?}",
            r.anomalies
        );
        assert!(r.witness.contains(&a) && r.witness.contains(&b));
    }

    #[test]
    fn real_time_revision_inversion_is_caught() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 5, 1);
        // Began after the first completed, yet got a lower revision.
        h.write(1, "b", 1, 4, 1);
        let r = check(&h.ops);
        assert_eq!(types(&r), vec!["revision-inversion"], "{:?}", r.anomalies);
        // A read may share the revision of the write before it, but not go
        // below it.
        let mut h = Builder::default();
        h.write(0, "a", 1, 5, 1);
        h.read(1, "b", None, 0, 0, 5);
        assert_eq!(check(&h.ops).valid, Validity::Valid);
        h.read(1, "b", None, 0, 0, 4);
        assert_eq!(types(&check(&h.ops)), vec!["revision-inversion"]);
    }

    #[test]
    fn lost_write_and_stale_read_are_told_apart() {
        // Lost: the missed write had completed before the read began.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(0, "a", 2, 3, 2);
        h.read(1, "a", Some(1), 2, 1, 3);
        assert_eq!(types(&check(&h.ops)), vec!["lost-write"]);
        // Stale: concurrent with the write, but the read claims a revision
        // at which that write was already there.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.invoke(0, "write", "a", json!(2));
        h.invoke(1, "read", "a", json!(null));
        h.ok_read(1, Some(1), 2, 1, 3);
        h.ok_write(0, 3, 2);
        assert_eq!(types(&check(&h.ops)), vec!["stale-read"]);
        // A read of an absent key after a write completed.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.read(1, "a", None, 0, 0, 2);
        assert_eq!(types(&check(&h.ops)), vec!["lost-write"]);
    }

    #[test]
    fn phantom_value_mismatch_future_read_version_and_cas_are_caught() {
        // A value at a revision nothing wrote.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.read(1, "a", Some(8), 3, 2, 3);
        assert!(types(&check(&h.ops)).contains(&"phantom-read".to_string()));
        // The right revision, the wrong value.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.read(1, "a", Some(2), 2, 1, 2);
        assert_eq!(types(&check(&h.ops)), vec!["read-value-mismatch"]);
        // A mod revision above the read's own revision.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.read(1, "a", Some(1), 2, 1, 1);
        assert!(types(&check(&h.ops)).contains(&"future-read".to_string()));
        // A version that does not count the writes.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(0, "a", 2, 3, 5);
        assert_eq!(types(&check(&h.ops)), vec!["version-mismatch"]);
        // A cas that succeeded although the value before it was not `from`.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.invoke(0, "cas", "a", json!([4, 5]));
        h.ok_write(0, 3, 2);
        assert_eq!(types(&check(&h.ops)), vec!["cas-precondition"]);
        // ... unless an unobserved indefinite write of 4 could sit between.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.invoke(1, "write", "a", json!(4));
        h.complete(1, OpType::Info, json!(4));
        h.invoke(0, "cas", "a", json!([4, 5]));
        h.ok_write(0, 4, 3);
        let r = check(&h.ops);
        assert_eq!(r.valid, Validity::Valid, "{:?}", r.anomalies);
    }

    #[test]
    fn serializable_stale_reads_under_partition_are_caught() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(1, "a", 2, 3, 2);
        // A minority node, cut off at revision 2, serves a serializable read.
        h.read(2, "a", Some(1), 2, 1, 2);
        let r = check(&h.ops);
        assert_eq!(r.valid, Validity::Invalid);
        let t = types(&r);
        assert!(t.contains(&"revision-inversion".to_string()), "{t:?}");
    }

    /// Millions of ops in release (seconds); a CI-sized run in debug.
    #[test]
    fn scales_to_a_million_ops_and_catches_a_planted_lost_write() {
        let n = if cfg!(debug_assertions) {
            100_000
        } else {
            1_000_000
        };
        let t = Instant::now();
        let mut ops = register_history(11, n, 1000, 32, 0.02);
        let generated = t.elapsed();
        let t = Instant::now();
        let r = check(&ops);
        let took = t.elapsed();
        eprintln!(
            "revision-order: {} history lines generated in {generated:?}, checked in {took:?}",
            ops.len()
        );
        assert_eq!(
            r.valid,
            Validity::Valid,
            "{} {:?}",
            r.summary,
            r.anomalies.first()
        );
        let limit = if cfg!(debug_assertions) { 60 } else { 10 };
        assert!(took.as_secs() < limit, "took {took:?}");
        // Plant: the last ok read of some key returns an older write.
        let victim = ops
            .iter()
            .rposition(|o| {
                o.kind == OpType::Ok && o.f == "read" && o.version.is_some_and(|v| v > 3)
            })
            .unwrap();
        let key = ops[victim].key.clone();
        let older = ops
            .iter()
            .find(|o| o.kind == OpType::Ok && o.f == "write" && o.key == key)
            .cloned()
            .unwrap();
        ops[victim].value = older.value;
        ops[victim].mod_revision = older.mod_revision;
        ops[victim].version = older.version;
        let r = check(&ops);
        assert_eq!(r.valid, Validity::Invalid);
        assert!(r.witness.contains(&victim), "{:?}", r.witness);
    }
}
