//! MVCC tests: a model-based property test against a naive reference that
//! stores the full key space of every revision, plus unit tests for the
//! edge cases of etcd's revision semantics.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// One key's value in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MKv {
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

/// One change in the model: key, Some(kv) for a put / None for a delete, prev.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MEvent {
    key: Vec<u8>,
    put: Option<MKv>,
    prev: Option<MKv>,
}

/// The reference: every revision's complete key space and change list.
struct Model {
    /// `states[r]` is the key space at revision `r` (index 0 unused).
    states: Vec<BTreeMap<Vec<u8>, MKv>>,
    /// Changes made by each revision (empty for revision 1).
    changes: Vec<Vec<MEvent>>,
    compact: i64,
    /// Whether any compaction succeeded (a compaction at 0 counts).
    compacted: bool,
}

/// A change inside one write request.
#[derive(Debug, Clone)]
enum Change {
    Put(Vec<u8>, Vec<u8>, i64),
    Del(KeyRange),
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            changes: vec![Vec::new(), Vec::new()],
            compact: 0,
            compacted: false,
        }
    }

    fn current(&self) -> i64 {
        (self.states.len() - 1) as i64
    }

    fn at(&self, rev: i64) -> &BTreeMap<Vec<u8>, MKv> {
        &self.states[rev as usize]
    }

    /// Apply one write request; a request that changes nothing does not
    /// create a revision.
    fn write(&mut self, changes: &[Change]) {
        let main = self.current() + 1;
        let mut state = self.at(main - 1).clone();
        let mut events = Vec::new();
        for c in changes {
            match c {
                Change::Put(k, v, lease) => {
                    let prev = state.get(k).cloned();
                    let kv = MKv {
                        value: v.clone(),
                        create: prev.as_ref().map_or(main, |p| p.create),
                        modr: main,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    state.insert(k.clone(), kv.clone());
                    events.push(MEvent {
                        key: k.clone(),
                        put: Some(kv),
                        prev,
                    });
                }
                Change::Del(r) => {
                    let victims: Vec<Vec<u8>> =
                        state.keys().filter(|k| r.contains(k)).cloned().collect();
                    for k in victims {
                        let prev = state.remove(&k);
                        events.push(MEvent {
                            key: k,
                            put: None,
                            prev,
                        });
                    }
                }
            }
        }
        if !events.is_empty() {
            self.states.push(state);
            self.changes.push(events);
        }
    }

    /// The events a watcher starting at `from` (>= compact) must see, per
    /// revision. At the compact revision itself only its puts survive, and
    /// without prev (it lies below the compact revision, as in etcd).
    fn events_from(&self, from: i64) -> Vec<(i64, Vec<MEvent>)> {
        let mut out = Vec::new();
        for rev in from.max(1)..=self.current() {
            let evs: Vec<MEvent> = if rev == self.compact {
                self.changes[rev as usize]
                    .iter()
                    .filter(|e| e.put.is_some())
                    .map(|e| MEvent {
                        prev: None,
                        ..e.clone()
                    })
                    .collect()
            } else {
                self.changes[rev as usize].clone()
            };
            if !evs.is_empty() {
                out.push((rev, evs));
            }
        }
        out
    }
}

fn to_mkv(kv: &KeyValue) -> MKv {
    MKv {
        value: kv.value.clone(),
        create: kv.create_revision,
        modr: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn apply(m: &mut Mvcc, changes: &[Change]) {
    let mut t = m.write();
    for c in changes {
        match c {
            Change::Put(k, v, lease) => {
                t.put(k, v, *lease);
            }
            Change::Del(r) => {
                t.delete_range(r);
            }
        }
    }
    t.commit();
}

/// Events from `from` as (revision, events), at most `page` revisions.
fn events_page(m: &Mvcc, from: i64, page: usize) -> Result<Vec<(i64, Vec<Event>)>, MvccError> {
    let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
    for e in m.events_from(from, page)? {
        let ev = m.event(e, true)?.expect("a logged change is in the index");
        match out.last_mut() {
            Some((r, evs)) if *r == e.rev.main => evs.push(ev),
            _ => out.push((e.rev.main, vec![ev])),
        }
    }
    Ok(out)
}

/// All events from `from`, paging with `page` revisions per call.
fn collect_events(m: &Mvcc, from: i64, page: usize) -> Result<Vec<(i64, Vec<MEvent>)>, MvccError> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let revs = events_page(m, next, page)?;
        if revs.is_empty() {
            break;
        }
        assert!(revs.len() <= page, "events_from returned more than asked");
        for (main, events) in &revs {
            assert!(*main >= next, "events_from went backwards");
            let evs = events
                .iter()
                .map(|e| {
                    let put = match e.kind {
                        EventKind::Put => Some(to_mkv(&e.kv)),
                        EventKind::Delete => {
                            assert_eq!(e.kv.mod_revision, *main, "tombstone mod_revision");
                            assert!(e.kv.value.is_empty() && e.kv.version == 0);
                            None
                        }
                    };
                    MEvent {
                        key: e.kv.key.clone(),
                        put,
                        prev: e.prev.as_ref().map(to_mkv),
                    }
                })
                .collect();
            out.push((*main, evs));
        }
        next = revs.last().expect("non-empty").0 + 1;
    }
    Ok(out)
}

/// Keys the generated operations use ("" and "\xff" only as range bounds).
const KEYS: &[&[u8]] = &[b"a", b"aa", b"ab", b"b", b"b\x00", b"c", b"d"];
/// Extra probe keys for reads (missing keys and bounds).
const PROBES: &[&[u8]] = &[
    b"", b"a", b"aa", b"ab", b"b", b"b\x00", b"bz", b"c", b"d", b"e",
];

fn ranges() -> Vec<KeyRange> {
    let mut v = Vec::new();
    for s in PROBES {
        v.push(KeyRange::new(s, b""));
        v.push(KeyRange::new(s, b"\0"));
        for e in PROBES {
            if !e.is_empty() {
                v.push(KeyRange::new(s, e));
            }
        }
    }
    v
}

/// Check `m` against the model completely.
fn check(m: &Mvcc, model: &Model, ranges: &[KeyRange]) {
    let cur = model.current();
    let compact = model.compact;
    assert_eq!(m.current_rev(), cur, "current revision");
    assert_eq!(m.compact_rev(), compact, "compact revision");
    if compact > 0 {
        assert_eq!(m.first_rev(), compact, "first revision");
    }
    assert_eq!(m.live_keys(), model.at(cur).len(), "live keys");

    // Out-of-window reads.
    assert_eq!(
        m.range(&ranges[0], cur + 1, 0, false).err(),
        Some(MvccError::FutureRev)
    );
    if compact > 1 {
        assert_eq!(
            m.range(&ranges[0], compact - 1, 0, false).err(),
            Some(MvccError::Compacted)
        );
        assert_eq!(
            m.range(&ranges[0], 1, 0, false).err(),
            Some(MvccError::Compacted)
        );
    }

    // Every readable revision (0 = current).
    for rev in std::iter::once(0).chain(compact.max(1)..=cur) {
        let state = model.at(if rev == 0 { cur } else { rev });
        for r in ranges {
            let want: Vec<(&Vec<u8>, &MKv)> = state.iter().filter(|(k, _)| r.contains(k)).collect();
            for limit in [0usize, 1, 2] {
                let got = m
                    .range(r, rev, limit, false)
                    .unwrap_or_else(|e| panic!("range {r:?} at {rev}: {e}"));
                assert_eq!(got.rev, cur, "header revision");
                assert_eq!(got.count, want.len(), "count of {r:?} at {rev}");
                let n = if limit == 0 {
                    want.len()
                } else {
                    limit.min(want.len())
                };
                let got_kvs: Vec<(Vec<u8>, MKv)> = got
                    .kvs
                    .iter()
                    .map(|kv| (kv.key.to_vec(), to_mkv(&m.load(kv).expect("value"))))
                    .collect();
                let want_kvs: Vec<(Vec<u8>, MKv)> = want[..n]
                    .iter()
                    .map(|(k, v)| ((*k).clone(), (*v).clone()))
                    .collect();
                assert_eq!(got_kvs, want_kvs, "range {r:?} at {rev} limit {limit}");
            }
            let c = m.range(r, rev, 1, true).expect("count_only");
            assert_eq!(c.count, want.len());
            assert!(c.kvs.is_empty(), "count_only returned kvs");
        }
    }

    // prev_of: the value visible just before `rev`, for revisions whose
    // predecessor is still readable.
    for rev in (compact + 1).max(2)..=cur + 1 {
        for k in KEYS {
            let got = m.prev_of(k, rev).expect("value").map(|kv| to_mkv(&kv));
            let want = model.at(rev - 1).get(*k).cloned();
            assert_eq!(got, want, "prev_of({k:?}, {rev})");
        }
    }

    // Watch history.
    if compact > 0 {
        assert_eq!(
            m.events_from(compact - 1, 10).err(),
            Some(MvccError::Compacted),
            "events below the compact revision"
        );
    }
    for from in compact.max(1)..=cur + 1 {
        let want = model.events_from(from);
        for page in [1usize, 3, usize::MAX] {
            let got = collect_events(m, from, page).expect("events_from");
            assert_eq!(got, want, "events_from({from}, {page})");
        }
    }
}

/// Check that a snapshot round trip yields an identical store.
fn check_roundtrip(m: &Mvcc, model: &Model, ranges: &[KeyRange]) {
    let back = Mvcc::from_snapshot(m.snapshot());
    check(&back, model, ranges);
    assert_eq!(back.size_bytes(), m.size_bytes(), "size after round trip");
    // A compaction still in progress is invisible: the same store with
    // every step done answers and hashes the same.
    let mut done = m.clone();
    while done.compact_step(usize::MAX) {}
    assert!(!done.compaction_pending());
    check(&done, model, ranges);
    for rev in std::iter::once(0).chain(model.compact.max(1)..=model.current()) {
        assert_eq!(back.hash_kv(rev), m.hash_kv(rev), "hash_kv({rev})");
        assert_eq!(
            done.hash_kv(rev),
            m.hash_kv(rev),
            "hash_kv({rev}) when done"
        );
    }
    assert_eq!(
        collect_events(&done, model.compact.max(1), usize::MAX),
        collect_events(m, model.compact.max(1), usize::MAX)
    );
    let from = model.compact.max(1);
    assert_eq!(
        collect_events(&back, from, usize::MAX),
        collect_events(m, from, usize::MAX)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8, bool),
    Delete(usize),
    DeleteRange(usize, Option<usize>),
    /// (key index, Some(value) = put / None = delete); duplicates removed.
    Txn(Vec<(usize, Option<u8>)>),
    /// Offset from the current revision (may be invalid either way).
    Compact(i64),
    /// One step of a compaction in progress, over at most this many keys.
    CompactStep(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    let p = 0..PROBES.len();
    prop_oneof![
        6 => (k.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, l)| Op::Put(k, v, l)),
        2 => k.clone().prop_map(Op::Delete),
        1 => (p.clone(), proptest::option::of(p)).prop_map(|(s, e)| Op::DeleteRange(s, e)),
        2 => proptest::collection::vec((k, proptest::option::of(any::<u8>())), 1..5).prop_map(Op::Txn),
        2 => (-12i64..3).prop_map(Op::Compact),
        1 => (0usize..3).prop_map(Op::CompactStep),
    ]
}

/// `step_keys`: keys a compaction processes at once (None: the default;
/// Some(0): every compaction is left to `CompactStep`s).
fn run(ops: Vec<Op>, values: Values, step_keys: Option<usize>) {
    let ranges = ranges();
    let mut m = Mvcc::with_values(values);
    if let Some(n) = step_keys {
        m.set_compact_step_keys(n);
    }
    let mut model = Model::new();
    check(&m, &model, &ranges);
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Put(k, v, l) => {
                let c = [Change::Put(
                    KEYS[k].to_vec(),
                    vec![v],
                    if l { 7 } else { 0 },
                )];
                apply(&mut m, &c);
                model.write(&c);
            }
            Op::Delete(k) => {
                let c = [Change::Del(KeyRange::new(KEYS[k], b""))];
                apply(&mut m, &c);
                model.write(&c);
            }
            Op::DeleteRange(s, e) => {
                let end: &[u8] = e.map_or(&b"\0"[..], |e| PROBES[e]);
                let end = if end.is_empty() { b"\0" } else { end };
                let c = [Change::Del(KeyRange::new(PROBES[s], end))];
                apply(&mut m, &c);
                model.write(&c);
            }
            Op::Txn(ops) => {
                let mut seen = std::collections::BTreeSet::new();
                let c: Vec<Change> = ops
                    .into_iter()
                    .filter(|(k, _)| seen.insert(*k))
                    .map(|(k, v)| match v {
                        Some(v) => Change::Put(KEYS[k].to_vec(), vec![v, b'x'], 0),
                        None => Change::Del(KeyRange::new(KEYS[k], b"")),
                    })
                    .collect();
                apply(&mut m, &c);
                model.write(&c);
            }
            Op::Compact(off) => {
                let rev = model.current() + off;
                let got = m.compact(rev);
                // etcd's compactMainRev starts at -1: compacting at 0 works once.
                let first_rev = if model.compacted { model.compact } else { -1 };
                if rev <= first_rev {
                    assert_eq!(got, Err(MvccError::Compacted), "compact({rev})");
                } else if rev > model.current() {
                    assert_eq!(got, Err(MvccError::FutureRev), "compact({rev})");
                } else {
                    assert_eq!(got, Ok(()), "compact({rev})");
                    model.compact = rev;
                    model.compacted = true;
                }
            }
            Op::CompactStep(n) => {
                m.compact_step(n);
            }
        }
        check(&m, &model, &ranges);
        if i % 3 == 2 {
            check_roundtrip(&m, &model, &ranges);
        }
    }
    check_roundtrip(&m, &model, &ranges);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model(ops in proptest::collection::vec(op(), 1..36)) {
        run(ops, Values::new(), None);
    }

    /// The same with compactions applied to the index in steps of at most
    /// a few keys, interleaved with everything else (reads, writes, further
    /// compactions, round trips through a snapshot).
    #[test]
    fn mvcc_matches_model_with_stepped_compaction(ops in proptest::collection::vec(op(), 1..36), step in 0usize..2) {
        run(ops, Values::new(), Some(step));
    }

    /// The same with tiny value segments, in memory and in files: sealing,
    /// and compaction moving values out of mostly dead segments.
    #[test]
    fn mvcc_matches_model_with_value_gc(ops in proptest::collection::vec(op(), 1..36), on_disk: bool) {
        let dir = tempfile::tempdir().unwrap();
        let d = on_disk.then(|| dir.path().to_path_buf());
        run(ops, Values::with_limit(d, 64), None);
    }
}

fn put(m: &mut Mvcc, k: &[u8], v: &[u8]) -> i64 {
    let mut t = m.write();
    t.put(k, v, 0);
    t.commit()
}

fn del(m: &mut Mvcc, k: &[u8]) -> i64 {
    let mut t = m.write();
    t.delete_range(&KeyRange::new(k, b""));
    t.commit()
}

fn get(m: &Mvcc, k: &[u8], rev: i64) -> Option<KeyValue> {
    m.range(&KeyRange::new(k, b""), rev, 0, false)
        .unwrap()
        .kvs
        .first()
        .map(|kv| m.load(kv).unwrap())
}

#[test]
fn delete_of_missing_key_does_not_bump_revision() {
    let mut m = Mvcc::new();
    assert_eq!(put(&mut m, b"a", b"1"), 2);
    assert_eq!(del(&mut m, b"zz"), 2);
    let mut t = m.write();
    assert!(t.delete_range(&KeyRange::new(b"b", b"\0")).is_empty());
    assert!(!t.has_changes());
    assert_eq!(t.commit(), 2);
    assert_eq!(m.current_rev(), 2);
    assert_eq!(m.events_from(3, 10).unwrap().count(), 0);
}

#[test]
fn recreate_after_delete_starts_new_generation() {
    let mut m = Mvcc::new();
    put(&mut m, b"k", b"1"); // 2
    put(&mut m, b"k", b"2"); // 3
    let kv = get(&m, b"k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(del(&mut m, b"k"), 4);
    assert!(get(&m, b"k", 0).is_none());
    put(&mut m, b"k", b"3"); // 5
    let kv = get(&m, b"k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // The old generation is still readable at its revisions.
    assert_eq!(get(&m, b"k", 3).unwrap().version, 2);
    assert!(get(&m, b"k", 4).is_none());
    // The re-create's put event has no prev (the key did not exist).
    let evs = events_page(&m, 5, 1).unwrap();
    assert!(evs[0].1[0].prev.is_none());
}

#[test]
fn compaction_keeps_live_version_at_compact_revision() {
    let mut m = Mvcc::new();
    put(&mut m, b"k", b"1"); // 2
    put(&mut m, b"k", b"2"); // 3
    put(&mut m, b"other", b"x"); // 4
    m.compact(4).unwrap();
    // k's version 2 (written at 3) is the live one at 4 and must survive.
    let kv = get(&m, b"k", 4).unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"2"[..], 3, 2)
    );
    assert_eq!(
        m.range(&KeyRange::new(b"k", b""), 3, 0, false).err(),
        Some(MvccError::Compacted)
    );
    // Only one entry of k remains, stored inline again (no heap block
    // left over from the longer history).
    let h = m.index.get(&b"k"[..]).unwrap();
    assert_eq!(h.entries.len(), 1);
    assert!(!h.entries.spilled(), "the history stays on the heap");
    // The put at the compact revision itself is still replayable, without prev.
    let evs = events_page(&m, 4, 10).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, 4);
    assert!(evs[0].1[0].prev.is_none());
    assert_eq!(m.compact(4), Err(MvccError::Compacted));
    assert_eq!(m.compact(5), Err(MvccError::FutureRev));
}

#[test]
fn compact_at_zero_succeeds_once_on_a_fresh_store() {
    // etcd: compactMainRev starts at -1.
    let mut m = Mvcc::new();
    assert_eq!(m.first_rev(), -1);
    assert_eq!(m.compact(-1), Err(MvccError::Compacted));
    assert_eq!(m.compact(0), Ok(()));
    assert_eq!(m.first_rev(), 0);
    assert_eq!(m.compact(0), Err(MvccError::Compacted));
    assert_eq!(m.compact(2), Err(MvccError::FutureRev));
}

#[test]
fn tombstone_at_compact_revision_is_dropped() {
    let mut m = Mvcc::new();
    put(&mut m, b"k", b"1"); // 2
    put(&mut m, b"j", b"1"); // 3
    assert_eq!(del(&mut m, b"k"), 4);
    m.compact(4).unwrap();
    assert!(
        m.index.get(&b"k"[..]).is_none(),
        "fully deleted key must leave the index"
    );
    assert!(get(&m, b"k", 4).is_none());
    assert_eq!(get(&m, b"j", 4).unwrap().mod_revision, 3);
    // The delete at the compact revision is not replayable.
    assert_eq!(m.events_from(4, 10).unwrap().count(), 0);
    // A later re-create starts a fresh generation.
    put(&mut m, b"k", b"2"); // 5
    let kv = get(&m, b"k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.version), (5, 1));
    let back = Mvcc::from_snapshot(m.snapshot());
    assert_eq!(back.hash_kv(0), m.hash_kv(0));
    assert_eq!(back.size_bytes(), m.size_bytes());
}

#[test]
fn tombstone_below_compact_revision_with_later_generation() {
    let mut m = Mvcc::new();
    put(&mut m, b"k", b"1"); // 2
    del(&mut m, b"k"); // 3
    put(&mut m, b"k", b"2"); // 4
    put(&mut m, b"x", b"2"); // 5
    m.compact(5).unwrap();
    let h = m.index.get(&b"k"[..]).unwrap();
    assert_eq!(h.entries.len(), 1);
    assert_eq!(get(&m, b"k", 5).unwrap().create_revision, 4);
}

/// The size model: in use grows with every revision and shrinks with
/// compaction; the high-water mark keeps the freed space until defragment.
#[test]
fn size_in_use_and_high_water_mark() {
    let mut m = Mvcc::new();
    assert_eq!((m.size_bytes(), m.peak_bytes()), (0, 0));
    for i in 0..10 {
        let mut t = m.write();
        t.put(b"k", &[b'v'; 100], 0);
        assert_eq!(t.commit(), 2 + i);
    }
    let one = 1 + 100 + REV_OVERHEAD;
    assert_eq!(m.size_bytes(), 10 * one, "history counts");
    assert_eq!(m.peak_bytes(), 10 * one);
    m.compact(m.current_rev()).unwrap();
    assert_eq!(m.size_bytes(), one, "compaction frees history");
    assert_eq!(m.peak_bytes(), 10 * one, "but keeps the high-water mark");
    // Freed space is reused before the total grows again.
    for _ in 0..3 {
        let mut t = m.write();
        t.put(b"k", &[b'v'; 100], 0);
        t.commit();
    }
    assert_eq!(m.size_bytes(), 4 * one);
    assert_eq!(m.peak_bytes(), 10 * one);
    m.defragment();
    assert_eq!(m.peak_bytes(), 4 * one, "defragment gives the space back");
    let mut t = m.write();
    t.delete_range(&KeyRange::new(b"k", &[]));
    t.commit();
    assert_eq!(
        m.size_bytes(),
        4 * one + 1 + REV_OVERHEAD,
        "a tombstone counts"
    );
    assert_eq!(m.peak_bytes(), m.size_bytes());
    let back = Mvcc::from_snapshot(m.snapshot());
    assert_eq!(
        back.peak_bytes(),
        back.size_bytes(),
        "a reload starts defragmented"
    );
}

#[test]
fn hash_of_a_point_in_time_copy_matches_the_store() {
    let mut m = Mvcc::new();
    for i in 0..20u8 {
        put(&mut m, &[b'a' + i % 5], &[i]);
    }
    del(&mut m, b"a");
    m.compact(8).unwrap();
    let snap = m.snapshot();
    let cur = m.current_rev();
    for rev in [0, 7, 8, 9, 15, cur, cur + 1] {
        assert_eq!(snap.hash_kv(rev), m.hash_kv(rev), "hash_kv({rev})");
    }
    assert_eq!(snap.hash_kv(cur + 1), Err(MvccError::FutureRev));
    assert_eq!(snap.hash_kv(7), Err(MvccError::Compacted));
    // Later writes change the store, not the copy.
    put(&mut m, b"b", b"new");
    assert_eq!(snap.hash_kv(cur), m.hash_kv(cur));
    assert_ne!(snap.hash_kv(0), m.hash_kv(0));
    // A different value at the same revision changes the hash.
    let mut other = Mvcc::new();
    for i in 0..20u8 {
        let v = if i == 19 { vec![i, 1] } else { vec![i] };
        put(&mut other, &[b'a' + i % 5], &v);
    }
    assert_ne!(
        other.hash_kv(19).unwrap().0,
        Mvcc::from_snapshot(snap).hash_kv(19).unwrap().0
    );
}

#[test]
fn single_revision_keys_hold_no_spare_capacity() {
    let mut m = Mvcc::new();
    for i in 0..3u8 {
        let mut t = m.write();
        t.put(&[b'k', i], &[i; 8], 0);
        t.commit();
    }
    // One key written three times, then two keys in one transaction.
    for v in 0..3u8 {
        let mut t = m.write();
        t.put(b"hot", &[v], 0);
        t.commit();
    }
    let mut t = m.write();
    t.put(b"a", &[1], 0);
    t.put(b"b", &[2], 0);
    t.commit();
    let snap = m.snapshot();
    for k in [&b"k\x00"[..], b"k\x01", b"a"] {
        assert_eq!(snap.index.get(k).unwrap().entries.capacity(), 1);
    }
    let hot = &snap.index.get(&b"hot"[..]).unwrap().entries;
    assert_eq!((hot.len(), hot.capacity()), (3, 3));
    // The watch log is one flat entry per change.
    assert_eq!(m.events_from(1, 100).unwrap().count(), 8);
    let back = Mvcc::from_snapshot(snap);
    assert_eq!(back.events_from(1, 100).unwrap().count(), 8);
}

#[test]
fn compaction_gives_back_the_watch_log_buffer() {
    let mut m = Mvcc::new();
    for i in 0..4096u32 {
        put(&mut m, b"k", &i.to_be_bytes());
    }
    assert!(m.log.capacity() >= 4096);
    m.compact(m.current_rev()).unwrap();
    assert_eq!(m.log.len(), 1, "the live put of the compact revision");
    assert!(m.log.capacity() < 64, "capacity {}", m.log.capacity());
}

#[test]
fn a_large_compaction_is_applied_in_bounded_steps() {
    let mut m = Mvcc::new();
    let n = super::COMPACT_STEP_KEYS * 2 + 10;
    let key = |i: usize| format!("k{i:06}").into_bytes();
    for round in 0..2u8 {
        for i in 0..n {
            put(&mut m, &key(i), &[round]);
        }
    }
    let size = m.size_bytes();
    let rev = m.current_rev();
    m.compact(rev).unwrap();
    // One step's worth was done at once; the rest waits for steps, and
    // reads, hashes and history already behave as after the whole of it.
    assert!(m.compaction_pending());
    assert!(m.size_bytes() < size);
    assert_eq!(get(&m, &key(0), 0).unwrap().value, vec![1]);
    assert_eq!(
        m.range(&KeyRange::new(b"k", b"l"), 0, 0, true)
            .unwrap()
            .count,
        n
    );
    let hash = m.hash_kv(0).unwrap();
    let mut steps = 0;
    while m.compact_step(super::COMPACT_STEP_KEYS) {
        steps += 1;
    }
    // Each key was touched twice (both puts leave the log): at most
    // 2n keys in steps of COMPACT_STEP_KEYS, the first done at once.
    assert!(
        (1..=2 * n / super::COMPACT_STEP_KEYS).contains(&steps),
        "{steps} steps"
    );
    assert!(!m.compaction_pending());
    assert_eq!(m.hash_kv(0).unwrap(), hash);
    // Every key is back to one revision, as after a one-go compaction.
    let mut once = Mvcc::new();
    for round in 0..2u8 {
        for i in 0..n {
            put(&mut once, &key(i), &[round]);
        }
    }
    once.set_compact_step_keys(usize::MAX);
    once.compact(rev).unwrap();
    assert!(!once.compaction_pending());
    assert_eq!(m.size_bytes(), once.size_bytes());
    assert_eq!(m.hash_kv(0), once.hash_kv(0));
}

#[test]
fn defragment_finishes_a_compaction_in_progress() {
    let mut m = Mvcc::new();
    m.set_compact_step_keys(0);
    for i in 0..10u8 {
        put(&mut m, b"k", &[i]);
    }
    let peak = m.peak_bytes();
    m.compact(m.current_rev()).unwrap();
    assert!(m.compaction_pending());
    m.defragment();
    assert!(!m.compaction_pending());
    assert!(m.peak_bytes() < peak / 5, "{} of {peak}", m.peak_bytes());
}
