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

/// `etcdctl member add NAME --peer-urls URL [--learner]` at `endpoint`; the new member's ID
/// from etcdctl's "Member <id> added to cluster <cluster-id>".
fn ctl_member_add(endpoint: &str, name: &str, url: &str, learner: bool) -> u64 {
    let mut args = vec!["member", "add", name, "--peer-urls", url];
    if learner {
        args.push("--learner");
    }
    let out = etcdctl(endpoint, &args, None);
    let text = out.ok().to_string();
    let id = text
        .split("Member ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("etcdctl member add said: {text}"));
    assert!(text.contains("added to cluster"), "{text}");
    id
}

/// The indices of the running members.
fn running(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.members.len())
        .filter(|&i| cluster.members[i].is_up())
        .collect()
}

/// Every running member serves the same keys from its own store (serializable reads, after it
/// reached the leader's revision) and the same HashKV at that revision.
async fn assert_everyone_serves_the_same_data(cluster: &Cluster, expected_keys: usize) {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let revision = cluster.members[leader].client().await.revision().await;
    // The first member's keys and values, and its hash.
    type Seen = (Vec<(Vec<u8>, Vec<u8>)>, u32);
    let mut first: Option<Seen> = None;
    for m in cluster.members.iter().filter(|m| m.is_up()) {
        let mut client = m.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let kvs = loop {
            let r = client
                .range(pb::RangeRequest {
                    key: b"\0".to_vec().into(),
                    range_end: b"\0".to_vec().into(),
                    serializable: true,
                    ..Default::default()
                })
                .await;
            if r.header.as_ref().unwrap().revision >= revision {
                break r.kvs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} stays behind revision {revision}",
                m.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect();
        assert_eq!(kvs.len(), expected_keys, "{}'s keys", m.name);
        let hash = client.hash_kv(revision).await.hash;
        match &first {
            None => first = Some((kvs, hash)),
            Some((want, want_hash)) => {
                assert!(kvs == *want, "{} serves other data", m.name);
                assert_eq!(hash, *want_hash, "{}'s HashKV at {revision}", m.name);
            }
        }
    }
}

/// Adds a member through etcdctl at the leader and starts it with --initial-cluster-state
/// existing; its index.
async fn grow(cluster: &mut Cluster, learner: bool) -> usize {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let i = cluster.new_member();
    let id = ctl_member_add(
        &cluster.members[leader].endpoint(),
        &cluster.members[i].name.clone(),
        &cluster.members[i].peer_url(),
        learner,
    );
    let mut members = running(cluster);
    members.push(i);
    cluster.start_joining(i, &members);
    assert_eq!(
        cluster.members[i].id, id,
        "the joiner took the ID member add gave it"
    );
    assert!(
        cluster.members[i]
            .log
            .lock()
            .unwrap()
            .contains("joining an existing cluster"),
        "{}",
        cluster.members[i].log.lock().unwrap()
    );
    i
}

#[test]
fn members_join_a_running_cluster_from_one_to_five() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Frequent checkpoints: the leader's log is compacted, so joiners are caught up by
        // the snapshot.
        let mut cluster = Cluster::start(1, &["--snapshot-count", "50"]);
        let mut client = cluster.members[0].client().await;
        for i in 0..100 {
            client.put(&format!("a{i:03}"), &format!("v{i}")).await;
        }
        grow(&mut cluster, false).await;
        grow(&mut cluster, false).await;
        assert_eq!(running(&cluster).len(), 3);
        let ids: Vec<(u64, bool)> = cluster.members.iter().map(|m| (m.id, false)).collect();
        assert_everyone_lists(&cluster, &ids).await;
        // Writes through a joined member.
        let mut at_new = cluster.members[2].client().await;
        for i in 0..100 {
            at_new.put(&format!("b{i:03}"), "v").await;
        }
        assert_everyone_serves_the_same_data(&cluster, 200).await;

        grow(&mut cluster, false).await;
        grow(&mut cluster, false).await;
        let ids: Vec<(u64, bool)> = cluster.members.iter().map(|m| (m.id, false)).collect();
        assert_everyone_lists(&cluster, &ids).await;
        let mut at_last = cluster.members[4].client().await;
        for i in 0..50 {
            at_last.put(&format!("c{i:03}"), "v").await;
        }
        assert_everyone_serves_the_same_data(&cluster, 250).await;
        // Each joiner published its name and client URLs, as etcd's members do.
        let listed = member_list(&mut at_last).await;
        for m in &cluster.members {
            let entry = listed.iter().find(|e| e.id == m.id).unwrap();
            assert_eq!(entry.name, m.name);
            assert_eq!(entry.client_ur_ls, vec![m.url()]);
        }
        // A joined member restarts on its data dir like any other.
        cluster.kill(3);
        cluster.restart(3);
        at_last.put("after-restart", "v").await;
        assert_everyone_serves_the_same_data(&cluster, 251).await;
    });
}

#[test]
fn a_learner_joins_catches_up_and_is_promoted_through_a_follower() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &["--snapshot-count", "50"]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let mut client = cluster.members[leader].client().await;
        for i in 0..120 {
            client.put(&format!("k{i:03}"), "v").await;
        }
        let learner = grow(&mut cluster, true).await;
        let learner_id = cluster.members[learner].id;
        let mut want: Vec<(u64, bool)> = cluster
            .members
            .iter()
            .map(|m| (m.id, m.id == learner_id))
            .collect();
        assert_everyone_lists(&cluster, &want).await;
        // A learner serves serializable reads of what it replicated.
        assert_everyone_serves_the_same_data(&cluster, 120).await;

        // etcdctl at a follower: the follower forwards the promotion to the leader.
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let follower = (0..3).find(|&i| i != leader).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = etcdctl(
                &cluster.members[follower].endpoint(),
                &["member", "promote", &format!("{learner_id:x}")],
                None,
            );
            if out.status.success() {
                assert!(
                    out.ok()
                        .contains(&format!("Member {learner_id:16x} promoted in cluster")),
                    "{}",
                    out.ok()
                );
                break;
            }
            // Until the leader sees it in sync it refuses with etcd's error.
            assert!(
                out.err()
                    .contains("can only promote a learner member which is in sync with leader"),
                "etcdctl said: {}",
                out.err()
            );
            assert!(std::time::Instant::now() < deadline, "never promoted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for w in want.iter_mut() {
            w.1 = false;
        }
        assert_everyone_lists(&cluster, &want).await;
        // Through a follower again: now it is no learner, and etcd's error says so.
        let mut at_follower = cluster.members[follower].client().await;
        assert_status(
            promote(&mut at_follower, learner_id).await,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        );
        assert_status(
            promote(&mut at_follower, 0x4242).await,
            Code::NotFound,
            "etcdserver: member not found",
        );
        client.put("after-promote", "v").await;
        assert_everyone_serves_the_same_data(&cluster, 121).await;
    });
}

#[test]
fn a_member_is_replaced_by_a_new_one_on_a_new_data_dir() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &["--snapshot-count", "50"]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let mut client = cluster.members[leader].client().await;
        for i in 0..150 {
            client.put(&format!("k{i:03}"), "v").await;
        }
        let victim = (leader + 1) % 3;
        let victim_id = cluster.members[victim].id;
        let out = etcdctl(
            &cluster.members[leader].endpoint(),
            &["member", "remove", &format!("{victim_id:x}")],
            None,
        );
        assert!(out.ok().contains("removed from cluster"), "{}", out.ok());
        cluster.wait_exit(victim, Duration::from_secs(15)).unwrap();
        client.put("between", "v").await;
        let replacement = grow(&mut cluster, false).await;
        assert_ne!(cluster.members[replacement].id, victim_id);
        let want: Vec<(u64, bool)> = running(&cluster)
            .iter()
            .map(|&i| (cluster.members[i].id, false))
            .collect();
        assert_eq!(want.len(), 3);
        assert_everyone_lists(&cluster, &want).await;
        client.put("after", "v").await;
        assert_everyone_serves_the_same_data(&cluster, 152).await;

        // A joiner whose --initial-cluster does not match the cluster is refused with etcd's
        // errors, and nothing changes.
        let stranger = cluster.new_member();
        let listing: Vec<String> = running(&cluster)
            .iter()
            .map(|&i| {
                format!(
                    "{}={}",
                    cluster.members[i].name,
                    cluster.members[i].peer_url()
                )
            })
            .collect();
        let initial = format!(
            "{},{}={}",
            listing.join(","),
            cluster.members[stranger].name,
            cluster.members[stranger].peer_url()
        );
        let status =
            cluster.start_joining_expecting_exit(stranger, &initial, Duration::from_secs(30));
        assert!(!status.success());
        assert!(
            cluster.members[stranger]
                .log
                .lock()
                .unwrap()
                .contains("member count is unequal"),
            "{}",
            cluster.members[stranger].log.lock().unwrap()
        );
        assert_everyone_lists(&cluster, &want).await;
    });
}

#[test]
fn removed_members_stay_refused_after_the_others_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &["--snapshot-count", "5"]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let victim = (leader + 1) % 3;
        let victim_id = cluster.members[victim].id;
        let mut client = cluster.members[leader].client().await;
        // Down when it is removed: it never learns it from its own log, only from the others'
        // refusal.
        cluster.kill(victim);
        remove(&mut client, victim_id).await.unwrap();
        // Enough entries after the removal that both survivors checkpoint past it: the
        // removal is then no longer in the WAL they replay.
        for i in 0..30 {
            client.put(&format!("k{i}"), "v").await;
        }
        let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        for &i in &survivors {
            cluster.kill(i);
            cluster.members[i].log.lock().unwrap().clear();
        }
        cluster.restart_together(&survivors);
        // The removed member, restarted on its data dir, is refused by the restarted ones.
        let status = cluster.restart_expecting_exit(victim, Duration::from_secs(30));
        assert!(status.success(), "{status}");
        assert!(cluster.members[victim]
            .log
            .lock()
            .unwrap()
            .contains(REMOVED_LINE));
        let refused = survivors.iter().any(|&i| {
            cluster.members[i]
                .log
                .lock()
                .unwrap()
                .contains("rejected stream from remote peer because it was removed")
        });
        assert!(refused, "no survivor refused the removed member");
        let want: Vec<(u64, bool)> = survivors
            .iter()
            .map(|&i| (cluster.members[i].id, false))
            .collect();
        assert_everyone_lists(&cluster, &want).await;
    });
}

#[test]
fn force_new_cluster_restarts_one_member_alone_with_its_data() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::start(3, &[]);
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let mut client = cluster.members[leader].client().await;
        for i in 0..100 {
            client.put(&format!("k{i:03}"), &format!("v{i}")).await;
        }
        let survivor = (leader + 1) % 3;
        let survivor_id = cluster.members[survivor].id;
        // The survivor must have applied everything before the stop.
        {
            let mut at_survivor = cluster.members[survivor].client().await;
            assert_eq!(at_survivor.all().await.kvs.len(), 100);
        }
        for i in 0..3 {
            cluster.kill(i);
        }
        cluster.members[survivor]
            .extra_args
            .push("--force-new-cluster".into());
        cluster.restart(survivor);
        assert!(
            cluster.members[survivor]
                .log
                .lock()
                .unwrap()
                .contains("forcing restart member as a standalone cluster"),
            "{}",
            cluster.members[survivor].log.lock().unwrap()
        );
        assert_eq!(cluster.members[survivor].id, survivor_id);
        let mut client = cluster.members[survivor].client().await;
        let all = client.all().await;
        assert_eq!(all.kvs.len(), 100);
        assert_eq!(&all.kvs[7].value[..], b"v7");
        assert_everyone_lists(&cluster, &[(survivor_id, false)]).await;
        let out = etcdctl(
            &cluster.members[survivor].endpoint(),
            &["member", "list"],
            None,
        );
        assert_eq!(out.ok().lines().count(), 1, "{}", out.ok());
        client.put("after-force", "v").await;

        // Restarted without the flag, it stays a one-member cluster.
        cluster.kill(survivor);
        cluster.members[survivor].extra_args.clear();
        cluster.restart(survivor);
        let mut client = cluster.members[survivor].client().await;
        assert!(client.get("after-force").await.is_some());

        // A new member joins it.
        let joined = grow(&mut cluster, false).await;
        let mut at_joined = cluster.members[joined].client().await;
        at_joined.put("after-join", "v").await;
        assert_everyone_serves_the_same_data(&cluster, 102).await;
    });
}
