//! Membership changes on three real rusd processes (tests/common/cluster.rs): learner and voter
//! adds, etcd's refusals (too many learners, peer URL taken, learner not in sync, not a learner,
//! member not found, not enough started members), removal of a running member (which logs
//! etcd's line, exits and never comes back), and MoveLeader, through the Rust gRPC client and
//! etcdctl v3.5.17.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{assert_status, etcdctl, Client};
use proto::etcdserverpb as pb;
use tonic::Code;

const REMOVED_LINE: &str = "the member has been permanently removed from the cluster";

async fn member_list(client: &mut Client) -> Vec<pb::Member> {
    client
        .cluster
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner()
        .members
}

async fn add(
    client: &mut Client,
    url: &str,
    is_learner: bool,
) -> Result<pb::MemberAddResponse, tonic::Status> {
    client
        .cluster
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![url.to_string()],
            is_learner,
        })
        .await
        .map(|r| r.into_inner())
}

async fn remove(client: &mut Client, id: u64) -> Result<pb::MemberRemoveResponse, tonic::Status> {
    client
        .cluster
        .member_remove(pb::MemberRemoveRequest { id })
        .await
        .map(|r| r.into_inner())
}

async fn promote(client: &mut Client, id: u64) -> Result<pb::MemberPromoteResponse, tonic::Status> {
    client
        .cluster
        .member_promote(pb::MemberPromoteRequest { id })
        .await
        .map(|r| r.into_inner())
}

/// Every running member reports the same member IDs (and learner flags) as `expected`.
async fn assert_everyone_lists(cluster: &Cluster, expected: &[(u64, bool)]) {
    let mut want: Vec<(u64, bool)> = expected.to_vec();
    want.sort();
    for m in cluster.members.iter().filter(|m| m.is_up()) {
        let mut client = m.client().await;
        // Linearizable: the answer includes every change committed before the call.
        let mut got: Vec<(u64, bool)> = member_list(&mut client)
            .await
            .iter()
            .map(|m| (m.id, m.is_learner))
            .collect();
        got.sort();
        assert_eq!(got, want, "{}'s member list", m.name);
    }
}

#[test]
fn learners_and_voters_are_added_and_refused_as_etcd_does() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let follower = (leader + 1) % 3;
        let mut client = cluster.members[leader].client().await;
        let mut at_follower = cluster.members[follower].client().await;
        let initial: Vec<(u64, bool)> = cluster.members.iter().map(|m| (m.id, false)).collect();

        // A learner, through a follower: the change goes through raft to every member.
        // Members that never run: nothing listens on these privileged ports.
        let learner_url = "http://127.0.0.1:1".to_string();
        let added = add(&mut at_follower, &learner_url, true).await.unwrap();
        let learner = added.member.unwrap();
        assert!(learner.is_learner);
        assert_eq!(learner.peer_ur_ls, vec![learner_url.clone()]);
        assert!(added
            .members
            .iter()
            .any(|m| m.id == learner.id && m.is_learner));
        let mut with_learner = initial.clone();
        with_learner.push((learner.id, true));
        assert_everyone_lists(&cluster, &with_learner).await;

        // etcd allows one learner at a time.
        assert_status(
            add(&mut client, "http://127.0.0.1:2", true).await,
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        );
        // (Another URL beside it: the same URLs in the same second make the same ID, which
        // etcd refuses first, as "member ID already exist".)
        let taken = client
            .cluster
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec![learner_url.clone(), "http://127.0.0.1:5".into()],
                is_learner: false,
            })
            .await;
        assert_status(
            taken,
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        );
        // Nothing listens at its URL: it never catches up, so the leader refuses to promote.
        assert_status(
            promote(&mut client, learner.id).await,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        );
        assert_status(
            promote(&mut client, cluster.members[follower].id).await,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        );
        assert_status(
            remove(&mut client, 0x1234_5678).await,
            Code::NotFound,
            "etcdserver: member not found",
        );
        assert_everyone_lists(&cluster, &with_learner).await;

        let removed = remove(&mut client, learner.id).await.unwrap();
        assert_eq!(removed.members.len(), 3);
        assert_everyone_lists(&cluster, &initial).await;

        // A voter that never starts: 3 of 4 voters still make a quorum, so writes go on.
        let voter_url = "http://127.0.0.1:3";
        let voter = add(&mut client, voter_url, false)
            .await
            .unwrap()
            .member
            .unwrap();
        assert!(!voter.is_learner);
        let mut with_voter = initial.clone();
        with_voter.push((voter.id, false));
        assert_everyone_lists(&cluster, &with_voter).await;
        client.put("after-voter-add", "v").await;
        // --strict-reconfig-check: the leader has never heard from the new voter.
        assert_status(
            add(&mut client, "http://127.0.0.1:4", false).await,
            Code::Unavailable,
            "etcdserver: unhealthy cluster",
        );
        // The voter that never answered is not part of the active quorum: it may go.
        remove(&mut client, voter.id).await.unwrap();
        assert_everyone_lists(&cluster, &initial).await;
        client.put("after-voter-remove", "v").await;
        for m in &cluster.members {
            let mut c = m.client().await;
            assert!(c.get("after-voter-remove").await.is_some(), "{}", m.name);
        }
    });
}

#[test]
fn a_removed_member_exits_and_never_rejoins() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let victim = (leader + 1) % 3;
        let victim_id = cluster.members[victim].id;
        let mut client = cluster.members[leader].client().await;
        client.put("before", "v").await;

        let out = etcdctl(
            &cluster.members[leader].endpoint(),
            &["member", "remove", &format!("{victim_id:x}")],
            None,
        );
        assert!(
            out.ok()
                .contains(&format!("Member {victim_id:16x} removed from cluster")),
            "etcdctl said: {}",
            out.ok()
        );
        let status = cluster
            .wait_exit(victim, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("the removed member still runs"));
        assert!(status.success(), "the removed member exited with {status}");
        assert!(
            cluster.members[victim]
                .log
                .lock()
                .unwrap()
                .contains(REMOVED_LINE),
            "no removal line in the log:\n{}",
            cluster.members[victim].log.lock().unwrap()
        );

        // The two left keep a quorum of two.
        let survivors: Vec<(u64, bool)> = cluster
            .members
            .iter()
            .filter(|m| m.id != victim_id)
            .map(|m| (m.id, false))
            .collect();
        assert_everyone_lists(&cluster, &survivors).await;
        client.put("after", "v").await;
        let other = 3 - leader - victim;
        let mut c = cluster.members[other].client().await;
        assert!(c.get("after").await.is_some());

        // Restarted on its data dir, it learns again that it was removed, and stops.
        let status = cluster.restart_expecting_exit(victim, Duration::from_secs(30));
        assert!(
            status.success(),
            "the restarted removed member exited with {status}"
        );
        assert!(cluster.members[victim]
            .log
            .lock()
            .unwrap()
            .contains(REMOVED_LINE));
        assert_everyone_lists(&cluster, &survivors).await;
    });
}

#[test]
fn move_leader_hands_leadership_to_the_chosen_voter() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let target = (leader + 1) % 3;
        let target_id = cluster.members[target].id;
        let mut at_leader = cluster.members[leader].client().await;
        let mut at_target = cluster.members[target].client().await;

        assert_status(
            at_target
                .maintenance
                .move_leader(pb::MoveLeaderRequest {
                    target_id: cluster.members[leader].id,
                })
                .await,
            Code::FailedPrecondition,
            "etcdserver: not leader",
        );
        assert_status(
            at_leader
                .maintenance
                .move_leader(pb::MoveLeaderRequest { target_id: 0x42 })
                .await,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        );
        // A learner cannot lead.
        let learner = add(&mut at_leader, "http://127.0.0.1:1", true)
            .await
            .unwrap()
            .member
            .unwrap();
        assert_status(
            at_leader
                .maintenance
                .move_leader(pb::MoveLeaderRequest {
                    target_id: learner.id,
                })
                .await,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        );
        remove(&mut at_leader, learner.id).await.unwrap();

        // etcdctl finds the leader among the endpoints and asks it.
        let out = etcdctl(
            &cluster.endpoints(),
            &["move-leader", &format!("{target_id:x}")],
            None,
        );
        assert!(
            out.ok().contains(&format!(
                "Leadership transferred from {:x} to {target_id:x}",
                cluster.members[leader].id
            )),
            "etcdctl said: {}",
            out.ok()
        );
        // Answered once the target leads: it says so itself right away.
        assert_eq!(at_target.status().await.leader, target_id);
        assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, target);
        at_target.put("after-move", "v").await;
    });
}

#[test]
fn a_second_voter_is_refused_until_the_first_one_started() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(1, &[]);
        let mut client = cluster.members[0].client().await;
        // etcd's restore recipe: a one-member cluster may add a voter that has not started
        // (and then waits for it: two voters need both for a quorum).
        add(&mut client, "http://127.0.0.1:1", false).await.unwrap();
        // One started member of three voters would be less than a quorum.
        assert_status(
            add(&mut client, "http://127.0.0.1:2", false).await,
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        );
        // etcdctl prints etcd's text for the same refusal.
        let out = etcdctl(
            &cluster.members[0].endpoint(),
            &["member", "add", "m9", "--peer-urls", "http://127.0.0.1:3"],
            None,
        );
        assert!(
            out.err()
                .contains("etcdserver: re-configuration failed due to not enough started members"),
            "etcdctl said: {}",
            out.err()
        );
    });
}

#[test]
fn membership_survives_checkpoints_and_restarts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A checkpoint every few entries: the configuration must come back from the
        // checkpoint, not only from replaying the WAL.
        let mut cluster = Cluster::start(3, &["--snapshot-count", "5"]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let mut client = cluster.members[leader].client().await;
        let learner = add(&mut client, "http://127.0.0.1:1", true)
            .await
            .unwrap()
            .member
            .unwrap();
        for i in 0..30 {
            client.put(&format!("k{i}"), "v").await;
        }
        let mut expected: Vec<(u64, bool)> =
            cluster.members.iter().map(|m| (m.id, false)).collect();
        expected.push((learner.id, true));
        for i in 0..3 {
            assert!(
                cluster.members[i]
                    .log
                    .lock()
                    .unwrap()
                    .contains("saved snapshot"),
                "{} took no checkpoint",
                cluster.members[i].name
            );
            cluster.kill(i);
        }
        cluster.restart_together(&[0, 1, 2]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        assert_everyone_lists(&cluster, &expected).await;
        let mut client = cluster.members[leader].client().await;
        // raft knows the learner too: it still refuses to promote it, and removing it works.
        assert_status(
            promote(&mut client, learner.id).await,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        );
        remove(&mut client, learner.id).await.unwrap();
        expected.pop();
        assert_everyone_lists(&cluster, &expected).await;
        client.put("after-restart", "v").await;
    });
}
