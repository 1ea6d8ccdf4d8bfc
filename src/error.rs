//! Errors the server returns to clients, as plain Rust. `api::status` maps each variant to
//! etcd's exact gRPC code and message (the one mapping table).

use shards::MvccError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("too many requests")]
    TooManyRequests,
    #[error("no leader")]
    NoLeader,
    #[error("not leader")]
    NotLeader,
    // Nothing raises these two yet: a single voter never loses leadership mid-request, and
    // proposals have no deadline yet. They stay in the table (and its test) for when they do.
    #[allow(dead_code)]
    #[error("leader changed")]
    LeaderChanged,
    #[allow(dead_code)]
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("member not found")]
    MemberNotFound,
    #[error("member ID already exist")]
    MemberExists,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("too many learner members in cluster")]
    TooManyLearners,
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    #[error("request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("permission denied")]
    PermissionDenied,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
}

impl From<MvccError> for EtcdError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => EtcdError::Compacted,
            MvccError::FutureRevision => EtcdError::FutureRevision,
            MvccError::KeyNotFound => EtcdError::KeyNotFound,
        }
    }
}
