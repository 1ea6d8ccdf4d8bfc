//! etcd's Lock service (`v3lockpb.Lock`), served on the client port as etcd does.
//!
//! etcd implements it with the `concurrency` mutex recipe (client/v3/concurrency/mutex.go):
//! a locker creates `<name>/<lease-hex>` with its lease in a txn (create revision 0) and reads
//! the oldest key of the lock in the same txn; unless it is the oldest, it waits for every key
//! with a smaller create revision to be deleted, then checks its own key still exists. Unlock
//! deletes the key. The building blocks and the error convention (code Unknown, etcd's text)
//! are shared with the Election service (`super::election`).

use bytes::Bytes;
use proto::v3lockpb as lpb;
use proto::v3lockpb::lock_server::{Lock, LockServer};
use shards as s;
use tonic::{Request, Response, Status};

use super::election::{
    check_size, created_at, delete, fail_msg, first_created, get, prefix_of, put, range, range_at,
    session_key, session_lease, txn, wait_deletes, CleanupOnDrop,
};
use super::Context;
use crate::coordinator::WriteRequest;

/// gRPC decode limit above --max-request-bytes (as in `router`).
const GRPC_DECODE_OVERHEAD_BYTES: usize = 512 * 1024;

const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock server for the router.
pub fn server(ctx: Context) -> LockServer<LockService> {
    let limit = ctx.max_request_bytes + GRPC_DECODE_OVERHEAD_BYTES;
    LockServer::new(LockService { ctx })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

pub struct LockService {
    pub ctx: Context,
}

fn unlock_request(key: &Bytes) -> WriteRequest {
    WriteRequest::DeleteRange(s::DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let ctx = &self.ctx;
        let r = request.into_inner();
        check_size(ctx, &r)?;
        let lease = session_lease(ctx, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = session_key(&prefix, lease);
        let owner = s::RequestOp::Range(first_created(&prefix));
        // Join the waiters (or find this session's key from an earlier Lock) and read the
        // owner, in one txn.
        let (resp, header) = txn(
            ctx,
            s::TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put(&key, Bytes::new(), lease), owner.clone()],
                failure: vec![get(&key), owner],
            },
        )
        .await?;
        let mut my_rev = header.revision;
        if !resp.succeeded {
            let Some(kv) = range_at(&resp, 0).first() else {
                return Err(fail_msg(SESSION_EXPIRED));
            };
            my_rev = kv.create_revision;
        }
        let owner = range_at(&resp, 1);
        if owner.is_empty() || owner[0].create_revision == my_rev {
            return Ok(Response::new(lpb::LockResponse {
                header: Some(header),
                key,
            }));
        }
        // Given up while waiting (the client went away): release the key, as etcd does.
        let mut release = CleanupOnDrop::new(ctx, unlock_request(&key));
        if let Err(e) = wait_deletes(ctx, &prefix, my_rev - 1).await {
            release.disarm();
            let _ = delete(ctx, key).await;
            return Err(e);
        }
        // The session's key must still be there (its lease may have expired meanwhile).
        let got = range(
            ctx,
            s::RangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )
        .await;
        release.disarm();
        let (found, header) = match got {
            Ok(g) => g,
            Err(e) => {
                let _ = delete(ctx, key).await;
                return Err(e);
            }
        };
        if found.kvs.is_empty() {
            return Err(fail_msg(SESSION_EXPIRED));
        }
        Ok(Response::new(lpb::LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let header = delete(&self.ctx, request.into_inner().key).await?;
        Ok(Response::new(lpb::UnlockResponse {
            header: Some(header),
        }))
    }
}
