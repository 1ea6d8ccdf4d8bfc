//! The Maintenance and Cluster services: status, hashes, alarms, defragment, MoveLeader, and
//! the membership calls (member add/remove/promote/update/list), which become raft entries.

use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::status::status;
use super::Context;
use crate::coordinator::{AlarmKind, CoordMsg, WriteRequest, WriteResponse};
use crate::error::EtcdError;
use crate::runtime::shard::ShardMsg;

pub const SERVER_VERSION: &str = "3.5.17";
pub const CLUSTER_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub ctx: Context,
}

fn alarm_type(a: AlarmKind) -> pb::AlarmType {
    match a {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
        AlarmKind::Corrupt => pb::AlarmType::Corrupt,
    }
}

impl MaintenanceService {
    /// The key history up to `revision`: shard hashes folded in shard order, equal across
    /// members with the same --shards.
    async fn shards_hash(&self, revision: i64) -> Result<u32, Status> {
        let parts = self
            .ctx
            .shards
            .call_all(|reply| ShardMsg::HashKv { revision, reply })
            .await
            .map_err(|_| status(EtcdError::Stopped))?;
        // One stream over every shard's records, as etcd hashes its single store: the hash
        // equals etcd's for the same history, whatever --shards is.
        Ok(shards::combine_hash_records(&parts))
    }

    async fn alarm_list(&self) -> Result<Response<pb::AlarmResponse>, Status> {
        let alarms = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::AlarmList { reply })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.ctx.header(self.ctx.published.revision())),
            alarms: alarms
                .into_iter()
                .map(|(member_id, a)| pb::AlarmMember {
                    member_id,
                    alarm: alarm_type(a) as i32,
                })
                .collect(),
        }))
    }
}

/// etcd's store starts with compact revision -1 and reports it until a compaction; rusd's
/// "none" is 0.
fn etcd_compact_revision(compact: i64) -> i64 {
    if compact == 0 {
        -1
    } else {
        compact
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("rusd: {what} is not implemented yet"))
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let r = request.into_inner();
        let action = AlarmAction::try_from(r.action).unwrap_or(AlarmAction::Get);
        if action != AlarmAction::Get {
            let alarm = match pb::AlarmType::try_from(r.alarm) {
                Ok(pb::AlarmType::Nospace) => AlarmKind::NoSpace,
                Ok(pb::AlarmType::Corrupt) => AlarmKind::Corrupt,
                // etcd answers an activate/deactivate of NONE with the current list.
                _ => return self.alarm_list().await,
            };
            let out = self
                .ctx
                .coordinator
                .propose(WriteRequest::Alarm {
                    activate: action == AlarmAction::Activate,
                    member_id: r.member_id,
                    alarm,
                })
                .await
                .map_err(status)?;
            // etcd answers with the alarm this request raised or cleared, if any.
            let changed = matches!(out.response, WriteResponse::Alarm { changed: true });
            let alarms = if changed {
                vec![pb::AlarmMember {
                    member_id: r.member_id,
                    alarm: alarm_type(alarm) as i32,
                }]
            } else {
                Vec::new()
            };
            return Ok(Response::new(pb::AlarmResponse {
                header: Some(self.ctx.header(out.revision)),
                alarms,
            }));
        }
        self.alarm_list().await
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let p = &self.ctx.published;
        use std::sync::atomic::Ordering::Acquire;
        // dbSize: bytes on disk (the WAL holds everything); dbSizeInUse: the shards' bytes,
        // history included, which is what the quota is checked against.
        let db_size_in_use = p.db_size.load(Acquire);
        let db_size = (p.wal_bytes.load(Acquire) as i64).max(db_size_in_use);
        let alarms = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::AlarmList { reply })
            .await
            .map_err(status)?;
        let errors = alarms
            .into_iter()
            .map(|(member_id, a)| {
                format!("memberID:{member_id} alarm:{}", alarm_type(a).as_str_name())
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.ctx.header(p.revision())),
            version: SERVER_VERSION.to_string(),
            db_size,
            leader: p.leader(),
            raft_index: p.committed_index.load(Acquire),
            raft_term: p.raft_term(),
            raft_applied_index: p.applied_index.load(Acquire),
            errors,
            db_size_in_use,
            is_learner: p.is_learner.load(Acquire),
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let _not_serving = self.ctx.health.defrag_started();
        crate::failpoint!("defragBeforeCopy");
        // Nothing to do: compaction frees shard memory and rewrites segments incrementally,
        // so there is never fragmentation to reclaim in one stop-the-world pass. etcd answers
        // without a header.
        crate::failpoint!("defragBeforeRename");
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    /// etcd hashes its whole bolt file here, which no other store can reproduce; this is the
    /// hash of the key history at the current revision (HashKV's), so that it changes with
    /// every write as etcd's does.
    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let current = self.ctx.published.revision();
        let hash = self.shards_hash(current).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.ctx.header(current)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let r = request.into_inner();
        let current = self.ctx.published.revision();
        // etcd answers a revision it compacted at with the hash that compaction took, before
        // any other check (so even once a later compaction passed it).
        if let Some(kept) = self.ctx.published.compaction_hashes.get(r.revision) {
            return Ok(Response::new(pb::HashKvResponse {
                header: Some(self.ctx.header(current)),
                hash: kept.hash,
                compact_revision: etcd_compact_revision(kept.previous_compact_revision),
            }));
        }
        let compact = self.ctx.published.compact_revision();
        if r.revision > current {
            return Err(status(EtcdError::FutureRevision));
        }
        let rev = if r.revision <= 0 { current } else { r.revision };
        if rev < compact {
            return Err(status(EtcdError::Compacted));
        }
        let hash = self.shards_hash(rev).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.ctx.header(current)),
            hash,
            compact_revision: etcd_compact_revision(compact),
        }))
    }

    type SnapshotStream = super::snapshot::SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.ctx.require_admin(&request)?;
        Ok(Response::new(super::snapshot::start(&self.ctx).await?))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let me = self.ctx.member.member_id;
        if self.ctx.published.leader() != me {
            return Err(status(EtcdError::NotLeader));
        }
        let members = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::MemberList { reply })
            .await
            .map_err(status)?;
        if !members.iter().any(|m| m.id == target && !m.is_learner) {
            return Err(status(EtcdError::BadLeaderTransferee));
        }
        self.ctx
            .coordinator
            .move_leader(target)
            .await
            .map_err(status)?;
        // etcd answers MoveLeader with an empty response, no header.
        Ok(Response::new(pb::MoveLeaderResponse::default()))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}

pub struct ClusterService {
    pub ctx: Context,
}

fn member_out(m: crate::coordinator::members::Member) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn members_out(out: &crate::coordinator::WriteOutcome) -> Vec<pb::Member> {
    match &out.response {
        WriteResponse::Members(ms) => ms.iter().cloned().map(member_out).collect(),
        _ => Vec::new(),
    }
}

/// Peer URLs as etcd accepts them in member add/update: absolute http(s) URLs.
/// etcd's `types.NewURLs` check on MemberAdd/MemberUpdate: at least one URL, each with a
/// scheme etcd dials (http, https, unix, unixs), a host and port, no path; anything else is
/// ErrGRPCMemberBadURLs. (An empty list would add a voter nobody can reach.)
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    let valid = |u: &String| {
        ["http://", "https://", "unix://", "unixs://"]
            .iter()
            .any(|scheme| u.starts_with(scheme))
            && crate::config::Url::parse(u).is_ok()
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(Status::invalid_argument(
            "etcdserver: given member URLs are invalid",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let r = request.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        if !r.is_learner {
            self.check_started(Change::AddVoter).await?;
        }
        // etcd's ID for an added member: its peer URLs, no cluster token, and the time.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let id = crate::ids::member_id(&r.peer_ur_ls, "", Some(now));
        let out = self
            .ctx
            .coordinator
            .propose(WriteRequest::MemberAdd(
                crate::coordinator::codec::MemberAddRequest {
                    id,
                    peer_urls: r.peer_ur_ls.clone(),
                    is_learner: r.is_learner,
                },
            ))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.ctx.header(out.revision)),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: r.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members: members_out(&out),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let id = request.into_inner().id;
        self.check_started(Change::Remove(id)).await?;
        let out = self
            .ctx
            .coordinator
            .propose(WriteRequest::MemberRemove { id })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.ctx.header(out.revision)),
            members: members_out(&out),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let r = request.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        let out = self
            .ctx
            .coordinator
            .propose(WriteRequest::MemberUpdate {
                id: r.id,
                peer_urls: r.peer_ur_ls,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.ctx.header(out.revision)),
            members: members_out(&out),
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.ctx.coordinator.read_index().await.map_err(status)?;
        }
        let members = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::MemberList { reply })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MemberListResponse {
            // etcd's cluster service leaves the revision out of this header.
            header: Some(self.ctx.header(0)),
            members: members.into_iter().map(member_out).collect(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.ctx.require_admin(&request)?;
        let id = request.into_inner().id;
        self.check_started(Change::Promote).await?;
        // Only the leader can tell whether the learner is in sync: elsewhere the raft node
        // answers "not leader", and the request goes to the leader over the peer transport
        // (etcd's follower asks the leader's `/members/promote/<id>`).
        match self
            .ctx
            .coordinator
            .propose(WriteRequest::MemberPromote { id })
            .await
        {
            Ok(out) => Ok(Response::new(pb::MemberPromoteResponse {
                header: Some(self.ctx.header(out.revision)),
                members: members_out(&out),
            })),
            Err(EtcdError::NotLeader) => {
                // Run on this core's executor (its timers are not `Send`); the answer comes
                // back over a channel.
                let (tx, rx) = futures::channel::oneshot::channel();
                let ctx = self.ctx.clone();
                glommio::spawn_local(async move {
                    let _ = tx.send(promote_on_leader(&ctx, id).await);
                })
                .detach();
                let members = rx
                    .await
                    .unwrap_or(Err(EtcdError::Stopped))
                    .map_err(status)?;
                Ok(Response::new(pb::MemberPromoteResponse {
                    header: Some(self.ctx.header(self.ctx.published.revision())),
                    members: members.into_iter().map(member_out).collect(),
                }))
            }
            Err(e) => Err(status(e)),
        }
    }
}

/// etcd's PromoteMember on a follower: asks the leader until it answers, within the request
/// timeout. The leader's refusals that another try cannot change (not in sync, not found,
/// not a learner) end it at once; anything else (no leader yet, the leader changed or is
/// unreachable) is tried again, and the timeout answers etcd's "request timed out".
async fn promote_on_leader(
    ctx: &super::Context,
    id: u64,
) -> Result<Vec<crate::coordinator::members::Member>, EtcdError> {
    use crate::coordinator::rpc::{self, PeerRequest, PeerResponse};
    /// Between tries, so a leader election or a reconnect gets time to finish.
    const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    let deadline = std::time::Instant::now() + ctx.coordinator.request_timeout();
    let client = ctx.peers.get().ok_or(EtcdError::Stopped)?;
    let body = rpc::encode_request(&PeerRequest::MemberPromote { id });
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(EtcdError::Timeout);
        }
        let leader = ctx.published.leader();
        if leader != 0 && leader != ctx.member.member_id {
            if let Ok(answer) = client.call(leader, body.clone(), left).await {
                match rpc::decode_response(&answer) {
                    Ok(PeerResponse::MemberPromote(Ok(members))) => return Ok(members),
                    Ok(PeerResponse::MemberPromote(Err(
                        e @ (EtcdError::LearnerNotReady
                        | EtcdError::MemberNotFound
                        | EtcdError::MemberNotLearner),
                    ))) => return Err(e),
                    _ => {}
                }
            }
        } else if leader == ctx.member.member_id {
            // This member became the leader meanwhile: it decides itself.
            let out = ctx
                .coordinator
                .propose(WriteRequest::MemberPromote { id })
                .await?;
            return Ok(match out.response {
                WriteResponse::Members(members) => members,
                _ => Vec::new(),
            });
        }
        glommio::timer::sleep(RETRY_PAUSE.min(left)).await;
    }
}

/// A membership change, for etcd's started-members check.
enum Change {
    AddVoter,
    Remove(u64),
    Promote,
}

impl ClusterService {
    /// --strict-reconfig-check's count of started members (those that published their name):
    /// a change is refused when the voters after it would have fewer started members than a
    /// quorum (etcd's IsReadyToAddVotingMember, IsReadyToRemoveVotingMember and
    /// IsReadyToPromoteMember). The check of which members answered lately is the leader's
    /// (`coordinator::raft`).
    async fn check_started(&self, change: Change) -> Result<(), Status> {
        if !self.ctx.member.strict_reconfig_check {
            return Ok(());
        }
        let members = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::MemberList { reply })
            .await
            .map_err(status)?;
        let voters = members.iter().filter(|m| !m.is_learner);
        let started = |m: &&crate::coordinator::members::Member| !m.name.is_empty();
        let (members_after, started_after) = match change {
            Change::AddVoter => {
                let (n, s) = (voters.clone().count(), voters.filter(started).count());
                // Adding a second member to a one-member cluster (etcd's restore recipe).
                if s == 1 && n == 1 {
                    return Ok(());
                }
                (n + 1, s)
            }
            Change::Promote => (
                voters.clone().count() + 1,
                voters.filter(started).count() + 1,
            ),
            Change::Remove(id) => {
                if members.iter().any(|m| m.id == id && m.is_learner) {
                    return Ok(());
                }
                let others = voters.filter(|m| m.id != id);
                (others.clone().count(), others.filter(started).count())
            }
        };
        if started_after < members_after / 2 + 1 {
            return Err(status(EtcdError::NotEnoughStartedMembers));
        }
        Ok(())
    }
}
