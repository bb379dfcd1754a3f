//! snapshot: point-in-time, CRC-checked state-machine snapshot files.
//!
//! A snapshot holds everything [`StateMachine`] holds: applied index/term,
//! membership, every retained revision of every key down to the compact
//! revision, leases and alarms. The same byte format is used for the files
//! in `<data-dir>/member/snap/` and for the `Maintenance.Snapshot` stream.
//!
//! Format: the 8-byte magic `STRATA\x00\x01`, then records, each
//! `[u32 LE payload length][u32 LE crc32 of payload][payload]` where the
//! payload is a prost [`Record`]. The last record is `End`, carrying the
//! record count and a CRC over all record CRCs, so truncation and bit flips
//! anywhere are detected. Auth state (switch, revision, users, roles) is
//! one `Auth` record; files written before it existed simply lack that
//! record and load with auth disabled and empty, so the format stays
//! compatible without a new magic. Files are written to a temp name, fsynced, renamed
//! and the directory fsynced; loading tries the newest file first and falls
//! back to older ones.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::etcdserverpb::AlarmMember;
use proto::mvccpb::KeyValue;

use crate::apply::lease::Leases;
use crate::apply::StateMachine;
use crate::mvcc::{HistEntry, KeyHistory, Mvcc, MvccSnapshot, Revision, ValueRef, Values};

const MAGIC: &[u8; 8] = b"STRATA\x00\x01";
/// Keys per `Keys` record.
const KEYS_PER_RECORD: usize = 1024;
/// Largest record accepted when reading (guards against garbage lengths).
const MAX_RECORD: u32 = 256 << 20;

/// Snapshot read/write failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// I/O failure.
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    /// The data is not a valid snapshot (bad magic, CRC mismatch, truncation, decode error).
    #[error("snapshot corrupt: {0}")]
    Corrupt(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Meta {
    #[prost(uint64, tag = "1")]
    applied_index: u64,
    #[prost(uint64, tag = "2")]
    applied_term: u64,
    #[prost(int64, tag = "3")]
    current: i64,
    #[prost(int64, tag = "4")]
    compact: i64,
    #[prost(uint64, repeated, tag = "5")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "6")]
    learners: Vec<u64>,
    #[prost(message, repeated, tag = "7")]
    alarms: Vec<AlarmMember>,
    /// The member table.
    #[prost(message, repeated, tag = "8")]
    members: Vec<proto::etcdserverpb::Member>,
    #[prost(uint64, repeated, tag = "9")]
    voters_outgoing: Vec<u64>,
    #[prost(uint64, repeated, tag = "10")]
    learners_next: Vec<u64>,
    #[prost(bool, tag = "11")]
    auto_leave: bool,
    #[prost(uint64, repeated, tag = "12")]
    removed: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Rev {
    #[prost(int64, tag = "1")]
    main: i64,
    #[prost(int64, tag = "2")]
    sub: i64,
    #[prost(bool, tag = "3")]
    tombstone: bool,
    /// The key-value with `key` cleared (it is in [`Key`]).
    #[prost(message, optional, tag = "4")]
    kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Key {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    revs: Vec<Rev>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Keys {
    #[prost(message, repeated, tag = "1")]
    keys: Vec<Key>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
    #[prost(bytes = "vec", repeated, tag = "4")]
    keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeaseList {
    #[prost(message, repeated, tag = "1")]
    leases: Vec<Lease>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthRec {
    #[prost(bool, tag = "1")]
    enabled: bool,
    #[prost(uint64, tag = "2")]
    revision: u64,
    #[prost(message, repeated, tag = "3")]
    users: Vec<proto::authpb::User>,
    #[prost(message, repeated, tag = "4")]
    roles: Vec<proto::authpb::Role>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct End {
    #[prost(uint64, tag = "1")]
    records: u64,
    #[prost(uint32, tag = "2")]
    digest: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5")]
    body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Body {
    #[prost(message, tag = "1")]
    Meta(Meta),
    #[prost(message, tag = "2")]
    Keys(Keys),
    #[prost(message, tag = "3")]
    Leases(LeaseList),
    #[prost(message, tag = "4")]
    End(End),
    #[prost(message, tag = "5")]
    Auth(AuthRec),
}

/// An immutable point-in-time view of the state machine, cheap to take.
#[derive(Clone)]
pub struct SnapshotView {
    /// Key space.
    pub mvcc: MvccSnapshot,
    /// Leases.
    pub leases: Leases,
    /// Alarms.
    pub alarms: Vec<AlarmMember>,
    /// Applied index.
    pub applied_index: u64,
    /// Applied term.
    pub applied_term: u64,
    /// Raft membership at `applied_index`.
    pub conf_state: raft::eraftpb::ConfState,
    /// The member table.
    pub members: Vec<proto::etcdserverpb::Member>,
    /// Removed member IDs.
    pub removed: Vec<u64>,
    /// Users, roles and the auth switch.
    pub auth: crate::auth::AuthStore,
}

impl StateMachine {
    /// A point-in-time view for snapshotting (O(1) in the key count).
    pub fn view(&self) -> SnapshotView {
        SnapshotView {
            mvcc: self.mvcc.snapshot(),
            leases: self.leases.clone(),
            alarms: self.alarms.clone(),
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            conf_state: self.conf_state.clone(),
            members: self.member_list(),
            removed: self.removed.iter().copied().collect(),
            auth: self.auth.clone(),
        }
    }
}

struct RecordWriter<W: Write> {
    w: W,
    records: u64,
    digest: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    fn put(&mut self, body: Body) -> io::Result<()> {
        let payload = Record { body: Some(body) }.encode_to_vec();
        let crc = crc32fast::hash(&payload);
        self.w.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.write_all(&payload)?;
        self.records += 1;
        self.digest.update(&crc.to_le_bytes());
        self.bytes += 8 + payload.len() as u64;
        Ok(())
    }
}

/// Serialize a view. Returns the number of bytes written.
pub fn write_to<W: Write>(view: &SnapshotView, w: W) -> io::Result<u64> {
    let mut rw = RecordWriter {
        w,
        records: 0,
        digest: crc32fast::Hasher::new(),
        bytes: MAGIC.len() as u64,
    };
    rw.w.write_all(MAGIC)?;
    rw.put(Body::Meta(Meta {
        applied_index: view.applied_index,
        applied_term: view.applied_term,
        current: view.mvcc.current,
        compact: view.mvcc.compact,
        voters: view.conf_state.voters.clone(),
        learners: view.conf_state.learners.clone(),
        alarms: view.alarms.clone(),
        members: view.members.clone(),
        voters_outgoing: view.conf_state.voters_outgoing.clone(),
        learners_next: view.conf_state.learners_next.clone(),
        auto_leave: view.conf_state.auto_leave,
        removed: view.removed.clone(),
    }))?;
    let mut batch = Vec::with_capacity(KEYS_PER_RECORD);
    for (k, hist) in view.mvcc.index.iter() {
        // What the compaction keeps, also where it has not reached yet; a
        // key it drops entirely is not written.
        let kept = hist.kept(view.mvcc.compact);
        if kept.is_empty() {
            continue;
        }
        batch.push(Key {
            key: k.to_vec(),
            revs: kept
                .iter()
                .map(|e| {
                    let kv = if e.tombstone {
                        KeyValue {
                            mod_revision: e.rev.main,
                            ..Default::default()
                        }
                    } else {
                        KeyValue {
                            key: Vec::new(),
                            create_revision: e.create_revision,
                            mod_revision: e.rev.main,
                            version: e.version,
                            value: view.mvcc.values.read(e.value).map_err(io::Error::other)?,
                            lease: e.lease,
                        }
                    };
                    Ok(Rev {
                        main: e.rev.main,
                        sub: e.rev.sub,
                        tombstone: e.tombstone,
                        kv: Some(kv),
                    })
                })
                .collect::<io::Result<_>>()?,
        });
        if batch.len() == KEYS_PER_RECORD {
            rw.put(Body::Keys(Keys {
                keys: std::mem::take(&mut batch),
            }))?;
        }
    }
    if !batch.is_empty() {
        rw.put(Body::Keys(Keys { keys: batch }))?;
    }
    rw.put(Body::Leases(LeaseList {
        leases: view
            .leases
            .iter()
            .map(|(id, l)| Lease {
                id: *id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
                keys: l.keys.iter().cloned().collect(),
            })
            .collect(),
    }))?;
    rw.put(Body::Auth(AuthRec {
        enabled: view.auth.enabled,
        revision: view.auth.revision,
        users: view.auth.users.values().cloned().collect(),
        roles: view.auth.roles.values().cloned().collect(),
    }))?;
    let end = End {
        records: rw.records,
        digest: rw.digest.clone().finalize(),
    };
    rw.put(Body::End(end))?;
    rw.w.flush()?;
    Ok(rw.bytes)
}

fn corrupt(msg: impl Into<String>) -> SnapError {
    SnapError::Corrupt(msg.into())
}

/// Decode a snapshot into a state machine, verifying every CRC.
pub fn read_from<R: Read + Send>(r: R) -> Result<StateMachine, SnapError> {
    parse(BufReader::with_capacity(1 << 20, r))
}

/// Like [`read_from`] on a whole file's bytes, which must end with the end
/// record, or with fewer than 512 zero bytes after it when `padded` (the
/// body of an `etcdctl snapshot save` file). Other trailing bytes (say, a
/// truncated saved file that lost part of its SHA-256 trailer) are an error.
pub fn read_exact_from(mut bytes: &[u8], padded: bool) -> Result<StateMachine, SnapError> {
    // By reference: `bytes` must advance past the end record.
    let sm = parse(Read::by_ref(&mut bytes))?;
    let padding_ok = padded && bytes.len() < 512 && bytes.iter().all(|b| *b == 0);
    if !bytes.is_empty() && !padding_ok {
        return Err(corrupt(format!(
            "{} bytes of trailing data after the end record",
            bytes.len()
        )));
    }
    Ok(sm)
}

/// A verified record, decoded, as the reading thread hands it on.
enum Item {
    Meta(Meta),
    /// Keys in file (key) order, with their revisions and values.
    Keys(Vec<Key>),
    Leases(LeaseList),
    Auth(AuthRec),
}

/// Records decoded ahead of the thread building the index.
const RECORDS_AHEAD: usize = 8;

/// Load in two stages: a reading thread verifies and decodes the records
/// (I/O, CRCs, protobuf decoding), this thread stores the values in the
/// value segments and inserts each key's history into the index; they
/// overlap, so a restart takes about the longer of the two rather than
/// their sum.
fn parse<R: Read + Send>(r: R) -> Result<StateMachine, SnapError> {
    let mut sm = StateMachine::default();
    let mut index: imbl::OrdMap<crate::mvcc::IKey, KeyHistory> = imbl::OrdMap::new();
    let mut values = Values::new();
    let (mut current, mut compact) = (1, 0);
    let mut saw_meta = false;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(RECORDS_AHEAD);
        let reader = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn_scoped(scope, move || read_records(r, tx))
            .map_err(SnapError::Io)?;
        for item in rx {
            match item {
                Item::Meta(m) => {
                    saw_meta = true;
                    sm.applied_index = m.applied_index;
                    sm.applied_term = m.applied_term;
                    sm.conf_state = raft::eraftpb::ConfState {
                        voters: m.voters,
                        learners: m.learners,
                        voters_outgoing: m.voters_outgoing,
                        learners_next: m.learners_next,
                        auto_leave: m.auto_leave,
                        ..Default::default()
                    };
                    sm.alarms = m.alarms;
                    sm.members = m.members.into_iter().map(|a| (a.id, a)).collect();
                    sm.removed = m.removed.into_iter().collect();
                    current = m.current;
                    compact = m.compact;
                }
                Item::Keys(keys) => {
                    for k in keys {
                        let (k, hist) = key_history(k, &mut values);
                        index.insert(k, hist);
                    }
                }
                Item::Leases(ls) => {
                    for l in ls.leases {
                        sm.leases.grant(l.id, l.ttl);
                        sm.leases.checkpoint(l.id, l.remaining_ttl);
                        for k in l.keys {
                            sm.leases.attach(l.id, &k);
                        }
                    }
                }
                Item::Auth(a) => {
                    sm.auth = crate::auth::AuthStore {
                        enabled: a.enabled,
                        revision: a.revision,
                        users: a
                            .users
                            .into_iter()
                            .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
                            .collect(),
                        roles: a
                            .roles
                            .into_iter()
                            .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
                            .collect(),
                    };
                }
            }
        }
        // The channel closed: the reader reached the end record or failed.
        reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    if !saw_meta {
        return Err(corrupt("no metadata record"));
    }
    sm.mvcc = Mvcc::from_snapshot(MvccSnapshot {
        index,
        values,
        current,
        compact,
    });
    Ok(sm)
}

/// Read, verify and decode every record up to and including the end
/// record, handing them to `tx` in order. Returns early (Ok) if the
/// receiver is gone.
fn read_records<R: Read>(mut r: R, tx: std::sync::mpsc::SyncSender<Item>) -> Result<(), SnapError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| corrupt("file too short for the snapshot header"))?;
    if &magic != MAGIC {
        return Err(corrupt("bad magic: not a Strata snapshot"));
    }
    let mut records = 0u64;
    let mut digest = crc32fast::Hasher::new();
    let mut payload = Vec::new();
    loop {
        let mut hdr = [0u8; 8];
        r.read_exact(&mut hdr)
            .map_err(|_| corrupt(format!("truncated after {records} records (no end record)")))?;
        let len = u32::from_le_bytes(hdr[..4].try_into().expect("invariant: 4 bytes"));
        let crc = u32::from_le_bytes(hdr[4..].try_into().expect("invariant: 4 bytes"));
        if len > MAX_RECORD {
            return Err(corrupt(format!(
                "record {records} has implausible length {len}"
            )));
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)
            .map_err(|_| corrupt(format!("record {records} truncated")))?;
        if crc32fast::hash(&payload) != crc {
            return Err(corrupt(format!("record {records}: crc mismatch")));
        }
        let rec = Record::decode(payload.as_slice())
            .map_err(|e| corrupt(format!("record {records}: {e}")))?;
        let item = match rec.body {
            Some(Body::Meta(m)) => Item::Meta(m),
            Some(Body::Keys(ks)) => Item::Keys(ks.keys),
            Some(Body::Leases(ls)) => Item::Leases(ls),
            Some(Body::Auth(a)) => Item::Auth(a),
            Some(Body::End(e)) => {
                if e.records != records || e.digest != digest.clone().finalize() {
                    return Err(corrupt("end record does not match the records read"));
                }
                return Ok(());
            }
            None => return Err(corrupt(format!("record {records}: empty"))),
        };
        if tx.send(item).is_err() {
            return Ok(());
        }
        digest.update(&crc.to_le_bytes());
        records += 1;
    }
}

/// One decoded key and its history, as the index holds them (the values
/// go to `values`).
fn key_history(k: Key, values: &mut Values) -> (crate::mvcc::IKey, KeyHistory) {
    let mut hist = KeyHistory::default();
    hist.entries.reserve_exact(k.revs.len());
    for rv in k.revs {
        let kv = rv.kv.unwrap_or_default();
        hist.entries.push(HistEntry {
            rev: Revision {
                main: rv.main,
                sub: rv.sub,
            },
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: if rv.tombstone {
                ValueRef::EMPTY
            } else {
                values.append(&kv.value)
            },
            tombstone: rv.tombstone,
        });
    }
    (k.key.into(), hist)
}

/// The directory of snapshot files.
pub struct SnapDir {
    dir: PathBuf,
    keep: usize,
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl SnapDir {
    /// Open (creating) the directory. `max` is `--max-snapshots`: 0 keeps
    /// every file; otherwise the 2 newest are kept. Older files are of no
    /// use to recovery (the raft log is compacted up to the second newest
    /// snapshot, so it cannot replay from an older one), and each holds the
    /// whole key space: keeping etcd's default of 5 (whose `.snap` files
    /// hold only the membership) cost three times the data size on disk.
    pub fn open(dir: PathBuf, max: usize) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(SnapDir {
            dir,
            keep: if max == 0 { usize::MAX } else { 2 },
        })
    }

    /// Snapshot files, newest (highest index) first.
    pub fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(hex) = name.strip_suffix(".snap") {
                if let Ok(idx) = u64::from_str_radix(hex, 16) {
                    v.push((idx, p));
                }
            }
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(v)
    }

    /// Where a snapshot received from the leader is written until raft has
    /// installed it (see [`SnapDir::promote_received`]).
    pub fn recv_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}.snap.recv"))
    }

    /// Received snapshot files not yet installed, by index.
    pub fn received(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(hex) = name.strip_suffix(".snap.recv") {
                if let Ok(idx) = u64::from_str_radix(hex, 16) {
                    v.push((idx, p));
                }
            }
        }
        Ok(v)
    }

    /// Make a received snapshot the newest regular snapshot file (durably).
    pub fn promote_received(&self, index: u64, sync: bool) -> io::Result<()> {
        let to = self.dir.join(format!("{index:016x}.snap"));
        fs::rename(self.recv_path(index), &to)?;
        if sync {
            fsync_dir(&self.dir)?;
        }
        // Older received files were refused by raft or superseded.
        for (i, p) in self.received()? {
            if i < index {
                let _ = fs::remove_file(p);
            }
        }
        self.purge()
    }

    /// Load and verify the snapshot file at `index`.
    pub fn load(&self, index: u64) -> Result<StateMachine, SnapError> {
        let p = self.dir.join(format!("{index:016x}.snap"));
        let sm = read_from(fs::File::open(&p)?)?;
        if sm.applied_index != index {
            return Err(corrupt("applied index does not match the file name"));
        }
        Ok(sm)
    }

    /// Durably write a snapshot file; returns (path, bytes).
    pub fn save(&self, view: &SnapshotView, sync: bool) -> io::Result<(PathBuf, u64)> {
        let name = format!("{:016x}.snap", view.applied_index);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let f = fs::File::create(&tmp)?;
        #[cfg(feature = "failpoints")]
        crate::failpoints::powerfail::track_unsynced(&tmp);
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let n = write_to(view, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        // Fault injection: `return` abandons this snapshot.
        #[cfg(feature = "failpoints")]
        if crate::failpoints::eval(crate::failpoints::SNAPSHOT_SAVE).is_some() {
            drop(f);
            let _ = fs::remove_file(&tmp);
            crate::failpoints::powerfail::synced(&tmp);
            return Err(io::Error::other(format!(
                "failpoint {} abandoned the snapshot",
                crate::failpoints::SNAPSHOT_SAVE
            )));
        }
        if sync {
            f.sync_all()?;
            #[cfg(feature = "failpoints")]
            crate::failpoints::powerfail::synced(&tmp);
        }
        let path = self.dir.join(&name);
        fs::rename(&tmp, &path)?;
        #[cfg(feature = "failpoints")]
        crate::failpoints::powerfail::renamed(&tmp, &path);
        if sync {
            fsync_dir(&self.dir)?;
        }
        self.purge()?;
        Ok((path, n))
    }

    fn purge(&self) -> io::Result<()> {
        for (_, p) in self.list()?.into_iter().skip(self.keep) {
            fs::remove_file(p)?;
        }
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// Load the newest snapshot that verifies. Corrupt files are reported
    /// through `on_corrupt` and skipped. Returns `Ok(None)` when there are no
    /// snapshot files at all, and an error when files exist but none verifies.
    pub fn load_newest(
        &self,
        mut on_corrupt: impl FnMut(&Path, &SnapError),
    ) -> Result<Option<StateMachine>, SnapError> {
        let files = self.list()?;
        if files.is_empty() {
            return Ok(None);
        }
        for (idx, p) in &files {
            match fs::File::open(p)
                .map_err(SnapError::from)
                .and_then(read_from)
            {
                Ok(sm) if sm.applied_index == *idx => return Ok(Some(sm)),
                Ok(_) => on_corrupt(p, &corrupt("applied index does not match the file name")),
                Err(e) => on_corrupt(p, &e),
            }
        }
        Err(corrupt(format!(
            "none of the {} snapshot files in {} verifies",
            files.len(),
            self.dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KeyRange;

    fn sample() -> StateMachine {
        let mut sm = StateMachine::default();
        sm.leases.grant(7, 30);
        for i in 0..3000u32 {
            let mut t = sm.mvcc.write();
            t.put(format!("k{:05}", i % 1500).as_bytes(), &[i as u8; 10], 0);
            t.commit();
        }
        let mut t = sm.mvcc.write();
        t.delete_range(&KeyRange::new(b"k00010", b"k00020"));
        t.commit();
        sm.mvcc.compact(1000).unwrap();
        sm.applied_index = 42;
        sm.applied_term = 3;
        sm.conf_state.voters = vec![1];
        sm.members.insert(
            1,
            proto::etcdserverpb::Member {
                id: 1,
                name: "one".into(),
                peer_ur_ls: vec!["http://p".into()],
                ..Default::default()
            },
        );
        sm.removed.insert(9);
        let cfg = crate::apply::ApplyConfig {
            min_lease_ttl: 1,
            tokens: None,
        };
        use crate::auth::{AuthOp, AuthRequest};
        use proto::etcdserverpb as pb;
        for op in [
            AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "$2b$04$hash".into(),
                ..Default::default()
            }),
            AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() }),
            AuthOp::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(proto::authpb::Permission {
                    perm_type: 2,
                    key: b"a".to_vec(),
                    range_end: vec![0],
                }),
            }),
            AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            AuthOp::Enable(Default::default()),
        ] {
            sm.apply(crate::request::Op::Auth(AuthRequest { op: Some(op) }), &cfg)
                .unwrap();
        }
        sm
    }

    #[test]
    fn roundtrip_preserves_history_and_hash() {
        let sm = sample();
        let mut buf = Vec::new();
        write_to(&sm.view(), &mut buf).unwrap();
        let back = read_from(buf.as_slice()).unwrap();
        assert_eq!(back.applied_index, 42);
        assert_eq!(back.conf_state.voters, vec![1]);
        assert_eq!(back.members, sm.members);
        assert_eq!(back.removed, sm.removed);
        assert_eq!(back.mvcc.current_rev(), sm.mvcc.current_rev());
        assert_eq!(back.mvcc.compact_rev(), 1000);
        assert_eq!(back.leases, sm.leases);
        assert!(back.auth.enabled);
        assert_eq!(back.auth, sm.auth);
        let cur = sm.mvcc.current_rev();
        assert_eq!(
            back.mvcc.hash_kv(cur).unwrap(),
            sm.mvcc.hash_kv(cur).unwrap()
        );
        assert_eq!(
            back.mvcc.hash_kv(2000).unwrap(),
            sm.mvcc.hash_kv(2000).unwrap()
        );
        // Watch history survives: events from 1500 onward are identical.
        let events = |m: &crate::mvcc::Mvcc| -> Vec<_> {
            m.events_from(1500, 10)
                .unwrap()
                .map(|e| {
                    let ev = m.event(e, true).unwrap().unwrap();
                    (e.rev, ev.kind, ev.kv, ev.prev)
                })
                .collect()
        };
        let a = events(&sm.mvcc);
        assert_eq!(a.len(), 10);
        assert_eq!(a, events(&back.mvcc));
    }

    #[test]
    fn snapshot_without_auth_record_loads_with_auth_disabled() {
        // The format before auth existed: Meta, then End.
        let mut buf = Vec::new();
        let mut rw = RecordWriter {
            w: &mut buf,
            records: 0,
            digest: crc32fast::Hasher::new(),
            bytes: 0,
        };
        rw.w.write_all(MAGIC).unwrap();
        rw.put(Body::Meta(Meta {
            applied_index: 5,
            current: 1,
            ..Default::default()
        }))
        .unwrap();
        let end = End {
            records: rw.records,
            digest: rw.digest.clone().finalize(),
        };
        rw.put(Body::End(end)).unwrap();
        let sm = read_from(buf.as_slice()).unwrap();
        assert_eq!(sm.applied_index, 5);
        assert_eq!(sm.auth, crate::auth::AuthStore::default());
        assert!(!sm.auth.enabled);
    }

    #[test]
    fn every_bit_flip_and_truncation_is_detected() {
        let sm = sample();
        let mut buf = Vec::new();
        write_to(&sm.view(), &mut buf).unwrap();
        for pos in (0..buf.len()).step_by(buf.len() / 97 + 1) {
            let mut b = buf.clone();
            b[pos] ^= 0x10;
            assert!(read_from(b.as_slice()).is_err(), "flip at {pos} undetected");
        }
        for cut in [1, 9, buf.len() / 2, buf.len() - 1] {
            assert!(
                read_from(&buf[..cut]).is_err(),
                "truncation at {cut} undetected"
            );
        }
    }

    #[test]
    fn dir_falls_back_to_older_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let sd = SnapDir::open(d.path().to_path_buf(), 2).unwrap();
        let mut sm = sample();
        sd.save(&sm.view(), true).unwrap();
        sm.applied_index = 50;
        let (p, _) = sd.save(&sm.view(), true).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        fs::write(&p, bytes).unwrap();
        let mut seen = 0;
        let got = sd.load_newest(|_, _| seen += 1).unwrap().unwrap();
        assert_eq!(got.applied_index, 42);
        assert_eq!(seen, 1);
    }
}
