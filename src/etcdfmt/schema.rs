//! etcd v3.5's schema inside its bbolt database: the bucket names, the keys of the `meta`,
//! `auth` and `cluster` buckets, and the encoding of every value rusd reads or writes (revision
//! keys, `mvccpb.KeyValue`, `leasepb.Lease`, `authpb.User`/`Role`, member JSON, the raft
//! configuration JSON).

use prost::Message;
use proto::{authpb, etcdserverpb, leasepb};

use crate::coordinator::checkpoint::{
    AlarmRecord, AuthRecord, LeaseRecord, MemberRecord, PermissionRecord, RoleRecord, UserRecord,
};

pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_META: &[u8] = b"meta";

/// Every bucket etcd v3.5 creates, in bbolt's (byte) order.
pub const BUCKETS: [&[u8]; 10] = [
    BUCKET_ALARM,
    BUCKET_AUTH,
    BUCKET_AUTH_ROLES,
    BUCKET_AUTH_USERS,
    BUCKET_CLUSTER,
    BUCKET_KEY,
    BUCKET_LEASE,
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_META,
];

pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_TERM: &[u8] = b"term";
pub const META_CONF_STATE: &[u8] = b"confState";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// Written by etcd v3.6 and later only: its presence marks a database etcd v3.5 cannot serve.
pub const META_STORAGE_VERSION: &[u8] = b"storageVersion";
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
pub const AUTH_REVISION: &[u8] = b"authRevision";
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
/// The cluster version a v3.5 member writes.
pub const CLUSTER_VERSION_3_5: &[u8] = b"3.5.0";

/// Length of a revision key: main (8 bytes big-endian), `_`, sub (8 bytes big-endian).
pub const REVISION_KEY_BYTES: usize = 17;
/// The byte after a revision key that marks a tombstone.
const TOMBSTONE_MARK: u8 = b't';

/// etcd's revision key; `tombstone` appends the marker byte.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_KEY_BYTES + 1);
    write_revision_key(&mut key, main, sub, tombstone);
    key
}

pub fn write_revision_key(out: &mut Vec<u8>, main: i64, sub: i64, tombstone: bool) {
    out.extend_from_slice(&main.to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        out.push(TOMBSTONE_MARK);
    }
}

/// (main, sub, tombstone) of a revision key, or why it is not one.
pub fn parse_revision_key(key: &[u8]) -> Result<(i64, i64, bool), String> {
    let tombstone = match key.len() {
        REVISION_KEY_BYTES => false,
        n if n == REVISION_KEY_BYTES + 1 && key[REVISION_KEY_BYTES] == TOMBSTONE_MARK => true,
        _ => return Err(format!("{:02x?} is not a revision key", key)),
    };
    if key[8] != b'_' {
        return Err(format!("{:02x?} is not a revision key", key));
    }
    let main = i64::from_be_bytes(key[0..8].try_into().expect("8 bytes"));
    let sub = i64::from_be_bytes(key[9..17].try_into().expect("8 bytes"));
    Ok((main, sub, tombstone))
}

pub fn u64_value(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

pub fn parse_u64_value(what: &str, value: &[u8]) -> Result<u64, String> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| format!("{what} is {} bytes, expected 8", value.len()))
}

/// The `lease` bucket's key for a lease: its ID, 8 bytes big-endian.
pub fn lease_key(id: i64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub fn lease_value(lease: &LeaseRecord) -> Vec<u8> {
    leasepb::Lease {
        id: lease.id,
        ttl: lease.ttl_secs,
        remaining_ttl: 0,
    }
    .encode_to_vec()
}

pub fn parse_lease(value: &[u8]) -> Result<LeaseRecord, String> {
    let lease = leasepb::Lease::decode(value).map_err(|e| format!("undecodable lease: {e}"))?;
    Ok(LeaseRecord {
        id: lease.id,
        ttl_secs: lease.ttl,
    })
}

pub fn user_value(user: &UserRecord) -> Vec<u8> {
    authpb::User {
        name: user.name.clone().into_bytes().into(),
        password: user
            .password_hash
            .clone()
            .unwrap_or_default()
            .into_bytes()
            .into(),
        roles: user.roles.clone(),
        // etcd always stores the options of a user added through the API.
        options: Some(authpb::UserAddOptions {
            no_password: user.password_hash.is_none(),
        }),
    }
    .encode_to_vec()
}

pub fn parse_user(value: &[u8]) -> Result<UserRecord, String> {
    let user = authpb::User::decode(value).map_err(|e| format!("undecodable user: {e}"))?;
    let no_password = user.options.is_some_and(|o| o.no_password);
    let name = String::from_utf8(user.name.to_vec()).map_err(|_| "a user name is not UTF-8")?;
    let password = String::from_utf8(user.password.to_vec())
        .map_err(|_| format!("the password hash of user {name} is not UTF-8"))?;
    Ok(UserRecord {
        name,
        // etcd treats an empty hash like no password: nothing authenticates against it.
        password_hash: (!no_password && !password.is_empty()).then_some(password),
        roles: user.roles,
    })
}

pub fn role_value(role: &RoleRecord) -> Vec<u8> {
    authpb::Role {
        name: role.name.clone().into_bytes().into(),
        key_permission: role
            .perms
            .iter()
            .map(|p| authpb::Permission {
                perm_type: p.perm,
                key: p.key.clone().into(),
                range_end: p.range_end.clone().into(),
            })
            .collect(),
    }
    .encode_to_vec()
}

pub fn parse_role(value: &[u8]) -> Result<RoleRecord, String> {
    let role = authpb::Role::decode(value).map_err(|e| format!("undecodable role: {e}"))?;
    Ok(RoleRecord {
        name: String::from_utf8(role.name.to_vec()).map_err(|_| "a role name is not UTF-8")?,
        perms: role
            .key_permission
            .into_iter()
            .map(|p| PermissionRecord {
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
                perm: p.perm_type,
            })
            .collect(),
    })
}

pub fn auth_entries(auth: &AuthRecord) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (AUTH_ENABLED.to_vec(), vec![u8::from(auth.enabled)]),
        (AUTH_REVISION.to_vec(), u64_value(auth.revision)),
    ]
}

/// The `alarm` bucket stores each alarm as its encoded `AlarmMember`, with an empty value.
pub fn alarm_key(alarm: &AlarmRecord) -> Vec<u8> {
    etcdserverpb::AlarmMember {
        member_id: alarm.member_id,
        alarm: alarm.alarm,
    }
    .encode_to_vec()
}

pub fn parse_alarm(key: &[u8]) -> Result<AlarmRecord, String> {
    let alarm =
        etcdserverpb::AlarmMember::decode(key).map_err(|e| format!("undecodable alarm: {e}"))?;
    Ok(AlarmRecord {
        member_id: alarm.member_id,
        alarm: alarm.alarm,
    })
}

/// The `members` bucket's key for a member: its ID in lower-case hex, unpadded.
pub fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

/// A member as etcd's membership package stores it: Go's JSON of `membership.Member`, whose
/// embedded structs put the fields in this order, the last three omitted when empty.
pub fn member_value(member: &MemberRecord) -> Vec<u8> {
    let mut out = format!(
        "{{\"id\":{},\"peerURLs\":{}",
        member.id,
        serde_json::to_string(&member.peer_urls).expect("strings serialize")
    );
    if member.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !member.name.is_empty() {
        out.push_str(",\"name\":");
        out.push_str(&serde_json::to_string(&member.name).expect("a string serializes"));
    }
    if !member.client_urls.is_empty() {
        out.push_str(",\"clientURLs\":");
        out.push_str(&serde_json::to_string(&member.client_urls).expect("strings serialize"));
    }
    out.push('}');
    out.into_bytes()
}

#[derive(serde::Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Option<Vec<String>>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Option<Vec<String>>,
}

pub fn parse_member(value: &[u8]) -> Result<MemberRecord, String> {
    let member: MemberJson =
        serde_json::from_slice(value).map_err(|e| format!("undecodable member: {e}"))?;
    Ok(MemberRecord {
        id: member.id,
        name: member.name,
        peer_urls: member.peer_urls.unwrap_or_default(),
        client_urls: member.client_urls.unwrap_or_default(),
        is_learner: member.is_learner,
    })
}

/// raft's configuration as etcd stores it in `meta/confState` (Go's JSON of raftpb.ConfState:
/// the lists omitted when empty, `auto_leave` always present).
pub fn conf_state_value(voters: &[u64], learners: &[u64]) -> Vec<u8> {
    let mut out = String::from("{");
    if !voters.is_empty() {
        out.push_str(&format!("\"voters\":{},", serde_json::json!(voters)));
    }
    if !learners.is_empty() {
        out.push_str(&format!("\"learners\":{},", serde_json::json!(learners)));
    }
    out.push_str("\"auto_leave\":false}");
    out.into_bytes()
}

#[derive(serde::Deserialize)]
struct ConfStateJson {
    #[serde(default)]
    voters: Option<Vec<u64>>,
    #[serde(default)]
    learners: Option<Vec<u64>>,
}

/// (voters, learners) from `meta/confState`.
pub fn parse_conf_state(value: &[u8]) -> Result<(Vec<u64>, Vec<u64>), String> {
    let conf: ConfStateJson =
        serde_json::from_slice(value).map_err(|e| format!("undecodable confState: {e}"))?;
    Ok((
        conf.voters.unwrap_or_default(),
        conf.learners.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read from a snapshot etcd v3.5.17 wrote (see docs/etcd-formats.md).
    #[test]
    fn values_match_what_etcd_writes() {
        let member = MemberRecord {
            id: 3319814642761637952,
            name: "default".into(),
            peer_urls: vec!["http://127.0.0.1:23800".into()],
            client_urls: vec![],
            is_learner: false,
        };
        assert_eq!(
            member_value(&member),
            br#"{"id":3319814642761637952,"peerURLs":["http://127.0.0.1:23800"],"name":"default"}"#
        );
        assert_eq!(parse_member(&member_value(&member)).unwrap(), member);
        assert_eq!(member_key(member.id), b"2e1259d415f2a040");
        assert_eq!(
            conf_state_value(&[3319814642761637952], &[]),
            br#"{"voters":[3319814642761637952],"auto_leave":false}"#
        );
        assert_eq!(
            parse_conf_state(br#"{"voters":[1,2],"learners":[3],"auto_leave":false}"#).unwrap(),
            (vec![1, 2], vec![3])
        );
        assert_eq!(
            revision_key(5, 0, true),
            [0, 0, 0, 0, 0, 0, 0, 5, b'_', 0, 0, 0, 0, 0, 0, 0, 0, b't']
        );
        assert_eq!(
            parse_revision_key(&revision_key(7, 3, false)).unwrap(),
            (7, 3, false)
        );
        assert!(parse_revision_key(b"garbage").is_err());
        let lease = LeaseRecord {
            id: 0x2040_a23b_5f02_3e09,
            ttl_secs: 600,
        };
        assert_eq!(
            lease_value(&lease),
            [0x08, 0x89, 0xfc, 0x88, 0xf8, 0xb5, 0xc7, 0xa8, 0xa0, 0x20, 0x10, 0xd8, 0x04]
        );
        let role = RoleRecord {
            name: "r1".into(),
            perms: vec![PermissionRecord {
                key: b"x".to_vec(),
                range_end: b"y".to_vec(),
                perm: 2,
            }],
        };
        assert_eq!(
            role_value(&role),
            [0x0a, 0x02, b'r', b'1', 0x12, 0x08, 0x08, 0x02, 0x12, 0x01, b'x', 0x1a, 0x01, b'y']
        );
        let user = UserRecord {
            name: "u1".into(),
            password_hash: Some("$2a$10$hash".into()),
            roles: vec!["r1".into()],
        };
        let encoded = user_value(&user);
        assert!(encoded.ends_with(&[0x1a, 0x02, b'r', b'1', 0x22, 0x00]));
        assert_eq!(parse_user(&encoded).unwrap(), user);
    }
}
