//! mvcc: the in-memory multi-version key space.
//!
//! It owns the key index (every key's revision history), the revision-ordered
//! event log that watchers replay from, the current and compacted revisions,
//! and the state hash. It implements etcd's exact revision semantics:
//! one write request = one main revision, each op inside it gets a sub
//! revision; `create_revision`, `mod_revision` and `version` follow etcd; a
//! delete leaves a tombstone that ends the key's generation.
//!
//! It never knows about raft, leases or gRPC: the apply layer
//! (`crate::apply`) drives it under the state-machine write lock, and
//! readers query it under the read lock. The index is an `imbl::OrdMap` so a
//! point-in-time copy for a snapshot is O(1) and never stalls writes. The
//! index holds each revision's metadata inline; value bytes live in
//! [`values`] (segment files read through the page cache), and the watch
//! log holds only (revision, key): events are built from the index when a
//! watcher reads them.

mod revision;
pub mod values;
pub use revision::Revision;
pub use values::{ValueError, ValueRef, Values};

use std::collections::VecDeque;
use std::ops::Bound;

use bytes::Bytes;
use imbl::OrdMap;
use proto::mvccpb::KeyValue;
use smallvec::SmallVec;
use std::sync::Arc;

/// A key as the index holds it: one allocation, shared by the index, the
/// watch log and read results (16 bytes where it is referenced).
pub type IKey = Arc<[u8]>;

/// Errors from MVCC reads and compaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The requested revision was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// A stored value failed its checksum or could not be read.
    #[error("mvcc: {0}")]
    Corrupt(String),
}

impl From<ValueError> for MvccError {
    fn from(e: ValueError) -> Self {
        MvccError::Corrupt(e.to_string())
    }
}

/// Approximate fixed per-revision storage overhead, used for dbSize.
const REV_OVERHEAD: i64 = 64;

/// Sealed value segments moved per compaction at most (bounds the pause).
const GC_SEGMENTS_PER_COMPACTION: usize = 8;
/// Keys a compaction step processes under one hold of the state lock
/// (≈ 3 ms at 1M keys on these machines; etcd's default batch is also
/// 1,000 keys); a compaction touching more keys leaves the rest to later
/// steps ([`Mvcc::compact_step`]).
pub const COMPACT_STEP_KEYS: usize = 1_000;

/// One revision of one key (the key itself is the index's).
#[derive(Debug, Clone, Copy)]
pub struct HistEntry {
    /// The revision that wrote this entry.
    pub rev: Revision,
    /// Revision of the key's creation (0 for a tombstone).
    pub create_revision: i64,
    /// The key's version after this write (0 for a tombstone).
    pub version: i64,
    /// The lease attached (0: none).
    pub lease: i64,
    /// Where the value is.
    pub value: ValueRef,
    /// True when this entry is a deletion.
    pub tombstone: bool,
}

impl HistEntry {
    /// The entry's metadata under `key`.
    pub fn meta(&self, key: &IKey) -> KvMeta {
        KvMeta {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.rev.main,
            version: self.version,
            lease: self.lease,
            value: self.value,
        }
    }
}

/// A key-value without its value bytes (read with [`Mvcc::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMeta {
    /// The key.
    pub key: IKey,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Number of modifications since creation.
    pub version: i64,
    /// Attached lease (0: none).
    pub lease: i64,
    /// Where the value is.
    pub value: ValueRef,
}

/// All retained revisions of one key, ascending. Most keys hold one: it is
/// stored inline.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// Ascending by revision.
    pub entries: SmallVec<[HistEntry; 1]>,
}

impl KeyHistory {
    /// Append `e` (newer than every entry held). A key with a few revisions
    /// grows one slot at a time instead of doubling; longer histories grow
    /// geometrically.
    pub fn push(&mut self, e: HistEntry) {
        if self.entries.len() == self.entries.capacity() && self.entries.len() < 4 {
            self.entries.reserve_exact(1);
        }
        self.entries.push(e);
    }

    /// The live entry visible at main revision `rev`, if any.
    pub fn visible_at(&self, rev: i64) -> Option<&HistEntry> {
        let idx = self.entries.partition_point(|e| e.rev.main <= rev);
        if idx == 0 {
            return None;
        }
        let e = &self.entries[idx - 1];
        (!e.tombstone).then_some(e)
    }

    /// The newest live entry, if the key currently exists.
    pub fn latest(&self) -> Option<&HistEntry> {
        self.entries.last().filter(|e| !e.tombstone)
    }

    /// Where the entry written at exactly `rev` is.
    fn position(&self, rev: Revision) -> Option<usize> {
        self.entries.binary_search_by(|e| e.rev.cmp(&rev)).ok()
    }

    /// Where the entries a compaction at `rev` keeps start: the entry
    /// visible at `rev` unless it is a tombstone, and everything newer.
    fn keep_from(&self, rev: i64) -> usize {
        let idx = self.entries.partition_point(|e| e.rev.main <= rev);
        if idx == 0 {
            return 0;
        }
        if self.entries[idx - 1].tombstone {
            idx
        } else {
            idx - 1
        }
    }

    /// The entries a compaction at `rev` keeps (all of them once it has
    /// been applied to this key).
    pub fn kept(&self, rev: i64) -> &[HistEntry] {
        &self.entries[self.keep_from(rev)..]
    }

    /// Drop everything not needed to answer reads at revisions >= `rev`;
    /// the dropped values are released from `values`. Returns the number
    /// of bytes freed in the size model.
    fn compact(&mut self, key_len: usize, rev: i64, values: &Values) -> i64 {
        let keep_from = self.keep_from(rev);
        if keep_from == 0 {
            return 0;
        }
        let mut freed = 0;
        for e in &self.entries[..keep_from] {
            freed += entry_size(key_len, e);
            values.release(e.value);
        }
        self.entries.drain(..keep_from);
        // Back inline once one entry is left (most keys after a
        // compaction), or to size: compaction is when histories shrink.
        if self.entries.len() < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        freed
    }
}

fn entry_size(key_len: usize, e: &HistEntry) -> i64 {
    (key_len + e.value.len()) as i64 + REV_OVERHEAD
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
    pub kv: KeyValue,
    /// The previous live value, if asked for and retained.
    pub prev: Option<KeyValue>,
}

/// One entry of the watch log: a key changed at a revision.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The revision of the change.
    pub rev: Revision,
    /// The key changed.
    pub key: IKey,
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
    /// Matching keys (at most `limit` when a limit is set), values not yet read.
    pub kvs: Vec<KvMeta>,
    /// Number of keys in the range at the revision, ignoring the limit.
    pub count: usize,
    /// The store's current revision (not the requested one), as etcd reports.
    pub rev: i64,
}

/// A point-in-time copy of the key space, cheap to take (O(1)).
#[derive(Clone)]
pub struct MvccSnapshot {
    /// The key index.
    pub index: OrdMap<IKey, KeyHistory>,
    /// The values the index refers to.
    pub values: Values,
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
        Ok((
            hash_index(&self.index, &self.values, rev, self.compact)?,
            self.compact,
        ))
    }
}

/// The HashKV hash of `index` up to main revision `rev`: the entries a
/// compaction at `compact` keeps, whether or not it has reached every key
/// yet (see [`Mvcc::compact_step`]), so members hash alike at any point of
/// their compaction.
fn hash_index(
    index: &OrdMap<IKey, KeyHistory>,
    values: &Values,
    rev: i64,
    compact: i64,
) -> Result<u32, MvccError> {
    let mut h = crc32fast::Hasher::new();
    for (k, hist) in index.iter() {
        for e in hist.kept(compact) {
            if e.rev.main > rev {
                break;
            }
            h.update(k);
            h.update(&e.rev.main.to_be_bytes());
            h.update(&e.rev.sub.to_be_bytes());
            h.update(&[e.tombstone as u8]);
            if !e.tombstone {
                h.update(&e.create_revision.to_be_bytes());
                h.update(&e.version.to_be_bytes());
                h.update(&e.lease.to_be_bytes());
                h.update(&values.read(e.value)?);
            }
        }
    }
    Ok(h.finalize())
}

/// The multi-version key space.
#[derive(Clone, Default)]
pub struct Mvcc {
    index: OrdMap<IKey, KeyHistory>,
    values: Values,
    /// Changes of every main revision in `(compact, current]` (and the live
    /// puts of `compact` itself), ascending.
    log: VecDeque<LogEntry>,
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
    /// Keys whose history may still hold entries that the compaction at
    /// `compact` drops (duplicates allowed). Reads never see those entries
    /// (they are older than what any read at `>= compact` looks at, and
    /// HashKV and events skip them), so a large compaction is applied to
    /// the index in bounded steps ([`compact_step`](Self::compact_step))
    /// instead of one long hold of the state lock. Per member.
    pending: Vec<IKey>,
    /// Keys [`compact`](Self::compact) processes at once (None:
    /// [`COMPACT_STEP_KEYS`]); tests set it lower.
    step_keys: Option<usize>,
    /// Number of keys that currently exist (kept incrementally: metrics and
    /// status read it often, and counting would scan the whole index).
    live: usize,
}

impl Mvcc {
    /// An empty store at revision 1, as a fresh etcd starts, with its
    /// values where [`values::set_dir`] says.
    pub fn new() -> Self {
        Mvcc::with_values(Values::new())
    }

    /// An empty store keeping its values in `values`.
    pub fn with_values(values: Values) -> Self {
        Mvcc {
            values,
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
        // What a compaction in progress frees belongs to what is given
        // back (etcd's recovery from NOSPACE is compact, defrag, disarm).
        while self.compact_step(usize::MAX) {}
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

    /// The value bytes of `m`, verified.
    pub fn value(&self, m: &KvMeta) -> Result<Vec<u8>, MvccError> {
        Ok(self.values.read(m.value)?)
    }

    /// The whole key-value of `m`.
    pub fn load(&self, m: &KvMeta) -> Result<KeyValue, MvccError> {
        Ok(KeyValue {
            key: m.key.to_vec(),
            create_revision: m.create_revision,
            mod_revision: m.mod_revision,
            version: m.version,
            value: self.value(m)?,
            lease: m.lease,
        })
    }

    fn iter_range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a IKey, &'a KeyHistory)> + 'a> {
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
        for (k, hist) in self.iter_range(range) {
            if let Some(e) = hist.visible_at(rev) {
                out.count += 1;
                if !count_only && (limit == 0 || out.kvs.len() < limit) {
                    out.kvs.push(e.meta(k));
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
            changes: 0,
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
        // Revisions below `rev` leave the log entirely; the keys they
        // touched are the ones whose history may shrink.
        let end = self.log.partition_point(|e| e.rev.main <= rev);
        let at_rev_from = self.log.partition_point(|e| e.rev.main < rev);
        let at_rev: Vec<LogEntry> = self.log.range(at_rev_from..end).cloned().collect();
        self.pending.reserve(end);
        self.pending.extend(self.log.drain(..end).map(|e| e.key));
        // The puts of `rev` itself stay replayable (etcd keeps them as the
        // live versions a watch starting exactly at the compact revision
        // still sees): those the compaction keeps, i.e. still live at `rev`.
        // A put that a later op of the same revision deleted goes too.
        for e in at_rev.into_iter().rev() {
            let kept = self.index.get(e.key.as_ref()).is_some_and(|h| {
                h.position(e.rev)
                    .is_some_and(|i| i >= h.keep_from(rev) && !h.entries[i].tombstone)
            });
            if kept {
                self.log.push_front(e);
            }
        }
        // The log's buffer keeps its peak size otherwise (32 bytes per
        // change ever retained).
        if self.log.len() < self.log.capacity() / 4 {
            self.log.shrink_to_fit();
        }
        self.compact = rev;
        self.compacted = true;
        self.step(self.step_keys.unwrap_or(COMPACT_STEP_KEYS));
        Ok(())
    }

    /// Whether a compaction still has keys to process.
    pub fn compaction_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Apply the latest compaction to up to `max_keys` more of the keys it
    /// touched; once none are left, collect mostly dead value segments.
    /// Returns whether keys are left. Nothing a client can observe changes
    /// (see `pending`).
    pub fn compact_step(&mut self, max_keys: usize) -> bool {
        !self.pending.is_empty() && self.step(max_keys)
    }

    /// [`compact_step`](Self::compact_step), finishing up also when no key
    /// was pending (a compaction that touched none).
    fn step(&mut self, max_keys: usize) -> bool {
        let from = self.pending.len().saturating_sub(max_keys);
        let rev = self.compact;
        for k in self.pending.drain(from..) {
            let Some(h) = self.index.get_mut(k.as_ref()) else {
                continue;
            };
            self.size -= h.compact(k.len(), rev, &self.values);
            if h.entries.is_empty() {
                self.index.remove(k.as_ref());
            }
        }
        if !self.pending.is_empty() {
            return true;
        }
        self.pending = Vec::new();
        self.collect_values();
        false
    }

    /// Lower the number of keys [`compact`](Self::compact) processes at
    /// once (tests of the stepped path).
    #[cfg(test)]
    pub fn set_compact_step_keys(&mut self, n: usize) {
        self.step_keys = Some(n);
    }

    /// Move the live values out of mostly dead value segments, then drop
    /// those segments.
    fn collect_values(&mut self) {
        let victims = self.values.victims(GC_SEGMENTS_PER_COMPACTION);
        if victims.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let keys: Vec<IKey> = self
            .index
            .iter()
            .filter(|(_, h)| {
                h.entries
                    .iter()
                    .any(|e| Values::in_segments(&e.value, &victims))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut moved = 0usize;
        for k in &keys {
            let Some(h) = self.index.get_mut(k.as_ref()) else {
                continue;
            };
            for e in h.entries.iter_mut() {
                if !Values::in_segments(&e.value, &victims) {
                    continue;
                }
                match self.values.read(e.value) {
                    Ok(v) => {
                        let to = self.values.append(&v);
                        self.values.release(e.value);
                        e.value = to;
                        moved += v.len();
                    }
                    // The segment stays (it is still referenced); the read
                    // that needs this value will fail the same way.
                    Err(err) => tracing::error!(error = %err, "value store: cannot move a value"),
                }
            }
        }
        let dropped = self.values.forget(&victims);
        tracing::info!(
            segments = dropped.len(),
            keys = keys.len(),
            moved_bytes = moved,
            took_ms = started.elapsed().as_millis() as u64,
            "value store: collected segments"
        );
    }

    /// Changes of revisions `>= from`, up to `max_revs` whole revisions, in
    /// revision order; build each with [`event`](Self::event). Returns
    /// `Err(Compacted)` when `from` is below the compacted revision and
    /// history is therefore gone.
    pub fn events_from(
        &self,
        from: i64,
        max_revs: usize,
    ) -> Result<std::collections::vec_deque::Iter<'_, LogEntry>, MvccError> {
        // etcd: a watch may start at the compact revision at the earliest.
        if from < self.compact {
            return Err(MvccError::Compacted);
        }
        let start = self.log.partition_point(|e| e.rev.main < from);
        let mut end = start;
        let mut revs = 0;
        let mut last = None;
        while end < self.log.len() {
            let m = self.log[end].rev.main;
            if last != Some(m) {
                if revs == max_revs {
                    break;
                }
                revs += 1;
                last = Some(m);
            }
            end += 1;
        }
        Ok(self.log.range(start..end))
    }

    /// Build the event of a log entry; `with_prev` adds the value the key
    /// had before it, when still retained. `None` if the entry's revision
    /// was compacted meanwhile.
    pub fn event(&self, e: &LogEntry, with_prev: bool) -> Result<Option<Event>, MvccError> {
        let Some(h) = self.index.get(e.key.as_ref()) else {
            return Ok(None);
        };
        let Some(i) = h.position(e.rev) else {
            return Ok(None);
        };
        let x = &h.entries[i];
        let (kind, kv) = if x.tombstone {
            let kv = KeyValue {
                key: e.key.to_vec(),
                mod_revision: x.rev.main,
                ..Default::default()
            };
            (EventKind::Delete, kv)
        } else {
            (EventKind::Put, self.load(&x.meta(&e.key))?)
        };
        // Only what the compaction keeps (it may not have reached this key).
        let prev_at = with_prev
            .then(|| i.checked_sub(1))
            .flatten()
            .filter(|p| *p >= h.keep_from(self.compact));
        let prev = match prev_at.map(|p| &h.entries[p]) {
            Some(p) if !p.tombstone => Some(self.load(&p.meta(&e.key))?),
            _ => None,
        };
        Ok(Some(Event { kind, kv, prev }))
    }

    /// The value of `key` visible just before main revision `rev`.
    pub fn prev_of(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let Some((k, h)) = self.index.get_key_value(key) else {
            return Ok(None);
        };
        // Only what the compaction keeps (it may not have reached this key).
        let kept = h.kept(self.compact);
        let idx = kept.partition_point(|e| e.rev.main < rev);
        match idx.checked_sub(1).map(|i| &kept[i]) {
            Some(e) if !e.tombstone => Ok(Some(self.load(&e.meta(k))?)),
            _ => Ok(None),
        }
    }

    /// A hash of all retained history with main revision <= `rev`, the same on
    /// every member that has the same history. Returns (hash, compact_rev).
    /// To hash without holding a lock on the store, hash a [`Mvcc::snapshot`]
    /// (an O(1) copy) instead.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), MvccError> {
        let rev = self.check_rev(rev)?;
        Ok((
            hash_index(&self.index, &self.values, rev, self.compact)?,
            self.compact,
        ))
    }

    /// A point-in-time copy for snapshotting.
    pub fn snapshot(&self) -> MvccSnapshot {
        MvccSnapshot {
            index: self.index.clone(),
            values: self.values.clone(),
            current: self.current,
            compact: self.compact,
        }
    }

    /// Rebuild a store from a snapshot (the watch log is derived from history).
    pub fn from_snapshot(snap: MvccSnapshot) -> Self {
        let mut log: Vec<LogEntry> = Vec::new();
        let mut size = 0;
        let mut live = 0;
        let mut pending = Vec::new();
        for (k, hist) in snap.index.iter() {
            live += hist.latest().is_some() as usize;
            // Taken while the compaction was still in progress.
            if hist.keep_from(snap.compact) > 0 {
                pending.push(k.clone());
            }
            for e in &hist.entries {
                size += entry_size(k.len(), e);
                // The live puts of the compact revision itself stay
                // replayable (as `compact` keeps them).
                let at_compact = e.rev.main == snap.compact;
                if e.rev.main > snap.compact || (at_compact && !e.tombstone) {
                    log.push(LogEntry {
                        rev: e.rev,
                        key: k.clone(),
                    });
                }
            }
        }
        log.sort_unstable_by_key(|e| e.rev);
        Mvcc {
            index: snap.index,
            values: snap.values,
            log: log.into(),
            current: snap.current,
            compact: snap.compact,
            compacted: snap.compact > 0,
            live,
            size,
            peak: size,
            pending,
            step_keys: None,
        }
    }
}

/// A write transaction: every change gets the same main revision and
/// increasing sub revisions. Reads through it see its own writes.
pub struct WriteTxn<'a> {
    mvcc: &'a mut Mvcc,
    main: i64,
    /// Changes made so far (the next sub revision).
    changes: i64,
}

impl WriteTxn<'_> {
    /// The revision reads inside this transaction observe.
    pub fn read_rev(&self) -> i64 {
        if self.changes == 0 {
            self.main - 1
        } else {
            self.main
        }
    }

    /// Whether anything has been written so far.
    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    /// The store (for reads at `read_rev`).
    pub fn store(&self) -> &Mvcc {
        self.mvcc
    }

    /// The current live key-value of `key` as this transaction sees it.
    pub fn get(&self, key: &[u8]) -> Option<KvMeta> {
        let (k, h) = self.mvcc.index.get_key_value(key)?;
        h.latest().map(|e| e.meta(k))
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

    fn next_rev(&mut self, key: IKey) -> Revision {
        let rev = Revision {
            main: self.main,
            sub: self.changes,
        };
        self.changes += 1;
        self.mvcc.log.push_back(LogEntry { rev, key });
        rev
    }

    /// Put `key`; returns the previous live key-value.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KvMeta> {
        let prev = self.get(key);
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.main, 1),
        };
        let k = match &prev {
            Some(p) => p.key.clone(),
            None => IKey::from(key),
        };
        let rev = self.next_rev(k.clone());
        let entry = HistEntry {
            rev,
            create_revision,
            version,
            lease,
            value: self.mvcc.values.append(value),
            tombstone: false,
        };
        self.mvcc.size += entry_size(key.len(), &entry);
        self.mvcc.live += prev.is_none() as usize;
        match self.mvcc.index.get_mut(key) {
            Some(h) => h.push(entry),
            None => {
                let mut h = KeyHistory::default();
                h.push(entry);
                self.mvcc.index.insert(k, h);
            }
        }
        prev
    }

    /// Delete every live key in `range`; returns the deleted key-values in
    /// key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<KvMeta> {
        let victims: Vec<KvMeta> = self
            .mvcc
            .iter_range(range)
            .filter_map(|(k, h)| h.latest().map(|e| e.meta(k)))
            .collect();
        for prev in &victims {
            let rev = self.next_rev(prev.key.clone());
            let entry = HistEntry {
                rev,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: ValueRef::EMPTY,
                tombstone: true,
            };
            self.mvcc.size += entry_size(prev.key.len(), &entry);
            self.mvcc.live -= 1;
            self.mvcc
                .index
                .get_mut(prev.key.as_ref())
                .expect("invariant: victim exists")
                .push(entry);
        }
        victims
    }

    /// Finish: bump the revision if anything changed. Returns the store
    /// revision after the transaction.
    pub fn commit(self) -> i64 {
        if self.changes > 0 {
            self.mvcc.peak = self.mvcc.peak.max(self.mvcc.size);
            self.mvcc.current = self.main;
        }
        self.mvcc.current
    }
}

#[cfg(test)]
mod tests;
