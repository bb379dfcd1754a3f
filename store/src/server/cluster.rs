//! server::cluster: the etcd Cluster service. MemberList is served from the
//! member table; membership changes arrive with multi-member clusters.

use std::sync::Arc;

use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;

/// The Cluster service.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A Cluster service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

fn not_yet(what: &str) -> Status {
    Error::Unimplemented(format!(
        "{what} is not supported by single-member Strata yet"
    ))
    .into()
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }
    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }
    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }
    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.node.linearizable().await?;
        }
        // Client URLs of other members are known once they have published
        // them through raft; until then they are empty, as in etcd's
        // "unstarted" members.
        let published = self.node.state.read().member_attrs.clone();
        let members = self
            .node
            .members
            .read()
            .iter()
            .map(|m| {
                let client_urls = if m.id == self.node.member_id {
                    m.client_urls.clone()
                } else {
                    published
                        .get(&m.id)
                        .map(|a| a.client_ur_ls.clone())
                        .unwrap_or_default()
                };
                pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: client_urls,
                    is_learner: m.is_learner,
                }
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.header(self.node.current_rev())),
            members,
        }))
    }
}
