//! The Election (`v3electionpb.Election`) and Lock (`v3lockpb.Lock`) services over the wire:
//! etcd's ordering guarantees (the oldest campaigner/locker wins, a waiter is woken by the
//! deletion of the keys before it), Observe's stream, cleanup when a waiting client goes away,
//! and etcd v3.5.17's errors (code Unknown with the recipe's text). Checked against etcd itself
//! with `RUSD_TEST_ETCD`. Each test runs with `--shards 1` and `--shards 2`.

mod common;

use std::time::Duration;

use common::{assert_status, b, each_shards, Server};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::{kv_client::KvClient, lease_client::LeaseClient};
use proto::v3electionpb as epb;
use proto::v3electionpb::election_client::ElectionClient;
use proto::v3lockpb as lpb;
use proto::v3lockpb::lock_client::LockClient;
use tonic::transport::Channel;
use tonic::Code;

struct Clients {
    election: ElectionClient<Channel>,
    lock: LockClient<Channel>,
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
}

async fn clients(srv: &Server) -> Clients {
    let channel = Channel::from_shared(srv.url())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("connecting");
    Clients {
        election: ElectionClient::new(channel.clone()),
        lock: LockClient::new(channel.clone()),
        lease: LeaseClient::new(channel.clone()),
        kv: KvClient::new(channel),
    }
}

impl Clients {
    /// Locks `name` with `lease`, expecting the lock to be granted at once.
    async fn lock_now(&mut self, name: &str, lease: i64) -> lpb::LockResponse {
        self.lock
            .lock(lpb::LockRequest {
                name: b(name),
                lease,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn grant(&mut self) -> i64 {
        self.lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id
    }

    async fn exists(&mut self, key: &str) -> bool {
        let r = self
            .kv
            .range(pb::RangeRequest {
                key: b(key),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        !r.kvs.is_empty()
    }

    async fn campaign(&mut self, name: &str, lease: i64, value: &str) -> epb::CampaignResponse {
        self.election
            .campaign(epb::CampaignRequest {
                name: b(name),
                lease,
                value: b(value),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn leader_value(&mut self, name: &str) -> String {
        let r = self
            .election
            .leader(epb::LeaderRequest { name: b(name) })
            .await
            .unwrap()
            .into_inner();
        String::from_utf8(r.kv.unwrap().value.to_vec()).unwrap()
    }
}

/// Whether `fut` is still pending after a while.
async fn still_waiting<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(300), fut)
        .await
        .is_err()
}

#[test]
fn errors_are_etcds() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = clients(&srv).await;
        let e = &mut c.election;
        assert_status(
            e.leader(epb::LeaderRequest { name: b("none") }).await,
            Code::Unknown,
            "election: no leader",
        );
        let missing = r#""leader" field must be provided"#;
        assert_status(
            e.proclaim(epb::ProclaimRequest::default()).await,
            Code::Unknown,
            missing,
        );
        assert_status(
            e.resign(epb::ResignRequest::default()).await,
            Code::Unknown,
            missing,
        );
        let no_lease = "etcdserver: requested lease not found";
        assert_status(
            e.campaign(epb::CampaignRequest {
                name: b("e"),
                lease: 12345,
                value: b("v"),
            })
            .await,
            Code::Unknown,
            no_lease,
        );
        assert_status(
            c.lock
                .lock(lpb::LockRequest {
                    name: b("l"),
                    lease: 12345,
                })
                .await,
            Code::Unknown,
            no_lease,
        );
        assert_status(
            c.lock.unlock(lpb::UnlockRequest::default()).await,
            Code::Unknown,
            "etcdserver: key is not provided",
        );
        // Unlocking a key that is not there succeeds.
        c.lock
            .unlock(lpb::UnlockRequest { key: b("nothing") })
            .await
            .unwrap();
    });
}

#[test]
fn oldest_campaigner_leads_and_observe_follows() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = clients(&srv).await;
        let (l1, l2) = (c.grant().await, c.grant().await);

        // etcd sends Observe's response headers with its first message, so the call itself
        // only returns once there is a leader: observe from a task of its own.
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut e = c.election.clone();
        tokio::spawn(async move {
            let mut stream = e
                .observe(epb::LeaderRequest { name: b("e") })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(r)) = stream.message().await {
                let value = String::from_utf8(r.kv.unwrap().value.to_vec()).unwrap();
                if seen_tx.send(value).is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let c1 = c.campaign("e", l1, "v1").await;
        let leader1 = c1.leader.clone().unwrap();
        assert_eq!(leader1.key, b(&format!("e/{l1:x}")));
        assert_eq!(leader1.lease, l1);
        assert_eq!(leader1.rev, c1.header.unwrap().revision);

        let mut e2 = c.election.clone();
        let mut second = Box::pin(async move {
            e2.campaign(epb::CampaignRequest {
                name: b("e"),
                lease: l2,
                value: b("v2"),
            })
            .await
        });
        assert!(still_waiting(&mut second).await, "second campaigner won");

        c.election
            .proclaim(epb::ProclaimRequest {
                leader: Some(leader1.clone()),
                value: b("p1"),
            })
            .await
            .unwrap();
        assert_eq!(c.leader_value("e").await, "p1");

        let mut stale = leader1.clone();
        stale.rev = 1;
        assert_status(
            c.election
                .proclaim(epb::ProclaimRequest {
                    leader: Some(stale),
                    value: b("x"),
                })
                .await,
            Code::Unknown,
            "election: not leader",
        );

        c.election
            .resign(epb::ResignRequest {
                leader: Some(leader1.clone()),
            })
            .await
            .unwrap();
        let c2 = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("second campaigner never won")
            .unwrap()
            .into_inner();
        assert!(c2.leader.unwrap().rev > leader1.rev);
        assert_eq!(c.leader_value("e").await, "v2");

        let mut seen = Vec::new();
        while seen.len() < 3 {
            let value = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await
                .expect("observe stalled")
                .expect("observe ended");
            seen.push(value);
        }
        assert_eq!(seen, ["v1", "p1", "v2"]);
    });
}

#[test]
fn campaign_with_lease_zero_gets_a_session_lease() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = clients(&srv).await;
        let r = c.campaign("z", 0, "v").await;
        let lease = r.leader.unwrap().lease;
        assert_ne!(lease, 0);
        let ttl = c
            .lease
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ttl.granted_ttl, 60);
    });
}

#[test]
fn locks_are_granted_in_order_and_given_up_by_waiters_that_leave() {
    each_shards(|shards| async move {
        let srv = Server::start(shards);
        let mut c = clients(&srv).await;
        let (l1, l2, l3) = (c.grant().await, c.grant().await, c.grant().await);

        let k1 = c.lock_now("m", l1).await;
        assert_eq!(k1.key, b(&format!("m/{l1:x}")));
        // Locking again with the same lease is the same hold.
        let again = c.lock_now("m", l1).await;
        assert_eq!(again.key, k1.key);

        let mut lc = c.lock.clone();
        let mut second = Box::pin(async move {
            lc.lock(lpb::LockRequest {
                name: b("m"),
                lease: l2,
            })
            .await
        });
        assert!(
            still_waiting(&mut second).await,
            "second locker got the lock"
        );

        // A waiter whose client gives up leaves no key behind.
        let mut lc = c.lock.clone();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            lc.lock(lpb::LockRequest {
                name: b("m"),
                lease: l3,
            }),
        )
        .await;
        assert!(gave_up.is_err());
        let k3 = format!("m/{l3:x}");
        let mut gone = false;
        for _ in 0..50 {
            if !c.exists(&k3).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "{k3} left behind by a waiter that went away");

        c.lock
            .unlock(lpb::UnlockRequest {
                key: k1.key.clone(),
            })
            .await
            .unwrap();
        let k2 = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("second locker never got the lock")
            .unwrap()
            .into_inner();
        assert!(k2.header.unwrap().revision > k1.header.unwrap().revision);

        // Revoking the holder's lease hands the lock on.
        let l4 = c.grant().await;
        let mut lc = c.lock.clone();
        let mut third = Box::pin(async move {
            lc.lock(lpb::LockRequest {
                name: b("m"),
                lease: l4,
            })
            .await
        });
        assert!(still_waiting(&mut third).await);
        c.lease
            .lease_revoke(pb::LeaseRevokeRequest { id: l2 })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("lock not handed on after the holder's lease was revoked")
            .unwrap();
    });
}
