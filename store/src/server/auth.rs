//! server::auth: the etcd Auth service, and [`caller`], the one place that
//! decides who issued a request (token metadata, or the TLS client
//! certificate's CN). Every service calls [`caller`] (through
//! [`caller_of`]) at the start of each RPC, so in-process callers that use
//! the service traits directly (the JSON gateway) are checked the same as
//! gRPC clients. Management ops are proposed with the caller attached and
//! checked at apply (root needed), as etcd does; UserGet/RoleGet/*List and
//! AuthStatus are served locally after a ReadIndex barrier. Passwords are
//! bcrypt-hashed here, on the proposing member, so the log never holds one.
//!
//! Rules per RPC with auth enabled (etcd 3.5's, checked against etcd 3.5.1
//! by `tests/it/auth.rs`): Range and read-only Txn need read (compares
//! included); Put/DeleteRange/Txn need write (prev_kv also read), checked
//! at apply; LeaseRevoke and a Put with a lease need write on the lease's
//! keys; Watch needs read on the range (a denied create answers
//! created+canceled); LeaseTimeToLive with keys needs read on them;
//! MemberAdd/Remove/Update/Promote, all Auth management, AuthStatus,
//! UserList/RoleList need root (UserGet/RoleGet also allow the user itself
//! / a role it has); Defragment/Snapshot/Hash/HashKV need root and fail
//! with etcd 3.5's untranslated `auth: ...` errors (code Unknown). No check:
//! Status, Alarm, MoveLeader, Compact, LeaseGrant, LeaseKeepAlive,
//! LeaseLeases, MemberList, Authenticate (as in etcd 3.5).

use std::sync::Arc;

use proto::etcdserverpb as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::{check_hash, AuthInfo, AuthOp, AuthRequest, InternalAuthenticate};
use crate::error::Error;
use crate::node::Node;
use crate::request::{ApplyResult, Op};

/// gRPC metadata key of the token (etcd's TokenFieldNameGRPC).
pub const TOKEN_KEY: &str = "token";
/// Alternative key: the JSON gateway forwards the HTTP Authorization
/// header under it (etcd's TokenFieldNameSwagger).
pub const AUTHORIZATION_KEY: &str = "authorization";

/// The verified TLS client certificate's common name of `req`'s
/// connection, when `--client-cert-auth` is on (etcd's AuthInfoFromTLS is
/// consulted only then). The handshake has verified the certificate
/// against `--trusted-ca-file`; plain connections and certificates without
/// a CN give `None`.
pub fn tls_client_cn<T>(node: &Node, req: &Request<T>) -> Option<String> {
    if !node.cfg.client_tls.client_cert_auth {
        return None;
    }
    super::tls::client_cert_common_name(req)
}

/// Who issued a request (etcd's AuthInfoFromCtx + AuthInfoFromTLS).
///
/// With auth disabled nobody is identified (`Ok(None)`) and tokens are
/// ignored. Otherwise a `token` (or `authorization`) metadata value must
/// be a valid token ("etcdserver: invalid auth token" if not); without a
/// token, a verified client certificate's CN (`tls_cn`) names the user;
/// with neither, `Ok(None)`, which the permission checks answer with
/// "etcdserver: user name is empty".
pub fn caller(
    node: &Node,
    md: &MetadataMap,
    tls_cn: Option<&str>,
) -> Result<Option<AuthInfo>, Error> {
    let (enabled, revision) = {
        let sm = node.state.read();
        (sm.auth.enabled, sm.auth.revision)
    };
    if !enabled {
        return Ok(None);
    }
    let token = md.get(TOKEN_KEY).or_else(|| md.get(AUTHORIZATION_KEY));
    if let Some(t) = token {
        let t = t.to_str().map_err(|_| Error::InvalidAuthToken)?;
        let info = node.tokens.info(t).ok_or(Error::InvalidAuthToken)?;
        return Ok(Some(AuthInfo {
            username: info.username,
            revision: info.revision.unwrap_or(revision),
        }));
    }
    Ok(tls_cn.map(|cn| AuthInfo {
        username: cn.to_string(),
        revision,
    }))
}

/// [`caller`] for a tonic request (metadata plus the client certificate's CN).
pub fn caller_of<T>(node: &Node, req: &Request<T>) -> Result<Option<AuthInfo>, Status> {
    let cn = tls_client_cn(node, req);
    caller(node, req.metadata(), cn.as_deref()).map_err(Status::from)
}

/// The identity a proposal carries: no credentials is the empty user, so
/// a write that races with AuthEnable fails at apply as in etcd.
pub fn as_header(ai: Option<AuthInfo>) -> Option<AuthInfo> {
    Some(ai.unwrap_or_default())
}

/// Read permission on `[key, range_end)` for `ai`.
pub fn check_range(
    node: &Node,
    ai: Option<&AuthInfo>,
    key: &[u8],
    end: &[u8],
) -> Result<(), Status> {
    Ok(node.state.read().auth.is_range_permitted(ai, key, end)?)
}

/// Root needed (etcd's IsAdminPermitted).
pub fn check_admin(node: &Node, ai: Option<&AuthInfo>) -> Result<(), Status> {
    Ok(node.state.read().auth.is_admin_permitted(ai)?)
}

/// The admin check of one request, start to end: used by the services
/// whose every RPC needs root (maintenance, membership changes).
pub fn require_admin<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    let ai = caller_of(node, req)?;
    check_admin(node, ai.as_ref())
}

/// The admin check of the Maintenance RPCs that need root (Defragment,
/// Snapshot, Hash, HashKV). etcd 3.5's authMaintenanceServer returns the
/// auth package's own error there, not the gRPC one: code Unknown and an
/// `auth: ` message ("auth: user name is empty", "auth: permission
/// denied"). Clients see exactly that, so we answer the same.
pub fn require_admin_maintenance<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    let r = caller(node, req.metadata(), tls_client_cn(node, req).as_deref())
        .and_then(|ai| node.state.read().auth.is_admin_permitted(ai.as_ref()));
    r.map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("etcdserver: ").unwrap_or(&msg);
        Status::unknown(format!("auth: {msg}"))
    })
}

/// The Auth service.
pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    /// An Auth service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.node.header(self.node.current_rev()))
    }

    /// Propose one management op as the caller of `req`.
    async fn manage<T>(&self, req: &Request<T>, op: AuthOp) -> Result<Option<String>, Status> {
        let who = caller_of(&self.node, req)?;
        match self
            .node
            .propose_as(Op::Auth(AuthRequest { op: Some(op) }), as_header(who))
            .await?
        {
            ApplyResult::Auth(t) => Ok(t),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.node.cfg.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("bcrypt: {e}")))
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.manage(&req, AuthOp::Enable(*req.get_ref())).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.manage(&req, AuthOp::Disable(*req.get_ref())).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        // etcd 3.5 applies AuthStatus through raft as an admin op.
        let ai = caller_of(&self.node, &req)?;
        self.node.linearizable().await?;
        check_admin(&self.node, ai.as_ref())?;
        let (enabled, auth_revision) = {
            let sm = self.node.state.read();
            (sm.auth.enabled, sm.auth.revision)
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = req.into_inner();
        self.node.linearizable().await?;
        loop {
            let (checked_rev, hash) = self.node.state.read().auth.password_of(&r.name)?;
            let pw = r.password.clone();
            let ok = tokio::task::spawn_blocking(move || check_hash(&pw, &hash))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if !ok {
                return Err(Error::AuthFailed.into());
            }
            let op = AuthOp::Authenticate(InternalAuthenticate {
                name: r.name.clone(),
                simple_token: self.node.tokens.gen_prefix(),
            });
            let token = match self
                .node
                .propose_as(Op::Auth(AuthRequest { op: Some(op) }), None)
                .await?
            {
                ApplyResult::Auth(Some(t)) => t,
                other => return Err(Status::internal(format!("unexpected {other:?}"))),
            };
            // etcd: retry if the auth store changed after the password check.
            if checked_rev == self.node.state.read().auth.revision {
                return Ok(Response::new(pb::AuthenticateResponse {
                    header: self.header(),
                    token,
                }));
            }
        }
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let mut r = req.get_ref().clone();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.manage(&req, AuthOp::UserAdd(r)).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let ai = caller_of(&self.node, &req)?;
        self.node.linearizable().await?;
        let sm = self.node.state.read();
        // etcd: root, or the user asking about itself.
        if let Err(e) = sm.auth.is_admin_permitted(ai.as_ref()) {
            if ai.as_ref().is_none_or(|a| a.username != req.get_ref().name) {
                return Err(e.into());
            }
        }
        let roles = sm.auth.user_get(&req.get_ref().name)?;
        drop(sm);
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let ai = caller_of(&self.node, &req)?;
        self.node.linearizable().await?;
        check_admin(&self.node, ai.as_ref())?;
        let users = self.node.state.read().auth.user_list();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.manage(&req, AuthOp::UserDelete(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let mut r = req.get_ref().clone();
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.manage(&req, AuthOp::UserChangePassword(r)).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.manage(&req, AuthOp::UserGrantRole(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.manage(&req, AuthOp::UserRevokeRole(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.manage(&req, AuthOp::RoleAdd(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let ai = caller_of(&self.node, &req)?;
        self.node.linearizable().await?;
        let sm = self.node.state.read();
        let role = &req.get_ref().role;
        // etcd: root, or a user asking about one of its own roles.
        if let Err(e) = sm.auth.is_admin_permitted(ai.as_ref()) {
            if ai
                .as_ref()
                .is_none_or(|a| !sm.auth.has_role(&a.username, role))
            {
                return Err(e.into());
            }
        }
        let perm = sm.auth.role_get(role)?;
        drop(sm);
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let ai = caller_of(&self.node, &req)?;
        self.node.linearizable().await?;
        check_admin(&self.node, ai.as_ref())?;
        let roles = self.node.state.read().auth.role_list();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.manage(&req, AuthOp::RoleDelete(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.manage(&req, AuthOp::RoleGrantPermission(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.manage(&req, AuthOp::RoleRevokePermission(req.get_ref().clone()))
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
