//! raft::storage: raft-rs's `Storage` on top of raft-engine.
//!
//! raft-engine holds the log entries, the HardState, the ConfState and the
//! "truncated" marker (index and term of the last entry removed by
//! compaction). The raft thread is the only writer: it appends entries and
//! the HardState in one `LogBatch` per Ready (one fsync for many client
//! writes). A failed write or fsync panics on purpose: continuing after a
//! lost write could serve data raft never committed.
//!
//! Recent entry terms are cached in memory so that raft's frequent `term()`
//! calls do not read log files, and the newest entries themselves (up to
//! [`MAX_CACHED_BYTES`]) so that committing them (raft-rs fetches committed
//! entries from storage once they are stable) and replicating them to
//! followers does not read back from the file what was just written.
//!
//! After a state-machine snapshot the log is compacted ([`RaftStorage::compact_to`])
//! and raft-engine deletes the log files left without live data, so the
//! log on disk (and what a restart reads) stays around the entries not yet
//! covered by a snapshot.
//!
//! On open, raft-engine drops a damaged tail of the newest log file
//! (`TolerateTailCorruption`). That is right for a write torn by a crash, which
//! was never acknowledged, but raft-engine cuts at the FIRST damaged record,
//! so one flipped byte in the middle of the file would silently discard every
//! acknowledged entry after it. [`GuardedFs`] lets such a cut happen only when
//! nothing but zeros follows the damaged record; otherwise opening fails and
//! the file is left untouched (a CRC mismatch on the raft log is fatal).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::env::{FileSystem, Handle, Permission};
use raft_engine::{Engine, LogBatch, MessageExt};

/// The single raft group's id inside raft-engine.
const REGION: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";
/// This member's ID and its cluster's ID (16 bytes, big-endian).
const KEY_IDENTITY: &[u8] = b"identity";
const MAX_CACHED_TERMS: usize = 1 << 17;
/// Terms of the newest entries read into the cache when the log is opened.
const TERMS_READ_AT_OPEN: u64 = 1024;
/// Bound of the entry cache (payload bytes plus [`ENTRY_OVERHEAD`] each);
/// the newest entry is always kept.
const MAX_CACHED_BYTES: usize = 4 << 20;
/// What one cached entry costs besides its payload.
const ENTRY_OVERHEAD: usize = 64;
/// Size of one raft log file; compacted files are deleted once the log is
/// larger than two of them.
const LOG_FILE_MB: u64 = 32;

/// raft-engine's default file system, except that while the log is being
/// recovered it refuses to cut a file anywhere but at a torn tail.
pub struct GuardedFs {
    recovering: Arc<AtomicBool>,
}

/// The file system under [`GuardedFs`]: raft-engine's default, which a
/// `failpoints` build wraps to track what was fsynced (for a simulated
/// power loss, `failpoints::powerfail`).
#[cfg(not(feature = "failpoints"))]
type BaseFs = raft_engine::env::DefaultFileSystem;
#[cfg(feature = "failpoints")]
type BaseFs = crate::failpoints::powerfail::TrackingFs;
#[cfg(not(feature = "failpoints"))]
const BASE_FS: BaseFs = raft_engine::env::DefaultFileSystem;
#[cfg(feature = "failpoints")]
const BASE_FS: BaseFs = crate::failpoints::powerfail::TrackingFs;

type Fd = <BaseFs as FileSystem>::Handle;

/// A log file handle of [`GuardedFs`].
pub struct GuardedFd {
    fd: Arc<Fd>,
    path: PathBuf,
    recovering: Arc<AtomicBool>,
}

impl Handle for GuardedFd {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        if self.recovering.load(Ordering::Acquire) {
            check_torn_tail(&self.path, offset)?;
        }
        Handle::truncate(&*self.fd, offset)
    }
    fn file_size(&self) -> io::Result<usize> {
        Handle::file_size(&*self.fd)
    }
    fn sync(&self) -> io::Result<()> {
        Handle::sync(&*self.fd)
    }
}

impl GuardedFs {
    fn wrap(&self, path: &Path, fd: Fd) -> GuardedFd {
        GuardedFd {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
            recovering: self.recovering.clone(),
        }
    }
}

impl FileSystem for GuardedFs {
    type Handle = GuardedFd;
    type Reader = <BaseFs as FileSystem>::Reader;
    type Writer = <BaseFs as FileSystem>::Writer;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<GuardedFd> {
        Ok(self.wrap(path.as_ref(), BASE_FS.create(path.as_ref())?))
    }
    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> io::Result<GuardedFd> {
        Ok(self.wrap(path.as_ref(), BASE_FS.open(path.as_ref(), perm)?))
    }
    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        BASE_FS.delete(path)
    }
    fn rename<P: AsRef<Path>>(&self, src: P, dst: P) -> io::Result<()> {
        BASE_FS.rename(src, dst)
    }
    fn new_reader(&self, h: Arc<GuardedFd>) -> io::Result<Self::Reader> {
        BASE_FS.new_reader(h.fd.clone())
    }
    fn new_writer(&self, h: Arc<GuardedFd>) -> io::Result<Self::Writer> {
        BASE_FS.new_writer(h.fd.clone())
    }
}

/// Bytes a raft-engine file header may take (69 in format v2).
const FILE_HEADER_MAX: usize = 128;
/// raft-engine's log batch header: u64 BE `len << 8 | compression`, u64 BE item offset.
const BATCH_HEADER: usize = 16;

/// Allow recovery to cut `path` at `offset` only if the damaged record there
/// is the last thing in the file (a write torn by a crash: nothing but the
/// zeros raft-engine preallocates follows it). Otherwise acknowledged
/// entries after the damage would be dropped silently: fail instead.
fn check_torn_tail(path: &Path, offset: usize) -> io::Result<()> {
    let data = std::fs::read(path)?;
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let record_end = if offset == 0 {
        FILE_HEADER_MAX
    } else {
        let len = data.get(offset..offset + BATCH_HEADER).and_then(|h| {
            let len = (u64::from_be_bytes(h[..8].try_into().ok()?) >> 8) as usize;
            let items = u64::from_be_bytes(h[8..].try_into().ok()?) as usize;
            (len >= BATCH_HEADER && (BATCH_HEADER..=len).contains(&items)).then_some(len)
        });
        // A header that does not parse may itself be torn.
        offset.saturating_add(len.unwrap_or(BATCH_HEADER))
    };
    if end <= record_end {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "raft log file {} is corrupt at offset {offset}, and {} bytes of further log records follow \
         the damaged one: this is not a write torn by a crash; refusing to discard acknowledged \
         entries (restore this member's data dir from a backup)",
        path.display(),
        end - record_end
    )))
}

/// raft-engine's view of our entry type.
#[derive(Clone)]
pub struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

struct Inner {
    /// The HardState as raft last reported it: its commit index may be
    /// ahead of the one on disk (see [`RaftStorage::set_commit`]).
    hard_state: HardState,
    /// The commit index of the HardState last written to the engine.
    written_commit: u64,
    conf_state: ConfState,
    /// Index/term of the last compacted entry (0/0 if none).
    truncated: (u64, u64),
    last_index: u64,
    /// Terms of entries `term_first ..= last_index`.
    terms: VecDeque<u64>,
    term_first: u64,
    /// The newest entries, as written.
    cache: EntryCache,
}

/// The newest entries of the log, in memory: a suffix `first ..=
/// last_index` of it (empty after open, a snapshot install or a
/// compaction past it; refilled by appends).
#[derive(Default)]
struct EntryCache {
    first: u64,
    ents: VecDeque<Entry>,
    bytes: usize,
}

fn cached_size(e: &Entry) -> usize {
    e.data.len() + e.context.len() + ENTRY_OVERHEAD
}

impl EntryCache {
    /// Entries `entries` were written (replacing any suffix from the first
    /// one's index on).
    fn append(&mut self, entries: &[Entry]) {
        let Some(f) = entries.first() else { return };
        let end = self.first + self.ents.len() as u64;
        if self.ents.is_empty() || f.index < self.first || f.index > end {
            self.clear();
            self.first = f.index;
        } else {
            let keep = (f.index - self.first) as usize;
            for e in self.ents.drain(keep..) {
                self.bytes -= cached_size(&e);
            }
        }
        for e in entries {
            self.bytes += cached_size(e);
            self.ents.push_back(e.clone());
        }
        while self.bytes > MAX_CACHED_BYTES && self.ents.len() > 1 {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.ents.pop_front() {
            self.bytes -= cached_size(&e);
            self.first += 1;
        }
    }

    fn clear(&mut self) {
        self.ents.clear();
        self.bytes = 0;
    }

    /// Forget entries up to and including `index`.
    fn compact_to(&mut self, index: u64) {
        while !self.ents.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    /// Entries `low..high` limited as raft limits them (at least one, then
    /// while the encoded size stays within `max_size`), if all are cached.
    fn get(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        let end = self.first + self.ents.len() as u64;
        if self.ents.is_empty() || low < self.first || high > end || low >= high {
            return None;
        }
        let from = (low - self.first) as usize;
        let to = (high - self.first) as usize;
        let mut out: Vec<Entry> = self.ents.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size);
        Some(out)
    }
}

/// Takes a point-in-time view of the state machine (for raft snapshots).
pub type SnapSource = Arc<dyn Fn() -> crate::snapshot::SnapshotView + Send + Sync>;

/// Persistent raft log storage.
#[derive(Clone)]
pub struct RaftStorage {
    engine: Arc<Engine<GuardedFs>>,
    inner: Arc<RwLock<Inner>>,
    sync: bool,
    /// Where raft snapshots come from (set once the state machine exists).
    source: Arc<RwLock<Option<SnapSource>>>,
    /// Views handed to raft as snapshots, by receiving member, until the
    /// transport streams them.
    outgoing: Arc<parking_lot::Mutex<HashMap<u64, crate::snapshot::SnapshotView>>>,
    /// Held while writing the membership, the identity or the truncation
    /// marker, which more than one thread writes.
    kv_lock: Arc<parking_lot::Mutex<()>>,
}

fn engine_err(e: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RaftStorage {
    /// Open (or create) the log in `dir`. `sync` false is `--unsafe-no-fsync`.
    pub fn open(dir: &Path, sync: bool) -> Result<Self, raft_engine::Error> {
        Self::open_sized(dir, sync, raft_engine::ReadableSize::mb(LOG_FILE_MB))
    }

    fn open_sized(
        dir: &Path,
        sync: bool,
        file_size: raft_engine::ReadableSize,
    ) -> Result<Self, raft_engine::Error> {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            // The log only holds entries not yet covered by a snapshot plus
            // the catch-up margin (see `compact_to`). raft-engine deletes
            // compacted files only once the log exceeds `purge_threshold`
            // (10 GiB by default, sized for thousands of regions): with the
            // default, every entry ever written stayed on disk and was
            // re-read on every start.
            target_file_size: file_size,
            purge_threshold: raft_engine::ReadableSize(2 * file_size.0),
            // No reuse of purged files: a reused file keeps the previous
            // content past the new tail (raft-engine trims it only in its
            // own shutdown, which an exiting process skips), and
            // `check_torn_tail` cannot tell that from acknowledged records
            // following a damaged one (a 1M-key load once failed to
            // restart with "Checksum expected 55401690 but got 55401693",
            // a stale record signed for an older file).
            enable_log_recycle: false,
            ..Default::default()
        };
        // Without fsync (--unsafe-no-fsync) any unsynced suffix may be
        // damaged after a power loss: let raft-engine cut as it likes.
        let recovering = Arc::new(AtomicBool::new(sync));
        let fs = Arc::new(GuardedFs {
            recovering: recovering.clone(),
        });
        let engine = Arc::new(Engine::open_with_file_system(cfg, fs)?);
        recovering.store(false, Ordering::Release);
        let hard_state: HardState = engine
            .get_message(REGION, KEY_HARD_STATE)?
            .unwrap_or_default();
        let conf_state: ConfState = engine
            .get_message(REGION, KEY_CONF_STATE)?
            .unwrap_or_default();
        let truncated = match engine.get_message::<Entry>(REGION, KEY_TRUNCATED)? {
            Some(e) => (e.index, e.term),
            None => (0, 0),
        };
        let last_index = engine
            .last_index(REGION)
            .unwrap_or(truncated.0)
            .max(truncated.0);
        let first = engine.first_index(REGION).unwrap_or(last_index + 1);
        // Only the newest terms are read at open (reading a term means
        // reading and decoding its whole entry): raft asks about the tail
        // of the log, and the cache grows with every append. Older terms
        // are read from the log when asked for.
        let term_first = first.max(last_index.saturating_sub(TERMS_READ_AT_OPEN) + 1);
        let mut terms = VecDeque::new();
        if term_first <= last_index {
            let mut ents = Vec::new();
            engine.fetch_entries_to::<EntryExt>(
                REGION,
                term_first,
                last_index + 1,
                None,
                &mut ents,
            )?;
            terms.extend(ents.iter().map(|e| e.term));
        }
        Ok(RaftStorage {
            engine,
            inner: Arc::new(RwLock::new(Inner {
                written_commit: hard_state.commit,
                hard_state,
                conf_state,
                truncated,
                last_index,
                terms,
                term_first,
                cache: EntryCache::default(),
            })),
            sync,
            source: Arc::new(RwLock::new(None)),
            outgoing: Default::default(),
            kv_lock: Default::default(),
        })
    }

    /// Where raft snapshots come from: a view of the state machine as
    /// applied, with the membership at that index. Taking one is O(1);
    /// the transport serializes it while streaming.
    pub fn set_snapshot_source(&self, f: SnapSource) {
        *self.source.write() = Some(f);
    }

    /// The view raft chose to send to `to` as snapshot `index`.
    pub fn take_outgoing(&self, to: u64, index: u64) -> Option<crate::snapshot::SnapshotView> {
        let mut o = self.outgoing.lock();
        match o.remove(&to) {
            Some(v) if v.applied_index == index => Some(v),
            Some(v) => {
                o.insert(to, v);
                None
            }
            None => None,
        }
    }

    /// This member's ID and cluster ID, if recorded.
    pub fn identity(&self) -> Option<(u64, u64)> {
        let v = self.engine.get(REGION, KEY_IDENTITY)?;
        if v.len() != 16 {
            return None;
        }
        Some((
            u64::from_be_bytes(v[..8].try_into().ok()?),
            u64::from_be_bytes(v[8..].try_into().ok()?),
        ))
    }

    /// Record this member's ID and cluster ID (durably).
    pub fn set_identity(&self, member: u64, cluster: u64) {
        let mut v = member.to_be_bytes().to_vec();
        v.extend_from_slice(&cluster.to_be_bytes());
        let mut b = LogBatch::default();
        b.put(REGION, KEY_IDENTITY.to_vec(), v)
            .expect("invariant: identity key is not internal");
        let _g = self.kv_lock.lock();
        self.write(&mut b);
    }

    /// Replace the whole log by a snapshot (received from the leader, or
    /// restored offline into an empty log): every entry goes, the log
    /// restarts right after `meta.index` with `meta`'s membership (durably,
    /// in one write, keeping the vote and identity).
    pub fn install_snapshot(&self, meta: &SnapshotMetadata) {
        let _g = self.kv_lock.lock();
        let identity = self.engine.get(REGION, KEY_IDENTITY);
        let mut hs = self.inner.read().hard_state.clone();
        hs.term = hs.term.max(meta.term);
        // raft restores a snapshot only past its commit index, and nothing
        // after the snapshot is left in the log.
        hs.commit = meta.index;
        let cs = meta.get_conf_state().clone();
        let marker = Entry {
            index: meta.index,
            term: meta.term,
            ..Default::default()
        };
        let mut b = LogBatch::default();
        b.add_command(REGION, raft_engine::Command::Clean);
        b.put_message(REGION, KEY_TRUNCATED.to_vec(), &marker)
            .expect("invariant: marker encodes");
        b.put_message(REGION, KEY_HARD_STATE.to_vec(), &hs)
            .expect("invariant: HardState encodes");
        b.put_message(REGION, KEY_CONF_STATE.to_vec(), &cs)
            .expect("invariant: ConfState encodes");
        if let Some(id) = identity {
            b.put(REGION, KEY_IDENTITY.to_vec(), id)
                .expect("invariant: identity key is not internal");
        }
        self.write(&mut b);
        let mut i = self.inner.write();
        i.truncated = (meta.index, meta.term);
        i.last_index = meta.index;
        i.written_commit = hs.commit;
        i.hard_state = hs;
        i.conf_state = cs;
        i.terms.clear();
        i.term_first = meta.index + 1;
        i.cache.clear();
    }

    /// Whether nothing was ever written (a fresh member).
    pub fn is_empty(&self) -> bool {
        let i = self.inner.read();
        i.last_index == 0
            && i.hard_state == HardState::default()
            && i.conf_state == ConfState::default()
    }

    /// First index still present in the log.
    pub fn first_log_index(&self) -> u64 {
        self.inner.read().truncated.0 + 1
    }

    /// Last index in the log.
    pub fn last_log_index(&self) -> u64 {
        self.inner.read().last_index
    }

    /// The persisted HardState.
    pub fn hard_state(&self) -> HardState {
        self.inner.read().hard_state.clone()
    }

    /// The persisted ConfState.
    pub fn conf_state(&self) -> ConfState {
        self.inner.read().conf_state.clone()
    }

    /// Persist a new ConfState (durably).
    pub fn set_conf_state(&self, cs: ConfState) {
        let mut b = LogBatch::default();
        b.put_message(REGION, KEY_CONF_STATE.to_vec(), &cs)
            .expect("invariant: ConfState encodes");
        let _g = self.kv_lock.lock();
        self.write(&mut b);
        self.inner.write().conf_state = cs;
    }

    fn write(&self, b: &mut LogBatch) {
        self.write_with(b, self.sync)
    }

    fn write_with(&self, b: &mut LogBatch, sync: bool) {
        if let Err(e) = self.engine.write(b, sync) {
            panic!("raft log write failed; refusing to continue with possibly lost data: {e}");
        }
    }

    /// Append entries (truncating any conflicting suffix) and set the
    /// HardState, durably, in one write.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>) {
        self.append_sync(entries, hs, true)
    }

    /// [`append`](Self::append), fsynced only if `must_sync` (raft's
    /// `Ready::must_sync`: false when nothing but the HardState's commit
    /// index changed, which raft allows to be written asynchronously, as
    /// etcd does; a lost commit index is re-learned from the leader).
    pub fn append_sync(&self, entries: &[Entry], hs: Option<&HardState>, must_sync: bool) {
        let mut b = LogBatch::default();
        if !entries.is_empty() {
            b.add_entries::<EntryExt>(REGION, entries)
                .expect("invariant: entries encode");
        }
        // raft's HardState, or, when entries are written anyway, the one
        // whose commit index `set_commit` advanced since the last write.
        let hs = {
            let i = self.inner.read();
            match hs {
                Some(hs) => {
                    let mut hs = hs.clone();
                    hs.commit = hs.commit.max(i.hard_state.commit);
                    Some(hs)
                }
                None if !entries.is_empty() && i.hard_state.commit > i.written_commit => {
                    Some(i.hard_state.clone())
                }
                None => None,
            }
        };
        if let Some(hs) = &hs {
            b.put_message(REGION, KEY_HARD_STATE.to_vec(), hs)
                .expect("invariant: HardState encodes");
        }
        if b.is_empty() {
            return;
        }
        self.write_with(&mut b, self.sync && must_sync);
        let mut i = self.inner.write();
        if let Some(hs) = hs {
            i.written_commit = hs.commit;
            i.hard_state = hs;
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            // raft-engine truncates the old suffix from `first.index` on.
            if first.index < i.term_first {
                i.terms.clear();
                i.term_first = first.index;
            } else {
                let keep = (first.index - i.term_first) as usize;
                i.terms.truncate(keep);
            }
            i.terms.extend(entries.iter().map(|e| e.term));
            i.cache.append(entries);
            i.last_index = last.index;
            while i.terms.len() > MAX_CACHED_TERMS {
                i.terms.pop_front();
                i.term_first += 1;
            }
        }
    }

    /// Record a new commit index (from a LightReady) without a write of
    /// its own: it goes to disk with the next append of entries (or
    /// [`flush_commit`](Self::flush_commit)). A lost or lagging commit
    /// index is harmless: committed entries stay in the log and are
    /// committed again after a restart (by the leader, or by a single
    /// member's first entry of its new term), and recovery raises the
    /// commit index to the snapshot's applied index. (A write per commit
    /// cost the raft thread a raft-engine write and a pwrite per Ready.)
    pub fn set_commit(&self, commit: u64) {
        let mut i = self.inner.write();
        if i.hard_state.commit < commit {
            i.hard_state.commit = commit;
        }
    }

    /// Write a commit index that [`set_commit`](Self::set_commit) has not
    /// written yet (at shutdown), unsynced.
    pub fn flush_commit(&self) {
        let hs = {
            let i = self.inner.read();
            if i.hard_state.commit <= i.written_commit {
                return;
            }
            i.hard_state.clone()
        };
        let mut b = LogBatch::default();
        b.put_message(REGION, KEY_HARD_STATE.to_vec(), &hs)
            .expect("invariant: HardState encodes");
        self.write_with(&mut b, false);
        let mut i = self.inner.write();
        i.written_commit = i.written_commit.max(hs.commit);
    }

    /// Drop entries up to and including `index` (they are covered by a
    /// state-machine snapshot). The marker is written before the compaction
    /// so a crash in between leaves a consistent log.
    pub fn compact_to(&self, index: u64) {
        let term = match raft::Storage::term(self, index) {
            Ok(t) => t,
            Err(_) => return,
        };
        {
            let i = self.inner.read();
            if index <= i.truncated.0 || index > i.last_index {
                return;
            }
        }
        let marker = Entry {
            index,
            term,
            ..Default::default()
        };
        let mut b = LogBatch::default();
        b.put_message(REGION, KEY_TRUNCATED.to_vec(), &marker)
            .expect("invariant: marker encodes");
        // Rewrite the rarely written keys too: raft-engine deletes a log
        // file only when nothing live is left in it, and the identity and
        // membership (written once, at bootstrap) would otherwise pin the
        // first file and every file after it. (The HardState is rewritten
        // by the raft thread all the time.) `kv_lock` keeps a concurrent
        // membership change or snapshot install from being overwritten by
        // the older value read here.
        let guard = self.kv_lock.lock();
        if index <= self.inner.read().truncated.0 {
            return;
        }
        for key in [KEY_CONF_STATE, KEY_IDENTITY] {
            if let Some(v) = self.engine.get(REGION, key) {
                b.put(REGION, key.to_vec(), v)
                    .expect("invariant: the key is not internal");
            }
        }
        self.write(&mut b);
        self.engine.compact_to(REGION, index + 1);
        let mut i = self.inner.write();
        i.truncated = (index, term);
        while i.term_first <= index && !i.terms.is_empty() {
            i.terms.pop_front();
            i.term_first += 1;
        }
        if i.term_first <= index {
            i.term_first = index + 1;
        }
        i.cache.compact_to(index);
        drop(i);
        drop(guard);
        if let Err(e) = self.engine.purge_expired_files() {
            tracing::warn!(error = %e, "raft log purge failed");
        }
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let i = self.inner.read();
        Ok(RaftState {
            hard_state: i.hard_state.clone(),
            conf_state: i.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let (first, last) = {
            let i = self.inner.read();
            if low > i.truncated.0 && high <= i.last_index + 1 {
                if let Some(ents) = i.cache.get(low, high, max_size) {
                    return Ok(ents);
                }
            }
            (i.truncated.0 + 1, i.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            panic!("invariant: entries({low}, {high}) past last index {last}");
        }
        let mut ents = Vec::with_capacity((high - low) as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(
                REGION,
                low,
                high,
                max_size.map(|m| m as usize),
                &mut ents,
            )
            .map_err(engine_err)?;
        if ents.is_empty() && high > low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let i = self.inner.read();
        if idx == i.truncated.0 {
            return Ok(i.truncated.1);
        }
        if idx < i.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > i.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx >= i.term_first {
            return Ok(i.terms[(idx - i.term_first) as usize]);
        }
        drop(i);
        match self
            .engine
            .get_entry::<EntryExt>(REGION, idx)
            .map_err(engine_err)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.inner.read().truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.read().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || {
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ))
        };
        let Some(source) = self.source.read().clone() else {
            return unavailable();
        };
        let view = source();
        let cs = &view.conf_state;
        // The receiver refuses a snapshot whose membership lacks it (the
        // apply thread may not have caught up with the conf change that
        // added it yet): raft asks again later.
        if view.applied_index < request_index
            || view.applied_index < self.inner.read().truncated.0
            || !(cs.voters.contains(&to) || cs.learners.contains(&to))
        {
            return unavailable();
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = view.applied_index;
        meta.term = view.applied_term;
        meta.set_conf_state(cs.clone());
        self.outgoing.lock().insert(to, view);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 8].into(),
            ..Default::default()
        }
    }

    fn fetch(s: &RaftStorage, low: u64, high: u64, max: Option<u64>) -> Vec<(u64, u64)> {
        s.entries(low, high, max, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn cached_entries_follow_truncation_compaction_and_size_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path(), false).unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None);
        // A conflicting append replaces the suffix from index 6 on.
        s.append(&[entry(6, 2), entry(7, 2)], None);
        let want: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).chain([(6, 2), (7, 2)]).collect();
        assert_eq!(fetch(&s, 1, 8, None), want);
        assert_eq!(fetch(&s, 6, 8, None), vec![(6, 2), (7, 2)]);
        // Sizes limit as raft does: at least one entry, then while the
        // total fits (each test entry encodes to the same size).
        let one = u64::from(protobuf::Message::compute_size(&entry(1, 1)));
        assert_eq!(fetch(&s, 1, 8, Some(0)).len(), 1);
        assert_eq!(fetch(&s, 1, 8, Some(3 * one)).len(), 3);
        // After a reopen (empty cache) the file says the same.
        let cached: Vec<_> = (1..8).map(|i| fetch(&s, i, 8, Some(2 * one))).collect();
        s.compact_to(3);
        assert!(s
            .entries(3, 8, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(fetch(&s, 4, 8, None), want[3..].to_vec());
        drop(s);
        let s = RaftStorage::open(dir.path(), false).unwrap();
        assert_eq!(fetch(&s, 4, 8, None), want[3..].to_vec());
        for (i, c) in cached.iter().enumerate().skip(3) {
            assert_eq!(&fetch(&s, i as u64 + 1, 8, Some(2 * one)), c);
        }
        // An installed snapshot empties the log and the cache.
        s.append(&[entry(8, 2)], None);
        let meta = SnapshotMetadata {
            index: 20,
            term: 3,
            ..Default::default()
        };
        s.install_snapshot(&meta);
        s.append(&[entry(21, 3)], None);
        assert_eq!(fetch(&s, 21, 22, None), vec![(21, 3)]);
        assert!(s
            .entries(8, 9, None, GetEntriesContext::empty(false))
            .is_err());
    }

    #[test]
    fn the_entry_cache_keeps_a_bounded_suffix() {
        let mut c = EntryCache::default();
        let big = |i: u64| Entry {
            index: i,
            term: 1,
            data: vec![0u8; 1 << 20].into(),
            ..Default::default()
        };
        c.append(&(1..=10).map(big).collect::<Vec<_>>());
        assert!(c.bytes <= MAX_CACHED_BYTES);
        assert_eq!(c.first + c.ents.len() as u64, 11);
        assert!(
            c.get(1, 11, None).is_none(),
            "evicted entries are not served"
        );
        assert_eq!(c.get(10, 11, None).unwrap().len(), 1);
        // A gap (the log restarted past a snapshot) starts over.
        c.append(&[big(20)]);
        assert_eq!((c.first, c.ents.len()), (20, 1));
        c.compact_to(20);
        assert!(c.ents.is_empty() && c.bytes == 0);
    }

    fn log_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".raftlog"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn compaction_deletes_old_log_files_and_keeps_identity_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let size = raft_engine::ReadableSize::kb(64);
        let s = RaftStorage::open_sized(dir.path(), false, size).unwrap();
        // Written once, at the start: they must not pin the first file.
        s.set_identity(7, 9);
        s.set_conf_state(ConfState {
            voters: vec![7],
            ..Default::default()
        });
        for batch in 0..100u64 {
            let ents: Vec<Entry> = (1..=10)
                .map(|i| {
                    // Incompressible, as raft-engine compresses batches.
                    let mut data = vec![0u8; 1024];
                    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
                    Entry {
                        index: batch * 10 + i,
                        term: 1,
                        data: data.into(),
                        ..Default::default()
                    }
                })
                .collect();
            s.append(&ents, None);
        }
        let before = log_files(dir.path());
        assert!(before.len() > 10, "{before:?}");
        assert!(before.contains(&"0000000000000001.raftlog".to_string()));
        // Half the log stays: too much for raft-engine to move the live
        // data out of the old files by itself.
        s.compact_to(500);
        drop(s);
        let after = log_files(dir.path());
        assert!(
            !after.contains(&"0000000000000001.raftlog".to_string())
                && after.len() < before.len() * 3 / 4,
            "compacted log files stay: {after:?}"
        );
        let s = RaftStorage::open_sized(dir.path(), false, size).unwrap();
        assert_eq!(s.identity(), Some((7, 9)));
        assert_eq!(s.conf_state().voters, vec![7]);
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (501, 1000)
        );
        assert_eq!(s.term(500).unwrap(), 1);
        let got = s
            .entries(501, 1001, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 500);
        assert_eq!(got[499].data.len(), 1024);
    }

    /// A log that was compacted (old files purged) and written on into a
    /// new file, then the process ended without raft-engine's shutdown
    /// (which trims the active file): it must reopen with the torn-tail
    /// guard on. With raft-engine's log recycling, the new file was a
    /// reused one whose old records follow the tail, and the guard refused
    /// the member as corrupt (seen after a 1M-key load).
    #[test]
    fn a_compacted_and_rewritten_log_reopens_after_an_abrupt_exit() {
        let dir = tempfile::tempdir().unwrap();
        let size = raft_engine::ReadableSize::kb(64);
        let s = RaftStorage::open_sized(dir.path(), true, size).unwrap();
        let batch = |first: u64, n: u64| -> Vec<Entry> {
            (first..first + n)
                .map(|i| {
                    let mut data = vec![0u8; 1024];
                    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
                    Entry {
                        index: i,
                        term: 1,
                        data: data.into(),
                        ..Default::default()
                    }
                })
                .collect()
        };
        let mut next = 1;
        for _ in 0..100 {
            s.append(&batch(next, 10), None);
            next += 10;
        }
        // Almost everything compacted: purged files may be kept for reuse.
        s.compact_to(995);
        // Two more files' worth: the second new file is only partly written.
        for _ in 0..16 {
            s.append(&batch(next, 10), None);
            next += 10;
        }
        // The files as an abrupt exit leaves them (no shutdown trimming).
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "LOCK" {
                std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
            }
        }
        drop(s);
        let s = RaftStorage::open_sized(copy.path(), true, size)
            .unwrap_or_else(|e| panic!("the log did not reopen: {e}"));
        assert_eq!(s.last_index().unwrap(), next - 1);
    }

    #[test]
    fn installed_snapshot_replaces_the_log_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path(), true).unwrap();
        s.set_identity(7, 9);
        let ents: Vec<Entry> = (1..=20).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            vote: 3,
            commit: 10,
            ..Default::default()
        };
        s.append(&ents, Some(&hs));
        // A snapshot from the leader in the middle of our (divergent) log.
        let mut meta = SnapshotMetadata {
            index: 12,
            term: 2,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![3, 7];
        s.install_snapshot(&meta);
        let check = |s: &RaftStorage| {
            assert_eq!(s.first_index().unwrap(), 13);
            assert_eq!(
                s.last_index().unwrap(),
                12,
                "entries after the snapshot are gone"
            );
            assert_eq!(s.term(12).unwrap(), 2);
            assert!(s.term(11).is_err());
            let st = s.initial_state().unwrap();
            assert_eq!(st.hard_state.vote, 3, "the vote is kept");
            assert_eq!((st.hard_state.term, st.hard_state.commit), (2, 12));
            assert_eq!(st.conf_state.voters, vec![3, 7]);
            assert_eq!(s.identity(), Some((7, 9)));
        };
        check(&s);
        drop(s);
        let s = RaftStorage::open(dir.path(), true).unwrap();
        check(&s);
        // The log continues right after the snapshot.
        s.append(&[entry(13, 2), entry(14, 2)], None);
        drop(s);
        let s = RaftStorage::open(dir.path(), true).unwrap();
        assert_eq!(s.last_index().unwrap(), 14);
        let got = s
            .entries(13, 15, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![13, 14]
        );
    }

    #[test]
    fn unsynced_commit_only_write_is_kept_in_order_with_synced_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path(), true).unwrap();
        let mut hs = HardState {
            term: 2,
            vote: 1,
            commit: 1,
            ..Default::default()
        };
        s.append(&[entry(1, 2), entry(2, 2), entry(3, 2)], Some(&hs));
        // A commit-only Ready (raft's must_sync false) is written, unsynced.
        hs.commit = 3;
        s.append_sync(&[], Some(&hs), false);
        assert_eq!(s.hard_state().commit, 3);
        // A later synced write carries it to disk with everything before it.
        s.append_sync(&[entry(4, 2)], None, true);
        drop(s);
        let s = RaftStorage::open(dir.path(), true).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (2, 1, 3)
        );
        assert_eq!(s.last_index().unwrap(), 4);
    }

    #[test]
    fn a_new_commit_index_rides_on_the_next_append_of_entries() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = |s: RaftStorage| {
            drop(s);
            let s = RaftStorage::open(dir.path(), true).unwrap();
            (s.initial_state().unwrap().hard_state.commit, s)
        };
        let s = RaftStorage::open(dir.path(), true).unwrap();
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 1,
            ..Default::default()
        };
        s.append(&[entry(1, 2), entry(2, 2)], Some(&hs));
        // No write of its own: raft sees it at once, the disk does not.
        s.set_commit(2);
        assert_eq!(s.hard_state().commit, 2);
        let (commit, s) = on_disk(s);
        assert_eq!(commit, 1, "not written on its own");
        s.set_commit(2);
        // The next entries carry it, though raft had no HardState for them.
        s.append_sync(&[entry(3, 2)], None, true);
        let (commit, s) = on_disk(s);
        assert_eq!(commit, 2);
        assert_eq!(s.last_index().unwrap(), 3);
        // A commit index never goes back, whatever raft's HardState says.
        s.set_commit(3);
        s.append_sync(&[entry(4, 2)], Some(&hs), true);
        let (commit, s) = on_disk(s);
        assert_eq!(commit, 3);
        // At shutdown the raft loop writes what is left.
        s.set_commit(4);
        s.flush_commit();
        let (commit, s) = on_disk(s);
        assert_eq!(commit, 4);
        assert_eq!(s.hard_state().vote, 1, "the vote is kept");
    }
}
