//! error: the store's one error enum and its mapping onto etcd's gRPC errors.
//!
//! Every variant that a client can see renders to etcd's exact message string
//! and gRPC code (etcd `api/v3rpc/rpctypes/error.go`), because clients such as
//! `clientv3` and kube-apiserver match on those strings byte for byte.

use tonic::{Code, Status};

use crate::mvcc::MvccError;

/// Errors surfaced by the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The requested revision was compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// Empty key in a request.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// ignore_value/ignore_lease on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// ignore_value with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// ignore_lease with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More ops in a txn than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Unknown sort order/target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The request exceeds `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The NOSPACE alarm is active.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A client-chosen lease ID is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// No raft leader.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Not the leader (for leader-only operations).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// Leadership changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request did not complete in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// MoveLeader target is not a voting member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader did not complete in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    /// Member not found (or already removed).
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberAdd with an ID that is taken.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// MemberAdd/MemberUpdate with peer URLs another member uses.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// Peer URLs that do not parse.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// The change would leave too few started members for a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner that lags the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner beyond `--max-learners`.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A request a learner does not serve.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// Another membership change has not been applied yet.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// The cluster is corrupt.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// AuthEnable without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing user.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name, or no user at all while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// The user does not exist.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing role.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// The role does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password (or a user without a password).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The caller may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// The token is unknown, expired or forged.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Deleting root, or taking its root role, while auth is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// Authenticate of a user added with `no_password` (etcd 3.5 returns
    /// its internal auth error here, untranslated: code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// The auth store changed between the request and its apply.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Feature not implemented by this build.
    #[error("{0}")]
    Unimplemented(String),
    /// Internal failure: I/O, decode, invariant. Never expected by clients.
    #[error("{0}")]
    Internal(String),
}

/// Convenience result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | NotLeader
            | BadLeaderTransferee
            | MemberExist
            | PeerUrlExist
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            NoLeader
            | LeaderChanged
            | Stopped
            | Timeout
            | TimeoutLeaderTransfer
            | NotSupportedForLearner
            | Unhealthy => Code::Unavailable,
            Corrupt => Code::DataLoss,
            NoPasswordUser => Code::Unknown,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Unimplemented(_) => Code::Unimplemented,
            Internal(_) => Code::Internal,
        }
    }
}

impl From<MvccError> for Error {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => Error::Compacted,
            MvccError::FutureRev => Error::FutureRev,
            MvccError::Corrupt(m) => Error::Internal(m),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_strings_and_codes() {
        let s: Status = Error::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s: Status = Error::DuplicateKey.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: duplicate key given in txn request"
        );
        let s: Status = Error::LeaseNotFound.into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
    }
}
