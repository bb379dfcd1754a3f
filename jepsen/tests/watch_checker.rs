//! The watch checker passes a clean multi-watcher log (disconnect/resume,
//! compaction, progress notifications, a txn touching two keys) generated
//! from a model store, and catches each planted violation.

use jepsen::checker::watch::check;
use jepsen::checker::{CheckResult, Validity};
use jepsen::history::{EventType, Op, OpType, WatchEvent, WatchKv, WatchRecord, WatchRecordKind};
use serde_json::{json, Value};

/// A model store: one entry per revision (from 2), each the events of one txn.
struct Store {
    revs: Vec<Vec<WatchEvent>>,
}

impl Store {
    /// Applies `txns` (each a list of (key, Some(value)) puts or (key, None)
    /// deletes) from revision 2 on.
    fn build(txns: &[&[(&str, Option<i64>)]]) -> Store {
        let mut state: std::collections::BTreeMap<String, WatchKv> = Default::default();
        let mut revs = Vec::new();
        for (i, txn) in txns.iter().enumerate() {
            let rev = i as i64 + 2;
            let mut events = Vec::new();
            for &(key, value) in txn.iter() {
                let prev = state.get(key).cloned();
                let event = match value {
                    Some(v) => {
                        let kv = WatchKv {
                            key: key.into(),
                            value: v.to_string(),
                            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                            mod_revision: rev,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            lease: 0,
                        };
                        state.insert(key.into(), kv.clone());
                        WatchEvent {
                            kind: EventType::Put,
                            kv,
                            prev_kv: prev,
                        }
                    }
                    None => {
                        state.remove(key);
                        WatchEvent {
                            kind: EventType::Delete,
                            kv: WatchKv {
                                key: key.into(),
                                value: String::new(),
                                create_revision: 0,
                                mod_revision: rev,
                                version: 0,
                                lease: 0,
                            },
                            prev_kv: prev,
                        }
                    }
                };
                events.push(event);
            }
            revs.push(events);
        }
        Store { revs }
    }

    /// The events for keys in `[lo, hi)` at revision `rev`.
    fn at(&self, rev: i64, lo: &str, hi: &str, prev_kv: bool) -> Vec<WatchEvent> {
        self.revs[(rev - 2) as usize]
            .iter()
            .filter(|e| e.kv.key.as_str() >= lo && e.kv.key.as_str() < hi)
            .map(|e| {
                let mut e = e.clone();
                if !prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

#[derive(Default)]
struct Log {
    recs: Vec<WatchRecord>,
}

impl Log {
    fn rec(&mut self, w: u64, kind: WatchRecordKind) -> &mut WatchRecord {
        let t = self.recs.len() as u64;
        self.recs.push(WatchRecord::new(w, t, kind));
        self.recs.last_mut().unwrap()
    }
    fn start(&mut self, w: u64, key: &str, end: &str, start: i64, prev_kv: bool) {
        let r = self.rec(w, WatchRecordKind::Start);
        r.key = Some(key.into());
        r.range_end = Some(end.into());
        r.start_revision = Some(start);
        r.prev_kv = prev_kv;
        r.progress_notify = true;
    }
    fn created(&mut self, w: u64, rev: i64) {
        self.rec(w, WatchRecordKind::Created).revision = Some(rev);
    }
    fn events(&mut self, w: u64, header: i64, events: Vec<WatchEvent>) {
        let r = self.rec(w, WatchRecordKind::Events);
        r.revision = Some(header);
        r.events = events;
    }
    /// One response per revision in `from..=to` that has events in range.
    fn stream(
        &mut self,
        w: u64,
        s: &Store,
        from: i64,
        to: i64,
        range: (&str, &str),
        prev_kv: bool,
    ) {
        for rev in from..=to {
            let evs = s.at(rev, range.0, range.1, prev_kv);
            if !evs.is_empty() {
                self.events(w, rev, evs);
            }
        }
    }
    fn progress(&mut self, w: u64, rev: i64) {
        self.rec(w, WatchRecordKind::Progress).revision = Some(rev);
    }
    fn disconnected(&mut self, w: u64) {
        self.rec(w, WatchRecordKind::Disconnected);
    }
    fn compacted(&mut self, w: u64, c: i64) {
        self.rec(w, WatchRecordKind::Compacted).compact_revision = Some(c);
    }
    fn resumed(&mut self, w: u64, from: i64) {
        self.rec(w, WatchRecordKind::Resumed).start_revision = Some(from);
    }
}

fn store() -> Store {
    Store::build(&[
        &[("a", Some(1))],                 // 2
        &[("b", Some(1))],                 // 3
        &[("a", Some(2)), ("b", Some(2))], // 4: one txn, two keys
        &[("c", Some(1))],                 // 5
        &[("a", None)],                    // 6
        &[("b", Some(3))],                 // 7
        &[("a", Some(3))],                 // 8: re-create
        &[("c", Some(2))],                 // 9
        &[("b", None), ("c", Some(3))],    // 10
        &[("a", Some(4))],                 // 11
    ])
}

const ALL: (&str, &str) = ("a", "d");
const B: (&str, &str) = ("b", "b\0");

/// The acknowledged register writes behind the store, as the history
/// records them.
fn history() -> Vec<Op> {
    let mut ops = Vec::new();
    let mut push = |kind: OpType, f: &str, key: &str, value: Value, rev: Option<i64>| {
        let index = ops.len();
        ops.push(Op {
            index,
            process: 0,
            time: index as u64,
            kind,
            f: f.into(),
            key: Some(key.into()),
            value,
            revision: rev,
            version: None,
            mod_revision: rev,
            node: None,
            error: None,
        });
    };
    push(OpType::Invoke, "write", "a", json!(1), None);
    push(OpType::Ok, "write", "a", json!(1), Some(2));
    push(OpType::Invoke, "cas", "c", json!([1, 2]), None);
    push(OpType::Ok, "cas", "c", json!([1, 2]), Some(9));
    push(OpType::Invoke, "write", "a", json!(4), None);
    push(OpType::Ok, "write", "a", json!(4), Some(11));
    ops
}

/// Three watchers: W1 over a..d with prev_kv, disconnecting after a
/// progress notification and resuming; W2 on key b from "now"; W3 over a..d
/// with prev_kv, compacted at 6 and resumed there.
fn clean_log(s: &Store) -> Log {
    let mut l = Log::default();
    l.start(1, "a", "d", 2, true);
    l.start(2, "b", "", 0, false);
    l.start(3, "a", "d", 2, true);
    l.created(1, 1);
    l.created(2, 3);
    l.created(3, 3);
    l.stream(1, s, 2, 5, ALL, true);
    l.stream(3, s, 2, 3, ALL, true);
    l.progress(1, 5);
    l.disconnected(1);
    l.compacted(3, 6);
    l.resumed(3, 6);
    l.resumed(1, 6);
    l.stream(2, s, 4, 11, B, false);
    l.stream(1, s, 6, 11, ALL, true);
    l.stream(3, s, 6, 11, ALL, true);
    l.progress(2, 11);
    l
}

fn types(r: &CheckResult) -> Vec<String> {
    r.anomalies
        .iter()
        .map(|a| a["type"].as_str().unwrap().to_string())
        .collect()
}

fn assert_caught(r: &CheckResult, kind: &str) {
    assert_eq!(r.valid, Validity::Invalid, "{r:#?}");
    assert!(types(r).iter().any(|t| t == kind), "no {kind} in {r:#?}");
}

/// The line (1-based) of watcher `w`'s `n`-th events response.
fn events_line(l: &Log, w: u64, n: usize) -> usize {
    l.recs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.watcher == w && r.kind == WatchRecordKind::Events)
        .nth(n)
        .unwrap()
        .0
}

#[test]
fn clean_multi_watcher_log_passes() {
    let s = store();
    let l = clean_log(&s);
    let r = check(&l.recs, &history());
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert!(r.summary.contains("3 watchers"), "{}", r.summary);
    assert!(r.summary.contains("3 acknowledged writes"), "{}", r.summary);
}

#[test]
fn duplicated_event_is_caught() {
    let s = store();
    let mut l = clean_log(&s);
    let i = events_line(&l, 1, 3);
    let dup = l.recs[events_line(&l, 1, 2)].events[0].clone();
    l.recs[i].events.insert(0, dup);
    assert_caught(&check(&l.recs, &history()), "duplicate");
}

#[test]
fn gap_is_caught_from_other_watchers_and_from_acked_writes() {
    let s = store();
    let mut l = clean_log(&s);
    // W2 misses b's change at 7 (W1 and W3 saw it).
    let i = events_line(&l, 2, 1);
    assert_eq!(l.recs[i].events[0].kv.mod_revision, 7);
    l.recs.remove(i);
    let r = check(&l.recs, &history());
    assert_caught(&r, "missing-event");
    assert_eq!(r.anomalies[0]["watcher"], 2);
    assert_eq!(r.anomalies[0]["revision"], 7);

    // No watcher saw c at 9, but the history acknowledged it.
    let mut l = clean_log(&s);
    for rec in &mut l.recs {
        rec.events.retain(|e| e.kv.mod_revision != 9);
    }
    l.recs
        .retain(|r| r.kind != WatchRecordKind::Events || !r.events.is_empty());
    let r = check(&l.recs, &history());
    assert_caught(&r, "missing-event");
    assert_eq!(r.witness, vec![3]);
}

#[test]
fn reordered_responses_are_caught() {
    let s = store();
    let mut l = clean_log(&s);
    let (i, j) = (events_line(&l, 1, 4), events_line(&l, 1, 5));
    l.recs.swap(i, j);
    assert_caught(&check(&l.recs, &history()), "unordered");
}

#[test]
fn event_at_or_below_progress_revision_is_caught() {
    let s = store();
    let mut l = clean_log(&s);
    // A progress notification at 7 before W1 receives revision 6 and 7.
    let i = events_line(&l, 1, 4);
    l.recs.insert(i, {
        let mut r = WatchRecord::new(1, 0, WatchRecordKind::Progress);
        r.revision = Some(7);
        r
    });
    assert_caught(&check(&l.recs, &history()), "event-below-progress");
}

#[test]
fn wrong_prev_kv_is_caught() {
    let s = store();
    let mut l = clean_log(&s);
    // W1's event for b at 7: prev_kv claims b's first version, not the one
    // W1 saw at 4.
    let i = events_line(&l, 1, 5);
    let ev = &mut l.recs[i].events[0];
    assert_eq!((ev.kv.key.as_str(), ev.kv.mod_revision), ("b", 7));
    let p = ev.prev_kv.as_mut().unwrap();
    p.value = "1".into();
    p.mod_revision = 3;
    p.version = 1;
    assert_caught(&check(&l.recs, &history()), "prev-kv-mismatch");

    // A missing prev_kv on a delete of a key the watcher saw put.
    let mut l = clean_log(&s);
    let i = events_line(&l, 1, 4);
    assert_eq!(l.recs[i].events[0].kind, EventType::Delete);
    l.recs[i].events[0].prev_kv = None;
    assert_caught(&check(&l.recs, &history()), "prev-kv-missing");
}

#[test]
fn txn_split_across_responses_is_caught() {
    let s = store();
    let mut l = clean_log(&s);
    // Revision 4 touched a and b: deliver b in a response of its own.
    let i = events_line(&l, 1, 2);
    let b = l.recs[i].events.pop().unwrap();
    assert_eq!(b.kv.mod_revision, 4);
    let mut r = WatchRecord::new(1, 0, WatchRecordKind::Events);
    r.revision = Some(4);
    r.events = vec![b];
    l.recs.insert(i + 1, r);
    assert_caught(&check(&l.recs, &history()), "non-atomic");
}

#[test]
fn bad_resume_is_caught() {
    let s = store();
    // W1 resumes at 8 although it covered only up to 5: 6 and 7 are skipped.
    let mut l = clean_log(&s);
    let i = l
        .recs
        .iter()
        .position(|r| r.watcher == 1 && r.kind == WatchRecordKind::Resumed)
        .unwrap();
    l.recs[i].start_revision = Some(8);
    l.recs.retain(|r| {
        r.watcher != 1
            || r.kind != WatchRecordKind::Events
            || r.events[0].kv.mod_revision >= 8
            || r.events[0].kv.mod_revision <= 5
    });
    let r = check(&l.recs, &history());
    assert_caught(&r, "bad-resume");
    assert_caught(&r, "missing-event");

    // Resuming at or below the last delivered revision repeats events.
    let mut l = clean_log(&s);
    l.recs[i].start_revision = Some(5);
    let j = events_line(&l, 1, 3);
    let again = l.recs[j].clone();
    l.recs.insert(i + 1, again);
    let r = check(&l.recs, &history());
    assert_caught(&r, "bad-resume");
    assert_caught(&r, "duplicate");

    // A compacted watcher must resume from the compact revision.
    let mut l = clean_log(&s);
    let k = l
        .recs
        .iter()
        .position(|r| r.watcher == 3 && r.kind == WatchRecordKind::Resumed)
        .unwrap();
    l.recs[k].start_revision = Some(7);
    assert_caught(&check(&l.recs, &history()), "bad-resume");
}

#[test]
fn watchers_disagreeing_on_an_event_are_caught() {
    let s = store();
    let mut l = clean_log(&s);
    let i = events_line(&l, 2, 1);
    l.recs[i].events[0].kv.value = "99".into();
    let r = check(&l.recs, &history());
    assert_caught(&r, "inconsistent-event");

    // An event contradicting an acknowledged write.
    let mut l = clean_log(&s);
    for rec in &mut l.recs {
        for e in &mut rec.events {
            if e.kv.key == "a" && e.kv.mod_revision == 11 {
                e.kv.value = "5".into();
            }
        }
    }
    assert_caught(&check(&l.recs, &history()), "wrong-value");
}

#[test]
fn out_of_range_and_before_start_events_are_caught() {
    let s = store();
    let mut l = clean_log(&s);
    let i = events_line(&l, 2, 0);
    l.recs[i].events.push(s.at(5, "c", "d", false).remove(0));
    let r = check(&l.recs, &history());
    assert_caught(&r, "out-of-range");
    let mut l = clean_log(&s);
    let i = events_line(&l, 2, 0);
    l.recs.insert(i, {
        let mut r = WatchRecord::new(2, 0, WatchRecordKind::Events);
        r.revision = Some(3);
        r.events = s.at(3, "b", "c", false);
        r
    });
    assert_caught(&check(&l.recs, &history()), "before-start");
}

#[test]
fn large_generated_watch_log_is_checked_quickly() {
    use rand::{Rng, SeedableRng};
    let n: usize = if cfg!(debug_assertions) {
        20_000
    } else {
        100_000
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut live = std::collections::HashSet::new();
    let txns: Vec<Vec<(&str, Option<i64>)>> = (0..n)
        .map(|i| {
            let k = keys[rng.gen_range(0..keys.len())];
            if live.contains(k) && rng.gen_bool(0.1) {
                live.remove(k);
                vec![(k, None)]
            } else {
                live.insert(k);
                vec![(k, Some(i as i64))]
            }
        })
        .collect();
    let refs: Vec<&[(&str, Option<i64>)]> = txns.iter().map(|t| t.as_slice()).collect();
    let s = Store::build(&refs);
    let last = n as i64 + 1;
    let mut l = Log::default();
    for w in 0..5u64 {
        let range = if w % 2 == 0 { ALL } else { ("b", "e") };
        l.start(w, range.0, range.1, 2, true);
        l.created(w, 1);
        let mid = last / 2 + w as i64;
        l.stream(w, &s, 2, mid, range, true);
        l.progress(w, mid);
        l.disconnected(w);
        l.resumed(w, mid + 1);
        l.stream(w, &s, mid + 1, last, range, true);
    }
    let t = std::time::Instant::now();
    let r = check(&l.recs, &[]);
    eprintln!(
        "watch: {} records checked in {:.2?}: {}",
        l.recs.len(),
        t.elapsed(),
        r.summary
    );
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");

    // One event dropped from one watcher is found.
    let i = events_line(&l, 2, 1000);
    let dropped = l.recs.remove(i);
    let r = check(&l.recs, &[]);
    assert_caught(&r, "missing-event");
    let rev = dropped.events[0].kv.mod_revision;
    assert!(
        r.anomalies
            .iter()
            .any(|a| a["type"] == "missing-event" && a["revision"] == rev && a["watcher"] == 2),
        "{r:#?}"
    );
}

#[test]
fn check_run_runs_the_watch_checker_when_watches_were_logged() {
    let s = store();
    let mut l = clean_log(&s);
    let dir = tempfile::tempdir().unwrap();
    jepsen::history::write_jsonl(&dir.path().join("history.jsonl"), &history()).unwrap();
    jepsen::history::write_jsonl(&dir.path().join("watches.jsonl"), &l.recs).unwrap();
    let results = jepsen::checker::check_run(dir.path()).unwrap();
    let w = results
        .iter()
        .find(|r| r.checker == "watch")
        .expect("watch ran");
    assert_eq!(w.valid, Validity::Valid, "{w:#?}");
    assert!(!results.iter().any(|r| r.checker.starts_with("elle")));
    let i = events_line(&l, 1, 3);
    let dup = l.recs[i].clone();
    l.recs.insert(i, dup);
    jepsen::history::write_jsonl(&dir.path().join("watches.jsonl"), &l.recs).unwrap();
    let results = jepsen::checker::check_run(dir.path()).unwrap();
    let w = results.iter().find(|r| r.checker == "watch").unwrap();
    assert_eq!(w.valid, Validity::Invalid);
}

#[test]
fn random_clean_logs_pass_and_random_drops_are_caught() {
    use rand::{Rng, SeedableRng};
    // Random stores and watchers with batching, progress notifications,
    // disconnects and compactions: no false positives; and a dropped event
    // is found whenever another watcher has it and this one got past it.
    let mut caught = 0;
    for seed in 0..20u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keys = ["a", "b", "c", "d", "e", "f"];
        let mut live = std::collections::HashSet::new();
        let n = 400i64;
        let txns: Vec<Vec<(&str, Option<i64>)>> = (0..n)
            .map(|i| {
                let mut t = Vec::new();
                for _ in 0..rng.gen_range(1..=2) {
                    let k = keys[rng.gen_range(0..keys.len())];
                    if t.iter().any(|(k2, _)| *k2 == k) {
                        continue;
                    }
                    if live.contains(k) && rng.gen_bool(0.15) {
                        live.remove(k);
                        t.push((k, None));
                    } else {
                        live.insert(k);
                        t.push((k, Some(i)));
                    }
                }
                t
            })
            .collect();
        let refs: Vec<&[(&str, Option<i64>)]> = txns.iter().map(|t| t.as_slice()).collect();
        let s = Store::build(&refs);
        let last = n + 1;
        let ranges = [("a", "d"), ("b", "e"), ("a", "g"), ("c", "c\0")];
        let mut l = Log::default();
        for w in 0..6u64 {
            let range = ranges[rng.gen_range(0..ranges.len())];
            let prev_kv = rng.gen_bool(0.5);
            let start = rng.gen_range(2..n / 2);
            l.start(w, range.0, range.1, start, prev_kv);
            l.created(w, last);
            let mut batch: Vec<WatchEvent> = Vec::new();
            let mut batch_rev = 0;
            let mut seen = 0;
            let mut rev = start;
            while rev <= last {
                let evs = s.at(rev, range.0, range.1, prev_kv);
                if !evs.is_empty() {
                    batch.extend(evs);
                    batch_rev = rev;
                }
                let flush = rev == last || rng.gen_bool(0.7);
                if flush && !batch.is_empty() {
                    l.events(w, batch_rev, std::mem::take(&mut batch));
                    seen = batch_rev;
                }
                if batch.is_empty() && rev < last {
                    match rng.gen_range(0..100) {
                        0..=4 => {
                            l.progress(w, rev);
                            seen = rev;
                        }
                        5..=7 => {
                            // Resume right after what the client knows was
                            // delivered (revisions since had no events here).
                            l.disconnected(w);
                            l.resumed(w, seen.max(start - 1) + 1);
                        }
                        8 => {
                            let c = (rev + rng.gen_range(1..20)).min(last);
                            l.compacted(w, c);
                            l.resumed(w, c);
                            seen = c - 1;
                            rev = c;
                            continue;
                        }
                        _ => {}
                    }
                }
                rev += 1;
            }
        }
        let r = check(&l.recs, &[]);
        assert_eq!(r.valid, Validity::Valid, "seed {seed}: {r:#?}");

        // Drop one event that another watcher also delivered: a gap.
        let lines: Vec<usize> = (0..l.recs.len())
            .filter(|&i| l.recs[i].kind == WatchRecordKind::Events)
            .collect();
        let i = lines[rng.gen_range(0..lines.len())];
        let j = rng.gen_range(0..l.recs[i].events.len());
        let (w, ev) = (l.recs[i].watcher, l.recs[i].events[j].clone());
        let elsewhere = l.recs.iter().any(|r| {
            r.watcher != w
                && r.events
                    .iter()
                    .any(|e| e.kv.key == ev.kv.key && e.kv.mod_revision == ev.kv.mod_revision)
        });
        // ... and that this watcher then got past, before any compaction
        // (else it may still come, or was lost to the compaction).
        let rev = ev.kv.mod_revision;
        let passed = l.recs[i..]
            .iter()
            .filter(|r| r.watcher == w)
            .take_while(|r| r.kind != WatchRecordKind::Compacted)
            .any(|r| {
                r.events.iter().any(|e| e.kv.mod_revision > rev)
                    || (r.kind == WatchRecordKind::Progress && r.revision >= Some(rev))
            });
        l.recs[i].events.remove(j);
        if l.recs[i].events.is_empty() {
            l.recs.remove(i);
        }
        let r = check(&l.recs, &[]);
        if elsewhere && passed {
            assert!(
                r.anomalies.iter().any(|a| a["type"] == "missing-event"
                    && a["watcher"] == w
                    && a["revision"] == ev.kv.mod_revision),
                "seed {seed}: dropped {ev:?} from watcher {w}: {r:#?}"
            );
            caught += 1;
        }
    }
    assert!(caught >= 5, "only {caught} of 20 drops were checkable");
}
