//! The one table from our errors to etcd's gRPC code and message. Clients (the Go client among
//! them) match on the exact text, so every row is etcd v3.5.17's string.

use tonic::{Code, Status};

use crate::error::EtcdError;

pub fn code_and_message(e: &EtcdError) -> (Code, &'static str) {
    use EtcdError::*;
    match e {
        EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
        KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
        ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
        LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
        TooManyOps => (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        DuplicateKey => (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
        RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        Compacted => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        FutureRevision => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        NoSpace => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        TooManyRequests => (Code::ResourceExhausted, "etcdserver: too many requests"),
        NoLeader => (Code::Unavailable, "etcdserver: no leader"),
        NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
        Timeout => (Code::Unavailable, "etcdserver: request timed out"),
        Stopped => (Code::Unavailable, "etcdserver: server stopped"),
        MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
        MemberExists => (
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        ),
        PeerUrlExists => (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        MemberNotLearner => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        TooManyLearners => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        NotEnoughStartedMembers => (
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        BadLeaderTransferee => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        // etcd has no gRPC error for this one: its handler sends the plain error, which gRPC
        // turns into code Unknown.
        LeaderTransferTimeout => (
            Code::Unknown,
            "etcdserver: request timed out, leader transfer took too long",
        ),
        LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
        LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
        LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        AuthNotEnabled => (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
        InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
        RootUserNotExist => (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        RootRoleNotExist => (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        UserAlreadyExist => (
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
        UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
        RoleAlreadyExist => (
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
        RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
        AuthFailed => (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
        RoleNotGranted => (
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        PermissionNotGranted => (
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
        AuthOldRevision => (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
    }
}

pub fn status(e: EtcdError) -> Status {
    let (code, msg) = code_and_message(&e);
    Status::new(code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EtcdError::*;

    /// Every row, against the codes and strings of etcd's api/v3rpc/rpctypes/error.go.
    #[test]
    fn every_row_matches_etcd() {
        let rows: &[(EtcdError, Code, &str)] = &[
            (
                EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                InvalidSortOption,
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                TooManyRequests,
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (Timeout, Code::Unavailable, "etcdserver: request timed out"),
            (Stopped, Code::Unavailable, "etcdserver: server stopped"),
            (
                MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                MemberExists,
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                PeerUrlExists,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                NotEnoughStartedMembers,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                LeaderTransferTimeout,
                Code::Unknown,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (
                LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                RoleAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                PermissionNotGiven,
                Code::InvalidArgument,
                "etcdserver: permission not given",
            ),
            (
                RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
        ];
        for (err, code, msg) in rows {
            let s = status(err.clone());
            assert_eq!(s.code(), *code, "{err:?}");
            assert_eq!(s.message(), *msg, "{err:?}");
        }
    }
}
