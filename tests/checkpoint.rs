//! Checkpoints: with a small `--snapshot-count` the member checkpoints while it writes (shard
//! segments synced, coordinator state written, old WAL files removed). A restart, kill -9
//! included, must restore every key and its history, the revision, the compaction, leases with
//! their keys, users and roles; the WAL must stay a few files; a restart with another
//! `--shards` must re-partition without losing anything. Damaged checkpoint data must stop
//! start-up with an error naming the file. Each test runs with `--shards 1` and `--shards 2`.

mod common;

use std::path::{Path, PathBuf};

use common::{b, each_shards, Client, Server, ServerOpts};
use proto::etcdserverpb as pb;
use proto::mvccpb::KeyValue;

/// Entries between checkpoints: small, so that the workload crosses several.
const SNAPSHOT_COUNT: &str = "25";

/// What a client can see of the keyspace: revision, compaction and every key at every revision
/// from the compaction on.
#[derive(Debug, PartialEq)]
struct Keyspace {
    revision: i64,
    compact_revision: i64,
    history: Vec<(i64, Vec<KeyValue>)>,
}

async fn keyspace(c: &mut Client) -> Keyspace {
    let revision = c.revision().await;
    let compact_revision = c.hash_kv(0).await.compact_revision;
    let history = c.history(compact_revision.max(1), revision).await;
    Keyspace {
        revision,
        compact_revision,
        history,
    }
}

/// Leases with their TTL and keys, users, roles: the coordinator's side of a checkpoint.
fn coordinator_state(srv: &Server) -> String {
    let mut out = String::new();
    let leases = srv.etcdctl(&["lease", "list"]).ok().to_string();
    let mut ids: Vec<&str> = leases.lines().skip(1).collect();
    ids.sort();
    for id in ids {
        let ttl = srv
            .etcdctl(&["lease", "timetolive", "--keys", id])
            .ok()
            .to_string();
        // The remaining time restarts on a new leader; the TTL and the keys must survive.
        let granted = ttl.split("remaining").next().unwrap_or("").to_string();
        let keys = ttl.split("attached keys").nth(1).unwrap_or("").to_string();
        out.push_str(&format!("{granted} {keys}"));
    }
    out.push_str(srv.etcdctl(&["user", "list"]).ok());
    out.push_str(srv.etcdctl(&["role", "list"]).ok());
    out.push_str(srv.etcdctl(&["role", "get", "reader"]).ok());
    out.push_str(srv.etcdctl(&["user", "get", "alice"]).ok());
    out
}

async fn workload(srv: &Server, c: &mut Client) {
    for i in 0..60 {
        c.put(&format!("key/{:02}", i % 23), &format!("v{i}")).await;
    }
    let lease = srv.etcdctl(&["lease", "grant", "600"]).ok().to_string();
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_string();
    srv.etcdctl(&["put", "leased/a", "1", "--lease", &lease_id])
        .ok();
    srv.etcdctl(&["put", "leased/b", "1", "--lease", &lease_id])
        .ok();
    srv.etcdctl(&["lease", "grant", "900"]).ok();
    srv.etcdctl(&["user", "add", "alice:secret"]).ok();
    srv.etcdctl(&["role", "add", "reader"]).ok();
    srv.etcdctl(&[
        "role",
        "grant-permission",
        "reader",
        "read",
        "key/",
        "--prefix",
    ])
    .ok();
    srv.etcdctl(&["user", "grant-role", "alice", "reader"]).ok();
    c.delete(pb::DeleteRangeRequest {
        key: b("key/03"),
        range_end: b("key/07"),
        prev_kv: false,
    })
    .await;
    let compact_at = c.revision().await - 10;
    c.compact(compact_at).await;
    for i in 0..40 {
        c.put(&format!("late/{i}"), "x").await;
    }
}

fn checkpoint_file(srv: &Server) -> PathBuf {
    srv.data_dir()
        .join("member")
        .join("snap")
        .join("checkpoint")
}

fn segment_files(srv: &Server, shards: usize) -> Vec<PathBuf> {
    let root = srv
        .data_dir()
        .join("member")
        .join(format!("shards-{shards}"));
    let mut out = Vec::new();
    for shard in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn start(shards: usize) -> Server {
    ServerOpts::new(shards)
        .arg("--snapshot-count")
        .arg(SNAPSHOT_COUNT)
        .start()
}

#[test]
fn restarts_from_checkpoints_restore_everything() {
    each_shards(|shards| async move {
        let mut srv = start(shards);
        let mut c = srv.client().await;
        workload(&srv, &mut c).await;
        let before = keyspace(&mut c).await;
        let state = coordinator_state(&srv);
        assert!(
            state.contains("leased/a") && state.contains("alice"),
            "{state}"
        );

        // Checkpoints happened, and old WAL files went with them.
        assert!(
            srv.log().contains("saved snapshot"),
            "no checkpoint in:\n{}",
            srv.log()
        );
        assert!(checkpoint_file(&srv).exists());
        assert!(
            srv.wal_files().len() <= 3,
            "the WAL was not truncated: {:?}",
            srv.wal_files()
        );

        srv.kill();
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(keyspace(&mut c).await, before, "after kill -9");
        assert_eq!(coordinator_state(&srv), state, "after kill -9");
        let log = srv.log();
        let last_start = log.rsplit("----- start #").next().unwrap();
        assert!(
            last_start.contains("\"checkpoint-index\":")
                && !last_start.contains("\"checkpoint-index\":0,"),
            "the restart did not start from a checkpoint:\n{log}"
        );

        // Another shard count: the keyspace is re-partitioned, nothing changes for clients.
        let other = 3 - shards;
        srv.opts.shards = other;
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(keyspace(&mut c).await, before, "after --shards {other}");
        assert_eq!(coordinator_state(&srv), state, "after --shards {other}");
        assert!(
            !srv.data_dir()
                .join("member")
                .join(format!("shards-{shards}"))
                .exists(),
            "the old layout was left behind"
        );

        // Writing goes on from the recovered revision and survives more checkpoints.
        assert_eq!(c.put_rev("new", "1").await, before.revision + 1);
        for i in 0..60 {
            c.put(&format!("more/{i}"), "y").await;
        }
        let again = keyspace(&mut c).await;
        srv.kill();
        srv.opts.shards = shards;
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(keyspace(&mut c).await, again, "back to --shards {shards}");
        assert_eq!(coordinator_state(&srv), state);
    });
}

fn flip(path: &Path, offset: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[offset] ^= 0x20;
    std::fs::write(path, &data).unwrap();
}

#[track_caller]
fn assert_refused_naming(f: &common::StartFailure, what: &str) {
    let status = f
        .status
        .unwrap_or_else(|| panic!("the server hung instead of refusing; log:\n{}", f.log));
    assert!(
        status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit, got {status:?}; log:\n{}",
        f.log
    );
    assert!(!f.log.contains("panicked"), "start-up panicked:\n{}", f.log);
    assert!(
        f.log.contains(what),
        "the error does not name {what}:\n{}",
        f.log
    );
}

#[test]
fn damaged_checkpoint_data_stops_startup() {
    each_shards(|shards| async move {
        let mut srv = start(shards);
        let mut c = srv.client().await;
        for i in 0..120 {
            c.put(&format!("k{i:03}"), &"v".repeat(i)).await;
        }
        let before = keyspace(&mut c).await;
        srv.kill();

        // The checkpoint file.
        let file = checkpoint_file(&srv);
        let pristine = std::fs::read(&file).unwrap();
        flip(&file, pristine.len() / 2);
        assert_refused_naming(&srv.restart_expecting_failure(), "snap/checkpoint");
        std::fs::write(&file, &pristine).unwrap();

        // The first segment of a shard: it lies before the first checkpoint, so recovery
        // reads it whole (segments after the last checkpoint are dropped unread).
        let segments = segment_files(&srv, shards);
        let segment = segments[0].clone();
        let bytes = std::fs::read(&segment).unwrap();
        assert!(bytes.len() > 200, "{segments:?}");
        flip(&segment, bytes.len() / 2);
        let name = segment.file_name().unwrap().to_string_lossy().to_string();
        assert_refused_naming(&srv.restart_expecting_failure(), &name);
        std::fs::write(&segment, &bytes).unwrap();

        // A shard directory that vanished is lost data, not an empty shard.
        let shard_dir = segment.parent().unwrap().to_path_buf();
        let aside = srv.data_dir().join("aside");
        std::fs::rename(&shard_dir, &aside).unwrap();
        assert_refused_naming(&srv.restart_expecting_failure(), "has no segment files");
        std::fs::rename(&aside, &shard_dir).unwrap();

        // Put back, everything is there.
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(keyspace(&mut c).await, before);
    });
}
