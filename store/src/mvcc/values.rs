//! values: the value bytes of every retained revision, kept off the heap.
//!
//! Each value is appended, behind a CRC32, to a segment, and the index
//! holds only a 12-byte [`ValueRef`]. With a directory (a server: the
//! member's `values/` directory, see [`set_dir`]) segments are files read
//! with `pread` through the page cache, the way etcd reads bbolt's pages
//! through its mmap: a large key space costs page cache, which the kernel
//! can reclaim, not process memory. The files only cache state that is
//! durable elsewhere (the snapshot and the raft log): they are never
//! fsynced, [`set_dir`] empties the directory at start, and loading a
//! snapshot and replaying the log rebuilds them. Without a directory
//! (unit tests, offline tools) segments stay in memory.
//!
//! Appends go to the active segment through an in-memory tail, written to
//! the file in [`FLUSH_BYTES`] chunks (a failed write keeps the tail in
//! memory and is retried: no value is ever dropped). A segment is sealed at
//! its size limit. Compaction [`release`](Values::release)s the values it
//! drops; a sealed segment less than half live is a GC
//! [`victim`](Values::victims): `Mvcc` moves its live values to the active
//! segment and then [`forget`](Values::forget)s it. A segment's file is
//! deleted when the last handle holding it drops, so a point-in-time copy
//! (a snapshot being written, a HashKV) keeps reading what it saw.
//!
//! A value whose CRC does not match is never served: the read fails with
//! [`ValueError`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// The tail of the active segment is written out in chunks of this size.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// Default segment size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes in front of each value: its CRC32 (little endian).
const HEADER: u64 = 4;

/// Where one value is: segment, offset of its record, value length.
/// The empty value is stored nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueRef {
    seg: u32,
    off: u32,
    len: u32,
}

impl ValueRef {
    /// The empty value (also what tombstones carry).
    pub const EMPTY: ValueRef = ValueRef {
        seg: 0,
        off: 0,
        len: 0,
    };

    /// Length of the value in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn record_len(&self) -> u64 {
        if self.len == 0 {
            0
        } else {
            HEADER + self.len as u64
        }
    }
}

/// A value could not be read back intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value store: {0}")]
pub struct ValueError(pub String);

/// The process-wide directory for value segments (`None`: in memory).
static DIR: RwLock<Option<PathBuf>> = RwLock::new(None);
/// Segment IDs are unique in the process (0 is never used: see EMPTY).
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Keep value segments in `dir` from now on (`None`: in memory). The
/// directory is emptied first: whatever a previous run left there is stale.
/// Call at start, before any state machine is built.
pub fn set_dir(dir: Option<&Path>) -> io::Result<()> {
    if let Some(d) = dir {
        prepare_dir(d)?;
    }
    *DIR.write() = dir.map(Path::to_path_buf);
    Ok(())
}

/// Empty (or create) a segment directory.
fn prepare_dir(d: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(d)
}

/// The bytes of a segment past what its file holds, and its total size.
struct Tail {
    buf: Vec<u8>,
    /// Record bytes appended so far (file + `buf`).
    size: u64,
    /// When a write failed: retry once `buf` reaches this length.
    retry_at: usize,
}

struct Segment {
    id: u32,
    /// `None`: an in-memory segment (everything stays in `tail`).
    file: Option<(File, PathBuf)>,
    /// Bytes of the segment in the file; reads below need no lock.
    flushed: AtomicU64,
    tail: Mutex<Tail>,
    /// Record bytes some index entry still refers to.
    live: AtomicI64,
}

impl Segment {
    fn create(dir: Option<&Path>) -> io::Result<Segment> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let file = match dir {
            Some(d) => {
                let path = d.join(format!("{id:08}.val"));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                Some((f, path))
            }
            None => None,
        };
        Ok(Segment {
            id,
            file,
            flushed: AtomicU64::new(0),
            tail: Mutex::new(Tail {
                buf: Vec::new(),
                size: 0,
                retry_at: FLUSH_BYTES,
            }),
            live: AtomicI64::new(0),
        })
    }

    fn size(&self) -> u64 {
        self.tail.lock().size
    }

    /// Write the tail to the file (a no-op in memory). On failure the
    /// tail stays in memory and the next attempt waits for another chunk.
    fn flush(&self, t: &mut Tail) {
        let Some((f, path)) = &self.file else {
            return;
        };
        if t.buf.is_empty() {
            return;
        }
        let at = self.flushed.load(Ordering::Acquire);
        match f.write_all_at(&t.buf, at) {
            Ok(()) => {
                self.flushed
                    .store(at + t.buf.len() as u64, Ordering::Release);
                t.buf.clear();
                if t.buf.capacity() > 2 * FLUSH_BYTES {
                    t.buf.shrink_to(FLUSH_BYTES);
                }
                t.retry_at = FLUSH_BYTES;
            }
            Err(e) => {
                t.retry_at = t.buf.len() + FLUSH_BYTES;
                tracing::error!(file = %path.display(), error = %e, buffered = t.buf.len(),
                    "cannot write the value store; values stay in memory until a write succeeds");
            }
        }
    }

    fn append(&self, v: &[u8], limit: u64) -> Option<ValueRef> {
        let mut t = self.tail.lock();
        let rec = HEADER + v.len() as u64;
        if t.size > 0 && t.size + rec > limit {
            return None;
        }
        let off = t.size;
        t.buf.extend_from_slice(&crc32fast::hash(v).to_le_bytes());
        t.buf.extend_from_slice(v);
        t.size += rec;
        self.live.fetch_add(rec as i64, Ordering::Relaxed);
        if t.buf.len() >= t.retry_at {
            self.flush(&mut t);
        }
        Some(ValueRef {
            seg: self.id,
            off: off as u32,
            len: v.len() as u32,
        })
    }

    fn read(&self, r: ValueRef) -> Result<Vec<u8>, ValueError> {
        let off = r.off as u64;
        let mut rec = vec![0u8; r.record_len() as usize];
        // A record is flushed whole or not at all.
        let from_file = |rec: &mut [u8]| -> Result<(), ValueError> {
            let (f, path) = self
                .file
                .as_ref()
                .ok_or_else(|| ValueError(format!("segment {} has no record at {off}", self.id)))?;
            f.read_exact_at(rec, off)
                .map_err(|e| ValueError(format!("reading {}: {e}", path.display())))
        };
        if off + rec.len() as u64 <= self.flushed.load(Ordering::Acquire) {
            from_file(&mut rec)?;
        } else {
            let t = self.tail.lock();
            let flushed = self.flushed.load(Ordering::Acquire);
            if off >= flushed {
                let at = (off - flushed) as usize;
                let src = t.buf.get(at..at + rec.len()).ok_or_else(|| {
                    ValueError(format!(
                        "segment {} holds no record at {off} (+{})",
                        self.id,
                        rec.len()
                    ))
                })?;
                rec.copy_from_slice(src);
            } else {
                drop(t);
                from_file(&mut rec)?;
            }
        }
        let crc = u32::from_le_bytes(rec[..4].try_into().expect("invariant: 4 bytes"));
        if crc32fast::hash(&rec[4..]) != crc {
            return Err(ValueError(format!(
                "checksum mismatch for the {}-byte value at segment {} offset {off}",
                r.len, self.id
            )));
        }
        rec.drain(..4);
        Ok(rec)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One state machine's value segments. Cloning is cheap and gives a
/// handle that reads everything written so far; only the store's own
/// handle appends.
#[derive(Clone)]
pub struct Values {
    segs: Arc<HashMap<u32, Arc<Segment>>>,
    active: Arc<Segment>,
    dir: Option<PathBuf>,
    limit: u64,
}

impl Default for Values {
    fn default() -> Self {
        Values::new()
    }
}

impl Values {
    /// Values in the process-wide directory ([`set_dir`]), or in memory.
    pub fn new() -> Self {
        let dir = DIR.read().clone();
        Values::with_limit(dir, SEGMENT_BYTES)
    }

    /// Values in `dir` (or in memory), sealing segments at `limit` bytes.
    /// If a segment file cannot be created, values are kept in memory (and
    /// the failure logged): a full or read-only disk must not stop apply.
    pub fn with_limit(dir: Option<PathBuf>, limit: u64) -> Self {
        let limit = limit.clamp(64, u32::MAX as u64 / 2);
        let active = Arc::new(new_segment(dir.as_deref()));
        Values {
            segs: Arc::new(HashMap::from([(active.id, active.clone())])),
            active,
            dir,
            limit,
        }
    }

    /// Store `v`; returns where it is.
    pub fn append(&mut self, v: &[u8]) -> ValueRef {
        if v.is_empty() {
            return ValueRef::EMPTY;
        }
        if let Some(r) = self.active.append(v, self.limit) {
            return r;
        }
        self.seal();
        self.active
            .append(v, u64::MAX)
            .expect("invariant: an empty segment takes any value")
    }

    /// Start a new active segment; the old one is written out.
    fn seal(&mut self) {
        self.active.flush(&mut self.active.tail.lock());
        let seg = Arc::new(new_segment(self.dir.as_deref()));
        Arc::make_mut(&mut self.segs).insert(seg.id, seg.clone());
        self.active = seg;
    }

    /// Read a value back, verifying its CRC.
    pub fn read(&self, r: ValueRef) -> Result<Vec<u8>, ValueError> {
        if r.len == 0 {
            return Ok(Vec::new());
        }
        match self.segs.get(&r.seg) {
            Some(s) => s.read(r),
            None => Err(ValueError(format!("segment {} is gone", r.seg))),
        }
    }

    /// The index no longer refers to `r`.
    pub fn release(&self, r: ValueRef) {
        if let Some(s) = self.segs.get(&r.seg) {
            s.live.fetch_sub(r.record_len() as i64, Ordering::Relaxed);
        }
    }

    /// Sealed segments less than half live (at most `max`, emptiest first).
    pub fn victims(&self, max: usize) -> Vec<u32> {
        let mut v: Vec<(i64, u32)> = self
            .segs
            .values()
            .filter(|s| s.id != self.active.id)
            .filter_map(|s| {
                let live = s.live.load(Ordering::Relaxed);
                (live * 2 < s.size() as i64).then_some((live, s.id))
            })
            .collect();
        v.sort_unstable();
        v.into_iter().take(max).map(|(_, id)| id).collect()
    }

    /// Whether `r` lies in one of `segs`.
    pub fn in_segments(r: &ValueRef, segs: &[u32]) -> bool {
        r.len > 0 && segs.contains(&r.seg)
    }

    /// Drop the given segments if nothing refers to them any more (their
    /// files go once no copy holds them). Returns the IDs dropped.
    pub fn forget(&mut self, ids: &[u32]) -> Vec<u32> {
        let dead: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| *id != self.active.id)
            .filter(|id| {
                self.segs
                    .get(id)
                    .is_some_and(|s| s.live.load(Ordering::Relaxed) <= 0)
            })
            .collect();
        if !dead.is_empty() {
            let segs = Arc::make_mut(&mut self.segs);
            for id in &dead {
                segs.remove(id);
            }
        }
        dead
    }

    /// Segments held and their total record bytes (live, all).
    #[cfg(test)]
    fn stats(&self) -> (usize, i64, u64) {
        let live = self
            .segs
            .values()
            .map(|s| s.live.load(Ordering::Relaxed))
            .sum();
        let size = self.segs.values().map(|s| s.size()).sum();
        (self.segs.len(), live, size)
    }
}

fn new_segment(dir: Option<&Path>) -> Segment {
    match Segment::create(dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(dir = ?dir, error = %e,
                "cannot create a value segment file; keeping this segment in memory");
            Segment::create(None).expect("invariant: in-memory segments cannot fail")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for d in [None, Some(dir.path().to_path_buf())] {
            let mut v = Values::with_limit(d, 4096);
            let refs: Vec<(ValueRef, Vec<u8>)> = (0..500u32)
                .map(|i| {
                    let val = vec![(i % 251) as u8; (i % 97) as usize];
                    (v.append(&val), val)
                })
                .collect();
            for (r, val) in &refs {
                assert_eq!(&v.read(*r).unwrap(), val);
            }
            assert!(v.stats().0 > 5, "segments were sealed");
        }
    }

    #[test]
    fn reads_see_flushed_and_buffered_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Values::with_limit(Some(dir.path().into()), SEGMENT_BYTES);
        let big = vec![7u8; FLUSH_BYTES];
        let a = v.append(b"first");
        let b = v.append(&big); // pushes the tail past FLUSH_BYTES: written out
        let c = v.append(b"buffered");
        assert!(v.active.flushed.load(Ordering::Relaxed) > 0);
        assert_eq!(v.read(a).unwrap(), b"first");
        assert_eq!(v.read(b).unwrap(), big);
        assert_eq!(v.read(c).unwrap(), b"buffered");
    }

    #[test]
    fn a_corrupt_value_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Values::with_limit(Some(dir.path().into()), SEGMENT_BYTES);
        let r = v.append(&vec![1u8; FLUSH_BYTES]);
        let (f, _) = v.active.file.as_ref().unwrap();
        f.write_all_at(&[2], 100).unwrap();
        let err = v.read(r).unwrap_err();
        assert!(err.0.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn victims_are_forgotten_and_their_files_deleted_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Values::with_limit(Some(dir.path().into()), 1024);
        let refs: Vec<ValueRef> = (0..40).map(|_| v.append(&[9u8; 100])).collect();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = files();
        assert!(before >= 4);
        let first = refs[0].seg;
        assert!(v.victims(8).is_empty(), "everything is live");
        for r in refs.iter().filter(|r| r.seg == first) {
            v.release(*r);
        }
        assert_eq!(v.victims(8), vec![first]);
        let copy = v.clone();
        assert_eq!(v.forget(&[first]), vec![first]);
        assert!(v.read(refs[0]).is_err());
        assert_eq!(
            copy.read(refs[0]).unwrap(),
            vec![9u8; 100],
            "a copy still reads"
        );
        assert_eq!(files(), before, "the file stays while a copy holds it");
        drop(copy);
        assert_eq!(files(), before - 1);
    }

    #[test]
    fn a_stale_directory_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("values");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("00000001.val"), b"stale").unwrap();
        prepare_dir(&d).unwrap();
        let v = Values::with_limit(Some(d.clone()), SEGMENT_BYTES);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "only the new segment"
        );
        drop(v);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }
}
