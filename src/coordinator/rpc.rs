//! Requests one member sends another over the peer transport and waits an answer for: a
//! follower forwarding a lease keep-alive or a lease TTL query to the leader (only the leader
//! keeps lease time), a joining member asking for the member list and the cluster ID, and a
//! follower forwarding a learner's promotion to the leader (only the leader knows whether the
//! learner is in sync). The transport carries them as opaque bytes; this is their encoding.
//!
//! Layout: a tag byte, then the fields: integers as little-endian fixed width, strings and
//! byte strings as a u32 LE length and the bytes. Every decode checks lengths before reading.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::members::Member;
use super::LeaseInfo;
use crate::error::EtcdError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    LeaseKeepAlive {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
        keys: bool,
    },
    MemberList,
    /// etcd's `/members/promote/<id>`: promote the learner `id`, on the leader.
    MemberPromote {
        id: u64,
    },
}

#[derive(Clone, Debug)]
pub enum PeerResponse {
    /// The TTL after the renewal, `None` for an unknown lease.
    LeaseKeepAlive(Result<Option<i64>, EtcdError>),
    LeaseTimeToLive(Result<Option<LeaseInfo>, EtcdError>),
    /// The cluster's ID and its members (etcd's `/members` answer and its
    /// `X-Etcd-Cluster-ID` header).
    MemberList {
        cluster_id: u64,
        members: Vec<Member>,
    },
    /// The members after the promotion, or the leader's refusal.
    MemberPromote(Result<Vec<Member>, EtcdError>),
    /// The receiver could not read the request.
    Refused(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed peer request: {0}")]
pub struct RpcDecodeError(&'static str);

/// No list in a request or answer may claim more entries than this; more is corruption.
const LIST_MAX: u32 = 1 << 20;

const REQ_KEEP_ALIVE: u8 = 1;
const REQ_TIME_TO_LIVE: u8 = 2;
const REQ_MEMBER_LIST: u8 = 3;
const REQ_MEMBER_PROMOTE: u8 = 4;

const RESP_KEEP_ALIVE: u8 = 1;
const RESP_TIME_TO_LIVE: u8 = 2;
const RESP_MEMBER_LIST: u8 = 3;
const RESP_REFUSED: u8 = 4;
const RESP_MEMBER_PROMOTE: u8 = 5;

/// The errors a forwarded lease call can meet on the leader.
const ERR_NO_LEADER: u8 = 1;
const ERR_NOT_LEADER: u8 = 2;
const ERR_OTHER: u8 = 3;
/// The refusals of a forwarded promotion, each named so the follower answers etcd's error.
const ERR_MEMBER_NOT_FOUND: u8 = 4;
const ERR_LEARNER_NOT_READY: u8 = 5;
const ERR_MEMBER_NOT_LEARNER: u8 = 6;
const ERR_NOT_ENOUGH_STARTED: u8 = 7;
const ERR_UNHEALTHY: u8 = 8;
const ERR_LEADER_CHANGED: u8 = 9;
const ERR_STOPPED: u8 = 10;

pub fn encode_request(req: &PeerRequest) -> Bytes {
    let mut out = BytesMut::new();
    match req {
        PeerRequest::LeaseKeepAlive { id } => {
            out.put_u8(REQ_KEEP_ALIVE);
            out.put_i64_le(*id);
        }
        PeerRequest::LeaseTimeToLive { id, keys } => {
            out.put_u8(REQ_TIME_TO_LIVE);
            out.put_i64_le(*id);
            out.put_u8(u8::from(*keys));
        }
        PeerRequest::MemberList => out.put_u8(REQ_MEMBER_LIST),
        PeerRequest::MemberPromote { id } => {
            out.put_u8(REQ_MEMBER_PROMOTE);
            out.put_u64_le(*id);
        }
    }
    out.freeze()
}

pub fn decode_request(mut buf: &[u8]) -> Result<PeerRequest, RpcDecodeError> {
    let req = match get_u8(&mut buf)? {
        REQ_KEEP_ALIVE => PeerRequest::LeaseKeepAlive {
            id: get_i64(&mut buf)?,
        },
        REQ_TIME_TO_LIVE => PeerRequest::LeaseTimeToLive {
            id: get_i64(&mut buf)?,
            keys: get_u8(&mut buf)? != 0,
        },
        REQ_MEMBER_LIST => PeerRequest::MemberList,
        REQ_MEMBER_PROMOTE => PeerRequest::MemberPromote {
            id: get_u64(&mut buf)?,
        },
        _ => return Err(RpcDecodeError("unknown request tag")),
    };
    end(buf)?;
    Ok(req)
}

pub fn encode_response(resp: &PeerResponse) -> Bytes {
    let mut out = BytesMut::new();
    match resp {
        PeerResponse::LeaseKeepAlive(r) => {
            out.put_u8(RESP_KEEP_ALIVE);
            match r {
                Ok(ttl) => {
                    out.put_u8(0);
                    put_opt_i64(&mut out, *ttl);
                }
                Err(e) => put_error(&mut out, e),
            }
        }
        PeerResponse::LeaseTimeToLive(r) => {
            out.put_u8(RESP_TIME_TO_LIVE);
            match r {
                Ok(None) => {
                    out.put_u8(0);
                    out.put_u8(0);
                }
                Ok(Some(info)) => {
                    out.put_u8(0);
                    out.put_u8(1);
                    out.put_i64_le(info.remaining_secs);
                    out.put_i64_le(info.granted_ttl_secs);
                    out.put_u32_le(info.keys.len() as u32);
                    for k in &info.keys {
                        put_bytes(&mut out, k);
                    }
                }
                Err(e) => put_error(&mut out, e),
            }
        }
        PeerResponse::MemberList {
            cluster_id,
            members,
        } => {
            out.put_u8(RESP_MEMBER_LIST);
            out.put_u64_le(*cluster_id);
            put_members(&mut out, members);
        }
        PeerResponse::MemberPromote(r) => {
            out.put_u8(RESP_MEMBER_PROMOTE);
            match r {
                Ok(members) => {
                    out.put_u8(0);
                    put_members(&mut out, members);
                }
                Err(e) => put_error(&mut out, e),
            }
        }
        PeerResponse::Refused(reason) => {
            out.put_u8(RESP_REFUSED);
            put_bytes(&mut out, reason.as_bytes());
        }
    }
    out.freeze()
}

pub fn decode_response(mut buf: &[u8]) -> Result<PeerResponse, RpcDecodeError> {
    let resp = match get_u8(&mut buf)? {
        RESP_KEEP_ALIVE => PeerResponse::LeaseKeepAlive(match get_error(&mut buf)? {
            Some(e) => Err(e),
            None => Ok(get_opt_i64(&mut buf)?),
        }),
        RESP_TIME_TO_LIVE => PeerResponse::LeaseTimeToLive(match get_error(&mut buf)? {
            Some(e) => Err(e),
            None => {
                if get_u8(&mut buf)? == 0 {
                    Ok(None)
                } else {
                    let remaining_secs = get_i64(&mut buf)?;
                    let granted_ttl_secs = get_i64(&mut buf)?;
                    let n = get_len(&mut buf)?;
                    let mut keys = Vec::new();
                    for _ in 0..n {
                        keys.push(Bytes::copy_from_slice(get_bytes(&mut buf)?));
                    }
                    Ok(Some(LeaseInfo {
                        remaining_secs,
                        granted_ttl_secs,
                        keys,
                    }))
                }
            }
        }),
        RESP_MEMBER_LIST => PeerResponse::MemberList {
            cluster_id: get_u64(&mut buf)?,
            members: get_members(&mut buf)?,
        },
        RESP_MEMBER_PROMOTE => PeerResponse::MemberPromote(match get_error(&mut buf)? {
            Some(e) => Err(e),
            None => Ok(get_members(&mut buf)?),
        }),
        RESP_REFUSED => PeerResponse::Refused(get_string(&mut buf)?),
        _ => return Err(RpcDecodeError("unknown response tag")),
    };
    end(buf)?;
    Ok(resp)
}

fn put_members(out: &mut BytesMut, members: &[Member]) {
    out.put_u32_le(members.len() as u32);
    for m in members {
        out.put_u64_le(m.id);
        put_bytes(out, m.name.as_bytes());
        put_strings(out, &m.peer_urls);
        put_strings(out, &m.client_urls);
        out.put_u8(u8::from(m.is_learner));
    }
}

fn get_members(buf: &mut &[u8]) -> Result<Vec<Member>, RpcDecodeError> {
    let n = get_len(buf)?;
    let mut members = Vec::new();
    for _ in 0..n {
        let id = get_u64(buf)?;
        let name = get_string(buf)?;
        let peer_urls = get_strings(buf)?;
        let client_urls = get_strings(buf)?;
        let is_learner = get_u8(buf)? != 0;
        members.push(Member {
            id,
            name,
            peer_urls,
            client_urls,
            is_learner,
        });
    }
    Ok(members)
}

fn put_error(out: &mut BytesMut, e: &EtcdError) {
    out.put_u8(match e {
        EtcdError::NoLeader => ERR_NO_LEADER,
        EtcdError::NotLeader => ERR_NOT_LEADER,
        EtcdError::MemberNotFound => ERR_MEMBER_NOT_FOUND,
        EtcdError::LearnerNotReady => ERR_LEARNER_NOT_READY,
        EtcdError::MemberNotLearner => ERR_MEMBER_NOT_LEARNER,
        EtcdError::NotEnoughStartedMembers => ERR_NOT_ENOUGH_STARTED,
        EtcdError::Unhealthy => ERR_UNHEALTHY,
        EtcdError::LeaderChanged => ERR_LEADER_CHANGED,
        EtcdError::Stopped => ERR_STOPPED,
        _ => ERR_OTHER,
    });
}

fn get_error(buf: &mut &[u8]) -> Result<Option<EtcdError>, RpcDecodeError> {
    Ok(match get_u8(buf)? {
        0 => None,
        ERR_NO_LEADER => Some(EtcdError::NoLeader),
        ERR_NOT_LEADER => Some(EtcdError::NotLeader),
        // The leader failed in a way the follower cannot name: the client retries.
        ERR_OTHER => Some(EtcdError::Timeout),
        ERR_MEMBER_NOT_FOUND => Some(EtcdError::MemberNotFound),
        ERR_LEARNER_NOT_READY => Some(EtcdError::LearnerNotReady),
        ERR_MEMBER_NOT_LEARNER => Some(EtcdError::MemberNotLearner),
        ERR_NOT_ENOUGH_STARTED => Some(EtcdError::NotEnoughStartedMembers),
        ERR_UNHEALTHY => Some(EtcdError::Unhealthy),
        ERR_LEADER_CHANGED => Some(EtcdError::LeaderChanged),
        ERR_STOPPED => Some(EtcdError::Stopped),
        _ => return Err(RpcDecodeError("unknown error code")),
    })
}

fn put_opt_i64(out: &mut BytesMut, v: Option<i64>) {
    match v {
        None => out.put_u8(0),
        Some(v) => {
            out.put_u8(1);
            out.put_i64_le(v);
        }
    }
}

fn get_opt_i64(buf: &mut &[u8]) -> Result<Option<i64>, RpcDecodeError> {
    Ok(match get_u8(buf)? {
        0 => None,
        1 => Some(get_i64(buf)?),
        _ => return Err(RpcDecodeError("bad option flag")),
    })
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_strings(out: &mut BytesMut, v: &[String]) {
    out.put_u32_le(v.len() as u32);
    for s in v {
        put_bytes(out, s.as_bytes());
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), RpcDecodeError> {
    if buf.len() < n {
        Err(RpcDecodeError("truncated"))
    } else {
        Ok(())
    }
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, RpcDecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u64(buf: &mut &[u8]) -> Result<u64, RpcDecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64_le())
}

fn get_i64(buf: &mut &[u8]) -> Result<i64, RpcDecodeError> {
    need(buf, 8)?;
    Ok(buf.get_i64_le())
}

fn get_len(buf: &mut &[u8]) -> Result<u32, RpcDecodeError> {
    need(buf, 4)?;
    let n = buf.get_u32_le();
    if n > LIST_MAX {
        return Err(RpcDecodeError("list too long"));
    }
    Ok(n)
}

fn get_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], RpcDecodeError> {
    need(buf, 4)?;
    let n = buf.get_u32_le() as usize;
    need(buf, n)?;
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn get_string(buf: &mut &[u8]) -> Result<String, RpcDecodeError> {
    String::from_utf8(get_bytes(buf)?.to_vec()).map_err(|_| RpcDecodeError("string not UTF-8"))
}

fn get_strings(buf: &mut &[u8]) -> Result<Vec<String>, RpcDecodeError> {
    let n = get_len(buf)?;
    (0..n).map(|_| get_string(buf)).collect()
}

fn end(buf: &[u8]) -> Result<(), RpcDecodeError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(RpcDecodeError("trailing bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        for req in [
            PeerRequest::LeaseKeepAlive { id: 7 },
            PeerRequest::LeaseTimeToLive { id: -3, keys: true },
            PeerRequest::MemberList,
            PeerRequest::MemberPromote { id: 0xfeed },
        ] {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
        let members = vec![Member {
            id: 0xabc,
            name: "n1".into(),
            peer_urls: vec!["http://a:2380".into()],
            client_urls: vec![],
            is_learner: true,
        }];
        match decode_response(&encode_response(&PeerResponse::MemberList {
            cluster_id: 0x1234,
            members: members.clone(),
        }))
        .unwrap()
        {
            PeerResponse::MemberList {
                cluster_id: 0x1234,
                members: m,
            } => assert_eq!(m, members),
            other => panic!("{other:?}"),
        }
        for answer in [Ok(members.clone()), Err(EtcdError::LearnerNotReady)] {
            match decode_response(&encode_response(&PeerResponse::MemberPromote(
                answer.clone(),
            )))
            .unwrap()
            {
                PeerResponse::MemberPromote(got) => assert_eq!(got, answer),
                other => panic!("{other:?}"),
            }
        }
        match decode_response(&encode_response(&PeerResponse::LeaseKeepAlive(Err(
            EtcdError::NotLeader,
        ))))
        .unwrap()
        {
            PeerResponse::LeaseKeepAlive(Err(EtcdError::NotLeader)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_or_padded_input_is_refused() {
        let full = encode_request(&PeerRequest::LeaseTimeToLive { id: 9, keys: false });
        for cut in 0..full.len() {
            assert!(decode_request(&full[..cut]).is_err());
        }
        let mut padded = full.to_vec();
        padded.push(0);
        assert!(decode_request(&padded).is_err());
        assert!(decode_response(&[RESP_MEMBER_LIST, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
