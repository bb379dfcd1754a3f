//! mvcc: the in-memory multi-version key space.
//!
//! It owns the key index (every key's revision history), the revision-ordered
//! event log that watchers replay from, the current and compacted revisions,
//! and the state hash. It implements etcd's exact revision semantics:
//! one write request = one main revision, each op inside it gets a sub
//! revision; `create_revision`, `mod_revision` and `version` follow etcd; a
//! delete leaves a tombstone that ends the key's generation.
//!
//! It never does I/O and never knows about raft, leases or gRPC: the apply
//! layer (`crate::apply`) drives it under the state-machine write lock, and
//! readers query it under the read lock. The index is an `imbl::OrdMap` so a
//! point-in-time copy for a snapshot is O(1) and never stalls writes.

mod revision;
pub use revision::Revision;

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use proto::mvccpb::KeyValue;

/// Errors from MVCC reads and compaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The requested revision was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
}

/// Approximate fixed per-revision storage overhead, used for dbSize.
const REV_OVERHEAD: i64 = 64;

/// One revision of one key.
#[derive(Debug, Clone)]
pub struct HistEntry {
    /// The revision that wrote this entry.
    pub rev: Revision,
    /// The key-value as written; for a tombstone only `key` and `mod_revision` are set.
    pub kv: Arc<KeyValue>,
    /// True when this entry is a deletion.
    pub tombstone: bool,
}

/// All retained revisions of one key, ascending.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// Ascending by revision.
    pub entries: Vec<HistEntry>,
}

impl KeyHistory {
    /// Append `e` (newer than every entry held). Most keys hold one or two
    /// revisions: the first few pushes grow the vector one slot at a time
    /// instead of to the usual minimum of four, which would triple the
    /// index's per-key cost; longer histories grow geometrically.
    pub fn push(&mut self, e: HistEntry) {
        if self.entries.len() == self.entries.capacity() && self.entries.len() < 4 {
            self.entries.reserve_exact(1);
        }
        self.entries.push(e);
    }

    /// The live value visible at main revision `rev`, if any.
    pub fn visible_at(&self, rev: i64) -> Option<&Arc<KeyValue>> {
        let idx = self.entries.partition_point(|e| e.rev.main <= rev);
        if idx == 0 {
            return None;
        }
        let e = &self.entries[idx - 1];
        (!e.tombstone).then_some(&e.kv)
    }

    /// The newest live value, if the key currently exists.
    pub fn latest(&self) -> Option<&Arc<KeyValue>> {
        self.entries
            .last()
            .and_then(|e| (!e.tombstone).then_some(&e.kv))
    }

    /// Drop everything not needed to answer reads at revisions >= `rev`.
    /// Returns the number of bytes freed.
    fn compact(&mut self, rev: i64) -> i64 {
        let idx = self.entries.partition_point(|e| e.rev.main <= rev);
        if idx == 0 {
            return 0;
        }
        // Keep the entry visible at `rev` unless it is a tombstone.
        let keep_from = if self.entries[idx - 1].tombstone {
            idx
        } else {
            idx - 1
        };
        let freed = self.entries[..keep_from].iter().map(entry_size).sum();
        self.entries.drain(..keep_from);
        freed
    }
}

fn entry_size(e: &HistEntry) -> i64 {
    (e.kv.key.len() + e.kv.value.len()) as i64 + REV_OVERHEAD
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A put.
    Put,
    /// A deletion.
    Delete,
}

/// One change, as watchers see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new key-value (for a delete: key and mod_revision only).
    pub kv: Arc<KeyValue>,
    /// The previous live value, if any.
    pub prev: Option<Arc<KeyValue>>,
}

/// All events of one main revision.
#[derive(Debug, Clone)]
pub struct RevEvents {
    /// The main revision.
    pub main: i64,
    /// Events in sub-revision order.
    pub events: Vec<Event>,
}

/// Which keys a request addresses, decoded from etcd's (key, range_end) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key (empty range_end).
    Single(Bytes),
    /// `[start, end)`; `end == None` means "to the end" (range_end `\0`).
    Span(Bytes, Option<Bytes>),
}

impl KeyRange {
    /// Decode etcd's (key, range_end) convention.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(Bytes::copy_from_slice(key))
        } else if range_end == [0] {
            KeyRange::Span(Bytes::copy_from_slice(key), None)
        } else {
            KeyRange::Span(
                Bytes::copy_from_slice(key),
                Some(Bytes::copy_from_slice(range_end)),
            )
        }
    }

    /// Whether `k` falls inside the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(s) => s.as_ref() == k,
            KeyRange::Span(s, e) => k >= s.as_ref() && e.as_ref().is_none_or(|e| k < e.as_ref()),
        }
    }
}

/// Result of a range read.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    /// Matching key-values (at most `limit` when a limit is set).
    pub kvs: Vec<Arc<KeyValue>>,
    /// Number of keys in the range at the revision, ignoring the limit.
    pub count: usize,
    /// The store's current revision (not the requested one), as etcd reports.
    pub rev: i64,
}

/// A point-in-time copy of the key space, cheap to take (O(1)).
#[derive(Clone)]
pub struct MvccSnapshot {
    /// The key index.
    pub index: OrdMap<Bytes, Arc<KeyHistory>>,
    /// Current revision.
    pub current: i64,
    /// Compacted revision.
    pub compact: i64,
}

impl MvccSnapshot {
    /// [`Mvcc::hash_kv`] of the store this copy was taken from, computed
    /// without access to it (callers take the copy under the state lock and
    /// hash after releasing it, so apply is never stalled by a hash).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), MvccError> {
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { self.current } else { rev };
        if rev < self.compact {
            return Err(MvccError::Compacted);
        }
        Ok((hash_index(&self.index, rev), self.compact))
    }
}

/// The HashKV hash of `index` up to main revision `rev`.
fn hash_index(index: &OrdMap<Bytes, Arc<KeyHistory>>, rev: i64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (k, hist) in index.iter() {
        for e in &hist.entries {
            if e.rev.main > rev {
                break;
            }
            h.update(k);
            h.update(&e.rev.main.to_be_bytes());
            h.update(&e.rev.sub.to_be_bytes());
            h.update(&[e.tombstone as u8]);
            if !e.tombstone {
                h.update(&e.kv.create_revision.to_be_bytes());
                h.update(&e.kv.version.to_be_bytes());
                h.update(&e.kv.lease.to_be_bytes());
                h.update(&e.kv.value);
            }
        }
    }
    h.finalize()
}

/// The multi-version key space.
#[derive(Clone, Default)]
pub struct Mvcc {
    index: OrdMap<Bytes, Arc<KeyHistory>>,
    /// Events of every main revision in `(compact, current]`, ascending.
    log: VecDeque<RevEvents>,
    current: i64,
    compact: i64,
    /// Whether any compaction succeeded, so a compaction at revision 0 counts
    /// (etcd starts at compactMainRev -1: `Compact(0)` on a fresh store
    /// succeeds once). Not persisted: restored as `compact > 0`.
    compacted: bool,
    size: i64,
    /// High-water mark of `size` since this store was loaded or last
    /// defragmented (the "file size" of the size model; see
    /// `crate::apply::StateMachine::db_size`). Per member, never replicated.
    peak: i64,
    /// Number of keys that currently exist (kept incrementally: metrics and
    /// status read it often, and counting would scan the whole index).
    live: usize,
}

impl Mvcc {
    /// An empty store at revision 1, as a fresh etcd starts.
    pub fn new() -> Self {
        Mvcc {
            current: 1,
            ..Default::default()
        }
    }

    /// The current revision.
    pub fn current_rev(&self) -> i64 {
        self.current
    }

    /// The compacted revision (0 if never compacted).
    pub fn compact_rev(&self) -> i64 {
        self.compact
    }

    /// etcd's `compactMainRev` (a read view's `FirstRev`): the compacted
    /// revision, or -1 if the store was never compacted.
    pub fn first_rev(&self) -> i64 {
        if self.compacted || self.compact > 0 {
            self.compact
        } else {
            -1
        }
    }

    /// Approximate bytes held by all retained revisions.
    pub fn size_bytes(&self) -> i64 {
        self.size
    }

    /// High-water mark of [`size_bytes`](Self::size_bytes) since load or the
    /// last [`defragment`](Self::defragment): compaction frees space for
    /// reuse but does not give it back, as a bbolt file keeps its pages.
    pub fn peak_bytes(&self) -> i64 {
        self.peak.max(self.size)
    }

    /// Give the space freed by compaction back (etcd's defragment): the
    /// high-water mark drops to what is in use.
    pub fn defragment(&mut self) {
        self.peak = self.size;
    }

    /// Number of keys that currently exist.
    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Check a read revision the way etcd does: 0 means current.
    pub fn check_rev(&self, rev: i64) -> Result<i64, MvccError> {
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { self.current } else { rev };
        if rev < self.compact {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    fn iter_range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a Arc<KeyHistory>)> + 'a> {
        match range {
            KeyRange::Single(k) => Box::new(self.index.get_key_value(k.as_ref()).into_iter()),
            KeyRange::Span(s, e) => {
                if let Some(e) = e {
                    if e <= s {
                        return Box::new(std::iter::empty());
                    }
                }
                let end = match e {
                    Some(e) => Bound::Excluded(e.as_ref()),
                    None => Bound::Unbounded,
                };
                Box::new(
                    self.index
                        .range::<_, [u8]>((Bound::Included(s.as_ref()), end)),
                )
            }
        }
    }

    /// Read the keys in `range` as of `rev` (0 = current). `limit` 0 means no
    /// limit. With `count_only`, no key-values are returned.
    pub fn range(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, MvccError> {
        let rev = self.check_rev(rev)?;
        Ok(self.range_at(range, rev, limit, count_only))
    }

    fn range_at(&self, range: &KeyRange, rev: i64, limit: usize, count_only: bool) -> RangeResult {
        let mut out = RangeResult {
            rev: self.current,
            ..Default::default()
        };
        for (_, hist) in self.iter_range(range) {
            if let Some(kv) = hist.visible_at(rev) {
                out.count += 1;
                if !count_only && (limit == 0 || out.kvs.len() < limit) {
                    out.kvs.push(kv.clone());
                }
            }
        }
        out
    }

    /// Start a write transaction: all its changes share one main revision.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let main = self.current + 1;
        WriteTxn {
            mvcc: self,
            main,
            // Most writes change one key (see `commit`).
            events: Vec::with_capacity(1),
        }
    }

    /// Compact history at `rev`: keep only what reads at revisions >= `rev` need.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.first_rev() {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        // Revisions below `rev` leave the log entirely. The puts of revision
        // `rev` itself stay replayable (etcd keeps them as the live versions
        // a watch starting exactly at the compact revision still sees).
        let mut keys = BTreeSet::new();
        while let Some(front) = self.log.front_mut() {
            if front.main > rev {
                break;
            }
            for ev in &front.events {
                keys.insert(Bytes::copy_from_slice(&ev.kv.key));
            }
            if front.main == rev {
                // A put that a later op of the same revision deleted (nested
                // txns may put and then delete a key) goes too: etcd drops
                // the whole generation, as `KeyHistory::compact` does.
                let last_delete: std::collections::HashMap<Vec<u8>, usize> = front
                    .events
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.kind == EventKind::Delete)
                    .map(|(i, e)| (e.kv.key.clone(), i))
                    .collect();
                let mut i = 0;
                front.events.retain(|e| {
                    i += 1;
                    e.kind == EventKind::Put
                        && last_delete.get(&e.kv.key).is_none_or(|&d| d < i - 1)
                });
                // Their previous values lie below the compact revision; etcd
                // cannot read them either (and a snapshot cannot hold them).
                for e in &mut front.events {
                    e.prev = None;
                }
                if front.events.is_empty() {
                    self.log.pop_front();
                }
                break;
            }
            self.log.pop_front();
        }
        for k in keys {
            let Some(h) = self.index.get_mut(k.as_ref()) else {
                continue;
            };
            let h = Arc::make_mut(h);
            self.size -= h.compact(rev);
            if h.entries.is_empty() {
                self.index.remove(k.as_ref());
            }
        }
        self.compact = rev;
        self.compacted = true;
        Ok(())
    }

    /// Events of revisions `>= from`, up to `max_revs` revisions. Returns
    /// `Err(Compacted)` when `from` is at or below the compacted revision
    /// and history is therefore gone.
    pub fn events_from(&self, from: i64, max_revs: usize) -> Result<&[RevEvents], MvccError> {
        // etcd: a watch may start at the compact revision at the earliest.
        if from < self.compact {
            return Err(MvccError::Compacted);
        }
        let first = self.log.front().map_or(self.current + 1, |r| r.main);
        let skip = (from.max(first) - first) as usize;
        let (a, b) = self.log.as_slices();
        let start = skip.min(self.log.len());
        let end = start.saturating_add(max_revs).min(self.log.len());
        if end <= a.len() {
            Ok(&a[start..end])
        } else if start >= a.len() {
            Ok(&b[start - a.len()..end - a.len()])
        } else {
            // Spans both halves: return the first half only; callers loop.
            Ok(&a[start..])
        }
    }

    /// The value of `key` visible just before main revision `rev`.
    pub fn prev_of(&self, key: &[u8], rev: i64) -> Option<Arc<KeyValue>> {
        self.index
            .get(key)
            .and_then(|h| h.visible_at(rev - 1).cloned())
    }

    /// A hash of all retained history with main revision <= `rev`, the same on
    /// every member that has the same history. Returns (hash, compact_rev).
    /// To hash without holding a lock on the store, hash a [`Mvcc::snapshot`]
    /// (an O(1) copy) instead.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), MvccError> {
        let rev = self.check_rev(rev)?;
        Ok((hash_index(&self.index, rev), self.compact))
    }

    /// A point-in-time copy for snapshotting.
    pub fn snapshot(&self) -> MvccSnapshot {
        MvccSnapshot {
            index: self.index.clone(),
            current: self.current,
            compact: self.compact,
        }
    }

    /// Rebuild a store from a snapshot (the event log is derived from history).
    pub fn from_snapshot(snap: MvccSnapshot) -> Self {
        let mut all: Vec<(Revision, Event)> = Vec::new();
        let mut size = 0;
        let mut live = 0;
        for (_, hist) in snap.index.iter() {
            live += hist.latest().is_some() as usize;
            let mut prev: Option<&HistEntry> = None;
            for e in &hist.entries {
                size += entry_size(e);
                // The live puts of the compact revision itself stay
                // replayable (as `compact` keeps them), without prev.
                let at_compact = e.rev.main == snap.compact;
                if e.rev.main > snap.compact || (at_compact && !e.tombstone) {
                    all.push((
                        e.rev,
                        Event {
                            kind: if e.tombstone {
                                EventKind::Delete
                            } else {
                                EventKind::Put
                            },
                            kv: e.kv.clone(),
                            prev: prev
                                .filter(|p| !p.tombstone && !at_compact)
                                .map(|p| p.kv.clone()),
                        },
                    ));
                }
                prev = Some(e);
            }
        }
        all.sort_by_key(|(r, _)| *r);
        let mut log: VecDeque<RevEvents> = VecDeque::new();
        for (r, ev) in all {
            match log.back_mut() {
                Some(last) if last.main == r.main => last.events.push(ev),
                _ => log.push_back(RevEvents {
                    main: r.main,
                    events: vec![ev],
                }),
            }
        }
        for re in log.iter_mut().filter(|re| re.events.len() > 1) {
            re.events.shrink_to_fit();
        }
        Mvcc {
            index: snap.index,
            log,
            current: snap.current,
            compact: snap.compact,
            compacted: snap.compact > 0,
            live,
            size,
            peak: size,
        }
    }
}

/// A write transaction: every change gets the same main revision and
/// increasing sub revisions. Reads through it see its own writes.
pub struct WriteTxn<'a> {
    mvcc: &'a mut Mvcc,
    main: i64,
    events: Vec<Event>,
}

impl WriteTxn<'_> {
    /// The revision reads inside this transaction observe.
    pub fn read_rev(&self) -> i64 {
        if self.events.is_empty() {
            self.main - 1
        } else {
            self.main
        }
    }

    /// Whether anything has been written so far.
    pub fn has_changes(&self) -> bool {
        !self.events.is_empty()
    }

    /// The store (for reads at `read_rev`).
    pub fn store(&self) -> &Mvcc {
        self.mvcc
    }

    /// The current live value of `key` as this transaction sees it.
    pub fn get(&self, key: &[u8]) -> Option<Arc<KeyValue>> {
        self.mvcc.index.get(key).and_then(|h| h.latest().cloned())
    }

    /// Range read as of this transaction's view (`rev` 0 = own view).
    pub fn range(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, MvccError> {
        let cur = self.read_rev();
        if rev > cur {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { cur } else { rev };
        if rev < self.mvcc.compact {
            return Err(MvccError::Compacted);
        }
        let mut r = self.mvcc.range_at(range, rev, limit, count_only);
        r.rev = cur;
        Ok(r)
    }

    fn sub(&self) -> i64 {
        self.events.len() as i64
    }

    /// Put `key`; returns the previous live value.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Option<Arc<KeyValue>> {
        let rev = Revision {
            main: self.main,
            sub: self.sub(),
        };
        let prev = self.get(key);
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.main, 1),
        };
        let kv = Arc::new(KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: self.main,
            version,
            value,
            lease,
        });
        let entry = HistEntry {
            rev,
            kv: kv.clone(),
            tombstone: false,
        };
        self.mvcc.size += entry_size(&entry);
        self.mvcc.live += prev.is_none() as usize;
        let k = Bytes::copy_from_slice(key);
        let hist = self.mvcc.index.entry(k).or_default();
        Arc::make_mut(hist).push(entry);
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        prev
    }

    /// Delete every live key in `range`; returns the deleted values in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<Arc<KeyValue>> {
        let victims: Vec<(Bytes, Arc<KeyValue>)> = self
            .mvcc
            .iter_range(range)
            .filter_map(|(k, h)| h.latest().map(|kv| (k.clone(), kv.clone())))
            .collect();
        let mut out = Vec::with_capacity(victims.len());
        for (k, prev) in victims {
            let rev = Revision {
                main: self.main,
                sub: self.sub(),
            };
            let kv = Arc::new(KeyValue {
                key: k.to_vec(),
                mod_revision: self.main,
                ..Default::default()
            });
            let entry = HistEntry {
                rev,
                kv: kv.clone(),
                tombstone: true,
            };
            self.mvcc.size += entry_size(&entry);
            self.mvcc.live -= 1;
            let hist = self
                .mvcc
                .index
                .get_mut(k.as_ref())
                .expect("invariant: victim exists");
            Arc::make_mut(hist).push(entry);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev: Some(prev.clone()),
            });
            out.push(prev);
        }
        out
    }

    /// Finish: bump the revision if anything changed. Returns the store
    /// revision after the transaction.
    pub fn commit(mut self) -> i64 {
        if !self.events.is_empty() {
            // The events stay in the watch log until compaction: no spare
            // capacity (a vector grown by pushes has room for at least four).
            self.events.shrink_to_fit();
            self.mvcc.peak = self.mvcc.peak.max(self.mvcc.size);
            self.mvcc.current = self.main;
            self.mvcc.log.push_back(RevEvents {
                main: self.main,
                events: self.events,
            });
        }
        self.mvcc.current
    }
}

#[cfg(test)]
mod tests;
