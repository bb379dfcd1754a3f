//! server::maintenance: the etcd Maintenance service (Status, Hash, HashKV,
//! Alarm, Defragment, Snapshot, MoveLeader). With auth enabled, Defragment,
//! Snapshot, Hash and HashKV need root (with etcd 3.5's untranslated
//! `auth: ` errors); Status, Alarm and MoveLeader need nothing, as in etcd 3.5.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::etcdserverpb::{self as pb, alarm_request::AlarmAction};
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;
use crate::request::{ApplyResult, Op};

/// Bytes per Snapshot stream message.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// The Maintenance service.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// A Maintenance service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

fn alarm_name(t: i32) -> &'static str {
    match pb::AlarmType::try_from(t) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = req.into_inner();
        if r.action == AlarmAction::Get as i32 {
            self.node.linearizable().await?;
            let alarms = self
                .node
                .state
                .read()
                .alarms
                .iter()
                .filter(|a| r.alarm == pb::AlarmType::None as i32 || a.alarm == r.alarm)
                .cloned()
                .collect();
            return Ok(Response::new(pb::AlarmResponse {
                header: Some(self.node.header(self.node.current_rev())),
                alarms,
            }));
        }
        match self.node.propose(Op::Alarm(r)).await? {
            ApplyResult::Alarm(mut a) => {
                self.node.fill(&mut a.header);
                Ok(Response::new(a))
            }
            other => Err(Status::internal(format!("unexpected {other:?}"))),
        }
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (size, in_use, applied, errors) = {
            let sm = self.node.state.read();
            let errors = sm
                .alarms
                .iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect();
            (sm.db_size(), sm.db_size_in_use(), sm.applied_index, errors)
        };
        let st = &self.node.status;
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(self.node.current_rev())),
            version: self.node.cfg.emulated_etcd_version.clone(),
            db_size: size,
            leader: st.leader(),
            raft_index: st
                .commit
                .load(std::sync::atomic::Ordering::Acquire)
                .max(applied),
            raft_term: st.term(),
            raft_applied_index: applied,
            errors,
            db_size_in_use: in_use,
            is_learner: self.node.is_learner(),
            // etcd 3.6 reports the quota (2 GiB for the default 0).
            db_size_quota: self
                .node
                .cfg
                .quota_bytes()
                .unwrap_or(self.node.cfg.quota_backend_bytes),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // etcd's authMaintenanceServer: root only.
        super::auth::require_admin_maintenance(&self.node, &req)?;
        // Give back the space compaction freed (see the size model in
        // `StateMachine::db_size_in_use`). This member only, as in etcd.
        let (before, after) = {
            let mut sm = self.node.state.write();
            let before = sm.db_size();
            sm.mvcc.defragment();
            (before, sm.db_size())
        };
        crate::metrics::METRICS.db_size.set(after);
        tracing::info!(
            size_before = before,
            size_after = after,
            "finished defragmenting the backend"
        );
        // etcd 3.5 answers with no header at all (its gateway shows `{}`).
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // etcd's authMaintenanceServer: root only.
        super::auth::require_admin_maintenance(&self.node, &req)?;
        let timer = crate::metrics::METRICS.hash_duration.start_timer();
        let snap = self.node.state.read().mvcc.snapshot();
        let rev = snap.current;
        let hash = snap.hash_kv(rev).map_err(Error::from)?.0;
        timer.observe_duration();
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        // etcd's authMaintenanceServer: root only.
        super::auth::require_admin_maintenance(&self.node, &req)?;
        Ok(Response::new(self.node.hash_kv(req.into_inner().revision)?))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // etcd's authMaintenanceServer: root only.
        super::auth::require_admin_maintenance(&self.node, &req)?;
        let view = self.node.state.read().view();
        let rev = view.mvcc.current;
        let header = self.node.header(rev);
        let version = self.node.cfg.emulated_etcd_version.clone();
        let dir = self.node.cfg.data_dir.join("member").join("snap");
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let run = || -> std::io::Result<()> {
                let mut tmp = tempfile::tempfile_in(&dir)?;
                let len = crate::snapshot::write_to(&view, std::io::BufWriter::new(&mut tmp))?;
                use std::io::Seek;
                tmp.seek(std::io::SeekFrom::Start(0))?;
                // etcdctl expects a bbolt-like stream: a multiple of 512 bytes
                // followed by the SHA-256 of everything before it.
                let padded = len.div_ceil(512) * 512;
                let total = padded + 32;
                let mut sha = sha2::Sha256::new();
                let mut sent = 0u64;
                let mut first = true;
                let mut trailer_sent = false;
                while !trailer_sent {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                    let mut n = tmp.read(&mut buf)?;
                    if n == 0 {
                        // Zero padding, then the checksum.
                        let pad = (padded - sent) as usize;
                        buf.truncate(pad);
                        buf.fill(0);
                        sha.update(&buf);
                        buf.extend_from_slice(&sha.clone().finalize());
                        n = buf.len();
                        trailer_sent = true;
                    } else {
                        sha.update(&buf[..n]);
                    }
                    buf.truncate(n);
                    sent += n as u64;
                    let msg = pb::SnapshotResponse {
                        header: first.then_some(header),
                        remaining_bytes: total - sent,
                        blob: buf,
                        version: if first {
                            version.clone()
                        } else {
                            String::new()
                        },
                    };
                    first = false;
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot failed: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let r = req.into_inner();
        if !self.node.status.is_leader() {
            return Err(Error::NotLeader.into());
        }
        if !self
            .node
            .state
            .read()
            .conf_state
            .voters
            .contains(&r.target_id)
        {
            return Err(Error::BadLeaderTransferee.into());
        }
        if r.target_id != self.node.member_id {
            self.node.transfer_leader(r.target_id)?;
            // Like etcd, answer once the transferee leads (or give up).
            let deadline = tokio::time::Instant::now() + 2 * self.node.cfg.election_timeout;
            while self.node.status.leader() != r.target_id {
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::TimeoutLeaderTransfer.into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.node.header(self.node.current_rev())),
        }))
    }

    async fn downgrade(
        &self,
        _req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Error::Unimplemented("downgrade is not supported".into()).into())
    }
}
