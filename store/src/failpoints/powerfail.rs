//! failpoints::powerfail: lose every write that was not fsynced, then die
//! (test builds): a power loss of the page cache, simulated in-process.
//!
//! [`TrackingFs`] is raft-engine's default file system plus bookkeeping: per
//! log file, how long the file was at its last fsync (`durable`) and the
//! lowest offset written since (`dirty_from`). raft-engine only appends
//! (and truncates a torn tail on recovery, and reuses purged files by
//! renaming them), so after a power loss a file holds at least its first
//! `min(durable, dirty_from)` bytes and nothing later is guaranteed.
//! Snapshot files written through a temp name ([`track_unsynced`],
//! [`synced`], [`renamed`]) are lost whole until fsynced.
//!
//! `POST /debug/powerfail` runs [`powerfail`]: it stops every tracked write
//! and fsync (they block for good), truncates each raft-engine file to that
//! length, deletes raft-engine files never fsynced and snapshot temp files
//! not yet fsynced, and aborts the process (`std::process::abort`, no
//! shutdown, no response to the request). Restarting on the data dir then
//! sees what a machine that lost power would. Strata acknowledges a write
//! only after the raft-engine write holding it was fsynced, so no
//! acknowledged write may be missing afterwards; the HardState commit
//! index, written unsynced on purpose (as etcd does), may go back.
//!
//! Not modelled: directory entries (a file created and fsynced is assumed
//! to have a durable name; raft-engine fsyncs the directory when it rotates
//! files, and snapshot renames are followed by a directory fsync), and
//! writes torn inside a page. A run with `--unsafe-no-fsync` never fsyncs,
//! so a power loss loses every raft-engine write of that run.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use parking_lot::{Mutex, RwLock};
use raft_engine::env::{DefaultFileSystem, FileSystem, Handle, Permission, WriteExt};

type InnerFd = <DefaultFileSystem as FileSystem>::Handle;
type InnerFile = <DefaultFileSystem as FileSystem>::Writer;

/// Held (shared) by every tracked write, truncate and fsync; [`powerfail`]
/// takes it exclusively and never lets go, so nothing reaches the files
/// after they were cut.
static GATE: RwLock<()> = RwLock::new(());

/// Tracked raft-engine files by path.
static FILES: LazyLock<Mutex<HashMap<PathBuf, Arc<FileState>>>> = LazyLock::new(Default::default);

/// Files lost whole unless fsynced (snapshot temp and received files).
static UNSYNCED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

#[derive(Debug, Default)]
struct Durability {
    /// Whether the file was ever fsynced (or existed when opened).
    ever_synced: bool,
    /// File length at the last fsync.
    durable: usize,
    /// Lowest offset written since the last fsync.
    dirty_from: Option<usize>,
    /// Writes so far (to tell whether one raced an fsync).
    writes: u64,
    /// End of the furthest write by this process.
    end: usize,
}

impl Durability {
    /// Bytes certain to survive a power loss.
    fn survives(&self) -> usize {
        self.durable.min(self.dirty_from.unwrap_or(usize::MAX))
    }
}

/// One raft-engine file's durability.
#[derive(Debug, Default)]
struct FileState {
    d: Mutex<Durability>,
}

impl FileState {
    fn wrote(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let mut d = self.d.lock();
        d.dirty_from = Some(d.dirty_from.map_or(offset, |x| x.min(offset)));
        d.writes += 1;
        d.end = d.end.max(offset + len);
    }

    fn truncated(&self, offset: usize) {
        let mut d = self.d.lock();
        d.durable = d.durable.min(offset);
        d.dirty_from = d.dirty_from.filter(|x| *x < offset);
        d.end = d.end.min(offset);
    }
}

fn state_for(path: &Path, existing: Option<usize>) -> Arc<FileState> {
    let mut files = FILES.lock();
    if let Some(s) = files.get(path) {
        return s.clone();
    }
    let s = Arc::new(FileState::default());
    if let Some(len) = existing {
        // Whatever was on disk before this process touched the file
        // survived a restart already.
        let mut d = s.d.lock();
        d.ever_synced = true;
        d.durable = len;
    }
    files.insert(path.to_path_buf(), s.clone());
    s
}

/// raft-engine's default file system, tracking what has been fsynced.
pub struct TrackingFs;

/// A log file handle of [`TrackingFs`].
pub struct TrackedFd {
    fd: Arc<InnerFd>,
    state: Arc<FileState>,
}

impl Handle for TrackedFd {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        let _g = GATE.read();
        Handle::truncate(&*self.fd, offset)?;
        self.state.truncated(offset);
        Ok(())
    }

    fn file_size(&self) -> io::Result<usize> {
        self.fd.file_size()
    }

    fn sync(&self) -> io::Result<()> {
        let _g = GATE.read();
        let before = self.state.d.lock().writes;
        let len = self.fd.file_size()?;
        self.fd.sync()?;
        let mut d = self.state.d.lock();
        d.ever_synced = true;
        d.durable = len;
        if d.writes == before {
            d.dirty_from = None;
        }
        Ok(())
    }
}

/// A log file writer of [`TrackingFs`].
pub struct TrackedWriter {
    inner: InnerFile,
    pos: usize,
    state: Arc<FileState>,
}

impl Write for TrackedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _g = GATE.read();
        let n = self.inner.write(buf)?;
        self.state.wrote(self.pos, n);
        self.pos += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for TrackedWriter {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let p = self.inner.seek(pos)?;
        self.pos = p as usize;
        Ok(p)
    }
}

impl WriteExt for TrackedWriter {
    fn truncate(&mut self, offset: usize) -> io::Result<()> {
        let _g = GATE.read();
        self.inner.truncate(offset)?;
        self.pos = offset;
        self.state.truncated(offset);
        Ok(())
    }

    fn allocate(&mut self, offset: usize, size: usize) -> io::Result<()> {
        // Preallocated space is zeros, like space never written.
        let _g = GATE.read();
        self.inner.allocate(offset, size)
    }
}

/// A reader that needs no tracking.
pub struct TrackedReader(InnerFile);

impl Read for TrackedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for TrackedReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl FileSystem for TrackingFs {
    type Handle = TrackedFd;
    type Reader = TrackedReader;
    type Writer = TrackedWriter;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<TrackedFd> {
        let path = path.as_ref();
        let fd = DefaultFileSystem.create(path)?;
        // A new (or emptied) file: nothing in it is durable yet.
        let state = Arc::new(FileState::default());
        FILES.lock().insert(path.to_path_buf(), state.clone());
        Ok(TrackedFd {
            fd: Arc::new(fd),
            state,
        })
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> io::Result<TrackedFd> {
        let path = path.as_ref();
        let fd = DefaultFileSystem.open(path, perm)?;
        let state = state_for(path, Some(fd.file_size()?));
        Ok(TrackedFd {
            fd: Arc::new(fd),
            state,
        })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        let path = path.as_ref();
        DefaultFileSystem.delete(path)?;
        FILES.lock().remove(path);
        Ok(())
    }

    fn rename<P: AsRef<Path>>(&self, src: P, dst: P) -> io::Result<()> {
        let (src, dst) = (src.as_ref(), dst.as_ref());
        DefaultFileSystem.rename(src, dst)?;
        let mut files = FILES.lock();
        if let Some(s) = files.remove(src) {
            files.insert(dst.to_path_buf(), s);
        }
        Ok(())
    }

    fn new_reader(&self, h: Arc<TrackedFd>) -> io::Result<TrackedReader> {
        Ok(TrackedReader(DefaultFileSystem.new_reader(h.fd.clone())?))
    }

    fn new_writer(&self, h: Arc<TrackedFd>) -> io::Result<TrackedWriter> {
        Ok(TrackedWriter {
            inner: DefaultFileSystem.new_writer(h.fd.clone())?,
            pos: 0,
            state: h.state.clone(),
        })
    }
}

/// `path` (a file being written outside raft-engine) is lost whole on a
/// power loss until [`synced`] is called for it.
pub fn track_unsynced(path: &Path) {
    UNSYNCED.lock().insert(path.to_path_buf());
}

/// `path` was fsynced (or removed): it no longer needs tracking.
pub fn synced(path: &Path) {
    UNSYNCED.lock().remove(path);
}

/// `from` was renamed to `to` (an unsynced file stays unsynced).
pub fn renamed(from: &Path, to: &Path) {
    let mut u = UNSYNCED.lock();
    if u.remove(from) {
        u.insert(to.to_path_buf());
    }
}

/// What a power loss would do to each tracked file now: (path, `Some(len)`
/// to cut it to, or `None` to delete it). Files already as short are left out.
#[cfg(test)]
fn plan() -> Vec<(PathBuf, Option<u64>)> {
    plan_counted().0
}

/// [`plan`], and how many written bytes it loses (raft-engine files only;
/// preallocated zeros not counted).
fn plan_counted() -> (Vec<(PathBuf, Option<u64>)>, usize) {
    let mut out = Vec::new();
    let mut lost = 0;
    for (path, s) in FILES.lock().iter() {
        let d = s.d.lock();
        if !d.ever_synced {
            lost += d.end;
            out.push((path.clone(), None));
            continue;
        }
        let keep = d.survives();
        lost += d.end.saturating_sub(keep);
        match std::fs::metadata(path) {
            Ok(m) if m.len() > keep as u64 => out.push((path.clone(), Some(keep as u64))),
            _ => {}
        }
    }
    for p in UNSYNCED.lock().iter() {
        out.push((p.clone(), None));
    }
    out.sort();
    (out, lost)
}

/// Drop every unsynced write (see the module docs) and abort the process.
/// Never returns.
pub fn powerfail() -> ! {
    let _stop_writes = GATE.write();
    let (plan, lost) = plan_counted();
    for (path, action) in &plan {
        let r = match action {
            None => std::fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
            Some(len) => std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(*len)),
        };
        if let Err(e) = r {
            eprintln!("powerfail: cannot cut {}: {e}", path.display());
        }
    }
    tracing::error!(
        files = plan.len(),
        unsynced_bytes_lost = lost,
        "powerfail: dropped every write not fsynced; aborting (fault injection)"
    );
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_at(w: &mut TrackedWriter, off: u64, data: &[u8]) {
        w.seek(SeekFrom::Start(off)).unwrap();
        w.write_all(data).unwrap();
    }

    #[test]
    fn tracks_the_durable_prefix_of_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = TrackingFs;
        let a = dir.path().join("a.raftlog");
        let h = Arc::new(fs.create(&a).unwrap());
        let mut w = fs.new_writer(h.clone()).unwrap();
        write_at(&mut w, 0, b"header");
        // Never synced: lost whole.
        assert_eq!(plan_for(&a), Some(None));
        h.sync().unwrap();
        assert_eq!(plan_for(&a), None, "everything is durable");
        // Preallocated zeros, then an unsynced append inside them.
        w.allocate(6, 4096).unwrap();
        h.sync().unwrap();
        write_at(&mut w, 6, b"entry-1");
        assert_eq!(plan_for(&a), Some(Some(6)));
        h.sync().unwrap();
        write_at(&mut w, 13, b"entry-2");
        assert_eq!(plan_for(&a), Some(Some(13)));
        // A reopened file (after a restart) shares the same state.
        let h2 = fs.open(&a, Permission::ReadOnly).unwrap();
        assert!(Arc::ptr_eq(&h2.state, &h.state));
        // Truncation below the durable length lowers it.
        w.truncate(10).unwrap();
        assert_eq!(plan_for(&a), None, "the file is only 10 bytes long now");
        h.sync().unwrap();
        write_at(&mut w, 10, b"xx");
        assert_eq!(plan_for(&a), Some(Some(10)));
        // Renames (log recycling) carry the state; deletes forget it.
        let b = dir.path().join("b.raftlog");
        fs.rename(&a, &b).unwrap();
        assert_eq!(plan_for(&a), None);
        assert_eq!(plan_for(&b), Some(Some(10)));
        fs.delete(&b).unwrap();
        assert_eq!(plan_for(&b), None);
        // A file that existed before this process counts as durable.
        let c = dir.path().join("c.raftlog");
        std::fs::write(&c, b"old data").unwrap();
        let hc = Arc::new(fs.open(&c, Permission::ReadWrite).unwrap());
        assert_eq!(plan_for(&c), None);
        let mut wc = fs.new_writer(hc).unwrap();
        write_at(&mut wc, 8, b"new");
        assert_eq!(plan_for(&c), Some(Some(8)));
        // Whole files outside raft-engine.
        let t = dir.path().join("x.snap.tmp");
        track_unsynced(&t);
        assert_eq!(plan_for(&t), Some(None));
        let s = dir.path().join("x.snap");
        renamed(&t, &s);
        assert_eq!(plan_for(&s), Some(None));
        synced(&s);
        assert_eq!(plan_for(&s), None);
    }

    fn plan_for(p: &Path) -> Option<Option<u64>> {
        plan().into_iter().find(|(q, _)| q == p).map(|(_, a)| a)
    }
}
