//! rusd and etcd v3.5.17 exchange data through etcd's own files and tools, in both directions:
//! a snapshot rusd streams restores into the reference etcd with `etcdutl snapshot restore`,
//! an etcd snapshot restores into rusd, and rusd starts on an etcd data dir. Each direction
//! compares what the two servers serve: every key at every revision since the compaction, the
//! compact revision, HashKV, leases with their TTLs and keys, users, roles and auth.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use proto::etcdserverpb as pb;

/// What a member serves, as far as a snapshot carries it.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    compact_revision: i64,
    hash: u32,
    history: Vec<(i64, Vec<proto::mvccpb::KeyValue>)>,
    /// (ID, granted TTL, attached keys), sorted by ID.
    leases: Vec<(String, i64, Vec<String>)>,
    /// `user get` of every user, `role get` of every role, `auth status`.
    auth: Vec<String>,
}

/// etcdctl with root's credentials when auth is on.
fn ctl(server: &Server, user: Option<&str>, args: &[&str]) -> CtlOutput {
    let mut all: Vec<&str> = Vec::new();
    if let Some(user) = user {
        all.push("--user");
        all.push(user);
    }
    all.extend_from_slice(args);
    server.etcdctl(&all)
}

async fn observe(server: &Server, user: Option<&str>) -> Observed {
    observe_with(server, user, user.is_none()).await
}

/// `observe`; `with_history` reads every revision (without auth only).
async fn observe_with(server: &Server, user: Option<&str>, with_history: bool) -> Observed {
    let mut client = server.client().await;
    let status = ctl(server, user, &["endpoint", "status", "-w", "json"]).json();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    let hash_kv = ctl(server, user, &["endpoint", "hashkv", "-w", "json"]).json();
    let compact_revision = hash_kv[0]["HashKV"]["compact_revision"]
        .as_i64()
        .unwrap_or(0);
    let hash = hash_kv[0]["HashKV"]["hash"].as_u64().unwrap() as u32;
    let history = if with_history {
        client.history(compact_revision.max(1), revision).await
    } else {
        Vec::new()
    };
    let mut leases = Vec::new();
    let list = ctl(server, user, &["lease", "list", "-w", "json"]).json();
    for lease in list["leases"].as_array().cloned().unwrap_or_default() {
        let id = format!("{:x}", lease["id"].as_i64().unwrap());
        let ttl = ctl(
            server,
            user,
            &["lease", "timetolive", &id, "--keys", "-w", "json"],
        )
        .json();
        let mut keys: Vec<String> = ttl["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        keys.sort();
        let remaining = ttl["ttl"].as_i64().unwrap();
        let granted = ttl["granted-ttl"].as_i64().unwrap();
        assert!(remaining > 0 && remaining <= granted, "{ttl}");
        leases.push((id, granted, keys));
    }
    leases.sort();
    let mut auth = Vec::new();
    for user_name in ctl(server, user, &["user", "list"]).ok().lines() {
        auth.push(
            ctl(server, user, &["user", "get", user_name])
                .ok()
                .to_string(),
        );
    }
    for role in ctl(server, user, &["role", "list"]).ok().lines() {
        auth.push(ctl(server, user, &["role", "get", role]).ok().to_string());
    }
    auth.push(ctl(server, user, &["auth", "status"]).ok().to_string());
    Observed {
        revision,
        compact_revision,
        hash,
        history,
        leases,
        auth,
    }
}

/// A history with every kind of record a snapshot carries: overwrites, deletes (tombstones),
/// a multi-op txn (sub-revisions), keys on leases, a compaction with history after it, users
/// and roles with permissions.
async fn workload(server: &Server) {
    let mut client = server.client().await;
    for round in 0..6 {
        for key in 0..8 {
            client
                .put(&format!("k{key}"), &format!("v{round}-{key}"))
                .await;
        }
    }
    client
        .delete(pb::DeleteRangeRequest {
            key: b("k6"),
            range_end: b("k8"),
            ..Default::default()
        })
        .await;
    let lease = ctl(server, None, &["lease", "grant", "600"])
        .ok()
        .to_string();
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    ctl(server, None, &["put", "leased-1", "x", "--lease", &id]).ok();
    ctl(server, None, &["put", "leased-2", "y", "--lease", &id]).ok();
    ctl(server, None, &["lease", "grant", "900"]).ok();
    let compact_at = client.revision().await - 3;
    client.compact(compact_at).await;
    client
        .txn(pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: b("t1"),
                        value: b("one"),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: b("t2"),
                        value: b("two"),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: b("k0"),
                            ..Default::default()
                        },
                    )),
                },
            ],
            ..Default::default()
        })
        .await;
    client.put("k1", "after-compaction").await;
    client.put("k6", "recreated").await;
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "k", "l"],
        &[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "t",
            "--prefix",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "root", "root"],
    ] {
        ctl(server, None, args).ok();
    }
}

/// The workload's traces are all there, so that comparing two observations means something.
fn assert_non_trivial(observed: &Observed) {
    assert!(observed.compact_revision > 1, "{observed:?}");
    assert!(observed.history.len() > 3, "{observed:?}");
    assert_eq!(observed.leases.len(), 2, "{observed:?}");
    assert_eq!(observed.leases[0].2.len() + observed.leases[1].2.len(), 2);
    assert!(observed.auth.iter().any(|a| a.contains("alice")));
    assert!(observed
        .auth
        .iter()
        .any(|a| a.contains("KV Write") && a.contains("(prefix t)")));
}

/// Restores `snapshot` with etcdutl into `data_dir` (as a one-member cluster named "default").
fn etcdutl_restore(snapshot: &Path, data_dir: &Path) {
    let out = Command::new(etcdutl_path())
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--name",
            "default",
            "--initial-cluster",
            "default=http://localhost:2380",
            "--initial-advertise-peer-urls",
            "http://localhost:2380",
        ])
        .output()
        .expect("running etcdutl");
    assert!(
        out.status.success(),
        "etcdutl snapshot restore failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `etcdutl snapshot status` of a file: (hash, revision, total keys).
fn etcdutl_status(snapshot: &Path) -> serde_json::Value {
    let out = Command::new(etcdutl_path())
        .args(["snapshot", "status", "-w", "json"])
        .arg(snapshot)
        .output()
        .expect("running etcdutl");
    assert!(
        out.status.success(),
        "etcdutl snapshot status failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("etcdutl prints JSON")
}

/// rusd → `etcdctl snapshot save` → `etcdutl snapshot restore` → etcd v3.5.17: the restored
/// etcd serves exactly what rusd served, first with auth off (so every revision can be read),
/// then, from a second snapshot, with auth on (passwords and permissions carried).
#[test]
fn a_rusd_snapshot_restores_into_etcd() {
    each_shards(|shards| async move {
        let rusd = Server::start(shards);
        workload(&rusd).await;
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("rusd.db");
        let saved = rusd.etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()]);
        assert!(saved.ok().contains("Snapshot saved at"), "{saved:?}");
        let log = rusd.log();
        for line in [
            "sending database snapshot to client",
            "sending database sha256 checksum to client",
            "successfully sent database snapshot to client",
        ] {
            assert!(log.contains(line), "no {line:?} in the log");
        }
        let expected = observe(&rusd, None).await;
        assert_non_trivial(&expected);
        let status = etcdutl_status(&snapshot);
        assert_eq!(status["revision"].as_i64(), Some(expected.revision));

        let etcd = Server::start_prepared(ServerOpts::new(1).reference_etcd(), |data| {
            etcdutl_restore(&snapshot, data)
        });
        let restored = observe(&etcd, None).await;
        assert_eq!(restored, expected);
        drop(etcd);

        // The same with auth enabled: etcd authenticates rusd's users with their passwords.
        ctl(&rusd, None, &["auth", "enable"]).ok();
        let root = Some("root:rootpw");
        let snapshot = dir.path().join("rusd-auth.db");
        ctl(
            &rusd,
            root,
            &["snapshot", "save", snapshot.to_str().unwrap()],
        )
        .ok();
        let expected = observe(&rusd, root).await;
        let etcd = Server::start_prepared(ServerOpts::new(1).reference_etcd(), |data| {
            etcdutl_restore(&snapshot, data)
        });
        assert_eq!(observe(&etcd, root).await, expected);
        let alice = ctl(
            &etcd,
            Some("alice:alicepw"),
            &["get", "k1", "--print-value-only"],
        );
        assert_eq!(alice.ok().trim(), "after-compaction");
        let denied = ctl(&etcd, Some("alice:alicepw"), &["put", "k1", "nope"]);
        assert!(denied.err().contains("permission denied"), "{denied:?}");
        let anonymous = ctl(&etcd, None, &["get", "k1"]);
        assert!(!anonymous.status.success(), "{anonymous:?}");
    });
}

/// etcd v3.5.17 → `etcdctl snapshot save` → `etcdutl snapshot restore` → rusd: the restore
/// path. rusd imports the restored data dir at start and serves what etcd served.
#[test]
fn an_etcd_snapshot_restores_into_rusd() {
    each_shards(|shards| async move {
        let etcd = ServerOpts::new(1).reference_etcd().start();
        workload(&etcd).await;
        let expected = observe(&etcd, None).await;
        assert_non_trivial(&expected);
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("etcd.db");
        etcd.etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()])
            .ok();
        drop(etcd);
        let rusd = Server::start_prepared(ServerOpts::new(shards), |data| {
            etcdutl_restore(&snapshot, data)
        });
        assert!(rusd.log().contains("imported an etcd v3.5 data dir"));
        assert_eq!(observe(&rusd, None).await, expected);
        // The import happens once: a restart starts from rusd's own files.
        let mut rusd = rusd;
        rusd.restart();
        assert_eq!(
            rusd.log().matches("imported an etcd v3.5 data dir").count(),
            1
        );
        assert_eq!(observe(&rusd, None).await, expected);
    });
}

/// Every file under `dir` with its contents, for "left untouched" checks.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A stopped etcd's data dir → rusd with the same flags: the migration. etcd is killed with
/// its database behind its WAL (a long backend batch interval), so rusd must replay the
/// committed WAL entries after the database's consistent index. etcd's files are moved aside
/// unchanged.
#[test]
fn rusd_starts_on_a_stopped_etcds_data_dir() {
    each_shards(|shards| async move {
        let mut etcd = ServerOpts::new(1)
            .reference_etcd()
            .arg("--backend-batch-interval=1h")
            .arg("--backend-batch-limit=1000000")
            .start();
        workload(&etcd).await;
        let expected = observe(&etcd, None).await;
        assert_non_trivial(&expected);
        etcd.kill();
        let etcd_files = tree(&etcd.data_dir().join("member"));
        let mut rusd = Server::start_prepared(ServerOpts::new(shards), |data| {
            copy_dir(&etcd.data_dir(), data)
        });
        let log = rusd.log();
        let line = log
            .lines()
            .find(|l| l.contains("imported an etcd v3.5 data dir"))
            .expect("the import is logged");
        let imported: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            imported["replayed-wal-entries"].as_u64().unwrap() > 10,
            "the database was expected to lag the WAL: {line}"
        );
        assert_eq!(observe(&rusd, None).await, expected);
        assert_eq!(
            tree(&rusd.data_dir().join("member.etcd-v3.5")),
            etcd_files,
            "etcd's files are moved aside unchanged"
        );
        // The member keeps etcd's identity.
        let ids = |s: &Server| {
            let status = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
            (
                status[0]["Status"]["header"]["member_id"].clone(),
                status[0]["Status"]["header"]["cluster_id"].clone(),
            )
        };
        etcd.restart();
        let etcd_ids = ids(&etcd);
        assert_eq!(ids(&rusd), etcd_ids);
        rusd.restart();
        assert_eq!(observe(&rusd, None).await, expected);
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Rewrites the bbolt database at `path` with `edit` applied to each bucket's elements (in key
/// order), as a v3.4 or v3.6 etcd would have left it.
fn rewrite_db(path: &Path, edit: impl Fn(&[u8], &mut Vec<(Vec<u8>, Vec<u8>)>)) {
    use rusd::etcdfmt::bbolt::{header_pages, Reader, TreeWriter, FIRST_DATA_PGID, PAGE_SIZE};
    let reader = Reader::open(std::fs::read(path).unwrap(), "db").unwrap();
    let mut out = vec![0u8; FIRST_DATA_PGID as usize * PAGE_SIZE];
    let mut next = FIRST_DATA_PGID;
    let mut roots = Vec::new();
    for (name, root) in reader.buckets().unwrap() {
        let mut elements = Vec::new();
        reader
            .walk(&root, &mut |e| {
                elements.push((e.key.to_vec(), e.value.to_vec()));
                Ok(())
            })
            .unwrap();
        edit(&name, &mut elements);
        elements.sort();
        let mut sink = |page: &[u8]| out.extend_from_slice(page);
        let mut tree = TreeWriter::write(next, &mut sink);
        for (key, value) in &elements {
            tree.put(key, value.len(), Some(value));
        }
        let layout = tree.finish();
        next += layout.pages;
        roots.push((name, layout.root));
    }
    let mut sink = |page: &[u8]| out.extend_from_slice(page);
    let mut tree = TreeWriter::write(next, &mut sink);
    for (name, root) in &roots {
        tree.put_bucket(name, *root);
    }
    let root = tree.finish();
    let pages = next + root.pages;
    let header = header_pages(root.root, pages, 2);
    out[..header.len()].copy_from_slice(&header);
    std::fs::write(path, out).unwrap();
}

/// Damaged or foreign data dirs stop rusd at start with an error naming the file, and leave
/// the data dir exactly as it was (nothing half-imported).
#[test]
fn damaged_or_foreign_etcd_data_dirs_are_refused_untouched() {
    let rusd = Server::start(1);
    let mut client_rt = tokio::runtime::Runtime::new().unwrap();
    client_rt.block_on(workload(&rusd));
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("s.db");
    rusd.etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()])
        .ok();
    drop(rusd);
    let snapshot_bytes = std::fs::read(&snapshot).unwrap();
    let db = |data: &Path| data.join("member/snap/db");
    let wal = |data: &Path| {
        let mut files: Vec<_> = std::fs::read_dir(data.join("member/wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.remove(0)
    };
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "truncated db",
            Box::new(move |data| {
                // Cut inside the last page the meta page counts.
                let bytes = std::fs::read(db(data)).unwrap();
                let reader = rusd::etcdfmt::bbolt::Reader::open(bytes.clone(), "db").unwrap();
                let pages = reader.meta().page_count as usize;
                std::fs::write(db(data), &bytes[..(pages - 1) * 4096 + 100]).unwrap();
            }),
            "truncated",
        ),
        (
            "corrupted db page",
            Box::new(move |data| {
                let mut bytes = std::fs::read(db(data)).unwrap();
                // Page 3 is the first data page: its header now names another page.
                for byte in &mut bytes[3 * 4096..3 * 4096 + 8] {
                    *byte ^= 0x5a;
                }
                std::fs::write(db(data), bytes).unwrap();
            }),
            "page 3",
        ),
        (
            "snapshot with a wrong sha256 in place of the db",
            Box::new({
                let snapshot_bytes = snapshot_bytes.clone();
                move |data| {
                    let mut bytes = snapshot_bytes.clone();
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    std::fs::write(db(data), bytes).unwrap();
                }
            }),
            "sha256",
        ),
        (
            "etcd v3.6 data dir",
            Box::new(move |data| {
                rewrite_db(&db(data), |bucket, elements| {
                    if bucket == b"meta" {
                        elements.push((b"storageVersion".to_vec(), b"3.6.0".to_vec()));
                    }
                })
            }),
            "etcd v3.6.0",
        ),
        (
            "etcd v3.4 data dir",
            Box::new(move |data| {
                rewrite_db(&db(data), |bucket, elements| {
                    if bucket == b"meta" {
                        elements.retain(|(k, _)| k != b"term" && k != b"confState");
                    }
                })
            }),
            "v3.4",
        ),
        (
            "corrupted WAL record",
            Box::new(move |data| {
                let path = wal(data);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[60] ^= 0x01;
                std::fs::write(&path, bytes).unwrap();
            }),
            ".wal",
        ),
    ];
    for (what, damage, expected) in cases {
        eprintln!("=== {what}");
        let mut server = Server::prepared(ServerOpts::new(1), |data| {
            etcdutl_restore(&snapshot, data);
            damage(data);
        });
        let before = tree(&server.data_dir());
        let failure = server.restart_expecting_failure();
        assert!(
            failure.log.contains(expected)
                && failure.log.contains(&*server.data_dir().to_string_lossy()),
            "{what}: the error should name the file and say {expected:?}:\n{}",
            failure.log
        );
        assert_eq!(
            tree(&server.data_dir()),
            before,
            "{what}: the data dir changed"
        );
    }

    // The undamaged snapshot file in place of the db (sha256 trailer included) is accepted.
    let mut server = Server::prepared(ServerOpts::new(1), |data| {
        etcdutl_restore(&snapshot, data);
        std::fs::write(db(data), &snapshot_bytes).unwrap();
    });
    server.restart();
    let got = client_rt.block_on(async { server.client().await.get("k1").await });
    assert_eq!(got.unwrap().value, b("after-compaction"));
    let _ = &mut client_rt;
}

/// `--experimental-initial-corrupt-check` hashes the member's history before it serves (a
/// single member has no peer to compare with, and passes), as etcd logs it.
#[test]
fn the_initial_corruption_check_runs_before_serving() {
    let mut rusd = ServerOpts::new(1)
        .arg("--experimental-initial-corrupt-check")
        .start();
    let log = rusd.log();
    let started = log
        .find("starting initial corruption check")
        .expect("the check starts");
    let passed = log
        .find("initial corruption checking passed; no corruption")
        .expect("the check passes");
    let ready = log.find("ready to serve client requests").unwrap();
    assert!(started < passed && passed < ready, "{log}");
    rusd.restart();
    assert_eq!(
        rusd.log()
            .matches("initial corruption checking passed")
            .count(),
        2
    );
}

/// A compaction applied while a snapshot streams does not take versions out of it: the
/// snapshot is the state of the applied index it was cut at, whatever happens after.
#[test]
fn a_compaction_during_the_stream_leaves_the_snapshot_whole() {
    each_shards(|shards| async move {
        let rusd = Server::start(shards);
        let mut client = rusd.client().await;
        // Enough data for far more messages than the producer keeps ahead of the client.
        let value = "v".repeat(1000);
        for round in 0..3 {
            for key in 0..1000 {
                client
                    .put(&format!("key-{key:04}"), &format!("{round}{value}"))
                    .await;
            }
        }
        // HashKV covers every version; reading every revision of 3000 would be slow.
        let expected = observe_with(&rusd, None, false).await;
        let mut samples = Vec::new();
        for revision in [2, 1000, 2001, expected.revision] {
            let kvs = client
                .range(pb::RangeRequest {
                    key: b("\0"),
                    range_end: b("\0"),
                    revision,
                    ..Default::default()
                })
                .await
                .kvs;
            samples.push((revision, kvs));
        }
        let mut stream = client
            .maintenance
            .snapshot(pb::SnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            first.remaining_bytes > 64 * 32 * 1024,
            "{}",
            first.remaining_bytes
        );
        bytes.extend_from_slice(&first.blob);
        // Compact everything away and overwrite while the rest is still to come.
        let mut other = rusd.client().await;
        let revision = other.revision().await;
        other.compact(revision).await;
        for key in 0..1000 {
            other.put(&format!("key-{key:04}"), "after").await;
        }
        while let Some(message) = stream.message().await.unwrap() {
            bytes.extend_from_slice(&message.blob);
        }
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("during-compaction.db");
        std::fs::write(&snapshot, &bytes).unwrap();
        let etcd = Server::start_prepared(ServerOpts::new(1).reference_etcd(), |data| {
            etcdutl_restore(&snapshot, data)
        });
        let restored = observe_with(&etcd, None, false).await;
        assert_eq!(restored, expected);
        let mut etcd_client = etcd.client().await;
        for (revision, kvs) in samples {
            let restored = etcd_client
                .range(pb::RangeRequest {
                    key: b("\0"),
                    range_end: b("\0"),
                    revision,
                    ..Default::default()
                })
                .await;
            assert_eq!(restored.kvs, kvs, "at revision {revision}");
        }
    });
}

/// etcd's own WAL reader, `etcd-dump-logs` v3.5.17, reads rusd's `member/wal` after a
/// kill -9: it starts from the newest `.snap` file (rusd writes one per checkpoint) at the
/// matching snapshot record, checks every record's rolling checksum, and prints the metadata
/// and the entries after it.
#[test]
fn etcd_dump_logs_reads_rusds_wal() {
    let mut rusd = ServerOpts::new(1).arg("--snapshot-count").arg("40").start();
    let client_rt = tokio::runtime::Runtime::new().unwrap();
    client_rt.block_on(async {
        let mut client = rusd.client().await;
        for i in 0..100 {
            client.put(&format!("dump/k{i:03}"), &format!("v{i}")).await;
        }
    });
    let lease = rusd.etcdctl(&["lease", "grant", "300"]).stdout;
    assert!(lease.contains("granted"), "{lease}");
    rusd.etcdctl(&["put", "dump/last", "value-after-the-checkpoints"]);
    rusd.etcdctl(&["del", "dump/k000"]);
    rusd.etcdctl(&["compact", "5"]);
    let status = rusd.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let member_id = status[0]["Status"]["header"]["member_id"].as_u64().unwrap();
    let cluster_id = status[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    let raft_index = status[0]["Status"]["raftIndex"].as_u64().unwrap();
    rusd.kill();

    let data_dir = rusd.data_dir();
    let snaps: Vec<String> = std::fs::read_dir(data_dir.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert!(!snaps.is_empty(), "no .snap file after the checkpoints");
    let out = Command::new(etcd_dump_logs_path())
        .arg(&data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "etcd-dump-logs failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("nodeID={member_id:x} clusterID={cluster_id:x}")),
        "{stdout}"
    );
    // It started from the newest snapshot, at a checkpoint rusd took.
    let snapshot_line = stdout
        .lines()
        .find(|l| l.starts_with("term=") && l.contains("index="))
        .unwrap_or_else(|| panic!("no snapshot in:\n{stdout}"));
    let snapshot_index: u64 = snapshot_line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("index="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(snapshot_index >= 40, "{snapshot_line}");
    assert!(
        stdout.contains(&format!("nodes=[{member_id:x}]")),
        "the snapshot's configuration: {snapshot_line}"
    );
    // Every entry after it, up to the last one rusd reported.
    let last_index: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lastIndex="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_index >= raft_index, "{last_index} < {raft_index}");
    let entries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\tnorm") || l.contains("\tconf"))
        .collect();
    assert_eq!(
        entries.len() as u64,
        last_index - snapshot_index,
        "one line per entry after the snapshot:\n{stdout}"
    );
    // Every entry's data is etcd's InternalRaftRequest ("???" is what the tool prints for
    // data it cannot decode), with the requests as etcd writes them.
    assert!(!stdout.contains("???"), "undecodable entries:\n{stdout}");
    for expected in [
        "put:<key:\"dump/last\" value:\"value-after-the-checkpoints\" >",
        "delete_range:<key:\"dump/k000\" >",
        "compaction:<revision:5 >",
        "lease_grant:<TTL:300 ID:",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}
