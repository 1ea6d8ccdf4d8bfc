//! The byte encoding of the requests the coordinator proposes to raft (the payload of a raft
//! entry, and so of a WAL record): etcd v3.5's `etcdserverpb.InternalRaftRequest`, so that
//! etcd's tools and etcd's robustness suite read rusd's log as they read etcd's.
//!
//! `header.ID` is rusd's request ID; `header.username` and `header.auth_revision` mark a
//! request an authenticated user sent (an authenticated request always names its user). Every
//! request with an etcd counterpart is in etcd's field (put, delete_range, txn, compaction,
//! lease_grant, lease_revoke, alarm, auth_*, cluster_member_attr_set). rusd's membership
//! requests in a normal entry (a member update, and the member changes the importer replays)
//! have none: they go in field 60001 (`RUSD_MEMBERSHIP_FIELD`, far above etcd's numbers, which
//! end at 1302 in v3.5), which etcd's decoders skip as unknown. Membership changes raft must
//! know of are conf-change entries encoded as etcd encodes them (`encode_conf_change`).
//!
//! rusd's first encoding (`encode_legacy`/`decode_legacy`: `request_id: u64 LE`, a tag and a
//! hand-written body) is kept to convert old WALs (`convert_legacy_entry`).

use super::auth::{AuthInfo, AuthRequest, PermType, Permission};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use shards::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    SortOrder, SortTarget, TxnRequest,
};

/// A request that changes replicated state: what a raft entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRequest {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Raise (`activate`) or clear an alarm of one member (etcd's AlarmRequest).
    Alarm {
        activate: bool,
        member_id: u64,
        alarm: AlarmKind,
    },
    /// The membership changes raft itself must know of travel as the context of a raft
    /// conf-change entry (see `coordinator::raft`), never as a normal entry: add, remove,
    /// promote.
    MemberAdd(MemberAddRequest),
    MemberRemove {
        id: u64,
    },
    MemberPromote {
        id: u64,
    },
    MemberUpdate {
        id: u64,
        peer_urls: Vec<String>,
    },
    /// A member's name and client URLs, which it publishes through raft when it starts (etcd's
    /// ClusterMemberAttrSetRequest): other members learn them from the log.
    MemberAttrs {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// A change to users, roles or the auth flag (see `coordinator::auth`).
    Auth(AuthRequest),
    /// A password already checked by the receiving member: every member records the simple
    /// token `<token_prefix>.<raft index>` for `name` when it applies this (etcd's
    /// InternalAuthenticateRequest), so the token is good on every member, not only on the
    /// one that issued it.
    Authenticate {
        name: String,
        token_prefix: String,
    },
    /// A request sent by an authenticated user: apply re-checks its permissions against the
    /// auth state of its turn in the log, as etcd's authApplierV3 does with the entry header.
    Authed {
        info: AuthInfo,
        req: Box<WriteRequest>,
    },
}

/// A member to add: etcd's MemberAdd after its ID was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddRequest {
    pub id: u64,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// etcd's alarm types (AlarmType in rpc.proto: NOSPACE = 1, CORRUPT = 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    NoSpace,
    Corrupt,
}

impl AlarmKind {
    /// The AlarmType wire number.
    pub fn number(self) -> i32 {
        match self {
            AlarmKind::NoSpace => 1,
            AlarmKind::Corrupt => 2,
        }
    }

    pub fn from_number(n: i32) -> Option<AlarmKind> {
        match n {
            1 => Some(AlarmKind::NoSpace),
            2 => Some(AlarmKind::Corrupt),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed request in raft entry: {0}")]
pub struct DecodeError(&'static str);

/// Txns nest; a bound on depth keeps a hostile entry from blowing the stack on decode.
const MAX_TXN_DEPTH: u32 = 64;

const TAG_PUT: u8 = 1;
const TAG_DELETE_RANGE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_RANGE: u8 = 5;
const TAG_LEASE_GRANT: u8 = 6;
const TAG_LEASE_REVOKE: u8 = 7;
const TAG_ALARM: u8 = 8;
const TAG_MEMBER_ADD: u8 = 30;
const TAG_MEMBER_UPDATE: u8 = 31;
const TAG_MEMBER_ATTRS: u8 = 32;
const TAG_MEMBER_REMOVE: u8 = 33;
const TAG_MEMBER_PROMOTE: u8 = 34;
const TAG_AUTH: u8 = 20;
const TAG_AUTHED: u8 = 21;
const TAG_AUTHENTICATE: u8 = 22;

/// rusd's first encoding of a request (the payload of entries written by an older rusd); kept
/// for the conversion of old WALs and for tests that build them.
pub fn encode_legacy(request_id: u64, req: &WriteRequest) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(64);
    out.put_u64_le(request_id);
    match req {
        WriteRequest::Put(p) => {
            out.put_u8(TAG_PUT);
            put_put(&mut out, p);
        }
        WriteRequest::DeleteRange(d) => {
            out.put_u8(TAG_DELETE_RANGE);
            put_delete(&mut out, d);
        }
        WriteRequest::Txn(t) => {
            out.put_u8(TAG_TXN);
            put_txn(&mut out, t);
        }
        WriteRequest::Compact { revision } => {
            out.put_u8(TAG_COMPACT);
            put_varint(&mut out, zigzag(*revision));
        }
        WriteRequest::LeaseGrant { id, ttl_secs } => {
            out.put_u8(TAG_LEASE_GRANT);
            put_i64(&mut out, *id);
            put_i64(&mut out, *ttl_secs);
        }
        WriteRequest::LeaseRevoke { id } => {
            out.put_u8(TAG_LEASE_REVOKE);
            put_i64(&mut out, *id);
        }
        WriteRequest::Alarm {
            activate,
            member_id,
            alarm,
        } => {
            out.put_u8(TAG_ALARM);
            out.put_u8(u8::from(*activate));
            out.put_u64_le(*member_id);
            out.put_u8(alarm.number() as u8);
        }
        WriteRequest::MemberAdd(m) => {
            out.put_u8(TAG_MEMBER_ADD);
            out.put_u64_le(m.id);
            out.put_u8(u8::from(m.is_learner));
            put_strings(&mut out, &m.peer_urls);
        }
        WriteRequest::MemberRemove { id } => {
            out.put_u8(TAG_MEMBER_REMOVE);
            out.put_u64_le(*id);
        }
        WriteRequest::MemberPromote { id } => {
            out.put_u8(TAG_MEMBER_PROMOTE);
            out.put_u64_le(*id);
        }
        WriteRequest::MemberUpdate { id, peer_urls } => {
            out.put_u8(TAG_MEMBER_UPDATE);
            out.put_u64_le(*id);
            put_strings(&mut out, peer_urls);
        }
        WriteRequest::MemberAttrs {
            id,
            name,
            client_urls,
        } => {
            out.put_u8(TAG_MEMBER_ATTRS);
            out.put_u64_le(*id);
            put_bytes(&mut out, name.as_bytes());
            put_strings(&mut out, client_urls);
        }
        WriteRequest::Auth(a) => {
            out.put_u8(TAG_AUTH);
            put_auth(&mut out, a);
        }
        WriteRequest::Authenticate { name, token_prefix } => {
            out.put_u8(TAG_AUTHENTICATE);
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, token_prefix.as_bytes());
        }
        WriteRequest::Authed { info, req } => {
            out.put_u8(TAG_AUTHED);
            put_bytes(&mut out, info.user.as_bytes());
            put_varint(&mut out, info.revision);
            out.put_slice(&encode_legacy(0, req)[8..]);
        }
    }
    out.to_vec()
}

pub fn decode_legacy(data: &[u8]) -> Result<(u64, WriteRequest), DecodeError> {
    let mut buf = Bytes::copy_from_slice(data);
    if buf.remaining() < 9 {
        return Err(DecodeError("short entry"));
    }
    let id = buf.get_u64_le();
    let req = match buf.get_u8() {
        TAG_PUT => WriteRequest::Put(get_put(&mut buf)?),
        TAG_DELETE_RANGE => WriteRequest::DeleteRange(get_delete(&mut buf)?),
        TAG_TXN => WriteRequest::Txn(get_txn(&mut buf, 0)?),
        TAG_COMPACT => WriteRequest::Compact {
            revision: unzigzag(get_varint(&mut buf)?),
        },
        TAG_LEASE_GRANT => WriteRequest::LeaseGrant {
            id: get_i64(&mut buf)?,
            ttl_secs: get_i64(&mut buf)?,
        },
        TAG_LEASE_REVOKE => WriteRequest::LeaseRevoke {
            id: get_i64(&mut buf)?,
        },
        TAG_ALARM => {
            let activate = get_u8(&mut buf)? != 0;
            if buf.remaining() < 8 {
                return Err(DecodeError("truncated alarm"));
            }
            let member_id = buf.get_u64_le();
            let alarm = AlarmKind::from_number(i32::from(get_u8(&mut buf)?))
                .ok_or(DecodeError("bad alarm type"))?;
            WriteRequest::Alarm {
                activate,
                member_id,
                alarm,
            }
        }
        TAG_MEMBER_ADD => {
            if buf.remaining() < 9 {
                return Err(DecodeError("truncated member add"));
            }
            let id = buf.get_u64_le();
            let is_learner = buf.get_u8() != 0;
            WriteRequest::MemberAdd(MemberAddRequest {
                id,
                peer_urls: get_strings(&mut buf)?,
                is_learner,
            })
        }
        tag @ (TAG_MEMBER_REMOVE | TAG_MEMBER_PROMOTE) => {
            if buf.remaining() < 8 {
                return Err(DecodeError("truncated member change"));
            }
            let id = buf.get_u64_le();
            if tag == TAG_MEMBER_REMOVE {
                WriteRequest::MemberRemove { id }
            } else {
                WriteRequest::MemberPromote { id }
            }
        }
        TAG_MEMBER_UPDATE => {
            if buf.remaining() < 8 {
                return Err(DecodeError("truncated member update"));
            }
            let id = buf.get_u64_le();
            WriteRequest::MemberUpdate {
                id,
                peer_urls: get_strings(&mut buf)?,
            }
        }
        TAG_MEMBER_ATTRS => {
            if buf.remaining() < 8 {
                return Err(DecodeError("truncated member attributes"));
            }
            let id = buf.get_u64_le();
            WriteRequest::MemberAttrs {
                id,
                name: get_string(&mut buf)?,
                client_urls: get_strings(&mut buf)?,
            }
        }
        TAG_AUTH => WriteRequest::Auth(get_auth(&mut buf)?),
        TAG_AUTHENTICATE => WriteRequest::Authenticate {
            name: get_string(&mut buf)?,
            token_prefix: get_string(&mut buf)?,
        },
        TAG_AUTHED => {
            let user = get_string(&mut buf)?;
            let revision = get_varint(&mut buf)?;
            let mut inner = vec![0u8; 8];
            inner.extend_from_slice(&buf);
            buf.advance(buf.remaining());
            let (_, req) = decode_legacy(&inner)?;
            if matches!(req, WriteRequest::Authed { .. }) {
                return Err(DecodeError("nested authed request"));
            }
            WriteRequest::Authed {
                info: AuthInfo { user, revision },
                req: Box::new(req),
            }
        }
        _ => return Err(DecodeError("unknown request tag")),
    };
    if buf.has_remaining() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok((id, req))
}

// ---------------------------------------------------------------------------------------------
// etcd's InternalRaftRequest

use prost::Message as _;
use proto::etcdserverpb as pb;

/// The field of `InternalRaftRequest` rusd's own membership requests go in.
pub const RUSD_MEMBERSHIP_FIELD: u32 = 60001;

/// rusd's membership request in a normal entry (field 60001 of the InternalRaftRequest).
#[derive(Clone, PartialEq, prost::Message)]
struct RusdMembershipRequest {
    /// 1 add, 2 remove, 3 promote, 4 update.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(string, repeated, tag = "3")]
    peer_urls: Vec<String>,
    #[prost(bool, tag = "4")]
    is_learner: bool,
}

/// Reads field 60001 of an entry, skipping etcd's fields.
#[derive(Clone, PartialEq, prost::Message)]
struct RusdExtension {
    #[prost(message, optional, tag = "60001")]
    membership: Option<RusdMembershipRequest>,
}

const MEMBERSHIP_ADD: u32 = 1;
const MEMBERSHIP_REMOVE: u32 = 2;
const MEMBERSHIP_PROMOTE: u32 = 3;
const MEMBERSHIP_UPDATE: u32 = 4;

pub fn encode(request_id: u64, req: &WriteRequest) -> Vec<u8> {
    let mut header = pb::RequestHeader {
        id: request_id,
        ..Default::default()
    };
    let req = match req {
        WriteRequest::Authed { info, req } => {
            header.username = info.user.clone();
            header.auth_revision = info.revision;
            req.as_ref()
        }
        req => req,
    };
    let mut r = pb::InternalRaftRequest {
        header: Some(header),
        ..Default::default()
    };
    let mut membership = None;
    let mut member = |kind: u32, member_id: u64, peer_urls: &[String], is_learner: bool| {
        membership = Some(RusdMembershipRequest {
            kind,
            member_id,
            peer_urls: peer_urls.to_vec(),
            is_learner,
        })
    };
    match req {
        WriteRequest::Put(p) => r.put = Some(put_pb(p)),
        WriteRequest::DeleteRange(d) => r.delete_range = Some(delete_pb(d)),
        WriteRequest::Txn(t) => r.txn = Some(txn_pb(t)),
        WriteRequest::Compact { revision } => {
            r.compaction = Some(pb::CompactionRequest {
                revision: *revision,
                physical: false,
            })
        }
        WriteRequest::LeaseGrant { id, ttl_secs } => {
            r.lease_grant = Some(pb::LeaseGrantRequest {
                ttl: *ttl_secs,
                id: *id,
            })
        }
        WriteRequest::LeaseRevoke { id } => {
            r.lease_revoke = Some(pb::LeaseRevokeRequest { id: *id })
        }
        WriteRequest::Alarm {
            activate,
            member_id,
            alarm,
        } => {
            use pb::alarm_request::AlarmAction;
            r.alarm = Some(pb::AlarmRequest {
                action: if *activate {
                    AlarmAction::Activate as i32
                } else {
                    AlarmAction::Deactivate as i32
                },
                member_id: *member_id,
                alarm: alarm.number(),
            })
        }
        WriteRequest::MemberAttrs {
            id,
            name,
            client_urls,
        } => {
            r.cluster_member_attr_set = Some(proto::membershippb::ClusterMemberAttrSetRequest {
                member_id: *id,
                member_attributes: Some(proto::membershippb::Attributes {
                    name: name.clone(),
                    client_urls: client_urls.clone(),
                }),
            })
        }
        WriteRequest::MemberAdd(m) => member(MEMBERSHIP_ADD, m.id, &m.peer_urls, m.is_learner),
        WriteRequest::MemberRemove { id } => member(MEMBERSHIP_REMOVE, *id, &[], false),
        WriteRequest::MemberPromote { id } => member(MEMBERSHIP_PROMOTE, *id, &[], false),
        WriteRequest::MemberUpdate { id, peer_urls } => {
            member(MEMBERSHIP_UPDATE, *id, peer_urls, false)
        }
        WriteRequest::Auth(a) => auth_pb(a, &mut r),
        // As etcd: the password was checked by the proposer and never enters the log; the
        // token prefix travels as `simple_token`.
        WriteRequest::Authenticate { name, token_prefix } => {
            r.authenticate = Some(pb::InternalAuthenticateRequest {
                name: name.clone(),
                password: String::new(),
                simple_token: token_prefix.clone(),
            })
        }
        // Nested authentication never happens; decoding refuses it.
        WriteRequest::Authed { .. } => {}
    }
    let mut out = r.encode_to_vec();
    if let Some(membership) = membership {
        RusdExtension {
            membership: Some(membership),
        }
        .encode(&mut out)
        .expect("a Vec grows as needed");
    }
    out
}

fn malformed(what: &'static str) -> DecodeError {
    DecodeError(what)
}

pub fn decode(data: &[u8]) -> Result<(u64, WriteRequest), DecodeError> {
    let r = pb::InternalRaftRequest::decode(data)
        .map_err(|_| malformed("not an InternalRaftRequest"))?;
    let header = r.header.clone().unwrap_or_default();
    if let Some(req) = etcd_request(r)? {
        return Ok((header.id, req));
    }
    let extension =
        RusdExtension::decode(data).map_err(|_| malformed("undecodable rusd extension"))?;
    let m = extension
        .membership
        .ok_or(malformed("an entry without a request"))?;
    let req = match m.kind {
        MEMBERSHIP_ADD => WriteRequest::MemberAdd(MemberAddRequest {
            id: m.member_id,
            peer_urls: m.peer_urls,
            is_learner: m.is_learner,
        }),
        MEMBERSHIP_REMOVE => WriteRequest::MemberRemove { id: m.member_id },
        MEMBERSHIP_PROMOTE => WriteRequest::MemberPromote { id: m.member_id },
        MEMBERSHIP_UPDATE => WriteRequest::MemberUpdate {
            id: m.member_id,
            peer_urls: m.peer_urls,
        },
        _ => return Err(malformed("bad membership request kind")),
    };
    Ok((header.id, with_sender(&header, req)))
}

/// The request of an InternalRaftRequest's etcd fields, wrapped with its sender when the
/// header names one; `None` when no etcd field is set (a rusd extension, or a request rusd
/// does not propose). Shared by rusd's own log and the import of an etcd log.
pub fn etcd_request(r: pb::InternalRaftRequest) -> Result<Option<WriteRequest>, DecodeError> {
    let header = r.header.clone().unwrap_or_default();
    let req = if let Some(p) = r.put {
        WriteRequest::Put(put_of(p))
    } else if let Some(d) = r.delete_range {
        WriteRequest::DeleteRange(delete_of(d))
    } else if let Some(t) = r.txn {
        WriteRequest::Txn(txn_of(t)?)
    } else if let Some(c) = r.compaction {
        WriteRequest::Compact {
            revision: c.revision,
        }
    } else if let Some(g) = r.lease_grant {
        WriteRequest::LeaseGrant {
            id: g.id,
            ttl_secs: g.ttl,
        }
    } else if let Some(v) = r.lease_revoke {
        WriteRequest::LeaseRevoke { id: v.id }
    } else if let Some(a) = r.alarm {
        use pb::alarm_request::AlarmAction;
        let activate = match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate) => true,
            Ok(AlarmAction::Deactivate) => false,
            _ => return Err(malformed("bad alarm action")),
        };
        WriteRequest::Alarm {
            activate,
            member_id: a.member_id,
            alarm: AlarmKind::from_number(a.alarm).ok_or(malformed("bad alarm type"))?,
        }
    } else if let Some(m) = r.cluster_member_attr_set {
        let attributes = m.member_attributes.unwrap_or_default();
        WriteRequest::MemberAttrs {
            id: m.member_id,
            name: attributes.name,
            client_urls: attributes.client_urls,
        }
    } else if let Some(a) = r.authenticate {
        WriteRequest::Authenticate {
            name: a.name,
            token_prefix: a.simple_token,
        }
    } else if let Some(a) = auth_of(&r)? {
        WriteRequest::Auth(a)
    } else {
        return Ok(None);
    };
    Ok(Some(with_sender(&header, req)))
}

fn with_sender(header: &pb::RequestHeader, req: WriteRequest) -> WriteRequest {
    if header.username.is_empty() {
        req
    } else {
        WriteRequest::Authed {
            info: AuthInfo {
                user: header.username.clone(),
                revision: header.auth_revision,
            },
            req: Box::new(req),
        }
    }
}

fn put_pb(p: &PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn put_of(p: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn delete_pb(d: &DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: d.key.clone(),
        range_end: d.range_end.clone(),
        prev_kv: d.prev_kv,
    }
}

fn delete_of(d: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

fn range_pb(r: &RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            SortOrder::None => 0,
            SortOrder::Ascend => 1,
            SortOrder::Descend => 2,
        },
        sort_target: match r.sort_target {
            SortTarget::Key => 0,
            SortTarget::Version => 1,
            SortTarget::Create => 2,
            SortTarget::Mod => 3,
            SortTarget::Value => 4,
        },
        serializable: false,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

fn range_of(r: pb::RangeRequest) -> Result<RangeRequest, DecodeError> {
    Ok(RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => return Err(malformed("bad sort order")),
        },
        sort_target: match r.sort_target {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => return Err(malformed("bad sort target")),
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

fn compare_pb(c: &Compare) -> pb::Compare {
    use pb::compare::TargetUnion;
    let (target, union) = match &c.target {
        CompareTarget::Version(v) => (0, TargetUnion::Version(*v)),
        CompareTarget::Create(v) => (1, TargetUnion::CreateRevision(*v)),
        CompareTarget::Mod(v) => (2, TargetUnion::ModRevision(*v)),
        CompareTarget::Value(v) => (3, TargetUnion::Value(v.clone())),
        CompareTarget::Lease(v) => (4, TargetUnion::Lease(*v)),
    };
    pb::Compare {
        result: match c.result {
            CompareResult::Equal => 0,
            CompareResult::Greater => 1,
            CompareResult::Less => 2,
            CompareResult::NotEqual => 3,
        },
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        target_union: Some(union),
    }
}

fn compare_of(c: pb::Compare) -> Result<Compare, DecodeError> {
    use pb::compare::TargetUnion;
    let target = match (c.target, c.target_union) {
        (0, Some(TargetUnion::Version(v))) => CompareTarget::Version(v),
        (1, Some(TargetUnion::CreateRevision(v))) => CompareTarget::Create(v),
        (2, Some(TargetUnion::ModRevision(v))) => CompareTarget::Mod(v),
        (3, Some(TargetUnion::Value(v))) => CompareTarget::Value(v),
        (4, Some(TargetUnion::Lease(v))) => CompareTarget::Lease(v),
        _ => return Err(malformed("bad compare target")),
    };
    Ok(Compare {
        key: c.key,
        range_end: c.range_end,
        result: match c.result {
            0 => CompareResult::Equal,
            1 => CompareResult::Greater,
            2 => CompareResult::Less,
            3 => CompareResult::NotEqual,
            _ => return Err(malformed("bad compare result")),
        },
        target,
    })
}

fn op_pb(op: &RequestOp) -> pb::RequestOp {
    use pb::request_op::Request;
    pb::RequestOp {
        request: Some(match op {
            RequestOp::Range(r) => Request::RequestRange(range_pb(r)),
            RequestOp::Put(p) => Request::RequestPut(put_pb(p)),
            RequestOp::DeleteRange(d) => Request::RequestDeleteRange(delete_pb(d)),
            RequestOp::Txn(t) => Request::RequestTxn(txn_pb(t)),
        }),
    }
}

fn op_of(op: pb::RequestOp) -> Result<RequestOp, DecodeError> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => RequestOp::Range(range_of(r)?),
        Some(Request::RequestPut(p)) => RequestOp::Put(put_of(p)),
        Some(Request::RequestDeleteRange(d)) => RequestOp::DeleteRange(delete_of(d)),
        Some(Request::RequestTxn(t)) => RequestOp::Txn(txn_of(t)?),
        None => return Err(malformed("an empty txn op")),
    })
}

fn txn_pb(t: &TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: t.compare.iter().map(compare_pb).collect(),
        success: t.success.iter().map(op_pb).collect(),
        failure: t.failure.iter().map(op_pb).collect(),
    }
}

/// prost bounds the nesting of messages it decodes (100 levels), so a hostile entry cannot
/// recurse deeply here.
fn txn_of(t: pb::TxnRequest) -> Result<TxnRequest, DecodeError> {
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_of)
            .collect::<Result<_, _>>()?,
        success: t.success.into_iter().map(op_of).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(op_of).collect::<Result<_, _>>()?,
    })
}

fn auth_pb(a: &AuthRequest, r: &mut pb::InternalRaftRequest) {
    match a {
        AuthRequest::Enable => r.auth_enable = Some(pb::AuthEnableRequest {}),
        AuthRequest::Disable => r.auth_disable = Some(pb::AuthDisableRequest {}),
        AuthRequest::UserAdd {
            name,
            password_hash,
            no_password,
        } => {
            r.auth_user_add = Some(pb::AuthUserAddRequest {
                name: name.clone(),
                password: String::new(),
                options: Some(proto::authpb::UserAddOptions {
                    no_password: *no_password,
                }),
                hashed_password: password_hash.clone(),
            })
        }
        AuthRequest::UserDelete { name } => {
            r.auth_user_delete = Some(pb::AuthUserDeleteRequest { name: name.clone() })
        }
        AuthRequest::UserChangePassword {
            name,
            password_hash,
        } => {
            r.auth_user_change_password = Some(pb::AuthUserChangePasswordRequest {
                name: name.clone(),
                password: String::new(),
                hashed_password: password_hash.clone(),
            })
        }
        AuthRequest::UserGrantRole { user, role } => {
            r.auth_user_grant_role = Some(pb::AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
        }
        AuthRequest::UserRevokeRole { name, role } => {
            r.auth_user_revoke_role = Some(pb::AuthUserRevokeRoleRequest {
                name: name.clone(),
                role: role.clone(),
            })
        }
        AuthRequest::RoleAdd { name } => {
            r.auth_role_add = Some(pb::AuthRoleAddRequest { name: name.clone() })
        }
        AuthRequest::RoleDelete { role } => {
            r.auth_role_delete = Some(pb::AuthRoleDeleteRequest { role: role.clone() })
        }
        AuthRequest::RoleGrantPermission { name, perm } => {
            r.auth_role_grant_permission = Some(pb::AuthRoleGrantPermissionRequest {
                name: name.clone(),
                perm: Some(proto::authpb::Permission {
                    perm_type: perm.perm as i32,
                    key: perm.key.clone(),
                    range_end: perm.range_end.clone(),
                }),
            })
        }
        AuthRequest::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            r.auth_role_revoke_permission = Some(pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: key.clone(),
                range_end: range_end.clone(),
            })
        }
    }
}

fn auth_of(r: &pb::InternalRaftRequest) -> Result<Option<AuthRequest>, DecodeError> {
    Ok(Some(if r.auth_enable.is_some() {
        AuthRequest::Enable
    } else if r.auth_disable.is_some() {
        AuthRequest::Disable
    } else if let Some(add) = &r.auth_user_add {
        AuthRequest::UserAdd {
            name: add.name.clone(),
            password_hash: add.hashed_password.clone(),
            no_password: add.options.as_ref().is_some_and(|o| o.no_password),
        }
    } else if let Some(delete) = &r.auth_user_delete {
        AuthRequest::UserDelete {
            name: delete.name.clone(),
        }
    } else if let Some(change) = &r.auth_user_change_password {
        AuthRequest::UserChangePassword {
            name: change.name.clone(),
            password_hash: change.hashed_password.clone(),
        }
    } else if let Some(grant) = &r.auth_user_grant_role {
        AuthRequest::UserGrantRole {
            user: grant.user.clone(),
            role: grant.role.clone(),
        }
    } else if let Some(revoke) = &r.auth_user_revoke_role {
        AuthRequest::UserRevokeRole {
            name: revoke.name.clone(),
            role: revoke.role.clone(),
        }
    } else if let Some(add) = &r.auth_role_add {
        AuthRequest::RoleAdd {
            name: add.name.clone(),
        }
    } else if let Some(delete) = &r.auth_role_delete {
        AuthRequest::RoleDelete {
            role: delete.role.clone(),
        }
    } else if let Some(grant) = &r.auth_role_grant_permission {
        let perm = grant
            .perm
            .as_ref()
            .ok_or(malformed("a permission grant without a permission"))?;
        AuthRequest::RoleGrantPermission {
            name: grant.name.clone(),
            perm: Permission {
                key: perm.key.clone(),
                range_end: perm.range_end.clone(),
                perm: PermType::from_i32(perm.perm_type).ok_or(malformed("bad permission type"))?,
            },
        }
    } else if let Some(revoke) = &r.auth_role_revoke_permission {
        AuthRequest::RoleRevokePermission {
            role: revoke.role.clone(),
            key: revoke.key.clone(),
            range_end: revoke.range_end.clone(),
        }
    } else {
        return Ok(None);
    }))
}

// ---------------------------------------------------------------------------------------------
// Conf changes, as etcd v3.5 writes them

/// The raft conf change for a membership request, as etcd v3.5 proposes it: a
/// `raftpb.ConfChange` whose ID is the request's, and whose context is the JSON of the member
/// (etcd's `ConfigChangeContext`: `membership.Member` and `isPromote`) for an add or a
/// promotion, empty for a removal. `None` for requests that are not conf changes.
pub fn encode_conf_change(request_id: u64, req: &WriteRequest) -> Option<ConfChange> {
    let mut cc = ConfChange {
        id: request_id,
        ..Default::default()
    };
    let member_json = |id: u64, peer_urls: &[String], is_learner: bool, is_promote: bool| {
        let mut json = serde_json::json!({ "id": id, "peerURLs": peer_urls });
        if is_learner {
            json["isLearner"] = true.into();
        }
        json["isPromote"] = is_promote.into();
        json.to_string().into_bytes()
    };
    match req {
        WriteRequest::MemberAdd(m) => {
            cc.set_change_type(if m.is_learner {
                ConfChangeType::AddLearnerNode
            } else {
                ConfChangeType::AddNode
            });
            cc.node_id = m.id;
            cc.context = member_json(m.id, &m.peer_urls, m.is_learner, false).into();
        }
        WriteRequest::MemberPromote { id } => {
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = *id;
            cc.context = member_json(*id, &[], false, true).into();
        }
        WriteRequest::MemberRemove { id } => {
            cc.set_change_type(ConfChangeType::RemoveNode);
            cc.node_id = *id;
        }
        _ => return None,
    }
    Some(cc)
}

#[derive(serde::Deserialize)]
struct ConfChangeContextJson {
    #[serde(rename = "peerURLs", default)]
    peer_urls: Option<Vec<String>>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(rename = "isPromote", default)]
    is_promote: bool,
}

/// A conf-change entry's request ID, membership request and raft change: etcd v3.5's
/// `ConfChange` with its JSON context (what rusd writes and what an imported etcd log holds),
/// or, in WALs written before the format change, a `ConfChangeV2` carrying rusd's first
/// encoding.
pub fn decode_conf_change(entry: &Entry) -> Result<(u64, WriteRequest, ConfChangeV2), DecodeError> {
    use protobuf::Message as _;
    match entry.get_entry_type() {
        EntryType::EntryConfChange => {
            let cc = ConfChange::parse_from_bytes(&entry.data)
                .map_err(|_| malformed("undecodable conf change"))?;
            let context: Option<ConfChangeContextJson> = if cc.context.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_slice(&cc.context)
                        .map_err(|_| malformed("undecodable conf change context"))?,
                )
            };
            let req = match (cc.get_change_type(), context) {
                (ConfChangeType::RemoveNode, _) => WriteRequest::MemberRemove { id: cc.node_id },
                (ConfChangeType::AddNode, Some(c)) if c.is_promote => {
                    WriteRequest::MemberPromote { id: cc.node_id }
                }
                (kind, context) => {
                    let context = context.unwrap_or(ConfChangeContextJson {
                        peer_urls: None,
                        is_learner: false,
                        is_promote: false,
                    });
                    WriteRequest::MemberAdd(MemberAddRequest {
                        id: cc.node_id,
                        peer_urls: context.peer_urls.unwrap_or_default(),
                        is_learner: kind == ConfChangeType::AddLearnerNode || context.is_learner,
                    })
                }
            };
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(cc.get_change_type());
            single.node_id = cc.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = cc.context;
            Ok((cc.id, req, v2))
        }
        EntryType::EntryConfChangeV2 => {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|_| malformed("undecodable conf change"))?;
            let (id, req) = decode_legacy(&cc.context)?;
            Ok((id, req, cc))
        }
        EntryType::EntryNormal => Err(malformed("not a conf change")),
    }
}

/// Rewrites an entry written by an older rusd into today's encoding (the WAL conversion at
/// start-up): a normal entry's request as an InternalRaftRequest, a `ConfChangeV2` as etcd's
/// `ConfChange` with its JSON context.
pub fn convert_legacy_entry(entry: &mut Entry) -> Result<(), String> {
    use protobuf::Message as _;
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => {}
        EntryType::EntryNormal => {
            let (id, req) = decode_legacy(&entry.data).map_err(|e| e.to_string())?;
            entry.data = encode(id, &req).into();
        }
        EntryType::EntryConfChangeV2 => {
            let (id, req, _) = decode_conf_change(entry).map_err(|e| e.to_string())?;
            let cc = encode_conf_change(id, &req)
                .ok_or_else(|| format!("a conf change carrying {req:?}"))?;
            entry.set_entry_type(EntryType::EntryConfChange);
            entry.data = cc.write_to_bytes().map_err(|e| e.to_string())?.into();
        }
        EntryType::EntryConfChange => {}
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn get_varint(buf: &mut Bytes) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err(DecodeError("truncated varint"));
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError("varint too long"))
}

fn put_i64(out: &mut BytesMut, v: i64) {
    put_varint(out, zigzag(v));
}

fn get_i64(buf: &mut Bytes) -> Result<i64, DecodeError> {
    Ok(unzigzag(get_varint(buf)?))
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

fn get_bytes(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = get_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(DecodeError("truncated bytes"));
    }
    Ok(buf.split_to(len as usize))
}

fn put_strings(out: &mut BytesMut, strings: &[String]) {
    put_varint(out, strings.len() as u64);
    for s in strings {
        put_bytes(out, s.as_bytes());
    }
}

fn get_strings(buf: &mut Bytes) -> Result<Vec<String>, DecodeError> {
    let n = get_varint(buf)?;
    if n > buf.remaining() as u64 {
        return Err(DecodeError("string count exceeds entry"));
    }
    (0..n)
        .map(|_| {
            String::from_utf8(get_bytes(buf)?.to_vec()).map_err(|_| DecodeError("non-UTF-8 URL"))
        })
        .collect()
}

fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if !buf.has_remaining() {
        return Err(DecodeError("truncated"));
    }
    Ok(buf.get_u8())
}

fn flags(bits: &[bool]) -> u8 {
    bits.iter()
        .enumerate()
        .fold(0u8, |acc, (i, b)| acc | (u8::from(*b) << i))
}

fn put_put(out: &mut BytesMut, p: &PutRequest) {
    put_bytes(out, &p.key);
    put_bytes(out, &p.value);
    put_i64(out, p.lease);
    out.put_u8(flags(&[p.prev_kv, p.ignore_value, p.ignore_lease]));
}

fn get_put(buf: &mut Bytes) -> Result<PutRequest, DecodeError> {
    let key = get_bytes(buf)?;
    let value = get_bytes(buf)?;
    let lease = get_i64(buf)?;
    let f = get_u8(buf)?;
    Ok(PutRequest {
        key,
        value,
        lease,
        prev_kv: f & 1 != 0,
        ignore_value: f & 2 != 0,
        ignore_lease: f & 4 != 0,
    })
}

fn put_delete(out: &mut BytesMut, d: &DeleteRangeRequest) {
    put_bytes(out, &d.key);
    put_bytes(out, &d.range_end);
    out.put_u8(u8::from(d.prev_kv));
}

fn get_delete(buf: &mut Bytes) -> Result<DeleteRangeRequest, DecodeError> {
    Ok(DeleteRangeRequest {
        key: get_bytes(buf)?,
        range_end: get_bytes(buf)?,
        prev_kv: get_u8(buf)? != 0,
    })
}

fn put_range(out: &mut BytesMut, r: &RangeRequest) {
    put_bytes(out, &r.key);
    put_bytes(out, &r.range_end);
    for v in [
        r.limit,
        r.revision,
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    ] {
        put_i64(out, v);
    }
    out.put_u8(match r.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    out.put_u8(match r.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    out.put_u8(flags(&[r.keys_only, r.count_only]));
}

fn get_range(buf: &mut Bytes) -> Result<RangeRequest, DecodeError> {
    let key = get_bytes(buf)?;
    let range_end = get_bytes(buf)?;
    let mut n = [0i64; 6];
    for v in n.iter_mut() {
        *v = get_i64(buf)?;
    }
    let sort_order = match get_u8(buf)? {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        _ => return Err(DecodeError("bad sort order")),
    };
    let sort_target = match get_u8(buf)? {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        _ => return Err(DecodeError("bad sort target")),
    };
    let f = get_u8(buf)?;
    Ok(RangeRequest {
        key,
        range_end,
        limit: n[0],
        revision: n[1],
        min_mod_revision: n[2],
        max_mod_revision: n[3],
        min_create_revision: n[4],
        max_create_revision: n[5],
        sort_order,
        sort_target,
        keys_only: f & 1 != 0,
        count_only: f & 2 != 0,
    })
}

fn put_compare(out: &mut BytesMut, c: &Compare) {
    put_bytes(out, &c.key);
    put_bytes(out, &c.range_end);
    out.put_u8(match c.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    });
    match &c.target {
        CompareTarget::Version(v) => {
            out.put_u8(0);
            put_i64(out, *v)
        }
        CompareTarget::Create(v) => {
            out.put_u8(1);
            put_i64(out, *v)
        }
        CompareTarget::Mod(v) => {
            out.put_u8(2);
            put_i64(out, *v)
        }
        CompareTarget::Value(v) => {
            out.put_u8(3);
            put_bytes(out, v)
        }
        CompareTarget::Lease(v) => {
            out.put_u8(4);
            put_i64(out, *v)
        }
    }
}

fn get_compare(buf: &mut Bytes) -> Result<Compare, DecodeError> {
    let key = get_bytes(buf)?;
    let range_end = get_bytes(buf)?;
    let result = match get_u8(buf)? {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => return Err(DecodeError("bad compare result")),
    };
    let target = match get_u8(buf)? {
        0 => CompareTarget::Version(get_i64(buf)?),
        1 => CompareTarget::Create(get_i64(buf)?),
        2 => CompareTarget::Mod(get_i64(buf)?),
        3 => CompareTarget::Value(get_bytes(buf)?),
        4 => CompareTarget::Lease(get_i64(buf)?),
        _ => return Err(DecodeError("bad compare target")),
    };
    Ok(Compare {
        key,
        range_end,
        result,
        target,
    })
}

fn put_ops(out: &mut BytesMut, ops: &[RequestOp]) {
    put_varint(out, ops.len() as u64);
    for op in ops {
        match op {
            RequestOp::Range(r) => {
                out.put_u8(TAG_RANGE);
                put_range(out, r)
            }
            RequestOp::Put(p) => {
                out.put_u8(TAG_PUT);
                put_put(out, p)
            }
            RequestOp::DeleteRange(d) => {
                out.put_u8(TAG_DELETE_RANGE);
                put_delete(out, d)
            }
            RequestOp::Txn(t) => {
                out.put_u8(TAG_TXN);
                put_txn(out, t)
            }
        }
    }
}

fn get_ops(buf: &mut Bytes, depth: u32) -> Result<Vec<RequestOp>, DecodeError> {
    let n = get_varint(buf)?;
    if n > buf.remaining() as u64 {
        return Err(DecodeError("op count exceeds entry"));
    }
    let mut ops = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ops.push(match get_u8(buf)? {
            TAG_RANGE => RequestOp::Range(get_range(buf)?),
            TAG_PUT => RequestOp::Put(get_put(buf)?),
            TAG_DELETE_RANGE => RequestOp::DeleteRange(get_delete(buf)?),
            TAG_TXN => RequestOp::Txn(get_txn(buf, depth + 1)?),
            _ => return Err(DecodeError("bad op tag")),
        });
    }
    Ok(ops)
}

fn put_txn(out: &mut BytesMut, t: &TxnRequest) {
    put_varint(out, t.compare.len() as u64);
    for c in &t.compare {
        put_compare(out, c);
    }
    put_ops(out, &t.success);
    put_ops(out, &t.failure);
}

fn get_txn(buf: &mut Bytes, depth: u32) -> Result<TxnRequest, DecodeError> {
    if depth > MAX_TXN_DEPTH {
        return Err(DecodeError("txn nested too deep"));
    }
    let n = get_varint(buf)?;
    if n > buf.remaining() as u64 {
        return Err(DecodeError("compare count exceeds entry"));
    }
    let mut compare = Vec::with_capacity(n as usize);
    for _ in 0..n {
        compare.push(get_compare(buf)?);
    }
    Ok(TxnRequest {
        compare,
        success: get_ops(buf, depth)?,
        failure: get_ops(buf, depth)?,
    })
}

fn get_string(buf: &mut Bytes) -> Result<String, DecodeError> {
    String::from_utf8(get_bytes(buf)?.to_vec()).map_err(|_| DecodeError("name is not UTF-8"))
}

const AUTH_ENABLE: u8 = 1;
const AUTH_DISABLE: u8 = 2;
const AUTH_USER_ADD: u8 = 3;
const AUTH_USER_DELETE: u8 = 4;
const AUTH_USER_CHANGE_PASSWORD: u8 = 5;
const AUTH_USER_GRANT_ROLE: u8 = 6;
const AUTH_USER_REVOKE_ROLE: u8 = 7;
const AUTH_ROLE_ADD: u8 = 8;
const AUTH_ROLE_DELETE: u8 = 9;
const AUTH_ROLE_GRANT_PERMISSION: u8 = 10;
const AUTH_ROLE_REVOKE_PERMISSION: u8 = 11;

fn put_auth(out: &mut BytesMut, a: &AuthRequest) {
    let s = |out: &mut BytesMut, v: &str| put_bytes(out, v.as_bytes());
    match a {
        AuthRequest::Enable => out.put_u8(AUTH_ENABLE),
        AuthRequest::Disable => out.put_u8(AUTH_DISABLE),
        AuthRequest::UserAdd {
            name,
            password_hash,
            no_password,
        } => {
            out.put_u8(AUTH_USER_ADD);
            s(out, name);
            s(out, password_hash);
            out.put_u8(u8::from(*no_password));
        }
        AuthRequest::UserDelete { name } => {
            out.put_u8(AUTH_USER_DELETE);
            s(out, name);
        }
        AuthRequest::UserChangePassword {
            name,
            password_hash,
        } => {
            out.put_u8(AUTH_USER_CHANGE_PASSWORD);
            s(out, name);
            s(out, password_hash);
        }
        AuthRequest::UserGrantRole { user, role } => {
            out.put_u8(AUTH_USER_GRANT_ROLE);
            s(out, user);
            s(out, role);
        }
        AuthRequest::UserRevokeRole { name, role } => {
            out.put_u8(AUTH_USER_REVOKE_ROLE);
            s(out, name);
            s(out, role);
        }
        AuthRequest::RoleAdd { name } => {
            out.put_u8(AUTH_ROLE_ADD);
            s(out, name);
        }
        AuthRequest::RoleDelete { role } => {
            out.put_u8(AUTH_ROLE_DELETE);
            s(out, role);
        }
        AuthRequest::RoleGrantPermission { name, perm } => {
            out.put_u8(AUTH_ROLE_GRANT_PERMISSION);
            s(out, name);
            put_bytes(out, &perm.key);
            put_bytes(out, &perm.range_end);
            out.put_u8(perm.perm as u8);
        }
        AuthRequest::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            out.put_u8(AUTH_ROLE_REVOKE_PERMISSION);
            s(out, role);
            put_bytes(out, key);
            put_bytes(out, range_end);
        }
    }
}

fn get_auth(buf: &mut Bytes) -> Result<AuthRequest, DecodeError> {
    Ok(match get_u8(buf)? {
        AUTH_ENABLE => AuthRequest::Enable,
        AUTH_DISABLE => AuthRequest::Disable,
        AUTH_USER_ADD => AuthRequest::UserAdd {
            name: get_string(buf)?,
            password_hash: get_string(buf)?,
            no_password: get_u8(buf)? != 0,
        },
        AUTH_USER_DELETE => AuthRequest::UserDelete {
            name: get_string(buf)?,
        },
        AUTH_USER_CHANGE_PASSWORD => AuthRequest::UserChangePassword {
            name: get_string(buf)?,
            password_hash: get_string(buf)?,
        },
        AUTH_USER_GRANT_ROLE => AuthRequest::UserGrantRole {
            user: get_string(buf)?,
            role: get_string(buf)?,
        },
        AUTH_USER_REVOKE_ROLE => AuthRequest::UserRevokeRole {
            name: get_string(buf)?,
            role: get_string(buf)?,
        },
        AUTH_ROLE_ADD => AuthRequest::RoleAdd {
            name: get_string(buf)?,
        },
        AUTH_ROLE_DELETE => AuthRequest::RoleDelete {
            role: get_string(buf)?,
        },
        AUTH_ROLE_GRANT_PERMISSION => AuthRequest::RoleGrantPermission {
            name: get_string(buf)?,
            perm: Permission {
                key: get_bytes(buf)?,
                range_end: get_bytes(buf)?,
                perm: PermType::from_i32(i32::from(get_u8(buf)?))
                    .ok_or(DecodeError("bad permission type"))?,
            },
        },
        AUTH_ROLE_REVOKE_PERMISSION => AuthRequest::RoleRevokePermission {
            role: get_string(buf)?,
            key: get_bytes(buf)?,
            range_end: get_bytes(buf)?,
        },
        _ => return Err(DecodeError("bad auth request tag")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_auth_requests() {
        let perm = Permission {
            key: Bytes::from_static(b"z"),
            range_end: Bytes::from_static(b"\0"),
            perm: PermType::ReadWrite,
        };
        let reqs = vec![
            AuthRequest::Enable,
            AuthRequest::Disable,
            AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: "$2a$10$abc".into(),
                no_password: false,
            },
            AuthRequest::UserAdd {
                name: "example.com".into(),
                password_hash: String::new(),
                no_password: true,
            },
            AuthRequest::UserDelete { name: "u".into() },
            AuthRequest::UserChangePassword {
                name: "u".into(),
                password_hash: "h".into(),
            },
            AuthRequest::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthRequest::UserRevokeRole {
                name: "u".into(),
                role: "r".into(),
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleDelete { role: "r".into() },
            AuthRequest::RoleGrantPermission {
                name: "r".into(),
                perm,
            },
            AuthRequest::RoleRevokePermission {
                role: "r".into(),
                key: Bytes::from_static(b"a"),
                range_end: Bytes::new(),
            },
        ];
        let mut all: Vec<WriteRequest> = reqs.into_iter().map(WriteRequest::Auth).collect();
        all.push(WriteRequest::Authenticate {
            name: "u".into(),
            token_prefix: "AbCdEfGhIjKlMnOp".into(),
        });
        all.push(WriteRequest::Authed {
            info: AuthInfo {
                user: "u".into(),
                revision: 7,
            },
            req: Box::new(WriteRequest::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
        });
        all.push(WriteRequest::Authed {
            info: AuthInfo {
                user: "root".into(),
                revision: 1 << 40,
            },
            req: Box::new(WriteRequest::Auth(AuthRequest::Disable)),
        });
        for req in all {
            let bytes = encode_legacy(5, &req);
            let (id, back) = decode_legacy(&bytes).unwrap();
            assert_eq!(id, 5);
            assert_eq!(back, req);
            for cut in 0..bytes.len() {
                assert!(
                    decode_legacy(&bytes[..cut]).is_err(),
                    "prefix {cut} of {req:?} decoded"
                );
            }
        }
    }

    #[test]
    fn round_trips_nested_txn() {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"k"),
                range_end: Bytes::new(),
                result: CompareResult::NotEqual,
                target: CompareTarget::Value(Bytes::from_static(b"v")),
            }],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: Bytes::from_static(b"a"),
                    value: Bytes::from_static(b"1"),
                    lease: 7,
                    prev_kv: true,
                    ..Default::default()
                }),
                RequestOp::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp::Range(RangeRequest {
                        key: Bytes::from_static(b"a"),
                        limit: 3,
                        revision: -1,
                        sort_order: SortOrder::Descend,
                        sort_target: SortTarget::Mod,
                        ..Default::default()
                    })],
                    failure: vec![],
                }),
            ],
            failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            })],
        };
        for req in [
            WriteRequest::Txn(txn),
            WriteRequest::Compact { revision: 42 },
            WriteRequest::LeaseGrant {
                id: 7,
                ttl_secs: 60,
            },
            WriteRequest::LeaseRevoke { id: -3 },
            WriteRequest::Alarm {
                activate: true,
                member_id: u64::MAX,
                alarm: AlarmKind::NoSpace,
            },
            WriteRequest::MemberAdd(MemberAddRequest {
                id: 7,
                peer_urls: vec!["http://a:1".into(), "http://b:2".into()],
                is_learner: true,
            }),
            WriteRequest::MemberUpdate {
                id: 9,
                peer_urls: vec![],
            },
            WriteRequest::MemberRemove { id: 0xabc },
            WriteRequest::MemberPromote { id: u64::MAX },
        ] {
            let bytes = encode_legacy(99, &req);
            let (id, back) = decode_legacy(&bytes).unwrap();
            assert_eq!(id, 99);
            assert_eq!(back, req);
            // Every strict prefix is malformed, never silently accepted.
            for cut in 0..bytes.len() {
                assert!(
                    decode_legacy(&bytes[..cut]).is_err(),
                    "prefix {cut} decoded"
                );
            }
        }
    }

    fn every_request() -> Vec<WriteRequest> {
        let mut all = vec![
            WriteRequest::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                lease: 7,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: true,
            }),
            WriteRequest::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            }),
            WriteRequest::Txn(TxnRequest {
                compare: vec![
                    Compare {
                        key: Bytes::from_static(b"k"),
                        range_end: Bytes::new(),
                        result: CompareResult::Equal,
                        target: CompareTarget::Version(0),
                    },
                    Compare {
                        key: Bytes::from_static(b"k"),
                        range_end: Bytes::from_static(b"z"),
                        result: CompareResult::NotEqual,
                        target: CompareTarget::Value(Bytes::new()),
                    },
                ],
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: Bytes::from_static(b"a"),
                        ..Default::default()
                    }),
                    RequestOp::Txn(TxnRequest {
                        compare: vec![],
                        success: vec![RequestOp::Range(RangeRequest {
                            key: Bytes::from_static(b"a"),
                            limit: 3,
                            sort_order: SortOrder::Descend,
                            sort_target: SortTarget::Value,
                            count_only: true,
                            ..Default::default()
                        })],
                        failure: vec![],
                    }),
                ],
                failure: vec![RequestOp::DeleteRange(DeleteRangeRequest::default())],
            }),
            WriteRequest::Compact { revision: 42 },
            WriteRequest::LeaseGrant {
                id: 7,
                ttl_secs: 60,
            },
            WriteRequest::LeaseRevoke { id: -3 },
            WriteRequest::Alarm {
                activate: false,
                member_id: u64::MAX,
                alarm: AlarmKind::Corrupt,
            },
            WriteRequest::MemberAttrs {
                id: 9,
                name: "infra1".into(),
                client_urls: vec!["http://a:2379".into()],
            },
            WriteRequest::MemberAdd(MemberAddRequest {
                id: 7,
                peer_urls: vec!["http://a:1".into()],
                is_learner: true,
            }),
            WriteRequest::MemberUpdate {
                id: 9,
                peer_urls: vec!["http://b:2".into()],
            },
            WriteRequest::MemberRemove { id: 0xabc },
            WriteRequest::MemberPromote { id: u64::MAX },
            WriteRequest::Auth(AuthRequest::Enable),
            WriteRequest::Auth(AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: "$2a$10$abc".into(),
                no_password: false,
            }),
            WriteRequest::Auth(AuthRequest::RoleGrantPermission {
                name: "r".into(),
                perm: Permission {
                    key: Bytes::from_static(b"z"),
                    range_end: Bytes::from_static(b"\0"),
                    perm: PermType::ReadWrite,
                },
            }),
        ];
        all.push(WriteRequest::Authed {
            info: AuthInfo {
                user: "u".into(),
                revision: 1 << 40,
            },
            req: Box::new(all[0].clone()),
        });
        all
    }

    /// Every request round-trips through etcd's InternalRaftRequest, with the request ID in
    /// its header, and etcd's own message type reads the request from it.
    #[test]
    fn requests_are_etcds_internal_raft_requests() {
        use prost::Message as _;
        for (i, req) in every_request().into_iter().enumerate() {
            let bytes = encode(1000 + i as u64, &req);
            assert_eq!(decode(&bytes).unwrap(), (1000 + i as u64, req.clone()));
            let etcd = pb::InternalRaftRequest::decode(bytes.as_slice()).unwrap();
            assert_eq!(etcd.header.as_ref().unwrap().id, 1000 + i as u64);
            let inner = match &req {
                WriteRequest::Authed { info, req } => {
                    assert_eq!(etcd.header.as_ref().unwrap().username, info.user);
                    req.as_ref()
                }
                req => req,
            };
            let known = match inner {
                WriteRequest::Put(p) => etcd.put.as_ref().unwrap().key == p.key,
                WriteRequest::DeleteRange(_) => etcd.delete_range.is_some(),
                WriteRequest::Txn(t) => etcd.txn.as_ref().unwrap().compare.len() == t.compare.len(),
                WriteRequest::Compact { revision } => {
                    etcd.compaction.as_ref().unwrap().revision == *revision
                }
                WriteRequest::LeaseGrant { id, .. } => etcd.lease_grant.as_ref().unwrap().id == *id,
                WriteRequest::LeaseRevoke { id } => etcd.lease_revoke.as_ref().unwrap().id == *id,
                WriteRequest::Alarm { .. } => etcd.alarm.is_some(),
                WriteRequest::MemberAttrs { id, .. } => {
                    etcd.cluster_member_attr_set.as_ref().unwrap().member_id == *id
                }
                WriteRequest::Auth(AuthRequest::Enable) => etcd.auth_enable.is_some(),
                WriteRequest::Auth(AuthRequest::UserAdd { .. }) => etcd.auth_user_add.is_some(),
                WriteRequest::Auth(_) => etcd.auth_role_grant_permission.is_some(),
                // rusd's own: only the header is etcd's.
                _ => etcd.put.is_none() && etcd.txn.is_none() && etcd.auth_enable.is_none(),
            };
            assert!(known, "{req:?} as etcd reads it: {etcd:?}");
        }
        assert!(decode(b"\xff\xff").is_err());
        assert!(decode(&[]).is_err(), "an entry without a request");
    }

    /// Membership changes are etcd's conf changes with the member's JSON as context; an old
    /// WAL's entries (rusd's first encoding, version 2 conf changes) convert to the same.
    #[test]
    fn conf_changes_and_old_entries_convert_to_etcds_encoding() {
        use protobuf::Message as _;
        for req in [
            WriteRequest::MemberAdd(MemberAddRequest {
                id: 7,
                peer_urls: vec!["http://a:1".into()],
                is_learner: true,
            }),
            WriteRequest::MemberAdd(MemberAddRequest {
                id: 8,
                peer_urls: vec!["http://b:1".into()],
                is_learner: false,
            }),
            WriteRequest::MemberPromote { id: 7 },
            WriteRequest::MemberRemove { id: 8 },
        ] {
            let cc = encode_conf_change(5, &req).unwrap();
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.data = cc.write_to_bytes().unwrap().into();
            let (id, back, v2) = decode_conf_change(&e).unwrap();
            assert_eq!((id, &back), (5, &req));
            assert_eq!(v2.changes.len(), 1);
            if let WriteRequest::MemberAdd(m) = &req {
                let json: serde_json::Value = serde_json::from_slice(&cc.context).unwrap();
                assert_eq!(json["id"], m.id);
                assert_eq!(json["peerURLs"][0], m.peer_urls[0].as_str());
            }
            // The same change as an older rusd wrote it.
            let old = ConfChangeV2 {
                context: encode_legacy(5, &req).into(),
                ..Default::default()
            };
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e.data = old.write_to_bytes().unwrap().into();
            assert_eq!(decode_conf_change(&e).unwrap().1, req);
            convert_legacy_entry(&mut e).unwrap();
            assert_eq!(e.get_entry_type(), EntryType::EntryConfChange);
            assert_eq!(decode_conf_change(&e).unwrap().0, 5);
            assert_eq!(decode_conf_change(&e).unwrap().1, req);
        }
        for req in every_request() {
            let mut e = Entry {
                data: encode_legacy(3, &req).into(),
                ..Default::default()
            };
            convert_legacy_entry(&mut e).unwrap();
            assert_eq!(decode(&e.data).unwrap(), (3, req));
        }
    }
}
