//! etcd's Lease service. Grants and revokes go through raft; keep-alives, TTL queries and the
//! lease list are answered by the coordinator, which holds the lease table and, as leader, the
//! expiry clock.

use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status, Streaming};

use std::time::Duration;

use super::status::status;
use super::Context;
use crate::coordinator::rpc::{self, PeerRequest, PeerResponse};
use crate::coordinator::{CoordMsg, LeaseInfo, WriteRequest, WriteResponse};
use crate::error::EtcdError;

/// How long a follower waits for the leader's answer to a forwarded lease call (etcd's
/// request timeout without the election part: the leader is known when we forward).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the leader, for lease calls only it can answer (its clock is the one that counts).
async fn ask_leader(ctx: &Context, req: PeerRequest) -> Result<PeerResponse, EtcdError> {
    let leader = ctx.published.leader();
    let client = ctx.peers.get().ok_or(EtcdError::NoLeader)?;
    if leader == 0 {
        return Err(EtcdError::NoLeader);
    }
    let body = client
        .call(leader, rpc::encode_request(&req), FORWARD_TIMEOUT)
        .await
        .map_err(|_| EtcdError::Timeout)?;
    match rpc::decode_response(&body) {
        Ok(PeerResponse::Refused(_)) | Err(_) => Err(EtcdError::Timeout),
        Ok(answer) => Ok(answer),
    }
}

/// Renews a lease here if this member leads, else on the leader.
async fn keep_alive(ctx: &Context, id: i64) -> Result<Option<i64>, EtcdError> {
    let here = ctx
        .coordinator
        .ask(|reply| CoordMsg::LeaseKeepAlive { id, reply })
        .await
        .and_then(|r| r);
    match here {
        Err(EtcdError::NotLeader) => {
            match ask_leader(ctx, PeerRequest::LeaseKeepAlive { id }).await? {
                PeerResponse::LeaseKeepAlive(r) => r,
                _ => Err(EtcdError::Timeout),
            }
        }
        other => other,
    }
}

/// A lease's remaining time, from the leader.
async fn time_to_live(ctx: &Context, id: i64, keys: bool) -> Result<Option<LeaseInfo>, EtcdError> {
    let here = ctx
        .coordinator
        .ask(|reply| CoordMsg::LeaseTimeToLive { id, keys, reply })
        .await
        .and_then(|r| r);
    match here {
        Err(EtcdError::NotLeader) => {
            match ask_leader(ctx, PeerRequest::LeaseTimeToLive { id, keys }).await? {
                PeerResponse::LeaseTimeToLive(r) => r,
                _ => Err(EtcdError::Timeout),
            }
        }
        other => other,
    }
}

/// Keep-alive answers buffered per stream before the reader of requests waits for the client
/// to drain them; a client that never reads cannot make the server queue without bound.
const KEEPALIVE_OUT_MAX: usize = 64;

pub struct LeaseService {
    pub ctx: Context,
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // A bad token fails any proposal (etcd resolves it for every raft request).
        self.ctx.identify_request(&request)?;
        let r = request.into_inner();
        // etcd refuses an oversized TTL before proposing anything.
        if r.ttl > crate::coordinator::lease::LEASE_TTL_MAX_SECS {
            return Err(status(EtcdError::LeaseTtlTooLarge));
        }
        let out = self
            .ctx
            .coordinator
            .propose(WriteRequest::LeaseGrant {
                id: r.id,
                ttl_secs: r.ttl,
            })
            .await
            .map_err(status)?;
        let WriteResponse::LeaseGrant { id, ttl_secs } = out.response else {
            unreachable!("a grant answers with a grant")
        };
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.ctx.header(out.revision)),
            id,
            ttl: ttl_secs,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.get_ref().id;
        // Write permission on every attached key is checked at apply, where the keys are.
        let req = self.ctx.authorize_write(
            &super::auth::Credentials::of(&request),
            WriteRequest::LeaseRevoke { id },
        )?;
        let out = self.ctx.coordinator.propose(req).await.map_err(status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.ctx.header(out.revision)),
        }))
    }

    type LeaseKeepAliveStream =
        flume::r#async::RecvStream<'static, Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = flume::bounded(KEEPALIVE_OUT_MAX);
        let ctx = self.ctx.clone();
        // The stream's reader lives on this core, beside the connection that carries it.
        glommio::spawn_local(async move {
            loop {
                let req = match incoming.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send_async(Err(e)).await;
                        return;
                    }
                };
                let answer = keep_alive(&ctx, req.id).await;
                let msg = match answer {
                    // An unknown lease answers TTL 0, and the stream goes on (etcd does so).
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(ctx.header(ctx.published.revision())),
                        id: req.id,
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(e) => Err(status(e)),
                };
                let end = msg.is_err();
                if tx.send_async(msg).await.is_err() || end {
                    return;
                }
            }
        })
        .detach();
        Ok(Response::new(rx.into_stream()))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let (store, ai) = self.ctx.identify_request(&request)?;
        let r = request.into_inner();
        // With keys, every attached key needs read permission (etcd's checkLeaseTimeToLive).
        let keys = r.keys || store.enabled();
        let info = time_to_live(&self.ctx, r.id, keys).await.map_err(status)?;
        if r.keys {
            if let Some(i) = &info {
                for k in &i.keys {
                    store
                        .check_range(ai.as_ref(), k, &[], crate::coordinator::auth::Access::Read)
                        .map_err(status)?;
                }
            }
        }
        let header = Some(self.ctx.header(self.ctx.published.revision()));
        Ok(Response::new(match info {
            Some(i) => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: i.remaining_secs,
                granted_ttl: i.granted_ttl_secs,
                keys: if r.keys { i.keys } else { Vec::new() },
            },
            // etcd answers an unknown lease with TTL -1 rather than an error.
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self
            .ctx
            .coordinator
            .ask(|reply| CoordMsg::LeaseLeases { reply })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.ctx.header(self.ctx.published.revision())),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
