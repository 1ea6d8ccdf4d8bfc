//! The byte encoding of the requests the coordinator proposes to raft (the payload of a raft
//! entry, and so of a WAL record). A small hand-written format — varint integers and
//! length-prefixed byte strings — because it is hot (one encode and one decode per write) and
//! must stay stable on disk independently of the client-facing protobuf types.
//!
//! Layout: `request_id: u64 LE (8 bytes)`, then `tag: u8` and the request body.

use super::auth::{AuthInfo, AuthRequest, PermType, Permission};
use bytes::{Buf, BufMut, Bytes, BytesMut};
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

pub fn encode(request_id: u64, req: &WriteRequest) -> Vec<u8> {
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
            out.put_slice(&encode(0, req)[8..]);
        }
    }
    out.to_vec()
}

pub fn decode(data: &[u8]) -> Result<(u64, WriteRequest), DecodeError> {
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
            let (_, req) = decode(&inner)?;
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
            let bytes = encode(5, &req);
            let (id, back) = decode(&bytes).unwrap();
            assert_eq!(id, 5);
            assert_eq!(back, req);
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut]).is_err(),
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
            let bytes = encode(99, &req);
            let (id, back) = decode(&bytes).unwrap();
            assert_eq!(id, 99);
            assert_eq!(back, req);
            // Every strict prefix is malformed, never silently accepted.
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "prefix {cut} decoded");
            }
        }
    }
}
