//! The linearizability checker: a Wing–Gong–Lowe depth-first search with
//! Porcupine-style memoization, generic over a [`Model`].
//!
//! Each partition (one per key, from [`Model::partition`]) is checked on its
//! own, in parallel over the machine's cores. The search walks a doubly
//! linked list of call and return entries in time order; linearizing an
//! operation "lifts" its call and return entries out of the list, and
//! backtracking "unlifts" them. A configuration already explored (the set of
//! linearized operations, as a bitset, plus the model state) is never
//! explored again.
//!
//! Indefinite operations (`ret: None`) have no return entry, so they may be
//! linearized anywhere after their call, or not at all: the search succeeds
//! as soon as every definite operation is linearized. Two reductions keep
//! them affordable: indefinite operations with equal input and output are
//! taken in invoke order only (they are interchangeable), and at each step
//! definite candidates are tried before indefinite ones. Many indefinite
//! operations on one key still make the search exponential; it then
//! reports Unknown at its budget, and [`super::revision`] still applies.
//!
//! When a partition is not linearizable, [`check`] shrinks it to a small
//! failing sub-history for the report: the shortest real-time prefix that
//! still fails (operations still running at the cut become optional), then
//! it drops reads one by one while the rest still fails. Both steps keep the
//! sub-history a proof: if it fails, so does the whole history.
//!
//! This module never parses files; [`super::models`] turns histories into
//! operations and [`super::porcupine`] reads the reference logs.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::models::{self, Model, Operation};
use super::{CheckResult, Validity};
use crate::history::Op;

/// The checker name in [`CheckResult::checker`].
pub const NAME: &str = "linearizable";

/// How one partition's search ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No linearization exists. `linearized` is the longest sequence of
    /// operations (positions in the partition) the search could linearize,
    /// in order; `blocked` is an operation that could not follow it.
    NotLinearizable {
        linearized: Vec<usize>,
        blocked: Option<usize>,
    },
    /// The deadline passed first, or the memo table reached its memory cap.
    TimedOut,
    /// Not finished: another partition had already failed, which decides
    /// the verdict.
    Cancelled,
}

const NONE: u32 = u32::MAX;

/// A memoized configuration. `bits_hash` is maintained incrementally (XOR of
/// per-operation keys) so hashing does not walk the bitset.
struct Config<S> {
    bits_hash: u64,
    bits: Box<[u64]>,
    state: S,
}

impl<S: Hash> Hash for Config<S> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.bits_hash.hash(h);
        self.state.hash(h);
    }
}

impl<S: Eq> PartialEq for Config<S> {
    fn eq(&self, other: &Self) -> bool {
        self.bits_hash == other.bits_hash && self.bits == other.bits && self.state == other.state
    }
}

impl<S: Eq> Eq for Config<S> {}

/// splitmix64: a well-mixed key per operation for the bitset hash.
fn mix(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Searches for a linearization of `ops` (one partition) under `model`,
/// giving up at `deadline`.
pub fn search<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Instant,
) -> Outcome {
    search_until(model, ops, deadline, &AtomicBool::new(false))
}

/// [`search`] that also gives up when `cancel` is set.
fn search_until<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Instant,
    cancel: &AtomicBool,
) -> Outcome {
    let n = ops.len();
    // Entry list: node 0 is the head sentinel, node 1 the tail sentinel,
    // then call/return entries in time order (calls first on ties, which
    // makes touching operations concurrent).
    let mut order: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i as u32));
        if let Some(ret) = op.ret {
            order.push((ret, true, i as u32));
        }
    }
    order.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    let len = order.len() + 2;
    let (head, tail) = (0usize, 1usize);
    let mut next = vec![NONE; len];
    let mut prev = vec![NONE; len];
    let mut op_of = vec![NONE; len];
    let mut is_call = vec![false; len];
    let mut ret_entry = vec![NONE; n];
    let mut last = head;
    for (k, &(_, is_ret, i)) in order.iter().enumerate() {
        let e = k + 2;
        op_of[e] = i;
        is_call[e] = !is_ret;
        if is_ret {
            ret_entry[i as usize] = e as u32;
        }
        next[last] = e as u32;
        prev[e] = last as u32;
        last = e;
    }
    next[last] = tail as u32;
    prev[tail] = last as u32;

    let lift = |next: &mut [u32], prev: &mut [u32], e: usize| {
        let (p, nx) = (prev[e] as usize, next[e] as usize);
        next[p] = nx as u32;
        prev[nx] = p as u32;
    };
    let unlift = |next: &mut [u32], prev: &mut [u32], e: usize| {
        let (p, nx) = (prev[e] as usize, next[e] as usize);
        next[p] = e as u32;
        prev[nx] = e as u32;
    };

    // Indefinite operations with equal input and output are interchangeable
    // once invoked: any linearization that uses a later one while an
    // earlier one is still pending can use the earlier one instead. So only
    // the earliest pending member of each such class may be linearized,
    // which keeps the search from trying every subset of them.
    let mut class_of = vec![NONE; n];
    let mut rank = vec![0u32; n];
    let mut taken: Vec<u32> = Vec::new();
    {
        let mut classes: HashMap<(&M::Input, &M::Output), u32> = HashMap::new();
        for &(_, is_ret, i) in &order {
            let op = &ops[i as usize];
            if is_ret || op.ret.is_some() {
                continue;
            }
            let c = *classes.entry((&op.input, &op.output)).or_insert_with(|| {
                taken.push(0);
                (taken.len() - 1) as u32
            });
            class_of[i as usize] = c;
            // `taken` doubles as the member count while building.
            rank[i as usize] = taken[c as usize];
            taken[c as usize] += 1;
        }
        taken.iter_mut().for_each(|t| *t = 0);
    }

    let mut remaining = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut bits = vec![0u64; n.div_ceil(64)].into_boxed_slice();
    let mut bits_hash = 0u64;
    let mut cache: HashSet<Config<M::State>> = HashSet::new();
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: (Vec<usize>, Option<usize>) = (Vec::new(), None);
    let mut entry = next[head] as usize;
    // Each configuration's candidates are scanned twice: definite
    // operations first, then indefinite ones. Applying an indefinite write
    // early is rarely what the history needs and, when wrong, is found out
    // only much later; delaying it until a definite operation needs it keeps
    // the search short on valid histories. Both passes together still try
    // every candidate, so the search stays complete.
    let has_optional = ops.iter().any(|o| o.ret.is_none());
    let mut optional_pass = false;
    let mut steps: u64 = 0;
    loop {
        if remaining == 0 {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(4096) {
            if cancel.load(Ordering::Relaxed) {
                return Outcome::Cancelled;
            }
            if Instant::now() >= deadline {
                return Outcome::TimedOut;
            }
            // The memo table is the search's memory: past its cap the search
            // gives up (Unknown) instead of taking the machine down.
            let entry_bytes = bits.len() * 8 + std::mem::size_of::<Config<M::State>>() + 16;
            if cache.len().saturating_mul(entry_bytes) > MEMO_BYTES_PER_SEARCH {
                return Outcome::TimedOut;
            }
        }
        if entry != tail && is_call[entry] {
            let o = op_of[entry] as usize;
            let c = class_of[o];
            let skip = if optional_pass {
                ops[o].ret.is_some() || (c != NONE && rank[o] != taken[c as usize])
            } else {
                ops[o].ret.is_none()
            };
            if skip {
                entry = next[entry] as usize;
                continue;
            }
            if let Some(ns) = model.step(&state, &ops[o].input, &ops[o].output) {
                bits[o / 64] |= 1 << (o % 64);
                bits_hash ^= mix(o);
                let fresh = cache.insert(Config {
                    bits_hash,
                    bits: bits.clone(),
                    state: ns.clone(),
                });
                if fresh {
                    stack.push((entry, std::mem::replace(&mut state, ns)));
                    lift(&mut next, &mut prev, entry);
                    let r = ret_entry[o];
                    if r != NONE {
                        lift(&mut next, &mut prev, r as usize);
                        remaining -= 1;
                    }
                    if c != NONE {
                        taken[c as usize] += 1;
                    }
                    entry = next[head] as usize;
                    optional_pass = false;
                    continue;
                }
                bits[o / 64] &= !(1 << (o % 64));
                bits_hash ^= mix(o);
            }
            entry = next[entry] as usize;
            continue;
        }
        // A return entry (its operation cannot be linearized yet) or the end
        // of the list: on to the indefinite candidates, or backtrack.
        if !optional_pass && has_optional {
            optional_pass = true;
            entry = next[head] as usize;
            continue;
        }
        // (With definite operations left, a return entry always comes
        // before the tail.)
        if best.1.is_none() || stack.len() > best.0.len() {
            best = (
                stack.iter().map(|&(e, _)| op_of[e] as usize).collect(),
                (entry != tail).then(|| op_of[entry] as usize),
            );
        }
        let Some((e, s)) = stack.pop() else {
            return Outcome::NotLinearizable {
                linearized: best.0,
                blocked: best.1,
            };
        };
        state = s;
        let o = op_of[e] as usize;
        bits[o / 64] &= !(1 << (o % 64));
        bits_hash ^= mix(o);
        let r = ret_entry[o];
        if r != NONE {
            unlift(&mut next, &mut prev, r as usize);
            remaining += 1;
        }
        if class_of[o] != NONE {
            taken[class_of[o] as usize] -= 1;
        }
        unlift(&mut next, &mut prev, e);
        optional_pass = ops[o].ret.is_none();
        entry = next[e] as usize;
    }
}

/// The sub-history of `ops` cut at time `t`: operations invoked after `t`
/// are gone, and those still running at `t` become optional (they may have
/// taken effect before `t` or not). If the cut is not linearizable, neither
/// is `ops`.
fn cut<I: Clone, O: Clone>(ops: &[Operation<I, O>], t: u64) -> Vec<usize> {
    (0..ops.len()).filter(|&i| ops[i].call <= t).collect()
}

fn sub_history<I: Clone, O: Clone>(
    ops: &[Operation<I, O>],
    keep: &[usize],
    t: u64,
) -> Vec<Operation<I, O>> {
    keep.iter()
        .map(|&i| {
            let mut op = ops[i].clone();
            if op.ret.is_some_and(|r| r > t) {
                op.ret = None;
            }
            op
        })
        .collect()
}

/// Shrinks a failing partition to a small failing sub-history (positions in
/// `ops`), within `deadline`. Falls back to the whole partition.
fn shrink<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Instant,
) -> Vec<usize> {
    let fails = |keep: &[usize], t: u64| {
        let sub = sub_history(ops, keep, t);
        matches!(
            search(model, &sub, deadline),
            Outcome::NotLinearizable { .. }
        )
    };
    // Smallest failing real-time cut: failing is monotone in the cut time,
    // so binary search over the definite operations' return times.
    let mut times: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    times.sort_unstable();
    times.dedup();
    let full = u64::MAX;
    let (mut lo, mut hi) = (0usize, times.len());
    // Invariant: cut at times[hi] (or full when hi == len) fails.
    while lo < hi {
        if Instant::now() >= deadline {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if fails(&cut(ops, times[mid]), times[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t = times.get(hi).copied().unwrap_or(full);
    let mut keep = cut(ops, t);
    // Dropping a read never makes a linearizable history non-linearizable,
    // so reads whose removal keeps the failure are noise. Remove them in
    // chunks, halving the chunk size (as delta debugging does), so a
    // witness with many irrelevant reads needs few searches.
    let mut chunk = keep
        .iter()
        .filter(|&&i| model.is_pure(&ops[i].input))
        .count()
        / 2;
    while chunk >= 1 && Instant::now() < deadline {
        let reads: Vec<usize> = keep
            .iter()
            .copied()
            .filter(|&i| model.is_pure(&ops[i].input))
            .collect();
        for group in reads.chunks(chunk) {
            if Instant::now() >= deadline {
                break;
            }
            let without: Vec<usize> = keep
                .iter()
                .copied()
                .filter(|i| !group.contains(i))
                .collect();
            if fails(&without, t) {
                keep = without;
            }
        }
        chunk /= 2;
    }
    keep
}

/// One partition's verdict, with positions mapped back to the caller's
/// operation list.
struct PartitionVerdict {
    key: String,
    positions: Vec<usize>,
    outcome: Outcome,
}

/// Checks every partition of `ops`, in parallel, within `budget`, and stops
/// at the first partition that is not linearizable (the rest come back
/// [`Outcome::Cancelled`]): one violation decides the verdict, and proving
/// another partition can cost far more than finding it.
/// Returns `(label, positions in ops, outcome)` per partition, in the order
/// [`Model::partition`] produced them.
pub fn check_partitions<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> Vec<(String, Vec<usize>, Outcome)> {
    let deadline = Instant::now() + budget;
    let parts = model.partition(ops);
    // Largest first, so a long partition does not start last.
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&p| std::cmp::Reverse(parts[p].1.len()));
    let results: Vec<Mutex<Option<Outcome>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(parts.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&p) = order.get(k) else { break };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let sub: Vec<_> = parts[p].1.iter().map(|&i| ops[i].clone()).collect();
                let outcome = search_until(model, &sub, deadline, &failed);
                if matches!(outcome, Outcome::NotLinearizable { .. }) {
                    failed.store(true, Ordering::Relaxed);
                }
                *results[p]
                    .lock()
                    .expect("invariant: no worker panics holding it") = Some(outcome);
            });
        }
    });
    parts
        .into_iter()
        .zip(results)
        .map(|((label, positions), r)| {
            let outcome = r
                .into_inner()
                .expect("invariant: no worker panics holding it")
                .unwrap_or(Outcome::Cancelled);
            (label, positions, outcome)
        })
        .collect()
}

/// Checks `ops` for linearizability under `model` within `budget` and
/// reports a [`CheckResult`]: `Invalid` with an anomaly per failing
/// partition found (the search stops at the first) and the smallest failing
/// sub-history found as the witness; `Unknown` if some partition ran out of
/// time and none failed. Shrinking the witness takes up to four times the
/// search's own time, between 1 s and 10 s, on top of `budget`.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> CheckResult {
    let start = Instant::now();
    let verdicts: Vec<PartitionVerdict> = check_partitions(model, ops, budget)
        .into_iter()
        .map(|(key, positions, outcome)| PartitionVerdict {
            key,
            positions,
            outcome,
        })
        .collect();
    let total = verdicts.len();
    let timed_out: Vec<&str> = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::TimedOut)
        .map(|v| v.key.as_str())
        .collect();
    let mut failing: Vec<&PartitionVerdict> = verdicts
        .iter()
        .filter(|v| matches!(v.outcome, Outcome::NotLinearizable { .. }))
        .collect();
    if failing.is_empty() {
        let ops_n = ops.len();
        if timed_out.is_empty() {
            return CheckResult::valid(
                NAME,
                format!("{ops_n} operations in {total} partition(s) are linearizable"),
            );
        }
        return CheckResult {
            checker: NAME.into(),
            valid: Validity::Unknown,
            summary: format!(
                "time budget of {budget:?} ran out on {} of {total} partition(s) (first: {:?}); no violation found",
                timed_out.len(),
                timed_out[0]
            ),
            anomalies: Vec::new(),
            witness: Vec::new(),
        };
    }
    failing.sort_by_key(|v| v.positions.len());
    let cancelled = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Cancelled)
        .count();
    let shrink_for = start
        .elapsed()
        .mul_f64(4.0)
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let shrink_deadline = Instant::now() + shrink_for;
    // Only the smallest few failing partitions are shrunk.
    const SHRINK: usize = 3;
    let mut anomalies = Vec::new();
    let mut witness: Option<Vec<usize>> = None;
    for (n, v) in failing.iter().enumerate() {
        let Outcome::NotLinearizable {
            linearized,
            blocked,
        } = &v.outcome
        else {
            continue;
        };
        let sub: Vec<_> = v.positions.iter().map(|&i| ops[i].clone()).collect();
        let mut state = model.init();
        let mut lin_desc = Vec::new();
        for &i in linearized {
            let op = &sub[i];
            if let Some(s) = model.step(&state, &op.input, &op.output) {
                state = s;
            }
            lin_desc.push(model.describe_op(&op.input, &op.output));
        }
        let mut anomaly = json!({
            "type": "nonlinearizable",
            "key": v.key,
            "operations": sub.len(),
            "longest_linearizable_prefix": lin_desc,
            "state_after_prefix": model.describe_state(&state),
        });
        if let Some(b) = blocked {
            anomaly["cannot_linearize"] = json!(model.describe_op(&sub[*b].input, &sub[*b].output));
            anomaly["index"] = json!(sub[*b].invoke_index);
        }
        if n < SHRINK {
            let keep = shrink(model, &sub, shrink_deadline);
            let idx: Vec<usize> = {
                let mut idx: Vec<usize> = keep.iter().flat_map(|&i| sub[i].indexes()).collect();
                idx.sort_unstable();
                idx
            };
            anomaly["witness_operations"] = json!(keep.len());
            if witness.as_ref().is_none_or(|w| idx.len() < w.len()) {
                witness = Some(idx);
            }
        }
        anomalies.push(anomaly);
    }
    let first = &anomalies[0];
    CheckResult {
        checker: NAME.into(),
        valid: Validity::Invalid,
        summary: format!(
            "key {:?} not linearizable: cannot linearize {} ({} of {total} partition(s) failed, {} left unchecked after the first failure)",
            failing[0].key,
            first["cannot_linearize"].as_str().unwrap_or("(end of history)"),
            failing.len(),
            cancelled + timed_out.len(),
        ),
        anomalies,
        witness: witness.unwrap_or_default(),
    }
}

/// Memory cap of one partition's memo table (two partitions are searched at
/// once on these machines). Reaching it ends that search like the time
/// budget does: the verdict is Unknown, never a guess.
pub const MEMO_BYTES_PER_SEARCH: usize = 2 << 30;

/// Time budget of the search when a run directory is checked.
pub const RUN_BUDGET: Duration = Duration::from_secs(300);

/// Checks a `register` workload history (per-key registers with versions;
/// see [`models::Register`]).
pub fn check_register(ops: &[Op], budget: Duration) -> CheckResult {
    match models::Register::operations(ops) {
        Ok(operations) => check(&models::Register, &operations, budget),
        Err(e) => unreadable(e),
    }
}

/// Checks a `kv` history (get/put/append per key; see [`models::Kv`]).
pub fn check_kv(ops: &[Op], budget: Duration) -> CheckResult {
    match models::Kv::operations(ops) {
        Ok(operations) => check(&models::Kv, &operations, budget),
        Err(e) => unreadable(e),
    }
}

/// Checks a single-register history (see [`models::EtcdRegister`]).
pub fn check_etcd_register(ops: &[Op], budget: Duration) -> CheckResult {
    match models::EtcdRegister::operations(ops) {
        Ok(operations) => check(&models::EtcdRegister, &operations, budget),
        Err(e) => unreadable(e),
    }
}

fn unreadable(e: anyhow::Error) -> CheckResult {
    CheckResult {
        checker: NAME.into(),
        valid: Validity::Unknown,
        summary: format!("history cannot be checked: {e}"),
        anomalies: vec![json!({"type": "unreadable-history", "error": e.to_string()})],
        witness: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::checker::models::sim::{register_history, Builder};
    use crate::history::OpType;

    const BUDGET: Duration = Duration::from_secs(30);

    fn verdict(b: &Builder) -> CheckResult {
        check_register(&b.ops, BUDGET)
    }

    #[test]
    fn concurrent_register_history_with_versions_is_linearizable() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        // Write 2 and a read overlap: the read may see either value.
        h.invoke(0, "write", "a", json!(2));
        h.invoke(1, "read", "a", json!(null));
        h.ok_read(1, Some(1), 2, 1, 2);
        h.ok_write(0, 3, 2);
        h.invoke(2, "cas", "a", json!([2, 3]));
        h.ok_write(2, 4, 3);
        h.read(1, "a", Some(3), 4, 3, 4);
        h.read(1, "b", None, 0, 0, 4);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Valid, "{}", r.summary);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught_with_a_witness() {
        let mut h = Builder::default();
        let w1 = h.write(0, "a", 1, 2, 1);
        let w2 = h.write(0, "a", 2, 3, 2);
        let stale = h.read(1, "a", Some(1), 2, 1, 3);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
        assert_eq!(r.anomalies[0]["key"], "a");
        assert_eq!(r.anomalies[0]["index"], stale);
        for i in [w1, w2, stale] {
            assert!(r.witness.contains(&i), "{i} not in witness {:?}", r.witness);
        }
    }

    #[test]
    fn lost_write_is_caught() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(1, "a", 7, 3, 2);
        // The acknowledged write of 7 vanished: a later read sees nothing.
        h.read(2, "a", None, 0, 0, 3);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
    }

    #[test]
    fn cas_that_could_not_have_succeeded_is_caught() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.invoke(0, "cas", "a", json!([5, 6]));
        h.ok_write(0, 3, 2);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
    }

    #[test]
    fn versions_and_mod_revisions_are_part_of_the_model() {
        // Same values, but the read reports the first write's mod revision
        // after the second completed: an ABA the values alone would hide.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(0, "a", 1, 3, 2);
        h.read(1, "a", Some(1), 2, 1, 3);
        assert_eq!(verdict(&h).valid, Validity::Invalid);
        // A version that skips one.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(0, "a", 2, 3, 3);
        assert_eq!(verdict(&h).valid, Validity::Invalid);
        // Mod revisions must grow along the linearization.
        let mut h = Builder::default();
        h.write(0, "a", 1, 5, 1);
        h.write(0, "a", 2, 4, 2);
        assert_eq!(verdict(&h).valid, Validity::Invalid);
    }

    #[test]
    fn indefinite_writes_may_or_may_not_have_happened_and_failed_ops_did_not() {
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.invoke(1, "write", "a", json!(5));
        h.complete(1, OpType::Info, json!(5));
        h.invoke(2, "write", "a", json!(9));
        h.complete(2, OpType::Fail, json!(9));
        h.read(3, "a", Some(1), 2, 1, 2);
        // The info write lands later, at revision 3, and is read.
        h.read(3, "a", Some(5), 3, 2, 3);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Valid, "{}", r.summary);
        // Never landing is fine too.
        let mut h2 = Builder::default();
        h2.invoke(1, "write", "a", json!(5));
        h2.complete(1, OpType::Info, json!(5));
        h2.read(3, "a", None, 0, 0, 1);
        assert_eq!(verdict(&h2).valid, Validity::Valid);
        // But a failed write is never visible.
        h.read(3, "a", Some(9), 4, 3, 4);
        assert_eq!(verdict(&h).valid, Validity::Invalid);
    }

    #[test]
    fn serializable_reads_from_a_partitioned_node_are_not_linearizable() {
        // Node 2 is cut off after revision 2; a serializable read served by
        // it returns the old value after a newer write was acknowledged.
        let mut h = Builder::default();
        h.write(0, "a", 1, 2, 1);
        h.write(1, "a", 2, 3, 2);
        let i = h.invoke(2, "read", "a", json!(null));
        h.ok_read(2, Some(1), 2, 1, 2).node = Some(2);
        h.ops[i].node = Some(2);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
        let r = crate::checker::revision::check(&h.ops);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
    }

    #[test]
    fn only_the_failing_key_is_reported_and_its_witness_is_small() {
        let mut h = Builder::default();
        // Plenty of healthy traffic on two keys and on the failing one.
        let mut rev = 1;
        for round in 0..40 {
            for key in ["a", "b", "c"] {
                rev += 1;
                h.write(0, key, round, rev, round + 1);
                h.read(1, key, Some(round), rev, round + 1, rev);
            }
        }
        let stale = h.read(2, "b", Some(3), 11, 4, rev);
        let r = verdict(&h);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
        assert_eq!(r.anomalies[0]["key"], "b");
        assert!(r.witness.contains(&stale));
        assert!(
            !r.witness.is_empty() && r.witness.len() < 100,
            "witness of {} indexes",
            r.witness.len()
        );
        // Every witness op is on key b, and the witness itself fails.
        let wops: Vec<Op> = r.witness.iter().map(|&i| h.ops[i].clone()).collect();
        assert!(wops.iter().all(|o| o.key.as_deref() == Some("b")));
    }

    #[test]
    fn witness_sub_history_is_itself_not_linearizable() {
        let ops = {
            let mut h = Builder::default();
            h.write(0, "a", 1, 2, 1);
            for _ in 0..20 {
                h.read(1, "a", Some(1), 2, 1, 2);
            }
            h.write(0, "a", 2, 3, 2);
            for _ in 0..20 {
                h.read(1, "a", Some(2), 3, 2, 3);
            }
            h.read(1, "a", Some(1), 2, 1, 3);
            for _ in 0..20 {
                h.read(1, "a", Some(2), 3, 2, 3);
            }
            h.ops
        };
        let r = check_register(&ops, BUDGET);
        assert_eq!(r.valid, Validity::Invalid);
        // The two writes and the stale read: 3 ops, 6 lines.
        assert_eq!(r.witness.len(), 6, "{:?}", r.witness);
        let mut sub: Vec<Op> = r.witness.iter().map(|&i| ops[i].clone()).collect();
        for (n, op) in sub.iter_mut().enumerate() {
            op.index = n;
        }
        assert_eq!(check_register(&sub, BUDGET).valid, Validity::Invalid);
    }

    #[test]
    fn check_run_judges_register_histories_with_both_checkers() {
        let dir = tempfile::tempdir().unwrap();
        // check_run picks register ops by the workload's key prefix.
        const K: &str = "/jepsen/register/a";
        let mut h = Builder::default();
        h.write(0, K, 1, 2, 1);
        h.read(1, K, Some(1), 2, 1, 2);
        crate::history::write_jsonl(&dir.path().join("history.jsonl"), &h.ops).unwrap();
        let results = crate::checker::check_run(dir.path()).unwrap();
        let names: Vec<&str> = results.iter().map(|r| r.checker.as_str()).collect();
        assert!(
            names.contains(&NAME) && names.contains(&"revision-order"),
            "{names:?}"
        );
        assert!(
            results.iter().all(|r| r.valid == Validity::Valid),
            "{results:?}"
        );
        // A stale read fails both.
        h.write(0, K, 2, 3, 2);
        h.read(1, K, Some(1), 2, 1, 3);
        crate::history::write_jsonl(&dir.path().join("history.jsonl"), &h.ops).unwrap();
        let results = crate::checker::check_run(dir.path()).unwrap();
        for name in [NAME, "revision-order"] {
            let r = results.iter().find(|r| r.checker == name).unwrap();
            assert_eq!(r.valid, Validity::Invalid, "{name}: {}", r.summary);
        }
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_valid() {
        // Many overlapping writes and a read of a value nobody wrote: proving
        // it impossible takes an exhaustive search.
        let mut h = Builder::default();
        for p in 0..12 {
            h.invoke(p, "write", "a", json!(p));
        }
        for p in 0..12 {
            h.complete(p, OpType::Ok, json!(p));
        }
        h.read(99, "a", Some(1000), 99, 1, 99);
        let ops: Vec<Op> = h.ops.clone();
        let r = check_register(&ops, Duration::ZERO);
        assert_eq!(r.valid, Validity::Unknown, "{}", r.summary);
        let r = check_register(&ops, BUDGET);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
    }

    #[test]
    fn simulated_linearizable_store_passes_and_a_planted_stale_read_fails() {
        let n = if cfg!(debug_assertions) {
            3_000
        } else {
            30_000
        };
        let mut ops = register_history(7, n, 30, 8, 0.05);
        let r = check_register(&ops, BUDGET);
        assert_eq!(r.valid, Validity::Valid, "{}", r.summary);
        // Plant: a late ok read of a key returns that key's first value.
        let first = ops
            .iter()
            .find(|o| o.kind == OpType::Ok && o.f == "write")
            .cloned()
            .unwrap();
        let stale = ops
            .iter()
            .rposition(|o| {
                o.kind == OpType::Ok
                    && o.f == "read"
                    && o.key == first.key
                    && o.mod_revision
                        .is_some_and(|m| m > first.mod_revision.unwrap() + 5)
            })
            .unwrap();
        ops[stale].value = first.value.clone();
        ops[stale].mod_revision = first.mod_revision;
        ops[stale].version = first.version;
        let r = check_register(&ops, BUDGET);
        assert_eq!(r.valid, Validity::Invalid, "{}", r.summary);
        assert!(r.witness.contains(&stale), "{:?}", r.witness);
    }
}
