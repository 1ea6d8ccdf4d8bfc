//! HashKV equals etcd's for the same history, whatever `--shards` is: users compare these
//! hashes across members (and etcd's corruption checks do), so a member running rusd must
//! hash like etcd. The expected values were read from etcd v3.5.17 running this very test
//! (`RUSD_TEST_ETCD=<path to etcd> cargo test --release --test hash -- --nocapture`).

mod common;

use common::{b, each_shards, Client, Server};
use proto::etcdserverpb as pb;

/// Puts, overwrites, deletes, a compaction exactly at a tombstone's revision (which etcd keeps
/// until the next compaction), then more writes. Returns (revision, hash) checkpoints.
async fn workload(c: &mut Client) -> Vec<(i64, u32)> {
    let mut hashes = Vec::new();
    for i in 0..10 {
        c.put(&format!("key{i}"), &format!("value{i}")).await;
    }
    for i in (0..10).step_by(3) {
        c.put(&format!("key{i}"), &format!("again{i}")).await;
    }
    let deleted = c
        .delete(pb::DeleteRangeRequest {
            key: b("key4"),
            ..Default::default()
        })
        .await;
    let tombstone_rev = deleted.header.unwrap().revision;
    c.put("key5", "after-delete").await;
    let rev = c.revision().await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    hashes.push((tombstone_rev - 2, c.hash_kv(tombstone_rev - 2).await.hash));

    c.compact(tombstone_rev).await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    c.put("key4", "reborn").await;
    c.delete(pb::DeleteRangeRequest {
        key: b("key0"),
        range_end: b("key2"),
        prev_kv: false,
    })
    .await;
    let rev = c.revision().await;
    c.compact(rev - 1).await;
    hashes.push((rev, c.hash_kv(0).await.hash));
    hashes
}

#[test]
fn hash_kv_is_etcds_for_any_shard_count() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = srv.client().await;
        let hashes = workload(&mut c).await;
        eprintln!("hashes: {hashes:x?}");
        // From etcd v3.5.17 (see the top of this file).
        let expected: Vec<(i64, u32)> = vec![
            (0x11, 0xcd69_5d07),
            (0xe, 0x9270_86bc),
            (0x11, 0xc3c3_7ea0),
            (0x13, 0xfb78_9b8d),
        ];
        assert_eq!(hashes, expected, "--shards {shards}");
    });
}
