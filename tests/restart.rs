//! Durability across restarts: after puts, deletes, txns and compactions, a restart (SIGKILL or
//! SIGTERM) on the same data dir shows the same keys, the same history, the same revision and
//! the same compact revision. Each test runs with `--shards 1` and `--shards 2`.

mod common;

use std::time::Duration;

use common::ops::{self, Operand};
use common::{b, each_shards, Client, Server};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::compare::CompareResult as R;
use proto::mvccpb::KeyValue;

/// Everything a client can see of the store.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    compact_revision: i64,
    hash: u32,
    /// Every key at every revision from the compaction on.
    history: Vec<(i64, Vec<KeyValue>)>,
}

async fn observe(c: &mut Client) -> Observed {
    let revision = c.revision().await;
    let hk = c.hash_kv(0).await;
    let history = c.history(hk.compact_revision.max(1), revision).await;
    Observed {
        revision,
        compact_revision: hk.compact_revision,
        hash: hk.hash,
        history,
    }
}

/// Puts, overwrites, deletes (single, range), txns (both branches, nested), a compaction and
/// writes after it. Returns the compaction revision.
async fn workload(c: &mut Client) -> i64 {
    for i in 0..20 {
        c.put(&format!("key/{i:02}"), &format!("v{i}")).await;
    }
    for i in (0..20).step_by(3) {
        c.put(&format!("key/{i:02}"), &format!("v{i}-2")).await;
    }
    c.delete(pb::DeleteRangeRequest {
        key: b("key/05"),
        ..Default::default()
    })
    .await;
    c.delete(pb::DeleteRangeRequest {
        key: b("key/10"),
        range_end: b("key/14"),
        prev_kv: true,
    })
    .await;
    let r = c
        .txn(ops::txn_req(
            vec![ops::cmp("key/00", "", R::Equal, Operand::Version(2))],
            vec![
                ops::put("txn/a", "1"),
                ops::put("txn/z", "1"),
                ops::del("key/01", ""),
            ],
            vec![ops::put("txn/else", "1")],
        ))
        .await;
    assert!(r.succeeded);
    let r = c
        .txn(ops::txn_req(
            vec![ops::cmp("key/00", "", R::Equal, Operand::Version(99))],
            vec![ops::put("txn/never", "1")],
            vec![
                ops::put("txn/else", "1"),
                ops::txn(ops::txn_req(
                    vec![],
                    vec![ops::put("txn/nested", "1")],
                    vec![],
                )),
            ],
        ))
        .await;
    assert!(!r.succeeded);
    let compact_at = c.revision().await - 5;
    c.compact(compact_at).await;
    c.put("after/compaction", "1").await;
    c.put("key/02", "v2-3").await;
    c.delete(pb::DeleteRangeRequest {
        key: b("key/15"),
        range_end: b("key/17"),
        prev_kv: false,
    })
    .await;
    compact_at
}

#[test]
fn state_survives_sigkill_restart() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        let compact_at = workload(&mut c).await;
        let before = observe(&mut c).await;
        assert_eq!(before.compact_revision, compact_at);
        assert!(before.history.len() > 5);

        for round in 0..2 {
            srv.kill();
            srv.restart();
            let mut c = srv.client().await;
            let after = observe(&mut c).await;
            assert_eq!(after, before, "restart #{}", round + 1);
            // The compaction is still in force.
            common::assert_status(
                c.kv.range(pb::RangeRequest {
                    key: b("key/00"),
                    revision: compact_at - 1,
                    ..Default::default()
                })
                .await,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            );
            common::assert_status(
                c.kv.compact(pb::CompactionRequest {
                    revision: compact_at,
                    physical: false,
                })
                .await,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            );
        }

        // Writing goes on from the recovered revision, and survives the next restart too.
        let mut c = srv.client().await;
        assert_eq!(c.put_rev("new", "1").await, before.revision + 1);
        let kv = c.get("key/00").await.unwrap();
        assert_eq!(kv.version, 2);
        let again = observe(&mut c).await;
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(observe(&mut c).await, again);
    });
}

#[test]
fn state_survives_sigterm_restart() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        workload(&mut c).await;
        let before = observe(&mut c).await;
        drop(c);
        let status = srv.terminate(Duration::from_secs(10));
        assert!(
            status.is_some(),
            "SIGTERM did not stop the server within 10 s; log:\n{}",
            srv.log()
        );
        srv.restart();
        let mut c = srv.client().await;
        assert_eq!(observe(&mut c).await, before);
    });
}

#[test]
fn empty_member_restarts() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        let h = c.status().await.header.unwrap();
        srv.restart();
        let mut c = srv.client().await;
        let st = c.status().await;
        let h2 = st.header.unwrap();
        assert_eq!(
            (h2.cluster_id, h2.member_id, h2.revision),
            (h.cluster_id, h.member_id, 1)
        );
        assert_ne!(h2.raft_term, 0);
        assert!(c.all().await.kvs.is_empty());
        let members = c
            .cluster
            .member_list(pb::MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner()
            .members;
        assert_eq!(members.len(), 1, "{members:?}");
        let m = &members[0];
        assert_eq!(
            (m.id, m.name.as_str(), m.is_learner),
            (h.member_id, "default", false)
        );
        assert_eq!(m.peer_ur_ls, ["http://localhost:2380"]);
        assert_eq!(m.client_ur_ls, [srv.url()]);
        assert_eq!(c.put_rev("first", "1").await, 2);
    });
}
