//! apply::kv: etcd's KV request semantics (Range, Put, DeleteRange, Txn) on
//! top of [`crate::mvcc`].
//!
//! Validation (`check_*`) runs on the serving node before a request is
//! proposed, exactly as etcd's `v3rpc/key.go` does. Execution runs either
//! under the state-machine read lock (Range, read-only Txn) or inside the
//! apply thread's write transaction. Compare evaluation and the
//! "expects previous key" checks use the state before the txn runs, like
//! etcd's `compareToPath` and `checkRequests`.

use std::collections::HashSet;

use proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use proto::mvccpb::KeyValue;

use super::lease::Leases;
use crate::error::{Error, Result};
use crate::mvcc::{KeyRange, KvMeta, Mvcc, MvccError, RangeResult, WriteTxn};

/// Read access to the key space at a fixed point (a store or an open write txn).
pub trait ReadView {
    /// See [`Mvcc::range`].
    fn range(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> std::result::Result<RangeResult, MvccError>;

    /// See [`Mvcc::load`].
    fn load(&self, m: &KvMeta) -> std::result::Result<KeyValue, MvccError>;
}

impl ReadView for Mvcc {
    fn range(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> std::result::Result<RangeResult, MvccError> {
        Mvcc::range(self, range, rev, limit, count_only)
    }

    fn load(&self, m: &KvMeta) -> std::result::Result<KeyValue, MvccError> {
        Mvcc::load(self, m)
    }
}

impl ReadView for WriteTxn<'_> {
    fn range(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> std::result::Result<RangeResult, MvccError> {
        WriteTxn::range(self, range, rev, limit, count_only)
    }

    fn load(&self, m: &KvMeta) -> std::result::Result<KeyValue, MvccError> {
        self.store().load(m)
    }
}

fn header(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

// ---------------------------------------------------------------- validation

/// etcd's checkRangeRequest.
pub fn check_range(r: &pb::RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// etcd's checkPutRequest.
pub fn check_put(r: &pb::PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// etcd's checkDeleteRequest.
pub fn check_delete(r: &pb::DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// etcd's checkTxnRequest plus the duplicate-key interval check.
pub fn check_txn(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's checkTxnRequest: a nested txn may only use the op budget its
/// parent left (`max_txn_ops - opc`), and an empty request op is rejected
/// with "key not found".
fn check_txn_ops(r: &pb::TxnRequest, max_txn_ops: i64) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn_ops(x, max_txn_ops - opc)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A half-open interval of keys; `end == None` is a single point.
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn point(k: &[u8]) -> Self {
        let mut end = k.to_vec();
        end.push(0);
        Interval {
            start: k.to_vec(),
            end,
        }
    }
    fn contains_point(&self, k: &[u8]) -> bool {
        self.start.as_slice() <= k && k < self.end.as_slice()
    }
}

/// etcd's checkIntervals: within one branch (recursively), no key may be put
/// twice and no put may fall in a deleted range. Puts in mutually exclusive
/// branches of a nested txn may overlap.
fn check_intervals(reqs: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>)> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in reqs {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.push(if d.range_end.is_empty() {
                Interval::point(&d.key)
            } else {
                Interval {
                    start: d.key.clone(),
                    end: d.range_end.clone(),
                }
            });
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let hits = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains_point(k));
    for op in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if puts.contains(&k) && !puts_then.contains(&k) {
                return Err(Error::DuplicateKey);
            }
            if hits(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || hits(&dels, &p.key) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

/// Whether a txn has no write op in any branch (then it is served as a read).
pub fn is_txn_readonly(r: &pb::TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
            Some(request_op::Request::RequestTxn(t)) => is_txn_readonly(t),
            _ => true,
        })
}

// ---------------------------------------------------------------- reads

/// Execute a Range the way etcd's applier does: fetch (limit+1, or all when
/// sorting/filtering), prune by the revision filters, sort, truncate.
pub fn range<V: ReadView + ?Sized>(view: &V, r: &pb::RangeRequest) -> Result<pb::RangeResponse> {
    use pb::range_request::{SortOrder, SortTarget};
    let mut limit = r.limit;
    if r.sort_order != SortOrder::None as i32
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
    {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let kr = KeyRange::new(&r.key, &r.range_end);
    let rr = view.range(&kr, r.revision, limit.max(0) as usize, r.count_only)?;
    let mut kvs: Vec<KvMeta> = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    let more = r.limit > 0 && kvs.len() > r.limit as usize;
    let keep = if more { r.limit as usize } else { kvs.len() };
    // Values are read only for what is returned (and for a sort by value).
    let kvs: Vec<KeyValue> = if order != SortOrder::None && target == SortTarget::Value {
        let mut full = kvs
            .iter()
            .map(|m| view.load(m))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if order == SortOrder::Ascend {
            full.sort_by(|a, b| a.value.cmp(&b.value));
        } else {
            full.sort_by(|a, b| b.value.cmp(&a.value));
        }
        full.truncate(keep);
        if r.keys_only {
            full.iter_mut().for_each(|kv| kv.value = Vec::new());
        }
        full
    } else {
        if order != SortOrder::None {
            let key_of = |a: &KvMeta, b: &KvMeta| match target {
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Key | SortTarget::Value => a.key.cmp(&b.key),
            };
            if order == SortOrder::Ascend {
                kvs.sort_by(|a, b| key_of(a, b));
            } else {
                kvs.sort_by(|a, b| key_of(b, a));
            }
        }
        kvs.truncate(keep);
        kvs.iter()
            .map(|m| {
                if r.keys_only {
                    Ok(meta_only(m))
                } else {
                    view.load(m)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    Ok(pb::RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count as i64,
    })
}

/// A key-value without its value.
fn meta_only(m: &KvMeta) -> KeyValue {
    KeyValue {
        key: m.key.to_vec(),
        create_revision: m.create_revision,
        mod_revision: m.mod_revision,
        version: m.version,
        value: Vec::new(),
        lease: m.lease,
    }
}

fn compare_kv(c: &pb::Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Version) => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        // etcd's compareKV: an unknown target leaves the result "equal" ...
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        // ... and an unknown result holds.
        Err(_) => true,
    }
}

/// etcd's applyCompare. A value compare whose value fails its CRC is an
/// error, never a silent "false" (which would take the other branch).
fn apply_compare<V: ReadView + ?Sized>(
    view: &V,
    c: &pb::Compare,
) -> std::result::Result<bool, MvccError> {
    let kr = KeyRange::new(&c.key, &c.range_end);
    let Ok(rr) = view.range(&kr, 0, 0, false) else {
        return Ok(false);
    };
    if rr.kvs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    for m in &rr.kvs {
        let holds = if c.target != compare::CompareTarget::Value as i32 {
            compare_kv(c, &meta_only(m))
        } else {
            compare_kv(c, &view.load(m)?)
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The branch taken at every txn level, in execution order (etcd's txnPath).
fn compare_to_path<V: ReadView + ?Sized>(
    view: &V,
    r: &pb::TxnRequest,
    path: &mut Vec<bool>,
) -> std::result::Result<(), MvccError> {
    let mut ok = true;
    for c in &r.compare {
        if !apply_compare(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    let ops = if ok { &r.success } else { &r.failure };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            compare_to_path(view, t, path)?;
        }
    }
    Ok(())
}

/// A value this member must read to apply an entry (a Txn's value compare,
/// a put with ignore_value) fails its CRC. The member cannot apply the
/// entry as the others do, and whatever it applied instead would diverge
/// from them, so it stops here (the server's panic hook aborts the
/// process, before the entry counts as applied). The value files only
/// cache the snapshot and the raft log: the next start rebuilds them and
/// applies the entry again, like every other member did.
fn halt_on_corrupt_value(e: impl std::fmt::Display) -> ! {
    tracing::error!(error = %e, "a value needed to apply an entry is corrupt on this member; stopping (a restart rebuilds the value files from the snapshot and the raft log)");
    panic!("a value needed to apply an entry is corrupt on this member: {e}");
}

/// Which of etcd's two txn check passes runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckPass {
    /// checkRequestPut (write txns only).
    Puts,
    /// checkRequestRange.
    Ranges,
}

/// The checks etcd runs on the chosen branches before executing a txn:
/// first every put of the whole tree (for write txns), then every range, so
/// a put error wins over a range error wherever they sit. `first_rev` is
/// etcd's compactMainRev (-1 before any compaction): a nonzero range
/// revision below it is compacted, negative revisions included.
struct TxnChecker<'a, V: ?Sized> {
    view: &'a V,
    leases: &'a Leases,
    current: i64,
    first_rev: i64,
    path: &'a [bool],
    pos: usize,
    pass: CheckPass,
    /// Ranges deleted so far in execution order (puts pass).
    deleted: Vec<KeyRange>,
}

impl<V: ReadView + ?Sized> TxnChecker<'_, V> {
    fn run(&mut self, pass: CheckPass, r: &pb::TxnRequest) -> Result<()> {
        self.pass = pass;
        self.pos = 0;
        self.deleted.clear();
        self.check(r)
    }

    fn check(&mut self, r: &pb::TxnRequest) -> Result<()> {
        let ok = self.path[self.pos];
        self.pos += 1;
        let ops = if ok { &r.success } else { &r.failure };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestTxn(t)) => self.check(t)?,
                Some(request_op::Request::RequestRange(q)) if self.pass == CheckPass::Ranges => {
                    if q.revision == 0 {
                        continue;
                    }
                    if q.revision > self.current {
                        return Err(Error::FutureRev);
                    }
                    if q.revision < self.first_rev {
                        return Err(Error::Compacted);
                    }
                }
                Some(request_op::Request::RequestDeleteRange(d))
                    if self.pass == CheckPass::Puts =>
                {
                    self.deleted.push(KeyRange::new(&d.key, &d.range_end));
                }
                Some(request_op::Request::RequestPut(p)) if self.pass == CheckPass::Puts => {
                    if p.ignore_value || p.ignore_lease {
                        let rr = self.view.range(&KeyRange::new(&p.key, &[]), 0, 0, false)?;
                        // etcd checks only the state before the txn and then
                        // panics applying the put when an earlier delete of
                        // the txn removed the key (possible with a from-key
                        // delete, which its overlap check misses). Answer
                        // the error its put would have returned instead,
                        // before anything is written.
                        if rr.kvs.is_empty() || self.deleted.iter().any(|d| d.contains(&p.key)) {
                            return Err(Error::KeyNotFound);
                        }
                    }
                    if p.lease != 0 && !self.leases.contains(p.lease) {
                        return Err(Error::LeaseNotFound);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Execute a read-only txn against a read view; `first_rev` is
/// [`Mvcc::first_rev`].
pub fn txn_read<V: ReadView + ?Sized>(
    view: &V,
    current: i64,
    first_rev: i64,
    r: &pb::TxnRequest,
) -> Result<pb::TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(view, r, &mut path)?;
    let leases = Leases::default();
    TxnChecker {
        view,
        leases: &leases,
        current,
        first_rev,
        path: &path,
        pos: 0,
        pass: CheckPass::Ranges,
        deleted: Vec::new(),
    }
    .run(CheckPass::Ranges, r)?;
    let mut pos = 0;
    let mut resp = exec_read_txn(view, r, &path, &mut pos)?;
    resp.header = header(current);
    Ok(resp)
}

fn exec_read_txn<V: ReadView + ?Sized>(
    view: &V,
    r: &pb::TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<pb::TxnResponse> {
    let ok = path[*pos];
    *pos += 1;
    let ops = if ok { &r.success } else { &r.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match &op.request {
            Some(request_op::Request::RequestRange(q)) => {
                response_op::Response::ResponseRange(range(view, q)?)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let mut sub = exec_read_txn(view, t, path, pos)?;
                sub.header = Some(pb::ResponseHeader::default());
                response_op::Response::ResponseTxn(sub)
            }
            _ => unreachable!("invariant: read-only txn has no writes"),
        };
        responses.push(pb::ResponseOp {
            response: Some(resp),
        });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}

// ---------------------------------------------------------------- writes

/// Put inside a write txn (plain Put and txn Put share this).
pub fn put(
    txn: &mut WriteTxn<'_>,
    leases: &mut Leases,
    p: &pb::PutRequest,
) -> Result<pb::PutResponse> {
    if p.lease != 0 && !leases.contains(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    let prev = txn.get(&p.key);
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(Error::KeyNotFound);
    }
    // The value a put with ignore_value keeps: without it nothing can be
    // written, and no member may skip the write.
    let kept_value = match &prev {
        Some(m) if p.ignore_value => Some(
            txn.store()
                .value(m)
                .unwrap_or_else(|e| halt_on_corrupt_value(e)),
        ),
        _ => None,
    };
    let lease = if p.ignore_lease {
        prev.as_ref().map_or(0, |kv| kv.lease)
    } else {
        p.lease
    };
    if lease != 0 && !leases.contains(lease) {
        return Err(Error::LeaseNotFound);
    }
    if let Some(old) = &prev {
        if old.lease != 0 && old.lease != lease {
            leases.detach(old.lease, &p.key);
        }
    }
    if lease != 0 {
        leases.attach(lease, &p.key);
    }
    let value: &[u8] = match &kept_value {
        Some(v) => v,
        None => &p.value,
    };
    txn.put(&p.key, value, lease);
    // prev_kv is read after the write, which applies either way (every
    // member applies the same entries); only this response fails.
    let prev_kv = match prev {
        Some(m) if p.prev_kv => Some(match kept_value {
            Some(v) => KeyValue {
                value: v,
                ..meta_only(&m)
            },
            None => txn.store().load(&m)?,
        }),
        _ => None,
    };
    Ok(pb::PutResponse {
        header: header(txn.read_rev()),
        prev_kv,
    })
}

/// DeleteRange inside a write txn.
pub fn delete_range(
    txn: &mut WriteTxn<'_>,
    leases: &mut Leases,
    d: &pb::DeleteRangeRequest,
) -> Result<pb::DeleteRangeResponse> {
    let kr = KeyRange::new(&d.key, &d.range_end);
    let deleted = txn.delete_range(&kr);
    for kv in &deleted {
        if kv.lease != 0 {
            leases.detach(kv.lease, &kv.key);
        }
    }
    // Read after the delete, which applies either way (see `put`).
    let prev_kvs = if d.prev_kv {
        deleted
            .iter()
            .map(|m| txn.store().load(m))
            .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    Ok(pb::DeleteRangeResponse {
        header: header(txn.read_rev()),
        deleted: deleted.len() as i64,
        prev_kvs,
    })
}

/// A full Txn inside a write txn.
pub fn txn_write(
    txn: &mut WriteTxn<'_>,
    leases: &mut Leases,
    r: &pb::TxnRequest,
) -> Result<pb::TxnResponse> {
    let mut path = Vec::new();
    if let Err(e) = compare_to_path(&*txn, r, &mut path) {
        halt_on_corrupt_value(e);
    }
    let mut checker = TxnChecker {
        view: &*txn,
        leases,
        current: txn.read_rev(),
        first_rev: txn.store().first_rev(),
        path: &path,
        pos: 0,
        pass: CheckPass::Puts,
        deleted: Vec::new(),
    };
    checker.run(CheckPass::Puts, r)?;
    checker.run(CheckPass::Ranges, r)?;
    let mut pos = 0;
    let mut resp = exec_write_txn(txn, leases, r, &path, &mut pos)?;
    resp.header = header(txn.read_rev());
    Ok(resp)
}

fn exec_write_txn(
    txn: &mut WriteTxn<'_>,
    leases: &mut Leases,
    r: &pb::TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<pb::TxnResponse> {
    let ok = path[*pos];
    *pos += 1;
    let ops = if ok { &r.success } else { &r.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match &op.request {
            Some(request_op::Request::RequestRange(q)) => {
                response_op::Response::ResponseRange(range(&*txn, q)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(txn, leases, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(txn, leases, d)?)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let mut sub = exec_write_txn(txn, leases, t, path, pos)?;
                sub.header = Some(pb::ResponseHeader::default());
                response_op::Response::ResponseTxn(sub)
            }
            None => continue,
        };
        responses.push(pb::ResponseOp {
            response: Some(resp),
        });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}
