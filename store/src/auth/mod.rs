//! auth: etcd v3 authentication and role-based access control.
//!
//! [`AuthStore`] is the replicated part: the enabled flag, the auth
//! revision, users (bcrypt hashes, roles) and roles (key-range permissions).
//! It lives inside the state machine, changes only by applying
//! [`AuthRequest`]s from the raft log, and is written into snapshots. The
//! permission rules (`is_range_permitted`, `is_put_permitted`,
//! `is_admin_permitted`, the txn walk) follow etcd's `auth/store.go`: with
//! auth disabled everything is allowed; a request without a user fails with
//! "user name is empty"; a KV check whose auth revision is older than the
//! store's fails with "revision of auth store is old"; the `root` role
//! grants everything. Tokens ([`token`]) are per member and never
//! replicated state. Callers: `apply` (write checks at apply time, auth
//! management ops) and `server::*` (read checks and the caller's identity,
//! [`crate::server::auth::caller`]). Never does I/O or hashing under the
//! state lock except bcrypt verification in Authenticate's pre-check.

pub mod perm;
pub mod token;

use std::collections::BTreeMap;

use proto::authpb;
use proto::etcdserverpb as pb;

use crate::error::{Error, Result};
use perm::Interval;

/// The user that AuthEnable requires and that can never lose its role.
pub const ROOT_USER: &str = "root";
/// The role that grants everything.
pub const ROOT_ROLE: &str = "root";

/// Who issued a request, as carried through raft (etcd's RequestHeader
/// username and auth_revision). `revision == 0` means no user.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthInfo {
    /// User name ("" when the request carried no credentials).
    #[prost(string, tag = "1")]
    pub username: String,
    /// Auth revision the credentials were checked against.
    #[prost(uint64, tag = "2")]
    pub revision: u64,
}

/// Authenticate as applied: the password was checked by the proposer, so
/// the log never holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalAuthenticate {
    /// User name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Random prefix of a simple token, chosen by the proposer.
    #[prost(string, tag = "2")]
    pub simple_token: String,
}

/// One replicated auth operation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRequest {
    /// The operation.
    #[prost(oneof = "AuthOp", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub op: Option<AuthOp>,
}

/// The replicated auth operations (reads are served locally).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthOp {
    /// AuthEnable.
    #[prost(message, tag = "1")]
    Enable(pb::AuthEnableRequest),
    /// AuthDisable.
    #[prost(message, tag = "2")]
    Disable(pb::AuthDisableRequest),
    /// Authenticate (password already checked).
    #[prost(message, tag = "3")]
    Authenticate(InternalAuthenticate),
    /// UserAdd; `hashed_password` is set, `password` is cleared.
    #[prost(message, tag = "4")]
    UserAdd(pb::AuthUserAddRequest),
    /// UserDelete.
    #[prost(message, tag = "5")]
    UserDelete(pb::AuthUserDeleteRequest),
    /// UserChangePassword; `hashed_password` is set.
    #[prost(message, tag = "6")]
    UserChangePassword(pb::AuthUserChangePasswordRequest),
    /// UserGrantRole.
    #[prost(message, tag = "7")]
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    /// UserRevokeRole.
    #[prost(message, tag = "8")]
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    /// RoleAdd.
    #[prost(message, tag = "9")]
    RoleAdd(pb::AuthRoleAddRequest),
    /// RoleDelete.
    #[prost(message, tag = "10")]
    RoleDelete(pb::AuthRoleDeleteRequest),
    /// RoleGrantPermission.
    #[prost(message, tag = "11")]
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    /// RoleRevokePermission.
    #[prost(message, tag = "12")]
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
}

/// What applying an [`AuthOp`] tells the proposer.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthApplied {
    /// The op succeeded with nothing to return.
    Done,
    /// Authenticate succeeded: the user and the revision to put in a token.
    Authenticated {
        /// User name.
        name: String,
        /// Auth revision at apply.
        revision: u64,
    },
}

/// The replicated auth state.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthStore {
    /// Whether auth is enabled.
    pub enabled: bool,
    /// Bumped by every change to users, roles or permissions.
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, authpb::User>,
    /// Roles by name.
    pub roles: BTreeMap<String, authpb::Role>,
}

impl Default for AuthStore {
    fn default() -> Self {
        // etcd commits revision 1 when it creates a fresh auth store.
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// Permission types, as in `authpb.Permission.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermType {
    /// Read.
    Read,
    /// Write.
    Write,
}

fn grants(p: &authpb::Permission, t: PermType) -> bool {
    let pt =
        authpb::permission::Type::try_from(p.perm_type).unwrap_or(authpb::permission::Type::Read);
    matches!(
        (pt, t),
        (authpb::permission::Type::Readwrite, _)
            | (authpb::permission::Type::Read, PermType::Read)
            | (authpb::permission::Type::Write, PermType::Write)
    )
}

/// Check a plaintext password against a stored bcrypt hash.
pub fn check_hash(password: &str, hash: &[u8]) -> bool {
    std::str::from_utf8(hash)
        .ok()
        .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
}

impl AuthStore {
    /// Whether `user` has the root role.
    pub fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT_ROLE))
    }

    /// Whether `user` has `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's IsAdminPermitted: with auth enabled, the caller must be a
    /// user with the root role.
    pub fn is_admin_permitted(&self, ai: Option<&AuthInfo>) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let Some(ai) = ai.filter(|a| !a.username.is_empty()) else {
            return Err(Error::UserEmpty);
        };
        if !self.users.contains_key(&ai.username) {
            return Err(Error::UserNotFound);
        }
        if !self.has_root_role(&ai.username) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's isOpPermitted for one key range.
    pub fn is_op_permitted(
        &self,
        ai: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        t: PermType,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let ai = match ai {
            Some(a) if a.revision != 0 => a,
            _ => return Err(Error::UserEmpty),
        };
        if ai.revision < self.revision {
            return Err(Error::AuthOldRevision);
        }
        let Some(user) = self.users.get(&ai.username) else {
            return Err(Error::PermissionDenied);
        };
        if user.roles.iter().any(|r| r == ROOT_ROLE) {
            return Ok(());
        }
        let granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| grants(p, t))
            .map(|p| Interval::from_etcd(&p.key, &p.range_end))
            .collect();
        if perm::permitted(&granted, key, range_end) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Read permission on `[key, range_end)`.
    pub fn is_range_permitted(&self, ai: Option<&AuthInfo>, key: &[u8], end: &[u8]) -> Result<()> {
        self.is_op_permitted(ai, key, end, PermType::Read)
    }

    /// etcd's checkPutPermitted (without the lease part).
    pub fn check_put(&self, ai: Option<&AuthInfo>, r: &pb::PutRequest) -> Result<()> {
        self.is_op_permitted(ai, &r.key, &[], PermType::Write)?;
        if r.prev_kv {
            self.is_op_permitted(ai, &r.key, &[], PermType::Read)?;
        }
        Ok(())
    }

    /// etcd's DeleteRange check: write, plus read for prev_kv.
    pub fn check_delete(&self, ai: Option<&AuthInfo>, r: &pb::DeleteRangeRequest) -> Result<()> {
        self.is_op_permitted(ai, &r.key, &r.range_end, PermType::Write)?;
        if r.prev_kv {
            self.is_op_permitted(ai, &r.key, &r.range_end, PermType::Read)?;
        }
        Ok(())
    }

    /// etcd's checkTxnAuth: read for every compare, then every op of both
    /// branches (nested txns included).
    pub fn check_txn(&self, ai: Option<&AuthInfo>, t: &pb::TxnRequest) -> Result<()> {
        use pb::request_op::Request as R;
        for c in &t.compare {
            self.is_range_permitted(ai, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(R::RequestRange(r)) => self.is_range_permitted(ai, &r.key, &r.range_end)?,
                Some(R::RequestPut(p)) => self.check_put(ai, p)?,
                Some(R::RequestDeleteRange(d)) => self.check_delete(ai, d)?,
                Some(R::RequestTxn(n)) => self.check_txn(ai, n)?,
                None => {}
            }
        }
        Ok(())
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    /// Apply one auth operation. `Err` leaves the store unchanged.
    pub fn apply(&mut self, op: AuthOp) -> Result<AuthApplied> {
        match op {
            AuthOp::Enable(_) => {
                if self.enabled {
                    return Ok(AuthApplied::Done);
                }
                if !self.users.contains_key(ROOT_USER) {
                    return Err(Error::RootUserNotExist);
                }
                if !self.has_root_role(ROOT_USER) {
                    return Err(Error::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthOp::Disable(_) => {
                self.enabled = false;
            }
            AuthOp::Authenticate(a) => {
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                let Some(u) = self.users.get(&a.name) else {
                    return Err(Error::AuthFailed);
                };
                if u.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(Error::AuthFailed);
                }
                return Ok(AuthApplied::Authenticated {
                    name: a.name,
                    revision: self.revision,
                });
            }
            AuthOp::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(Error::UserAlreadyExist);
                }
                let options = r.options.unwrap_or_default();
                let password = if options.no_password {
                    Vec::new()
                } else {
                    r.hashed_password.into_bytes()
                };
                self.users.insert(
                    r.name.clone(),
                    authpb::User {
                        name: r.name.into_bytes(),
                        password,
                        roles: Vec::new(),
                        options: Some(options),
                    },
                );
                self.bump();
            }
            AuthOp::UserDelete(r) => {
                if self.enabled && r.name == ROOT_USER {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(Error::UserNotFound);
                }
                self.bump();
            }
            AuthOp::UserChangePassword(r) => {
                let Some(u) = self.users.get_mut(&r.name) else {
                    return Err(Error::UserNotFound);
                };
                u.password = r.hashed_password.into_bytes();
                self.bump();
            }
            AuthOp::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(Error::UserNotFound);
                }
                if r.role != ROOT_ROLE && !self.roles.contains_key(&r.role) {
                    return Err(Error::RoleNotFound);
                }
                let u = self
                    .users
                    .get_mut(&r.user)
                    .expect("invariant: checked above");
                if u.roles.contains(&r.role) {
                    // etcd ignores a repeated grant without bumping the revision.
                    return Ok(AuthApplied::Done);
                }
                u.roles.push(r.role);
                u.roles.sort();
                self.bump();
            }
            AuthOp::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                let Some(u) = self.users.get_mut(&r.name) else {
                    return Err(Error::UserNotFound);
                };
                let Some(pos) = u.roles.iter().position(|x| *x == r.role) else {
                    return Err(Error::RoleNotGranted);
                };
                u.roles.remove(pos);
                self.bump();
            }
            AuthOp::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    authpb::Role {
                        name: r.name.into_bytes(),
                        key_permission: Vec::new(),
                    },
                );
                self.bump();
            }
            AuthOp::RoleDelete(r) => {
                if self.enabled && r.role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(Error::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.retain(|x| *x != r.role);
                }
                self.bump();
            }
            AuthOp::RoleGrantPermission(r) => {
                let Some(role) = self.roles.get_mut(&r.name) else {
                    return Err(Error::RoleNotFound);
                };
                let Some(p) = r.perm else {
                    return Err(Error::PermissionNotGiven);
                };
                match role
                    .key_permission
                    .iter_mut()
                    .find(|x| x.key == p.key && x.range_end == p.range_end)
                {
                    Some(x) => x.perm_type = p.perm_type,
                    None => {
                        role.key_permission.push(p);
                        role.key_permission
                            .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                    }
                }
                self.bump();
            }
            AuthOp::RoleRevokePermission(r) => {
                let Some(role) = self.roles.get_mut(&r.role) else {
                    return Err(Error::RoleNotFound);
                };
                let Some(pos) = role
                    .key_permission
                    .iter()
                    .position(|x| x.key == r.key && x.range_end == r.range_end)
                else {
                    return Err(Error::PermissionNotGranted);
                };
                role.key_permission.remove(pos);
                self.bump();
            }
        }
        Ok(AuthApplied::Done)
    }

    /// The admin check etcd makes at apply before an auth management op
    /// (`needAdminPermission`); Authenticate needs none.
    pub fn check_op(&self, ai: Option<&AuthInfo>, op: &AuthOp) -> Result<()> {
        match op {
            AuthOp::Authenticate(_) => Ok(()),
            _ => self.is_admin_permitted(ai),
        }
    }

    /// Users' names, sorted.
    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Roles' names, sorted.
    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The roles of `name`.
    pub fn user_get(&self, name: &str) -> Result<Vec<String>> {
        self.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(Error::UserNotFound)
    }

    /// The permissions of `role` (root: everything, as etcd shows it).
    pub fn role_get(&self, role: &str) -> Result<Vec<authpb::Permission>> {
        let r = self.roles.get(role).ok_or(Error::RoleNotFound)?;
        if role == ROOT_ROLE {
            return Ok(vec![authpb::Permission {
                perm_type: authpb::permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(r.key_permission.clone())
    }

    /// The first half of etcd's CheckPassword: the auth revision and the
    /// user's bcrypt hash, to verify (slowly) off the state lock with
    /// [`check_hash`].
    pub fn password_of(&self, name: &str) -> Result<(u64, Vec<u8>)> {
        if !self.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let u = self.users.get(name).ok_or(Error::AuthFailed)?;
        if u.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::NoPasswordUser);
        }
        Ok((self.revision, u.password.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ai(u: &str, rev: u64) -> AuthInfo {
        AuthInfo {
            username: u.into(),
            revision: rev,
        }
    }

    fn setup() -> AuthStore {
        let mut s = AuthStore::default();
        for op in [
            AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "x".into(),
                ..Default::default()
            }),
            AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: "alice".into(),
                hashed_password: "x".into(),
                ..Default::default()
            }),
            AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() }),
            AuthOp::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(authpb::Permission {
                    perm_type: authpb::permission::Type::Read as i32,
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                }),
            }),
            AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "r".into(),
            }),
        ] {
            s.apply(op).unwrap();
        }
        assert_eq!(
            s.apply(AuthOp::Enable(Default::default())),
            Err(Error::RootRoleNotExist)
        );
        s.apply(AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }))
        .unwrap();
        s.apply(AuthOp::Enable(Default::default())).unwrap();
        s
    }

    #[test]
    fn rules_follow_etcd() {
        let s = setup();
        let rev = s.revision;
        assert_eq!(rev, 7, "revision 1 plus six changes");
        let a = ai("alice", rev);
        assert_eq!(s.is_range_permitted(Some(&a), b"a1", b""), Ok(()));
        assert_eq!(
            s.is_op_permitted(Some(&a), b"a1", b"", PermType::Write),
            Err(Error::PermissionDenied)
        );
        assert_eq!(s.is_range_permitted(None, b"a", b""), Err(Error::UserEmpty));
        assert_eq!(
            s.is_range_permitted(Some(&ai("alice", rev - 1)), b"a", b""),
            Err(Error::AuthOldRevision)
        );
        assert_eq!(
            s.is_range_permitted(Some(&ai("root", rev)), b"zz", b"\0"),
            Ok(())
        );
        assert_eq!(s.is_admin_permitted(Some(&a)), Err(Error::PermissionDenied));
        assert_eq!(
            s.is_admin_permitted(Some(&ai("bob", rev))),
            Err(Error::UserNotFound)
        );
        assert_eq!(
            s.is_admin_permitted(Some(&ai("", 0))),
            Err(Error::UserEmpty)
        );
        // A txn whose compare reads outside the grant is denied.
        let t = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"z".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(s.check_txn(Some(&a), &t), Err(Error::PermissionDenied));
    }

    #[test]
    fn root_is_protected_while_enabled() {
        let mut s = setup();
        assert_eq!(
            s.apply(AuthOp::UserDelete(pb::AuthUserDeleteRequest {
                name: "root".into()
            })),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into()
            })),
            Err(Error::InvalidAuthMgmt)
        );
        s.apply(AuthOp::Disable(Default::default())).unwrap();
        s.apply(AuthOp::UserDelete(pb::AuthUserDeleteRequest {
            name: "root".into(),
        }))
        .unwrap();
        assert_eq!(
            s.apply(AuthOp::Enable(Default::default())),
            Err(Error::RootUserNotExist)
        );
    }

    #[test]
    fn revoke_and_role_delete() {
        let mut s = setup();
        assert_eq!(
            s.apply(AuthOp::RoleRevokePermission(
                pb::AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: b"a".to_vec(),
                    range_end: vec![],
                }
            )),
            Err(Error::PermissionNotGranted)
        );
        s.apply(AuthOp::RoleDelete(pb::AuthRoleDeleteRequest {
            role: "r".into(),
        }))
        .unwrap();
        assert_eq!(s.user_get("alice"), Ok(vec![]));
        assert_eq!(
            s.apply(AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "r".into()
            })),
            Err(Error::RoleNotGranted)
        );
    }
}
