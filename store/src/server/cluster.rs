//! server::cluster: the etcd Cluster service. MemberList is served from the
//! replicated member table; changes go through [`crate::reconfig`] and,
//! with auth enabled, need root.

use std::sync::Arc;

use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

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

    /// etcd's cluster server leaves `revision` out of its headers.
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.node.header(0))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        r: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        super::auth::require_admin(&self.node, &r)?;
        let r = r.into_inner();
        let (member, members) = self.node.add_member(&r.peer_ur_ls, r.is_learner).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        super::auth::require_admin(&self.node, &r)?;
        let members = self.node.remove_member(r.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        super::auth::require_admin(&self.node, &r)?;
        let r = r.into_inner();
        let members = self.node.update_member(r.id, &r.peer_ur_ls).await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_promote(
        &self,
        r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only.
        super::auth::require_admin(&self.node, &r)?;
        let mut resp = self.node.promote_member(r.into_inner().id).await?;
        resp.header = self.header();
        Ok(Response::new(resp))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.node.linearizable().await?;
        }
        // Client URLs of other members are known once they have published
        // them through raft; until then they are empty and the name too, as
        // in etcd's "unstarted" members.
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.node.members(),
        }))
    }
}
