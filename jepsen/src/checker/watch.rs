//! Watch checker: judges `watches.jsonl` (see [`crate::history`]) against
//! etcd's watch guarantees, cross-checking watchers with one another and with
//! the acknowledged writes of `history.jsonl`.
//!
//! It owns the per-watcher replay of start / events / progress / disconnect /
//! resume / compaction records; it never talks to a cluster. [`super::check_run`]
//! calls [`check`] when a run directory has a `watches.jsonl`.
//!
//! # Guarantees checked, per watcher
//! - **ordered**: event mod_revisions never decrease within a response and
//!   strictly increase from one response to the next; an event is never above
//!   its response's header revision.
//! - **unique**: no (key, mod_revision) is delivered twice, even across a
//!   resume.
//! - **atomic**: the events of one revision arrive in one response (a
//!   revision continued in a later response is `non-atomic`).
//! - **progress**: no event at or below the revision of a progress
//!   notification received earlier.
//! - **in range / after start**: every event is for a watched key and at or
//!   after the revision the current stream started from.
//! - **resumable**: after `disconnected` (or `compacted`), the `resumed`
//!   stream starts right after what was covered: above the last delivered
//!   revision and no later than one past the highest delivered,
//!   progress-notified or response-header revision (events a resume skips
//!   that way are still caught as gaps); after a compaction, no later than
//!   the compact revision.
//! - **prev_kv** (when requested): prev_kv is for the same key and below the
//!   event; when the watcher saw the key's previous event, prev_kv equals
//!   that event's kv (or is absent if it was a delete); a delete or update of
//!   a key the watcher saw put carries a prev_kv. A create (version 1) is only
//!   held to the first rule.
//! - **reliable**: every revision that touched a watched key between the
//!   watcher's start and the highest revision it covered (delivered or
//!   progress-notified) is delivered, except revisions lost to a compaction
//!   the server reported. What touched a key is known from every other
//!   watcher's events and from the acknowledged writes of the history.
//!
//! Across watchers, two events at one (key, mod_revision) must agree (type,
//! value, create revision, version, lease), and so must an event and the
//! acknowledged write it reports.
//!
//! # Which acknowledged writes are replayed
//! Only `ok` operations that name their key (`key` set: the register
//! workload's `write` and `cas`, and `put`) and carry `mod_revision` (else
//! `revision`), and only for keys some watcher delivered an event for, so a
//! workload whose history keys are not literal etcd keys cannot produce
//! false gaps. Values are compared only when the history value is an integer
//! and the event value parses as one. `append`/`wr` transactions are not
//! replayed: their micro-op keys are logical names, and their revision alone
//! does not say which etcd keys it touched; watchers of those keys are still
//! cross-checked with one another.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::{CheckResult, Validity};
use crate::history::{EventType, Op, OpType, WatchEvent, WatchKv, WatchRecord, WatchRecordKind};

/// Most anomalies of one type kept in the result (all are counted).
const MAX_PER_TYPE: usize = 10;

/// A watched key range, with etcd's meaning of `range_end`.
#[derive(Clone, Debug)]
struct KeyRange {
    key: String,
    end: Option<String>,
}

impl KeyRange {
    fn contains(&self, k: &str) -> bool {
        match self.end.as_deref() {
            None | Some("") => k == self.key,
            Some("\0") => k.as_bytes() >= self.key.as_bytes(),
            Some(end) => k.as_bytes() >= self.key.as_bytes() && k.as_bytes() < end.as_bytes(),
        }
    }
}

/// Why a watcher is between streams.
#[derive(Clone, Copy, Debug)]
enum Pause {
    Disconnected,
    Compacted(i64),
}

/// One watcher's replay state.
struct Watcher<'a> {
    id: u64,
    range: Option<KeyRange>,
    prev_kv: bool,
    /// First revision the watcher promised to cover (None until known, for a
    /// watch from "now").
    start: Option<i64>,
    /// First revision of the current stream.
    stream_start: Option<i64>,
    /// Highest delivered mod_revision, and the record (line) it came in.
    last_rev: i64,
    last_rev_line: usize,
    /// Highest progress-notified revision, and its line.
    floor: i64,
    floor_line: usize,
    /// Highest response header revision seen.
    header: i64,
    seen: HashSet<(&'a str, i64)>,
    last_by_key: HashMap<&'a str, (usize, &'a WatchEvent)>,
    /// Inclusive revision ranges lost to compaction.
    excused: Vec<(i64, i64)>,
    pause: Option<Pause>,
}

impl Watcher<'_> {
    /// Highest revision the watcher has covered so far: delivered, promised
    /// by a progress notification, or below where the current stream began
    /// (a resume that skipped revisions is reported on its own, and the
    /// skipped revisions are still checked for gaps).
    fn covered(&self) -> i64 {
        let before = |s: Option<i64>| s.map_or(0, |s| s - 1);
        self.last_rev
            .max(self.floor)
            .max(before(self.start))
            .max(before(self.stream_start))
    }
}

/// A reference event: something touched `key` at `rev`.
struct RefEvent<'a> {
    rev: i64,
    key: &'a str,
    /// Where it is known from: a watch record line, or a history op index.
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    Watch { watcher: u64, line: usize },
    Op(usize),
}

impl Source {
    fn json(self) -> Value {
        match self {
            Source::Watch { watcher, line } => json!({"watcher": watcher, "line": line}),
            Source::Op(i) => json!({"op": i}),
        }
    }
}

#[derive(Default)]
struct Report {
    counts: Vec<(&'static str, usize)>,
    kept: Vec<Value>,
    witness: Vec<usize>,
}

impl Report {
    fn push(&mut self, kind: &'static str, mut body: Value) {
        let count = match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => c,
            None => {
                self.counts.push((kind, 0));
                &mut self.counts.last_mut().expect("just pushed").1
            }
        };
        *count += 1;
        if *count <= MAX_PER_TYPE {
            body["type"] = json!(kind);
            self.kept.push(body);
        }
    }
}

fn same_event(a: &WatchEvent, b: &WatchEvent) -> bool {
    a.kind == b.kind
        && a.kv.value == b.kv.value
        && a.kv.create_revision == b.kv.create_revision
        && a.kv.version == b.kv.version
        && a.kv.lease == b.kv.lease
}

/// The value an acknowledged write put, when it is an integer.
fn written_int(op: &Op) -> Option<i64> {
    match op.f.as_str() {
        "write" => op.value.as_i64(),
        "cas" => op.value.get(1).and_then(Value::as_i64),
        "put" => op
            .value
            .get("value")
            .and_then(Value::as_i64)
            .or(op.value.as_i64()),
        _ => None,
    }
}

/// Checks watch records (in file order; `line` numbers in anomalies are
/// 1-based lines of `watches.jsonl`) against the watch guarantees, using the
/// acknowledged writes of `ops`.
pub fn check(records: &[WatchRecord], ops: &[Op]) -> CheckResult {
    let mut rep = Report::default();
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut slot: HashMap<u64, usize> = HashMap::new();
    // (key, rev) -> first event seen there, with its watcher and line.
    let mut global: HashMap<(&str, i64), (u64, usize, &WatchEvent)> = HashMap::new();
    let mut events_total = 0usize;

    for (pos, rec) in records.iter().enumerate() {
        let line = pos + 1;
        let wi = *slot.entry(rec.watcher).or_insert_with(|| {
            watchers.push(Watcher {
                id: rec.watcher,
                range: None,
                prev_kv: false,
                start: None,
                stream_start: None,
                last_rev: 0,
                last_rev_line: 0,
                floor: 0,
                floor_line: 0,
                header: 0,
                seen: HashSet::new(),
                last_by_key: HashMap::new(),
                excused: Vec::new(),
                pause: None,
            });
            watchers.len() - 1
        });
        let w = &mut watchers[wi];
        let id = w.id;
        if rec.kind != WatchRecordKind::Created {
            w.header = w.header.max(rec.revision.unwrap_or(0));
        }
        match rec.kind {
            WatchRecordKind::Start => {
                if w.range.is_some() {
                    rep.push("malformed", json!({"watcher": id, "line": line, "explanation": "watcher declared twice"}));
                }
                w.range = Some(KeyRange {
                    key: rec.key.clone().unwrap_or_default(),
                    end: rec.range_end.clone(),
                });
                w.prev_kv = rec.prev_kv;
                w.start = rec.start_revision.filter(|&s| s > 0);
                w.stream_start = w.start;
            }
            WatchRecordKind::Created => {
                if w.start.is_none() {
                    // A watch from "now" covers what follows the created
                    // response's header revision.
                    w.start = rec.revision.map(|r| r + 1);
                    w.stream_start = w.start;
                }
            }
            WatchRecordKind::Progress => {
                if let Some(r) = rec.revision {
                    if r > w.floor {
                        w.floor = r;
                        w.floor_line = line;
                    }
                }
            }
            WatchRecordKind::Disconnected => w.pause = Some(Pause::Disconnected),
            WatchRecordKind::Compacted => {
                let c = rec.compact_revision.unwrap_or(0);
                let from = w.covered() + 1;
                if c > from {
                    w.excused.push((from, c - 1));
                    // Changes in the lost revisions were never seen, so the
                    // previous event per key no longer predicts prev_kv.
                    w.last_by_key.clear();
                }
                w.pause = Some(Pause::Compacted(c));
            }
            WatchRecordKind::Canceled => {}
            WatchRecordKind::Resumed => {
                let s = rec.start_revision.unwrap_or(0);
                let lo = w.last_rev + 1;
                // A client may resume from one past any header revision it
                // got (events skipped that way are caught as gaps).
                let mut hi = w.covered().max(w.header) + 1;
                if let Some(Pause::Compacted(c)) = w.pause {
                    hi = hi.max(c);
                }
                if w.start.is_some() && (s < lo || s > hi) {
                    let why = if s < lo {
                        format!("resumed from {s} although revision {} was already delivered (line {}): events would repeat", w.last_rev, w.last_rev_line)
                    } else {
                        format!("resumed from {s} although only revisions up to {} were covered: revisions {}..{} are skipped", hi - 1, hi, s - 1)
                    };
                    rep.push(
                        "bad-resume",
                        json!({"watcher": id, "line": line, "start_revision": s,
                               "last_delivered": w.last_rev, "progress": w.floor,
                               "explanation": why}),
                    );
                }
                if w.start.is_none() && s > 0 {
                    w.start = Some(s);
                }
                w.stream_start = Some(s).filter(|&s| s > 0);
                w.pause = None;
            }
            WatchRecordKind::Events => {
                let mut prev_in_resp: Option<i64> = None;
                for ev in &rec.events {
                    events_total += 1;
                    let key = ev.kv.key.as_str();
                    let rev = ev.kv.mod_revision;
                    let note = |rep: &mut Report, kind: &'static str, why: String, extra: Value| {
                        let mut body =
                            json!({"watcher": id, "line": line, "key": key, "revision": rev});
                        body["explanation"] = json!(why);
                        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                            b.extend(e.clone());
                        }
                        rep.push(kind, body);
                    };
                    if let Some(h) = rec.revision.filter(|&h| rev > h) {
                        note(&mut rep, "event-after-header", format!("event at revision {rev} in a response whose header revision is {h}"), json!({}));
                    }
                    if let Some(r) = &w.range {
                        if !r.contains(key) {
                            note(
                                &mut rep,
                                "out-of-range",
                                format!(
                                    "event for key {key:?} outside the watched range [{:?}, {:?})",
                                    r.key, r.end
                                ),
                                json!({}),
                            );
                        }
                    }
                    if let Some(s) = w.stream_start.filter(|&s| rev < s) {
                        note(
                            &mut rep,
                            "before-start",
                            format!(
                                "event at revision {rev}, before the stream's start revision {s}"
                            ),
                            json!({}),
                        );
                    }
                    if !w.seen.insert((key, rev)) {
                        note(
                            &mut rep,
                            "duplicate",
                            format!("event for {key:?} at revision {rev} delivered again"),
                            json!({}),
                        );
                        prev_in_resp = Some(rev);
                        continue;
                    }
                    if prev_in_resp.is_some_and(|p| rev < p) {
                        note(&mut rep, "unordered", format!("event at revision {rev} after an event at revision {} in the same response", prev_in_resp.unwrap_or(0)), json!({}));
                    } else if prev_in_resp.is_none() && rev < w.last_rev {
                        note(
                            &mut rep,
                            "unordered",
                            format!(
                                "event at revision {rev} after revision {} was delivered (line {})",
                                w.last_rev, w.last_rev_line
                            ),
                            json!({"earlier_line": w.last_rev_line}),
                        );
                    } else if prev_in_resp.is_none() && rev == w.last_rev {
                        note(&mut rep, "non-atomic", format!("revision {rev} continued in a later response than line {}, where its other events came", w.last_rev_line), json!({"earlier_line": w.last_rev_line}));
                    }
                    prev_in_resp = Some(rev);
                    if w.floor > 0 && rev <= w.floor {
                        note(&mut rep, "event-below-progress", format!("event at revision {rev} after a progress notification at revision {} (line {})", w.floor, w.floor_line), json!({"progress_line": w.floor_line}));
                    }
                    if w.prev_kv {
                        let last = w.last_by_key.get(key).copied();
                        match &ev.prev_kv {
                            Some(p) => {
                                if p.key != ev.kv.key || p.mod_revision >= rev {
                                    note(
                                        &mut rep,
                                        "prev-kv-invalid",
                                        format!(
                                            "prev_kv {:?}@{} for event {key:?}@{rev}",
                                            p.key, p.mod_revision
                                        ),
                                        json!({"prev_kv": p}),
                                    );
                                } else if ev.kv.version != 1 || ev.kind == EventType::Delete {
                                    match last {
                                        Some((l, e)) if e.kind == EventType::Put && e.kv != *p => {
                                            note(&mut rep, "prev-kv-mismatch", format!("prev_kv is the version at revision {}, but this watcher's previous event for the key (line {l}) was at revision {}", p.mod_revision, e.kv.mod_revision), json!({"prev_kv": p, "expected": e.kv, "earlier_line": l}));
                                        }
                                        Some((l, e)) if e.kind == EventType::Delete => {
                                            note(&mut rep, "prev-kv-mismatch", format!("prev_kv present, but this watcher saw the key deleted at revision {} (line {l})", e.kv.mod_revision), json!({"prev_kv": p, "earlier_line": l}));
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            None => {
                                if let Some((l, e)) = last {
                                    if e.kind == EventType::Put
                                        && (ev.kind == EventType::Delete || ev.kv.version > 1)
                                    {
                                        note(&mut rep, "prev-kv-missing", format!("no prev_kv, although this watcher saw the key put at revision {} (line {l})", e.kv.mod_revision), json!({"earlier_line": l}));
                                    }
                                }
                            }
                        }
                    }
                    w.last_by_key.insert(key, (line, ev));
                    if rev > w.last_rev {
                        w.last_rev = rev;
                        w.last_rev_line = line;
                    }
                    match global.get(&(key, rev)) {
                        Some(&(ow, ol, oe)) => {
                            if !same_event(oe, ev) {
                                note(&mut rep, "inconsistent-event", format!("watcher {ow} (line {ol}) got a different event at this key and revision"), json!({"other_watcher": ow, "other_line": ol, "event": ev, "other_event": oe}));
                            }
                        }
                        None => {
                            global.insert((key, rev), (id, line, ev));
                        }
                    }
                }
            }
        }
    }

    // prev_kv against what any watcher saw at the prev revision.
    for (pos, rec) in records.iter().enumerate() {
        for ev in &rec.events {
            let Some(p) = &ev.prev_kv else { continue };
            if let Some(&(ow, ol, oe)) = global.get(&(p.key.as_str(), p.mod_revision)) {
                if oe.kind == EventType::Put && !same_kv(&oe.kv, p) {
                    rep.push(
                        "prev-kv-mismatch",
                        json!({"watcher": rec.watcher, "line": pos + 1, "key": ev.kv.key, "revision": ev.kv.mod_revision,
                               "prev_kv": p, "expected": oe.kv, "other_watcher": ow, "other_line": ol,
                               "explanation": format!("prev_kv at revision {} disagrees with the event watcher {ow} got there (line {ol})", p.mod_revision)}),
                    );
                }
            }
        }
    }

    // Reference events: every watcher's, then acknowledged writes of keys
    // some watcher saw.
    let mut refs: Vec<RefEvent> = global
        .iter()
        .map(|(&(key, rev), &(watcher, line, _))| RefEvent {
            rev,
            key,
            source: Source::Watch { watcher, line },
        })
        .collect();
    let watched_keys: HashSet<&str> = global.keys().map(|(k, _)| *k).collect();
    let mut acked = 0usize;
    for op in ops {
        if op.kind != OpType::Ok || !matches!(op.f.as_str(), "write" | "cas" | "put") {
            continue;
        }
        let (Some(key), Some(rev)) = (op.key.as_deref(), op.mod_revision.or(op.revision)) else {
            continue;
        };
        if !watched_keys.contains(key) {
            continue;
        }
        acked += 1;
        match global.get(&(key, rev)) {
            Some(&(ow, ol, ev)) => {
                let got = ev.kv.value.parse::<i64>().ok();
                if let (Some(want), Some(got)) = (written_int(op), got) {
                    if ev.kind != EventType::Put || want != got {
                        rep.witness.push(op.index);
                        rep.push(
                            "wrong-value",
                            json!({"watcher": ow, "line": ol, "key": key, "revision": rev, "op": op.index,
                                   "explanation": format!("op {} wrote {want} at revision {rev}, but the watch event there says {:?} {got}", op.index, ev.kind)}),
                        );
                    }
                }
            }
            None => refs.push(RefEvent {
                rev,
                key,
                source: Source::Op(op.index),
            }),
        }
    }
    refs.sort_unstable_by(|a, b| (a.rev, a.key).cmp(&(b.rev, b.key)));

    for w in &watchers {
        let (Some(range), Some(start)) = (&w.range, w.start) else {
            continue;
        };
        let end = w.covered();
        let from = refs.partition_point(|r| r.rev < start);
        for r in refs[from..].iter().take_while(|r| r.rev <= end) {
            if !range.contains(r.key)
                || w.seen.contains(&(r.key, r.rev))
                || w.excused.iter().any(|&(a, b)| a <= r.rev && r.rev <= b)
            {
                continue;
            }
            if let Source::Op(i) = r.source {
                rep.witness.push(i);
            }
            rep.push(
                "missing-event",
                json!({"watcher": w.id, "key": r.key, "revision": r.rev, "known_from": r.source.json(),
                       "covered": [start, end],
                       "explanation": format!("watcher {} covered revisions {start}..={end} of key {:?} but never got its change at revision {}", w.id, r.key, r.rev)}),
            );
        }
    }

    let summary = format!(
        "{} watchers, {} events ({} distinct key revisions), {} acknowledged writes replayed",
        watchers.len(),
        events_total,
        global.len(),
        acked
    );
    rep.witness.sort_unstable();
    rep.witness.dedup();
    if rep.counts.is_empty() {
        return CheckResult::valid("watch", format!("{summary}: all guarantees hold"));
    }
    let list: Vec<String> = rep
        .counts
        .iter()
        .map(|(k, c)| format!("{k} x{c}"))
        .collect();
    CheckResult {
        checker: "watch".into(),
        valid: Validity::Invalid,
        summary: format!("{summary}: {}", list.join(", ")),
        anomalies: rep.kept,
        witness: rep.witness,
    }
}

fn same_kv(a: &WatchKv, b: &WatchKv) -> bool {
    a.value == b.value
        && a.mod_revision == b.mod_revision
        && a.create_revision == b.create_revision
        && a.version == b.version
}
