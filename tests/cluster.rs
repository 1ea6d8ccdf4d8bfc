//! Three real rusd processes as one cluster (tests/common/cluster.rs): replication under write
//! load, kill -9 of the leader, and a partition of the leader through the peer-link proxies.
//! Acknowledged writes must survive everything; the members must end with equal data.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{b, Client};
use proto::etcdserverpb as pb;

/// Writers putting unique keys through random members until `stop`; every acknowledged put
/// lands in `acked` with its revision.
fn start_writers(
    cluster: &Cluster,
    writers: usize,
    acked: Arc<Mutex<Vec<(String, i64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    (0..writers)
        .map(|w| {
            let urls = urls.clone();
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let url = &urls[(n as usize + w) % urls.len()];
                    let key = format!("w{w}-{n}");
                    // A member that is down or cut off fails or times out: not acknowledged.
                    let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
                        .unwrap()
                        .connect_timeout(Duration::from_millis(300))
                        .timeout(Duration::from_secs(3))
                        .connect()
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut kv = pb::kv_client::KvClient::new(channel);
                    let put = kv
                        .put(pb::PutRequest {
                            key: b(&key),
                            value: b(&key),
                            ..Default::default()
                        })
                        .await;
                    if let Ok(resp) = put {
                        let rev = resp.into_inner().header.unwrap().revision;
                        acked.lock().unwrap().push((key, rev));
                    }
                }
            })
        })
        .collect()
}

/// Every acknowledged key is on `client`'s member, at the revision it was acknowledged with.
async fn assert_all_present(client: &mut Client, acked: &[(String, i64)], who: &str) {
    let all = client.all().await;
    let present: std::collections::HashMap<Vec<u8>, i64> = all
        .kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.mod_revision))
        .collect();
    for (key, rev) in acked {
        assert_eq!(
            present.get(key.as_bytes()),
            Some(rev),
            "{who}: acknowledged {key} at revision {rev} is missing or moved"
        );
    }
}

/// Waits until every running member applied the same index, then compares HashKV.
async fn assert_converged(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut indexes = Vec::new();
        for m in cluster.members.iter().filter(|m| m.is_up()) {
            indexes.push(m.client().await.status().await.raft_applied_index);
        }
        if indexes.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge: {indexes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut first = None;
    for m in cluster.members.iter().filter(|m| m.is_up()) {
        let mut c = m.client().await;
        let rev = c.revision().await;
        let hash = c.hash_kv(rev).await.hash;
        match first {
            None => first = Some((rev, hash)),
            Some(f) => assert_eq!(f, (rev, hash), "{} holds other data", m.name),
        }
    }
}

#[test]
fn a_killed_leader_loses_no_acknowledged_write() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = start_writers(&cluster, 4, acked.clone(), stop.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.kill(leader);
        let killed_at = Instant::now();
        let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new_leader, leader);
        eprintln!("new leader after {:?}", killed_at.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > 50, "the load wrote only {} keys", acked.len());
        for m in cluster.members.iter().filter(|m| m.is_up()) {
            assert_all_present(&mut m.client().await, &acked, &m.name).await;
        }
        cluster.restart(leader);
        assert_converged(&cluster).await;
        let mut back = cluster.members[leader].client().await;
        assert_all_present(&mut back, &acked, "the restarted old leader").await;
    });
}

#[test]
fn a_partitioned_leader_steps_down_and_refuses_linearizable_reads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let mut old = cluster.members[leader].client().await;
        old.put("before", "partition").await;
        // A watch that requires a leader (clientv3's WithRequireLeader, as Kubernetes sets
        // it) on the old leader must end with "etcdserver: no leader" once it has none.
        let channel = tonic::transport::Channel::from_shared(cluster.members[leader].url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut watch_client = pb::watch_client::WatchClient::new(channel);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b("w"),
                    ..Default::default()
                },
            )),
        };
        // The request side stays open after the create, as a client's does.
        use futures::StreamExt as _;
        let requests = futures::stream::iter([create]).chain(futures::stream::pending());
        let mut request = tonic::Request::new(requests);
        request
            .metadata_mut()
            .insert("hasleader", "true".parse().unwrap());
        let mut watch = watch_client.watch(request).await.unwrap().into_inner();
        let created = watch.message().await.unwrap().unwrap();
        assert!(created.created);
        cluster.isolate(leader);
        let cut_at = Instant::now();
        // The others elect a new leader within a few election timeouts (1 s each here).
        let deadline = Instant::now() + Duration::from_secs(10);
        let new_leader = loop {
            let mut agreed = None;
            for (i, m) in cluster.members.iter().enumerate() {
                if i == leader {
                    continue;
                }
                let l = m.client().await.status().await.leader;
                if l != 0 && l != cluster.members[leader].id && agreed.is_none_or(|a| a == l) {
                    agreed = Some(l);
                } else {
                    agreed = None;
                    break;
                }
            }
            if let Some(id) = agreed {
                break cluster.members.iter().position(|m| m.id == id).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no new leader after the partition"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("new leader {new_leader} after {:?}", cut_at.elapsed());
        let mut new = cluster.members[new_leader].client().await;
        new.put("after", "partition").await;
        // The old leader cannot confirm it still leads: a linearizable read fails rather than
        // answer without the write the majority just took.
        let read = old
            .kv
            .range(pb::RangeRequest {
                key: b("after"),
                ..Default::default()
            })
            .await;
        match read {
            Err(status) => eprintln!("the old leader refused: {status:?}"),
            Ok(resp) => panic!(
                "the isolated old leader answered a linearizable read: {:?}",
                resp.into_inner()
            ),
        }
        // A serializable read there is allowed, and stale.
        let stale = old
            .range(pb::RangeRequest {
                key: b("after"),
                serializable: true,
                ..Default::default()
            })
            .await;
        assert!(stale.kvs.is_empty());
        // Three election timeouts without a leader, after check-quorum made it step down.
        let ended = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("the watch requiring a leader was still open 20 s after the partition");
        match ended {
            Err(status) => assert_eq!(status.message(), "etcdserver: no leader"),
            Ok(m) => panic!("the watch requiring a leader did not end with an error: {m:?}"),
        }
        cluster.heal();
        cluster.wait_leader(Duration::from_secs(10)).await;
        assert_converged(&cluster).await;
        assert!(old.get("after").await.is_some());
    });
}
