//! Start-up import of an etcd v3.5 data dir (`member/snap/db`, `member/wal/*.wal`), written by
//! a stopped etcd or by `etcdutl snapshot restore`, into rusd's own layout, once.
//!
//! What is kept: the member and cluster IDs (the WAL's metadata), the members, every key
//! version since the compaction with its revision, create revision, version and lease, the
//! revision and compact revision, leases, users, roles, the auth flag and revision, alarms; then
//! the committed WAL entries after the database's consistent index, translated into rusd's
//! requests and replayed at start by the normal apply path.
//!
//! How it stays all-or-nothing: rusd's layout is built in `member.rusd-import/` next to etcd's
//! `member/` and synced; then `member/` is renamed to `member.etcd-v3.5/` (moved aside, never
//! modified) and `member.rusd-import/` to `member/`. A crash before the first rename leaves
//! etcd's dir as it was (the half-built staging dir is removed at the next start); a crash
//! between the two renames is finished at the next start.
//!
//! Raft indexes: rusd's shard segments need one raft index (at or below the checkpoint) per
//! revision, so the imported checkpoint sits at the consistent index or at the number of
//! revisions plus one, whichever is higher. Only `etcdutl snapshot restore`'s output has fewer
//! entries than revisions (its consistent index is the number of members); its WAL holds
//! nothing to replay. Replayed entries keep their terms and order.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message as _;
use proto::etcdserverpb as pb;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, HardState};
use shards::{Event, EventKind, KeyValue, SegmentLog};

use super::bbolt::{BucketRoot, Reader};
use super::schema;
use super::walpb;
use crate::coordinator::auth::PermType;
use crate::coordinator::checkpoint::{self, CheckpointState};
use crate::coordinator::codec::{self, AlarmKind, MemberAddRequest, WriteRequest};
use crate::coordinator::wal;
use crate::runtime::disk::FileStorage;
use crate::runtime::shard::SEGMENT_BYTES_MAX;

/// Where etcd's `member/` goes once imported.
pub const MOVED_ASIDE: &str = "member.etcd-v3.5";
const STAGING: &str = "member.rusd-import";

/// What an import brought in, for the log.
#[derive(Debug, Default)]
pub struct Summary {
    pub member_id: u64,
    pub cluster_id: u64,
    pub consistent_index: u64,
    pub checkpoint_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub versions: u64,
    pub leases: usize,
    pub users: usize,
    pub roles: usize,
    pub members: usize,
    pub replayed_entries: usize,
    pub moved_to: PathBuf,
}

/// Imports `data_dir` if it holds etcd's layout; `Ok(None)` when it does not (a rusd data dir,
/// or an empty one). `wal_dir` is `--wal-dir` if given.
pub fn import_if_etcd(
    data_dir: &Path,
    wal_dir: Option<&Path>,
    shard_count: usize,
) -> anyhow::Result<Option<Summary>> {
    let member = data_dir.join("member");
    let staging = data_dir.join(STAGING);
    let aside = data_dir.join(MOVED_ASIDE);
    if !member.exists() && staging.exists() && aside.exists() {
        // A previous import built the staging dir and moved etcd's aside, then stopped.
        rename(&staging, &member)?;
        sync_dir(data_dir)?;
        crate::log_info!(
            "finished an interrupted import of an etcd data dir",
            "etcd-files" => aside.display().to_string()
        );
        return Ok(None);
    }
    let db_path = member.join("snap").join("db");
    if !db_path.exists() {
        return Ok(None);
    }
    if aside.exists() {
        anyhow::bail!(
            "{} holds an etcd data dir, but {} exists too (an earlier import moved etcd's files \
             there); move one of them away",
            member.display(),
            aside.display()
        );
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the unfinished import {}", staging.display()))?;
    }
    // A --wal-dir inside `member/` moves with it; only one outside is handled on its own.
    let wal_dir = wal_dir.filter(|w| !w.starts_with(&member));
    let etcd_wal_dir = wal_dir.map_or_else(|| member.join("wal"), Path::to_path_buf);
    let mut summary = build(&db_path, &etcd_wal_dir, &staging, shard_count).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    sync_tree(&staging)?;
    rename(&member, &aside)?;
    if let Some(wal_dir) = wal_dir {
        // A separate WAL dir: etcd's WAL goes aside too, rusd's takes its place.
        let wal_aside = wal_dir.with_extension("etcd-v3.5");
        rename(wal_dir, &wal_aside)?;
        rename(&staging.join("wal"), wal_dir)?;
    }
    rename(&staging, &member)?;
    sync_dir(data_dir)?;
    summary.moved_to = aside;
    Ok(Some(summary))
}

impl Summary {
    /// The start-up log line that says what was imported.
    pub fn log(&self) {
        crate::log_info!(
            "imported an etcd v3.5 data dir",
            "local-member-id" => crate::ids::format_id(self.member_id),
            "cluster-id" => crate::ids::format_id(self.cluster_id),
            "consistent-index" => self.consistent_index,
            "checkpoint-index" => self.checkpoint_index,
            "revision" => self.revision,
            "compact-revision" => self.compact_revision,
            "key-versions" => self.versions,
            "leases" => self.leases,
            "users" => self.users,
            "roles" => self.roles,
            "members" => self.members,
            "replayed-wal-entries" => self.replayed_entries,
            "etcd-files-moved-to" => self.moved_to.display().to_string()
        );
    }
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Syncs every file and directory under `root`.
fn sync_tree(root: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    sync_dir(root)
}

/// A snapshot file put in place of the database still ends with the SHA-256 of its contents
/// (etcd's `hasChecksum`: the size is a multiple of 512 plus 32); check it as etcdutl does.
/// The reader ignores bytes past the database's last page.
fn verify_sha256_trailer(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    const SHA256_BYTES: u64 = 32;
    let size = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size % 512 != SHA256_BYTES {
        return Ok(());
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut reader = std::io::BufReader::new(file).take(size - SHA256_BYTES);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
    }
    let mut trailer = [0u8; SHA256_BYTES as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut trailer, size - SHA256_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    if digest.finish().as_ref() != trailer {
        anyhow::bail!(
            "{}: the file ends with a sha256 checksum that does not match its contents: the \
             snapshot is damaged",
            path.display()
        );
    }
    Ok(())
}

/// The meta bucket's facts.
#[derive(Default)]
struct Meta {
    consistent_index: Option<u64>,
    term: Option<u64>,
    scheduled_compact: i64,
    finished_compact: i64,
    storage_version: Option<String>,
}

fn bucket_elements(
    reader: &Reader<std::fs::File>,
    root: &BucketRoot,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    reader.walk(root, &mut |e| {
        if !e.is_bucket {
            out.push((e.key.to_vec(), e.value.to_vec()));
        }
        Ok(())
    })?;
    Ok(out)
}

fn build(
    db_path: &Path,
    etcd_wal_dir: &Path,
    staging: &Path,
    shard_count: usize,
) -> anyhow::Result<Summary> {
    let file =
        std::fs::File::open(db_path).with_context(|| format!("opening {}", db_path.display()))?;
    verify_sha256_trailer(&file, db_path)?;
    let reader = Reader::open(file, db_path.display().to_string())?;
    let db_name = db_path.display().to_string();
    let buckets = reader.buckets()?;
    let bucket = |name: &[u8]| buckets.iter().find(|(n, _)| n == name).map(|(_, r)| r);
    let bad = |what: String| anyhow::anyhow!("{db_name}: {what}");

    let meta_root = bucket(schema::BUCKET_META)
        .ok_or_else(|| bad("no meta bucket: not an etcd v3 database".into()))?;
    let mut meta = Meta::default();
    for (key, value) in bucket_elements(&reader, meta_root)? {
        match key.as_slice() {
            schema::META_CONSISTENT_INDEX => {
                meta.consistent_index =
                    Some(schema::parse_u64_value("consistent_index", &value).map_err(bad)?)
            }
            schema::META_TERM => {
                meta.term = Some(schema::parse_u64_value("term", &value).map_err(bad)?)
            }
            schema::META_SCHEDULED_COMPACT => {
                meta.scheduled_compact = schema::parse_revision_key(&value).map_err(bad)?.0
            }
            schema::META_FINISHED_COMPACT => {
                meta.finished_compact = schema::parse_revision_key(&value).map_err(bad)?.0
            }
            schema::META_STORAGE_VERSION => {
                meta.storage_version = Some(String::from_utf8_lossy(&value).into_owned())
            }
            _ => {}
        }
    }
    if let Some(version) = &meta.storage_version {
        anyhow::bail!(
            "{db_name} was written by etcd v{version} (meta/storageVersion); rusd imports etcd \
             v3.5 data dirs only: restore a snapshot with etcdutl v3.5 instead"
        );
    }
    let consistent_index = meta
        .consistent_index
        .ok_or_else(|| bad("no meta/consistent_index: not an etcd v3.5 database".into()))?;
    let term = meta.term.ok_or_else(|| {
        bad(
            "no meta/term: written by etcd v3.4 or older; rusd imports etcd v3.5 data dirs only \
             (run it with etcd v3.5 once, or restore a snapshot with etcdutl v3.5)"
                .into(),
        )
    })?;

    let wal = walpb::read_dir(etcd_wal_dir, consistent_index)?;
    let mut state = CheckpointState {
        shard_count: shard_count as u32,
        layout: checkpoint::default_layout(shard_count),
        ..Default::default()
    };
    read_small_buckets(&reader, &bucket, &mut state, &db_name)?;
    if !state.members.iter().any(|m| m.id == wal.member_id) {
        anyhow::bail!(
            "{db_name}: the WAL's member {:x} is not in the members bucket",
            wal.member_id
        );
    }
    for member in &state.members {
        if member.is_learner {
            state.learners.push(member.id);
        } else {
            state.voters.push(member.id);
        }
    }

    // The key bucket, streamed in revision order into the shards' segment logs.
    let key_root = bucket(schema::BUCKET_KEY).ok_or_else(|| bad("no key bucket".into()))?;
    let mut logs = (0..shard_count)
        .map(|shard| {
            // The staging dir becomes `member/`, where `shard_dir` puts the shards.
            let in_member = checkpoint::shard_dir(Path::new(""), &state.layout, shard);
            let dir = staging.join(in_member.strip_prefix("member").unwrap_or(&in_member));
            let storage =
                FileStorage::open(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (log, _, _) = SegmentLog::open(storage, SEGMENT_BYTES_MAX)
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(log)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut pending: Vec<Vec<Event>> = vec![Vec::new(); shard_count];
    let mut current: Option<i64> = None;
    let mut revisions = 0u64;
    let mut versions = 0u64;
    let mut max_revision = 0i64;
    let mut failure: Option<anyhow::Error> = None;
    let mut flush = |pending: &mut Vec<Vec<Event>>, revision: i64, index: u64| {
        for (shard, events) in pending.iter_mut().enumerate() {
            if !events.is_empty() {
                logs[shard].append(index, revision, events)?;
                events.clear();
            }
        }
        anyhow::Ok(())
    };
    reader
        .walk(key_root, &mut |e| {
            let (main, sub, tombstone) = schema::parse_revision_key(e.key)?;
            max_revision = max_revision.max(main);
            if e.value.is_empty() {
                // A revision marker without a version (`etcdutl snapshot restore --bump-revision`).
                return Ok(());
            }
            if current != Some(main) {
                if let Some(previous) = current {
                    if let Err(error) = flush(&mut pending, previous, revisions) {
                        failure = Some(error);
                        return Err("writing the shard segments failed".into());
                    }
                }
                current = Some(main);
                revisions += 1;
            }
            let kv = proto::mvccpb::KeyValue::decode(e.value)
                .map_err(|err| format!("revision {main}: undecodable KeyValue: {err}"))?;
            if kv.key.is_empty() {
                return Err(format!("revision {main}: a version without a key"));
            }
            let shard = shards::shard_for_key(&kv.key, shard_count);
            pending[shard].push(Event {
                kind: if tombstone {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: KeyValue {
                    key: kv.key,
                    create_revision: kv.create_revision,
                    mod_revision: main,
                    version: kv.version,
                    value: if tombstone { Bytes::new() } else { kv.value },
                    lease: kv.lease,
                },
                prev_kv: None,
                sub_revision: sub,
            });
            versions += 1;
            Ok(())
        })
        .map_err(|e| failure.take().unwrap_or_else(|| e.into()))?;
    if let Some(last) = current {
        flush(&mut pending, last, revisions)?;
    }
    let compact_revision = meta.scheduled_compact.max(meta.finished_compact);
    state.revision = max_revision.max(compact_revision).max(1);
    state.compact_revision = compact_revision;
    let checkpoint_index = consistent_index.max(revisions + 1);
    state.raft_index = checkpoint_index;
    state.raft_term = term.max(1);
    for log in &mut logs {
        if compact_revision > 0 {
            log.append_compaction(checkpoint_index, compact_revision)?;
        }
        log.sync()?;
    }
    drop(logs);

    // The committed WAL entries after the consistent index, as rusd entries after the
    // checkpoint.
    let commit = wal.hard_state.commit;
    let mut entries = Vec::new();
    let mut last_term = state.raft_term;
    for (entry, file) in wal.entries.iter().zip(&wal.entry_files) {
        if entry.index > commit {
            break;
        }
        let request = translate(entry)
            .with_context(|| format!("{}: raft entry {}", file.display(), entry.index))?;
        let mut out = Entry::default();
        out.set_entry_type(EntryType::EntryNormal);
        out.term = entry.term.max(last_term);
        last_term = out.term;
        out.index = checkpoint_index + (entry.index - consistent_index);
        if let Some(request) = request {
            out.data = codec::encode(0, &request).into();
        }
        entries.push(out);
    }
    let mut hard_state = HardState::default();
    hard_state.term = wal.hard_state.term.max(last_term);
    hard_state.vote = wal.member_id;
    hard_state.commit = entries.last().map_or(checkpoint_index, |e| e.index);
    let wal_dir = staging.join("wal");
    let mut mark = raft::eraftpb::SnapshotMetadata {
        index: checkpoint_index,
        term: state.raft_term,
        ..Default::default()
    };
    mark.set_conf_state(raft::eraftpb::ConfState::from((
        state.voters.clone(),
        state.learners.clone(),
    )));
    wal::create(
        &wal_dir,
        wal::Metadata {
            member_id: wal.member_id,
            cluster_id: wal.cluster_id,
        },
        &mark,
        &entries,
        Some(&hard_state),
        wal::SEGMENT_BYTES,
    )
    .with_context(|| format!("writing {}", wal_dir.display()))?;
    wal::write_snap_file(&staging.join("snap"), &mark)?;
    checkpoint::write(&staging.join("snap"), &state)?;

    Ok(Summary {
        member_id: wal.member_id,
        cluster_id: wal.cluster_id,
        consistent_index,
        checkpoint_index,
        revision: state.revision,
        compact_revision,
        versions,
        leases: state.leases.len(),
        users: state.auth.users.len(),
        roles: state.auth.roles.len(),
        members: state.members.len(),
        replayed_entries: entries.len(),
        moved_to: PathBuf::new(),
    })
}

fn read_small_buckets<'a>(
    reader: &Reader<std::fs::File>,
    bucket: &dyn Fn(&[u8]) -> Option<&'a BucketRoot>,
    state: &mut CheckpointState,
    db_name: &str,
) -> anyhow::Result<()> {
    let bad = |what: String| anyhow::anyhow!("{db_name}: {what}");
    let elements = |name: &[u8]| -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match bucket(name) {
            Some(root) => bucket_elements(reader, root),
            None => Ok(Vec::new()),
        }
    };
    let removed: Vec<Vec<u8>> = elements(schema::BUCKET_MEMBERS_REMOVED)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (key, value) in elements(schema::BUCKET_MEMBERS)? {
        if removed.contains(&key) {
            continue;
        }
        state
            .members
            .push(schema::parse_member(&value).map_err(bad)?);
    }
    for (_, value) in elements(schema::BUCKET_LEASE)? {
        state.leases.push(schema::parse_lease(&value).map_err(bad)?);
    }
    state.auth.revision = 1;
    for (key, value) in elements(schema::BUCKET_AUTH)? {
        match key.as_slice() {
            schema::AUTH_ENABLED => state.auth.enabled = value == [1],
            schema::AUTH_REVISION => {
                state.auth.revision =
                    schema::parse_u64_value("authRevision", &value).map_err(bad)?
            }
            _ => {}
        }
    }
    for (_, value) in elements(schema::BUCKET_AUTH_USERS)? {
        state
            .auth
            .users
            .push(schema::parse_user(&value).map_err(bad)?);
    }
    for (_, value) in elements(schema::BUCKET_AUTH_ROLES)? {
        state
            .auth
            .roles
            .push(schema::parse_role(&value).map_err(bad)?);
    }
    for (key, _) in elements(schema::BUCKET_ALARM)? {
        state.alarms.push(schema::parse_alarm(&key).map_err(bad)?);
    }
    Ok(())
}

/// rusd's request for one committed etcd entry; `None` for entries that change nothing rusd
/// keeps (a leader's empty entry, reads, member attributes, cluster version, tokens).
pub fn translate(entry: &Entry) -> anyhow::Result<Option<WriteRequest>> {
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => Ok(None),
        EntryType::EntryNormal => {
            // etcd falls back to a v2 request when the data is not an InternalRaftRequest;
            // v2 requests only touch the v2 store, which rusd does not have.
            let Ok(request) = pb::InternalRaftRequest::decode(entry.data.as_ref()) else {
                return Ok(None);
            };
            internal_request(request)
        }
        EntryType::EntryConfChange => {
            let change = ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| anyhow::anyhow!("undecodable conf change: {e}"))?;
            let peer_urls = if change.context.is_empty() {
                Vec::new()
            } else {
                schema::parse_member(&change.context)
                    .map_err(|e| anyhow::anyhow!("conf change context: {e}"))?
                    .peer_urls
            };
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    Ok(Some(WriteRequest::MemberAdd(MemberAddRequest {
                        id: change.node_id,
                        peer_urls,
                        is_learner: change.get_change_type() == ConfChangeType::AddLearnerNode,
                    })))
                }
                ConfChangeType::RemoveNode => anyhow::bail!(
                    "removing member {:x} after the database's consistent index: member \
                     removal is not supported by rusd yet",
                    change.node_id
                ),
            }
        }
        EntryType::EntryConfChangeV2 => anyhow::bail!("ConfChangeV2 entries are not supported"),
    }
}

/// An etcd request as rusd replays it: what etcd itself would apply, through the same mapping
/// as rusd's own log (`codec::etcd_request`), after what only an etcd log needs: requests rusd
/// does not keep are skipped, etcd's request checks run, and passwords proposed in the clear
/// (etcd before v3.5) are hashed.
fn internal_request(mut r: pb::InternalRaftRequest) -> anyhow::Result<Option<WriteRequest>> {
    use pb::alarm_request::AlarmAction;
    let skipped = r.cluster_member_attr_set.is_some()
        || r.authenticate.is_some()
        || r.alarm.as_ref().is_some_and(|a| {
            AlarmKind::from_number(a.alarm).is_none()
                || !matches!(
                    AlarmAction::try_from(a.action),
                    Ok(AlarmAction::Activate) | Ok(AlarmAction::Deactivate)
                )
        })
        || r.auth_role_grant_permission
            .as_ref()
            .is_some_and(|g| g.perm.is_none());
    if skipped {
        return Ok(None);
    }
    let invalid = |e: crate::error::EtcdError| anyhow::anyhow!("invalid request: {e:?}");
    if let Some(put) = &r.put {
        crate::api::convert::put_in(put.clone()).map_err(invalid)?;
    } else if let Some(delete) = &r.delete_range {
        crate::api::convert::delete_in(delete.clone()).map_err(invalid)?;
    } else if let Some(txn) = &r.txn {
        crate::api::convert::txn_in(txn.clone(), usize::MAX).map_err(invalid)?;
    }
    if let Some(perm) = r
        .auth_role_grant_permission
        .as_mut()
        .and_then(|g| g.perm.as_mut())
    {
        // An unknown permission type reads as READ, as etcd's authpb would default it.
        if PermType::from_i32(perm.perm_type).is_none() {
            perm.perm_type = PermType::Read as i32;
        }
    }
    if let Some(add) = r.auth_user_add.as_mut() {
        let no_password = add.options.as_ref().is_some_and(|o| o.no_password);
        if no_password {
            add.hashed_password.clear();
        } else if add.hashed_password.is_empty() {
            add.hashed_password = bcrypt::hash(&add.password, bcrypt::DEFAULT_COST)?;
        }
    }
    if let Some(change) = r.auth_user_change_password.as_mut() {
        if change.hashed_password.is_empty() {
            change.hashed_password = bcrypt::hash(&change.password, bcrypt::DEFAULT_COST)?;
        }
    }
    codec::etcd_request(r).map_err(|e| anyhow::anyhow!("invalid request: {e}"))
}
