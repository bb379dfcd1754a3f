//! The Elle-style checker catches planted anomalies in small hand-written
//! `append` and `wr` histories, passes valid ones (with `info` and `fail`
//! txns), and checks large generated histories quickly.

use std::time::Instant;

use jepsen::checker::elle::{check, check_append, check_wr, detect_workload, Workload};
use jepsen::checker::{CheckResult, Validity};
use jepsen::history::{Op, OpType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Builds a history line by line.
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

/// The invoke form of a completed txn value: reads carry null.
fn invoke_form(v: &Value) -> Value {
    Value::Array(
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let m = m.as_array().unwrap();
                if m[0] == "r" {
                    json!([m[0], m[1], null])
                } else {
                    json!(m)
                }
            })
            .collect(),
    )
}

impl H {
    fn push(&mut self, process: u64, kind: OpType, value: Value, revision: Option<i64>) {
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            process,
            time: index as u64 * 1000,
            kind,
            f: "txn".into(),
            key: None,
            value,
            revision,
            version: None,
            mod_revision: None,
            node: None,
            error: None,
        });
    }
    /// Invoke of `value` (its completed form; reads are nulled).
    fn inv(&mut self, p: u64, value: Value) -> &mut Self {
        self.push(p, OpType::Invoke, invoke_form(&value), None);
        self
    }
    fn ok(&mut self, p: u64, value: Value, rev: i64) -> &mut Self {
        self.push(p, OpType::Ok, value, Some(rev));
        self
    }
    fn fail(&mut self, p: u64, value: Value) -> &mut Self {
        self.push(p, OpType::Fail, invoke_form(&value), None);
        self
    }
    fn info(&mut self, p: u64, value: Value) -> &mut Self {
        self.push(p, OpType::Info, invoke_form(&value), None);
        self
    }
    /// A txn that runs alone: invoke then ok.
    fn txn(&mut self, p: u64, value: Value, rev: i64) -> &mut Self {
        self.inv(p, value.clone()).ok(p, value, rev)
    }
}

fn types(r: &CheckResult) -> Vec<String> {
    r.anomalies
        .iter()
        .map(|a| a["type"].as_str().unwrap().to_string())
        .collect()
}

fn assert_valid(r: &CheckResult) {
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
}

fn assert_caught(r: &CheckResult, kind: &str) {
    assert_eq!(r.valid, Validity::Invalid, "{r:#?}");
    assert!(types(r).iter().any(|t| t == kind), "no {kind} in {r:#?}");
    assert!(!r.witness.is_empty(), "{r:#?}");
}

// ---------------------------------------------------------------- append

#[test]
fn serial_append_history_with_info_and_fail_is_valid() {
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1], ["r", "x", [1]]]), 2)
        .txn(0, json!([["r", "x", [1]], ["append", "y", 1]]), 3);
    // An info append that did commit (a later read sees it), one that did
    // not, and a fail nobody sees.
    h.inv(1, json!([["append", "x", 2]]))
        .info(1, json!([["append", "x", 2]]));
    h.inv(2, json!([["append", "y", 9]]))
        .info(2, json!([["append", "y", 9]]));
    h.inv(3, json!([["append", "x", 7]]))
        .fail(3, json!([["append", "x", 7]]));
    h.txn(
        4,
        json!([["r", "x", [1, 2]], ["r", "y", [1]], ["append", "x", 3]]),
        5,
    )
    .txn(4, json!([["r", "x", [1, 2, 3]], ["r", "z", null]]), 5);
    // An info txn that never completed at all.
    h.inv(5, json!([["append", "z", 1], ["r", "x", null]]));
    let r = check(&h.ops).unwrap();
    assert_eq!(r.checker, "elle-append");
    assert_valid(&r);
    assert!(r.summary.contains("8 txns"), "{}", r.summary);
}

#[test]
fn concurrent_valid_append_history_is_valid() {
    // Two concurrent txns may serialize either way; reads agree on one order.
    let mut h = H::default();
    h.inv(0, json!([["append", "x", 1], ["r", "y", []]]))
        .inv(1, json!([["append", "x", 2], ["r", "y", []]]))
        .ok(1, json!([["append", "x", 2], ["r", "y", []]]), 3)
        .ok(0, json!([["append", "x", 1], ["r", "y", []]]), 2)
        .txn(0, json!([["r", "x", [1, 2]]]), 3);
    assert_valid(&check_append(&h.ops));
}

#[test]
fn g0_write_cycle_is_caught() {
    let (t1, t2) = (
        json!([["append", "x", 1], ["append", "y", 1]]),
        json!([["append", "x", 2], ["append", "y", 2]]),
    );
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3)
        .txn(2, json!([["r", "x", [1, 2]], ["r", "y", [2, 1]]]), 3);
    let r = check_append(&h.ops);
    assert_caught(&r, "G0");
    // The witness is the two writers (invoke and completion lines).
    assert_eq!(r.witness, vec![0, 1, 2, 3]);
    let g0 = &r.anomalies[0];
    assert_eq!(g0["cycle"].as_array().unwrap().len(), 2);
    assert!(g0["steps"][0].as_str().unwrap().contains("-ww->"), "{g0}");
}

#[test]
fn g1a_aborted_read_is_caught() {
    let mut h = H::default();
    h.inv(0, json!([["append", "x", 1]]))
        .fail(0, json!([["append", "x", 1]]))
        .txn(1, json!([["r", "x", [1]]]), 2);
    assert_caught(&check_append(&h.ops), "G1a");
}

#[test]
fn g1b_intermediate_read_is_caught() {
    let t1 = json!([["append", "x", 1], ["append", "x", 2]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .txn(1, json!([["r", "x", [1]]]), 2)
        .ok(0, t1, 2)
        .txn(1, json!([["r", "x", [1, 2]]]), 2);
    assert_caught(&check_append(&h.ops), "G1b");
}

#[test]
fn g1c_circular_information_flow_is_caught() {
    let t1 = json!([["append", "x", 1], ["r", "y", [2]]]);
    let t2 = json!([["append", "y", 2], ["r", "x", [1]]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3);
    let r = check_append(&h.ops);
    assert_caught(&r, "G1c");
    assert!(!types(&r).contains(&"G2".to_string()), "{r:#?}");
}

#[test]
fn g_single_read_skew_is_caught() {
    // T1 sees T2's append to y but not its append to x.
    let t1 = json!([["r", "x", []], ["r", "y", [1]]]);
    let t2 = json!([["append", "x", 1], ["append", "y", 1]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(1, t2, 2)
        .ok(0, t1, 2)
        .txn(2, json!([["r", "x", [1]], ["r", "y", [1]]]), 2);
    let r = check_append(&h.ops);
    assert_caught(&r, "G-single");
    let a = &r.anomalies[0];
    assert_eq!(a["realtime"], false);
    let steps = a["steps"].to_string();
    assert!(
        steps.contains("-rw->") && steps.contains("-wr->"),
        "{steps}"
    );
}

#[test]
fn g2_write_skew_is_caught() {
    let t1 = json!([["r", "x", []], ["append", "y", 1]]);
    let t2 = json!([["r", "y", []], ["append", "x", 1]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3)
        .txn(2, json!([["r", "x", [1]], ["r", "y", [1]]]), 3);
    let r = check_append(&h.ops);
    assert_caught(&r, "G2");
    assert!(
        !types(&r).iter().any(|t| t.starts_with("G-single")),
        "{r:#?}"
    );
}

#[test]
fn stale_read_after_completion_is_a_realtime_cycle() {
    // T1's append completed before T2 began, yet T2 does not see it:
    // serializable, but not strictly serializable.
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(1, json!([["r", "x", []]]), 2)
        .txn(2, json!([["r", "x", [1]]]), 2);
    let r = check_append(&h.ops);
    assert_caught(&r, "G-single-realtime");
    assert_eq!(r.anomalies[0]["realtime"], true);
    assert!(r.anomalies[0]["steps"].to_string().contains("-realtime->"));
    // The same reads with overlapping txns are fine.
    let mut h = H::default();
    h.inv(0, json!([["append", "x", 1]]))
        .inv(1, json!([["r", "x", []]]))
        .ok(0, json!([["append", "x", 1]]), 2)
        .ok(1, json!([["r", "x", []]]), 2)
        .txn(2, json!([["r", "x", [1]]]), 2);
    assert_valid(&check_append(&h.ops));
}

#[test]
fn incompatible_orders_and_duplicates_are_caught() {
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(0, json!([["append", "x", 2]]), 3)
        .txn(1, json!([["r", "x", [1, 2]]]), 3)
        .txn(2, json!([["r", "x", [2, 1]]]), 3);
    assert_caught(&check_append(&h.ops), "incompatible-order");
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(1, json!([["r", "x", [1, 1]]]), 2);
    assert_caught(&check_append(&h.ops), "duplicate-elements");
}

#[test]
fn lost_append_and_garbage_and_internal_reads_are_caught() {
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(1, json!([["r", "x", []]]), 2);
    assert_caught(&check_append(&h.ops), "lost-append");
    let mut h = H::default();
    h.txn(1, json!([["r", "x", [5]]]), 2);
    assert_caught(&check_append(&h.ops), "garbage-read");
    let mut h = H::default();
    h.txn(1, json!([["append", "x", 1], ["r", "x", []]]), 2);
    assert_caught(&check_append(&h.ops), "internal");
}

// -------------------------------------------------------------------- wr

#[test]
fn valid_wr_history_passes() {
    let mut h = H::default();
    h.txn(0, json!([["w", "x", 1], ["w", "y", 1]]), 2).txn(
        1,
        json!([["r", "x", 1], ["w", "x", 2], ["r", "x", 2]]),
        3,
    );
    h.inv(2, json!([["w", "y", 3]]))
        .info(2, json!([["w", "y", 3]]));
    h.inv(3, json!([["w", "y", 4]]))
        .fail(3, json!([["w", "y", 4]]));
    h.inv(4, json!([["r", "x", 2], ["r", "y", 3]]))
        .inv(5, json!([["w", "x", 5]]))
        .ok(4, json!([["r", "x", 2], ["r", "y", 3]]), 3)
        .ok(5, json!([["w", "x", 5]]), 5)
        .txn(4, json!([["r", "x", 5], ["r", "z", null]]), 5);
    assert_eq!(detect_workload(&h.ops), Some(Workload::Wr));
    let r = check(&h.ops).unwrap();
    assert_eq!(r.checker, "elle-wr");
    assert_valid(&r);
}

#[test]
fn wr_anomalies_are_caught() {
    // G0: revisions order T1 before T2 on x and y, but T1 read T2's y and
    // then overwrote it, so on y T2 precedes T1.
    let t1 = json!([["w", "x", 1], ["r", "y", 2], ["w", "y", 1]]);
    let t2 = json!([["w", "x", 2], ["w", "y", 2]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 10)
        .ok(1, t2, 11);
    let r = check_wr(&h.ops);
    assert_caught(&r, "G0");
    let steps = r.anomalies[0]["steps"].to_string();
    assert!(
        steps.contains("at revision 10") && steps.contains("overwrote it"),
        "{steps}"
    );

    // G1a and G1b.
    let mut h = H::default();
    h.inv(0, json!([["w", "x", 1]]))
        .fail(0, json!([["w", "x", 1]]))
        .txn(1, json!([["r", "x", 1]]), 2);
    assert_caught(&check_wr(&h.ops), "G1a");
    let t1 = json!([["w", "x", 1], ["w", "x", 2]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .txn(1, json!([["r", "x", 1]]), 1)
        .ok(0, t1, 2);
    assert_caught(&check_wr(&h.ops), "G1b");

    // G1c: each reads the other's write.
    let t1 = json!([["w", "x", 1], ["r", "y", 2]]);
    let t2 = json!([["w", "y", 2], ["r", "x", 1]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3);
    assert_caught(&check_wr(&h.ops), "G1c");

    // G-single: read skew.
    let t1 = json!([["r", "x", null], ["r", "y", 1]]);
    let t2 = json!([["w", "x", 1], ["w", "y", 1]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(1, t2, 2)
        .ok(0, t1, 2);
    assert_caught(&check_wr(&h.ops), "G-single");

    // G2: write skew.
    let t1 = json!([["r", "x", null], ["w", "y", 1]]);
    let t2 = json!([["r", "y", null], ["w", "x", 2]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3);
    assert_caught(&check_wr(&h.ops), "G2");

    // Stale read in real time: x=1 was acknowledged before the read began.
    let mut h = H::default();
    h.txn(0, json!([["w", "x", 1]]), 2)
        .txn(1, json!([["r", "x", null]]), 2);
    assert_caught(&check_wr(&h.ops), "G-single-realtime");
    // ... and of an older version.
    let mut h = H::default();
    h.txn(0, json!([["w", "x", 1]]), 2)
        .txn(0, json!([["w", "x", 2]]), 3)
        .txn(1, json!([["r", "x", 1]]), 3);
    assert_caught(&check_wr(&h.ops), "G-single-realtime");

    // Internal inconsistency and two writers at one revision.
    let mut h = H::default();
    h.txn(0, json!([["w", "x", 1], ["r", "x", 2]]), 2);
    assert_caught(&check_wr(&h.ops), "internal");
    let mut h = H::default();
    h.txn(0, json!([["w", "x", 1]]), 2)
        .txn(1, json!([["w", "x", 2]]), 2);
    assert_caught(&check_wr(&h.ops), "revision-conflict");
}

// ----------------------------------------------------------------- scale

/// Simulates `n` txns from `procs` concurrent clients against a serial
/// store: each txn takes effect atomically at one moment between its invoke
/// and its completion, so the history is strictly serializable. Some txns
/// end `info` (applied or not) or `fail` (not applied); keys rotate so that
/// lists stay short, as the workload does.
fn generate(workload: Workload, n: usize, procs: usize, seed: u64) -> Vec<Op> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Idle,
        Invoked,
        Applied,
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = H::default();
    let mut lists: std::collections::HashMap<u64, Vec<i64>> = Default::default();
    let mut regs: std::collections::HashMap<u64, i64> = Default::default();
    let mut next_val = 0i64;
    let mut rev = 1i64;
    let mut state = vec![St::Idle; procs];
    let mut pid: Vec<u64> = (0..procs as u64).collect();
    let mut next_pid = procs as u64;
    let mut pending: Vec<Value> = vec![Value::Null; procs];
    let mut outcome = vec![0u32; procs];
    let mut at_rev = vec![0i64; procs];
    let mut started = 0usize;
    let mut done = 0usize;
    while done < n {
        let p = rng.gen_range(0..procs);
        match state[p] {
            St::Idle if started < n => {
                let base = (started / 50) as u64;
                let mops: Vec<Value> = (0..rng.gen_range(1..=4))
                    .map(|_| {
                        let k = base + rng.gen_range(0..8u64);
                        if rng.gen_bool(0.5) {
                            json!(["r", k, null])
                        } else {
                            next_val += 1;
                            match workload {
                                Workload::Append => json!(["append", k, next_val]),
                                Workload::Wr => json!(["w", k, next_val]),
                            }
                        }
                    })
                    .collect();
                pending[p] = Value::Array(mops);
                outcome[p] = rng.gen_range(0..100);
                h.push(pid[p], OpType::Invoke, pending[p].clone(), None);
                state[p] = St::Invoked;
                started += 1;
            }
            St::Idle => {}
            St::Invoked if outcome[p] >= 95 => {
                // Never applied: fail (definite) or info.
                let v = pending[p].clone();
                if outcome[p] >= 98 {
                    h.push(pid[p], OpType::Fail, v, None);
                } else {
                    h.push(pid[p], OpType::Info, v, None);
                    pid[p] = next_pid;
                    next_pid += 1;
                }
                state[p] = St::Idle;
                done += 1;
            }
            St::Invoked => {
                let mut wrote = false;
                let applied: Vec<Value> = pending[p]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        let k = m[1].as_u64().unwrap();
                        match m[0].as_str().unwrap() {
                            "r" => match workload {
                                Workload::Append => {
                                    json!(["r", k, lists.get(&k).cloned().unwrap_or_default()])
                                }
                                Workload::Wr => json!(["r", k, regs.get(&k)]),
                            },
                            "append" => {
                                wrote = true;
                                lists.entry(k).or_default().push(m[2].as_i64().unwrap());
                                m.clone()
                            }
                            _ => {
                                wrote = true;
                                regs.insert(k, m[2].as_i64().unwrap());
                                m.clone()
                            }
                        }
                    })
                    .collect();
                if wrote {
                    rev += 1;
                }
                // A write txn's revision is the one it created; a read-only
                // txn's is the store revision it observed.
                at_rev[p] = rev;
                pending[p] = Value::Array(applied);
                state[p] = St::Applied;
            }
            St::Applied => {
                if outcome[p] >= 90 {
                    h.push(pid[p], OpType::Info, invoke_form(&pending[p]), None);
                    pid[p] = next_pid;
                    next_pid += 1;
                } else {
                    h.push(pid[p], OpType::Ok, pending[p].clone(), Some(at_rev[p]));
                }
                state[p] = St::Idle;
                done += 1;
            }
        }
    }
    h.ops
}

fn timed(name: &str, ops: &[Op], f: fn(&[Op]) -> CheckResult) -> CheckResult {
    let t = Instant::now();
    let r = f(ops);
    eprintln!(
        "{name}: {} ops checked in {:.2?}: {}",
        ops.len(),
        t.elapsed(),
        r.summary
    );
    r
}

fn scale() -> usize {
    if cfg!(debug_assertions) {
        20_000
    } else {
        100_000
    }
}

#[test]
fn large_generated_append_history_is_valid_and_fast() {
    let ops = generate(Workload::Append, scale(), 10, 7);
    let r = timed("append", &ops, check_append);
    assert_valid(&r);
    assert!(
        r.summary.contains(&format!("{} txns", scale())),
        "{}",
        r.summary
    );
}

#[test]
fn large_generated_wr_history_is_valid_and_fast() {
    let ops = generate(Workload::Wr, scale(), 10, 11);
    let r = timed("wr", &ops, check_wr);
    assert_valid(&r);
}

#[test]
fn stale_read_planted_in_a_large_history_is_caught() {
    let mut ops = generate(Workload::Append, scale() / 4, 10, 3);
    // Find an ok read whose last element's appender completed before the
    // reader was invoked, and drop that element: a stale read.
    let pairs = jepsen::history::pair_ops(&ops).unwrap();
    let mut done_at: std::collections::HashMap<(i64, i64), usize> = Default::default();
    let mut target = None;
    'find: for &(inv, comp) in &pairs {
        let Some(c) = comp else { continue };
        if ops[c].kind != OpType::Ok {
            continue;
        }
        for (m, mop) in ops[c].value.as_array().unwrap().iter().enumerate() {
            if mop[0] == "r" {
                if let Some(last) = mop[2].as_array().unwrap().last() {
                    let k = (mop[1].as_i64().unwrap(), last.as_i64().unwrap());
                    if done_at.get(&k).is_some_and(|&d| d < inv) {
                        target = Some((c, m));
                        break 'find;
                    }
                }
            }
        }
        for mop in ops[c].value.as_array().unwrap() {
            if mop[0] == "append" {
                done_at.insert((mop[1].as_i64().unwrap(), mop[2].as_i64().unwrap()), c);
            }
        }
    }
    let (c, m) = target.expect("the generator produces such a read");
    ops[c].value[m][2].as_array_mut().unwrap().pop();
    let r = timed("append+stale", &ops, check_append);
    assert_caught(&r, "G-single-realtime");
    assert!(r.witness.contains(&ops[c].index), "{r:#?}");
}

#[test]
fn check_run_runs_elle_on_a_run_directory() {
    let t1 = json!([["append", "x", 1], ["append", "y", 1]]);
    let t2 = json!([["append", "x", 2], ["append", "y", 2]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .inv(1, t2.clone())
        .ok(0, t1, 2)
        .ok(1, t2, 3)
        .txn(2, json!([["r", "x", [1, 2]], ["r", "y", [2, 1]]]), 3);
    let dir = tempfile::tempdir().unwrap();
    jepsen::history::write_jsonl(&dir.path().join("history.jsonl"), &h.ops).unwrap();
    let results = jepsen::checker::check_run(dir.path()).unwrap();
    let elle = results
        .iter()
        .find(|r| r.checker == "elle-append")
        .expect("elle ran");
    assert_eq!(elle.valid, Validity::Invalid);
    assert!(!results.iter().any(|r| r.checker == "watch"));
}

#[test]
fn heavily_corrupted_large_history_is_judged_quickly() {
    // A tenth of the reads return an older value of their key: the graph
    // gets large strongly connected components, and the cycle search must
    // stay bounded.
    let mut ops = generate(Workload::Wr, scale(), 10, 13);
    let mut rng = StdRng::seed_from_u64(99);
    let mut written: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for op in ops.iter_mut() {
        if op.kind != OpType::Ok {
            continue;
        }
        for mop in op.value.as_array_mut().unwrap() {
            let k = mop[1].as_i64().unwrap();
            if mop[0] == "w" {
                written.entry(k).or_default().push(mop[2].as_i64().unwrap());
            } else if let Some(vs) = written.get(&k).filter(|_| mop[2].is_i64()) {
                if rng.gen_bool(0.1) {
                    mop[2] = json!(vs[rng.gen_range(0..vs.len())]);
                }
            }
        }
    }
    let t = Instant::now();
    let r = timed("wr-corrupted", &ops, check_wr);
    assert_eq!(r.valid, Validity::Invalid);
    assert!(r.anomalies.len() > 1, "{}", r.summary);
    if !cfg!(debug_assertions) {
        assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    }
}

#[test]
fn info_txns_may_take_effect_any_time_after_their_invoke() {
    // T1 timed out; a later read does not see its append, a still later one
    // does: T1 committed late, which is allowed.
    let t1 = json!([["append", "x", 1]]);
    let mut h = H::default();
    h.inv(0, t1.clone())
        .info(0, t1)
        .txn(1, json!([["r", "x", []]]), 2)
        .txn(1, json!([["r", "x", [1]]]), 3);
    assert_valid(&check_append(&h.ops));
    // The same with wr, and an info write nobody read.
    let mut h = H::default();
    h.inv(0, json!([["w", "x", 1]]))
        .info(0, json!([["w", "x", 1]]))
        .inv(2, json!([["w", "y", 7]]))
        .info(2, json!([["w", "y", 7]]))
        .txn(1, json!([["r", "x", null], ["r", "y", null]]), 2)
        .txn(1, json!([["r", "x", 1], ["r", "y", null]]), 3);
    assert_valid(&check_wr(&h.ops));
    // But an info txn cannot take effect before it was invoked.
    let t2 = json!([["append", "x", 2]]);
    let mut h = H::default();
    h.txn(1, json!([["r", "x", [2]]]), 2)
        .inv(0, t2.clone())
        .info(0, t2);
    assert_caught(&check_append(&h.ops), "G1c-realtime");
}

#[test]
fn broken_uniqueness_or_malformed_history_is_unknown() {
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(1, json!([["append", "x", 1]]), 3)
        .txn(1, json!([["r", "x", [1, 1]]]), 3);
    let r = check_append(&h.ops);
    // The duplicate element is a real anomaly; the duplicate write alone
    // would only make the verdict Unknown.
    assert_caught(&r, "duplicate-elements");
    let mut h = H::default();
    h.txn(0, json!([["append", "x", 1]]), 2)
        .txn(1, json!([["append", "x", 1]]), 3);
    let r = check_append(&h.ops);
    assert_eq!(r.valid, Validity::Unknown, "{r:#?}");
    assert_eq!(types(&r), vec!["duplicate-write"]);
    let mut h = H::default();
    h.txn(0, json!([["append", "x", "one"]]), 2);
    assert_eq!(check_append(&h.ops).valid, Validity::Unknown);
}
