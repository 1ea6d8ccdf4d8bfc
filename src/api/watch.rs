//! etcd's Watch service: one bidirectional stream per client, many watchers per stream. The
//! stream's requests go to the watch hub in the coordinator; its responses come back through
//! one bounded outbox per stream (see `coordinator::watch`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use proto::etcdserverpb as pb;
use proto::etcdserverpb::watch_create_request::FilterType;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::mvccpb;
use tonic::{Request, Response, Status, Streaming};

use super::convert::kv_out;
use super::status::status;
use super::Context;
use crate::coordinator::watch::{WatchCreate, WatchMsg, WatchOut, WATCH_OUTBOX_MAX};
use crate::coordinator::CoordMsg;
use crate::error::EtcdError;

/// Stream IDs are unique per process; the hub keys its streams by them.
static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// Watch streams ended by the client since start. A watch stream only ends when its client
/// goes away, which grpc-go records as code Canceled: etcd's
/// grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",...}.
pub static WATCH_STREAMS_CANCELED: AtomicU64 = AtomicU64::new(0);

pub struct WatchService {
    pub ctx: Context,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Election timeouts without a leader after which a watch stream that requires one ends
/// (etcd's `maxNoLeaderCnt`).
const NO_LEADER_CHECKS_MAX: u32 = 3;

/// The call carries clientv3's `WithRequireLeader` metadata (`hasleader: true`).
fn wants_leader<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// Kubernetes sets `hasleader: true` on watches: such a stream must fail while there is no
/// leader rather than wait silently.
pub fn require_leader<T>(ctx: &Context, request: &Request<T>) -> Result<(), Status> {
    if wants_leader(request) && ctx.published.leader() == 0 {
        return Err(status(EtcdError::NoLeader));
    }
    Ok(())
}

fn event_out(e: shards::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            shards::EventKind::Put => mvccpb::event::EventType::Put as i32,
            shards::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_out(e.kv)),
        prev_kv: e.prev_kv.map(kv_out),
    }
}

fn response_out(ctx: &Context, out: WatchOut) -> pb::WatchResponse {
    let mut r = pb::WatchResponse::default();
    let revision = match out {
        WatchOut::Created { watch_id, revision } => {
            r.watch_id = watch_id;
            r.created = true;
            revision
        }
        WatchOut::CreateRefused {
            watch_id,
            revision,
            reason,
        } => {
            r.watch_id = watch_id;
            r.created = true;
            r.canceled = true;
            r.cancel_reason = reason.to_string();
            revision
        }
        WatchOut::Events {
            watch_id,
            revision,
            events,
        } => {
            r.watch_id = watch_id;
            r.events = events.into_iter().map(event_out).collect();
            revision
        }
        WatchOut::Canceled {
            watch_id,
            revision,
            compact_revision,
        } => {
            r.watch_id = watch_id;
            r.canceled = true;
            r.compact_revision = compact_revision;
            if compact_revision != 0 {
                r.cancel_reason =
                    "etcdserver: mvcc: required revision has been compacted".to_string();
            }
            revision
        }
        WatchOut::Progress { watch_id, revision } => {
            r.watch_id = watch_id;
            revision
        }
    };
    r.header = Some(ctx.header(revision));
    r
}

/// etcd's isWatchPermitted: read permission on the watched range (a from-key watch checks its
/// start key only, as etcd's normalization leaves it). A refused create answers watch ID -1,
/// created and canceled, with the reason.
async fn watch_permitted(
    ctx: &Context,
    creds: &super::auth::Credentials,
    c: &pb::WatchCreateRequest,
    out: &flume::Sender<WatchOut>,
) -> bool {
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    let range_end: &[u8] = if c.range_end.as_ref() == [0] {
        &[]
    } else {
        &c.range_end
    };
    let err = match ctx.identify(creds) {
        Err(s) => s,
        Ok((store, ai)) => {
            match store.check_range(
                ai.as_ref(),
                key,
                range_end,
                crate::coordinator::auth::Access::Read,
            ) {
                Ok(()) => return true,
                Err(e) => status(e),
            }
        }
    };
    let reason = match err.message() {
        "etcdserver: invalid auth token" => "etcdserver: invalid auth token",
        "etcdserver: revision of auth store is old" => "etcdserver: revision of auth store is old",
        "etcdserver: user name is empty" => "etcdserver: user name is empty",
        _ => "etcdserver: permission denied",
    };
    let _ = out
        .send_async(WatchOut::CreateRefused {
            watch_id: -1,
            revision: ctx.published.revision(),
            reason,
        })
        .await;
    false
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        require_leader(&self.ctx, &request)?;
        let wants_leader = wants_leader(&request);
        let creds = super::auth::Credentials::of(&request);
        let mut incoming = request.into_inner();
        let stream = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let (out_tx, out_rx) = flume::bounded::<WatchOut>(WATCH_OUTBOX_MAX);
        let ctx = self.ctx.clone();
        // The request reader stays on this core, beside its connection.
        glommio::spawn_local(async move {
            let send = |m: WatchMsg| ctx.coordinator.send(CoordMsg::Watch(m));
            while let Ok(Some(req)) = incoming.message().await {
                let msg = match req.request_union {
                    Some(RequestUnion::CreateRequest(c))
                        if !watch_permitted(&ctx, &creds, &c, &out_tx).await =>
                    {
                        continue
                    }
                    Some(RequestUnion::CreateRequest(c)) => WatchMsg::Create {
                        stream,
                        req: WatchCreate {
                            key: c.key,
                            range_end: c.range_end,
                            start_revision: c.start_revision,
                            prev_kv: c.prev_kv,
                            progress_notify: c.progress_notify,
                            filter_put: c.filters.contains(&(FilterType::Noput as i32)),
                            filter_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                            watch_id: c.watch_id,
                        },
                        out: out_tx.clone(),
                    },
                    Some(RequestUnion::CancelRequest(c)) => WatchMsg::Cancel {
                        stream,
                        watch_id: c.watch_id,
                    },
                    Some(RequestUnion::ProgressRequest(_)) => WatchMsg::RequestProgress { stream },
                    None => continue,
                };
                if send(msg).await.is_err() {
                    return;
                }
            }
            WATCH_STREAMS_CANCELED.fetch_add(1, Ordering::Relaxed);
            let _ = send(WatchMsg::Close { stream }).await;
        })
        .detach();
        let ctx = self.ctx.clone();
        // The hub fills `out_rx` from core 0; the response stream drains it directly.
        let responses = out_rx.into_stream().map(move |out| {
            // etcd's (patched-in) beforeSendWatchResponse; a sleep term here blocks this
            // core's executor, not only this stream (docs/robustness.md).
            crate::failpoint!("beforeSendWatchResponse");
            Ok(response_out(&ctx, out))
        });
        if !wants_leader {
            return Ok(Response::new(Box::pin(responses)));
        }
        // etcd's monitorLeader: a stream that asked for a leader ends with "etcdserver: no
        // leader" once the member has been without one for three election timeouts, so a
        // client (Kubernetes' reflectors) moves to a member that can serve it.
        let (lost_tx, lost_rx) = flume::bounded::<Status>(1);
        let ctx = self.ctx.clone();
        glommio::spawn_local(async move {
            let mut missed = 0;
            loop {
                glommio::timer::sleep(ctx.member.election_timeout).await;
                if lost_tx.is_disconnected() {
                    return;
                }
                missed = if ctx.published.leader() == 0 {
                    missed + 1
                } else {
                    0
                };
                if missed >= NO_LEADER_CHECKS_MAX {
                    let _ = lost_tx.try_send(status(EtcdError::NoLeader));
                    return;
                }
            }
        })
        .detach();
        let ended = lost_rx.into_stream().map(Err);
        // The first error ends the response stream (tonic sends it as the call's status).
        let merged = futures::stream::select(responses, ended);
        Ok(Response::new(Box::pin(merged)))
    }
}
