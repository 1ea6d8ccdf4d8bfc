//! The coordinator's checkpoint file: everything besides the shards' keyspace that the WAL
//! would otherwise have to replay from index 1 (revision counters, leases, auth, members,
//! alarms, raft's configuration), as of one applied raft index.
//!
//! A checkpoint at index C is taken in this order, and each step makes the next safe:
//! 1. every shard syncs its segment log through C and rotates it (`ShardMsg::Checkpoint`);
//! 2. this file is written to a temporary name, synced, renamed over the old one, and the
//!    directory synced;
//! 3. WAL files whose entries are all at or below C are removed.
//!
//! A crash before step 2 completes leaves the previous checkpoint in force: shards drop the
//! segments written after it (`SegmentLog::open_at`) and the WAL still holds every entry since.
//!
//! File layout: one frame `len u32 | crc32c u32 | type u8 (= 1) | payload`, little-endian,
//! the CRC over type and payload, the payload an rkyv archive of `CheckpointState`. Older record
//! types (1: no `layout`, 2: no `removed_members`) are read and converted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rkyv::rancor;

pub const CHECKPOINT_FILE_NAME: &str = "checkpoint";
const FORMAT_VERSION: u32 = 3;
/// The record types name the state's schema: version 1 had no `layout`, version 2 no
/// `removed_members`.
const RECORD_TYPE_STATE_V1: u8 = 1;
const RECORD_TYPE_STATE_V2: u8 = 2;
const RECORD_TYPE_STATE: u8 = 3;
const HEADER_BYTES: usize = 9;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CheckpointState {
    pub format_version: u32,
    /// Everything up to and including this raft index is in the checkpoint.
    pub raft_index: u64,
    /// The term of the entry at `raft_index`.
    pub raft_term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// How many shards the segment logs were written by.
    pub shard_count: u32,
    /// The directory under `member/` holding the shards' segment logs: `shards-N` normally,
    /// `shards-N-at-C` after installing a snapshot from the leader at raft index C (a new
    /// directory, so the switch is this file's atomic replacement). Empty means `shards-N`.
    pub layout: String,
    pub revision: i64,
    pub compact_revision: i64,
    pub leases: Vec<LeaseRecord>,
    pub auth: AuthRecord,
    pub members: Vec<MemberRecord>,
    pub alarms: Vec<AlarmRecord>,
    /// Members removed from the cluster (etcd's `members_removed`): their peer connections
    /// stay refused after a restart.
    pub removed_members: Vec<u64>,
}

/// The state as format version 2 wrote it (before `removed_members`); read and converted.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
struct CheckpointStateV2 {
    format_version: u32,
    raft_index: u64,
    raft_term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    shard_count: u32,
    layout: String,
    revision: i64,
    compact_revision: i64,
    leases: Vec<LeaseRecord>,
    auth: AuthRecord,
    members: Vec<MemberRecord>,
    alarms: Vec<AlarmRecord>,
}

impl From<CheckpointStateV2> for CheckpointState {
    fn from(v: CheckpointStateV2) -> Self {
        CheckpointState {
            format_version: FORMAT_VERSION,
            raft_index: v.raft_index,
            raft_term: v.raft_term,
            voters: v.voters,
            learners: v.learners,
            shard_count: v.shard_count,
            layout: v.layout,
            revision: v.revision,
            compact_revision: v.compact_revision,
            leases: v.leases,
            auth: v.auth,
            members: v.members,
            alarms: v.alarms,
            removed_members: Vec::new(),
        }
    }
}

/// The state as format version 1 wrote it (before `layout`); read and converted.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
struct CheckpointStateV1 {
    format_version: u32,
    raft_index: u64,
    raft_term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    shard_count: u32,
    revision: i64,
    compact_revision: i64,
    leases: Vec<LeaseRecord>,
    auth: AuthRecord,
    members: Vec<MemberRecord>,
    alarms: Vec<AlarmRecord>,
}

impl From<CheckpointStateV1> for CheckpointState {
    fn from(v: CheckpointStateV1) -> Self {
        CheckpointState {
            format_version: FORMAT_VERSION,
            raft_index: v.raft_index,
            raft_term: v.raft_term,
            voters: v.voters,
            learners: v.learners,
            shard_count: v.shard_count,
            layout: String::new(),
            revision: v.revision,
            compact_revision: v.compact_revision,
            leases: v.leases,
            auth: v.auth,
            members: v.members,
            alarms: v.alarms,
            removed_members: Vec::new(),
        }
    }
}

impl CheckpointState {
    /// The directory name under `member/` of the shards' segment logs.
    pub fn layout_name(&self) -> String {
        if self.layout.is_empty() {
            default_layout(self.shard_count as usize)
        } else {
            self.layout.clone()
        }
    }
}

/// The layout a member with `count` shards writes when nothing else is recorded.
pub fn default_layout(count: usize) -> String {
    format!("shards-{count}")
}

/// The shard count a layout name was written by (`shards-N` or `shards-N-at-C`).
pub fn layout_shard_count(layout: &str) -> Option<usize> {
    let rest = layout.strip_prefix("shards-")?;
    rest.split('-').next()?.parse().ok()
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl_secs: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AuthRecord {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<UserRecord>,
    pub roles: Vec<RoleRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: Option<String>,
    pub roles: Vec<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RoleRecord {
    pub name: String,
    pub perms: Vec<PermissionRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PermissionRecord {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// authpb.Permission_Type: 0 read, 1 write, 2 readwrite.
    pub perm: i32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AlarmRecord {
    pub member_id: u64,
    /// etcdserverpb.AlarmType: 1 NOSPACE, 2 CORRUPT.
    pub alarm: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub fn checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

/// Where shard `shard` keeps its segment log in `layout`.
pub fn shard_dir(data_dir: &Path, layout: &str, shard: usize) -> PathBuf {
    shards_root(data_dir, layout).join(format!("shard-{shard}"))
}

pub fn shards_root(data_dir: &Path, layout: &str) -> PathBuf {
    data_dir.join("member").join(layout)
}

/// The checkpoint file's bytes for `state`: one CRC-checked frame.
pub fn encode_state(state: &CheckpointState) -> Vec<u8> {
    let mut state = state.clone();
    state.format_version = FORMAT_VERSION;
    let payload = rkyv::to_bytes::<rancor::Error>(&state).expect("serializing into memory");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[RECORD_TYPE_STATE]), &payload);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.push(RECORD_TYPE_STATE);
    bytes.extend_from_slice(&payload);
    bytes
}

/// The state `encode_state` wrote (or format version 1 did); the error says what is wrong.
pub fn decode_state(data: &[u8]) -> Result<CheckpointState, String> {
    if data.len() < HEADER_BYTES {
        return Err(format!("only {} bytes", data.len()));
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if data.len() != HEADER_BYTES + len {
        return Err(format!(
            "length field says {len} payload bytes, the file has {}",
            data.len() - HEADER_BYTES
        ));
    }
    if crc32c::crc32c(&data[8..]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(&data[HEADER_BYTES..]);
    let state = match data[8] {
        RECORD_TYPE_STATE => rkyv::from_bytes::<CheckpointState, rancor::Error>(&aligned)
            .map_err(|e| format!("undecodable state: {e}"))?,
        RECORD_TYPE_STATE_V2 => {
            let v2 = rkyv::from_bytes::<CheckpointStateV2, rancor::Error>(&aligned)
                .map_err(|e| format!("undecodable state: {e}"))?;
            if v2.format_version != 2 {
                return Err(format!(
                    "format version {} in a version 2 record",
                    v2.format_version
                ));
            }
            CheckpointState::from(v2)
        }
        RECORD_TYPE_STATE_V1 => {
            let v1 = rkyv::from_bytes::<CheckpointStateV1, rancor::Error>(&aligned)
                .map_err(|e| format!("undecodable state: {e}"))?;
            if v1.format_version != 1 {
                return Err(format!(
                    "format version {} in a version 1 record",
                    v1.format_version
                ));
            }
            CheckpointState::from(v1)
        }
        other => return Err(format!("unknown record type {other}")),
    };
    if state.format_version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {}",
            state.format_version
        ));
    }
    Ok(state)
}

/// Reads the checkpoint in `dir`; `None` for a member that never completed one. A damaged
/// file stops start-up: it cannot be told apart from lost state.
pub fn read(dir: &Path) -> Result<Option<CheckpointState>, CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    decode_state(&data)
        .map(Some)
        .map_err(|reason| CheckpointError::Corrupt { path, reason })
}

/// Replaces the checkpoint in `dir` atomically and durably (blocking: call it off the
/// executors, or at start-up).
pub fn write(dir: &Path, state: &CheckpointState) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = encode_state(state);
    let tmp = dir.join(format!("{CHECKPOINT_FILE_NAME}.tmp"));
    let path = dir.join(CHECKPOINT_FILE_NAME);
    // etcd records its applied (consistent) index in bolt in the pre-commit hook; this file is
    // where rusd records it.
    crate::failpoint!("commitBeforePreCommitHook");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    crate::failpoint!("commitAfterPreCommitHook");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let state = CheckpointState {
            raft_index: 42,
            raft_term: 3,
            voters: vec![7],
            shard_count: 2,
            revision: 30,
            compact_revision: 5,
            leases: vec![LeaseRecord {
                id: 9,
                ttl_secs: 60,
            }],
            auth: AuthRecord {
                enabled: true,
                revision: 4,
                users: vec![UserRecord {
                    name: "root".into(),
                    password_hash: Some("$2a$hash".into()),
                    roles: vec!["root".into()],
                }],
                roles: vec![RoleRecord {
                    name: "r".into(),
                    perms: vec![PermissionRecord {
                        key: b"a".to_vec(),
                        range_end: b"b".to_vec(),
                        perm: 2,
                    }],
                }],
            },
            members: vec![MemberRecord {
                id: 7,
                name: "default".into(),
                peer_urls: vec!["http://localhost:2380".into()],
                client_urls: vec![],
                is_learner: false,
            }],
            alarms: vec![AlarmRecord {
                member_id: 7,
                alarm: 1,
            }],
            removed_members: vec![8, 9],
            ..Default::default()
        };
        write(dir.path(), &state).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back.raft_index, 42);
        assert_eq!(back.auth, state.auth);
        assert_eq!(back.members, state.members);
        assert_eq!(back.removed_members, vec![8, 9]);

        let path = dir.path().join(CHECKPOINT_FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let error = read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read(dir.path()).is_err());
    }

    #[test]
    fn a_version_1_file_reads_with_the_default_layout() {
        let v1 = CheckpointStateV1 {
            format_version: 1,
            raft_index: 9,
            shard_count: 3,
            revision: 4,
            ..Default::default()
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&v1).unwrap();
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[RECORD_TYPE_STATE_V1]), &payload);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.push(RECORD_TYPE_STATE_V1);
        bytes.extend_from_slice(&payload);
        let state = decode_state(&bytes).unwrap();
        assert_eq!((state.raft_index, state.revision), (9, 4));
        assert_eq!(state.layout_name(), "shards-3");
        assert_eq!(layout_shard_count("shards-3-at-77"), Some(3));
    }

    #[test]
    fn a_version_2_file_reads_with_no_removed_members() {
        let v2 = CheckpointStateV2 {
            format_version: 2,
            raft_index: 11,
            shard_count: 1,
            layout: "shards-1-at-5".into(),
            revision: 6,
            ..Default::default()
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&v2).unwrap();
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[RECORD_TYPE_STATE_V2]), &payload);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.push(RECORD_TYPE_STATE_V2);
        bytes.extend_from_slice(&payload);
        let state = decode_state(&bytes).unwrap();
        assert_eq!((state.raft_index, state.revision), (11, 6));
        assert_eq!(state.layout_name(), "shards-1-at-5");
        assert!(state.removed_members.is_empty());
        assert_eq!(state.format_version, FORMAT_VERSION);
    }
}
