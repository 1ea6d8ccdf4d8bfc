//! etcd's KV service: validation on the receiving core, reads straight from the shards, writes
//! through the coordinator.

use prost::Message;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::auth::Credentials;
use super::convert;
use super::status::status;
use super::Context;
use crate::coordinator::{WriteOutcome, WriteRequest, WriteResponse};
use crate::error::EtcdError;

pub struct KvService {
    pub ctx: Context,
}

impl KvService {
    async fn write(&self, encoded_len: usize, req: WriteRequest) -> Result<WriteOutcome, Status> {
        // etcd refuses a proposal larger than --max-request-bytes with this error (the gRPC
        // limit above it only catches what is far too large to even decode).
        if encoded_len > self.ctx.max_request_bytes {
            return Err(status(EtcdError::RequestTooLarge));
        }
        self.ctx.coordinator.propose(req).await.map_err(status)
    }

    /// Resolves a read's revision the way etcd's MVCC does, after waiting for linearizability
    /// if asked: the returned pair is (revision to read at, current revision for the header).
    pub async fn read_revision(
        &self,
        serializable: bool,
        wanted: i64,
    ) -> Result<(i64, i64), Status> {
        if !serializable {
            self.ctx.coordinator.read_index().await.map_err(status)?;
        }
        let current = self.ctx.published.revision();
        if wanted > current {
            return Err(status(EtcdError::FutureRevision));
        }
        let rev = if wanted <= 0 { current } else { wanted };
        if rev < self.ctx.published.compact_revision() {
            return Err(status(EtcdError::Compacted));
        }
        Ok((rev, current))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.get_ref();
        self.ctx.authorize_read(&request, &r.key, &r.range_end)?;
        let r = request.into_inner();
        let serializable = r.serializable;
        let req = convert::range_in(r).map_err(status)?;
        let (rev, current) = self.read_revision(serializable, req.revision).await?;
        let resp = self
            .ctx
            .shards
            .range(&req, rev)
            .await
            .map_err(|_| status(EtcdError::Stopped))?
            .map_err(|e| status(e.into()))?;
        let (kvs, more, count) = convert::range_out(resp);
        Ok(Response::new(pb::RangeResponse {
            header: Some(self.ctx.header(current)),
            kvs,
            more,
            count,
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let creds = Credentials::of(&request);
        let p = request.into_inner();
        let len = p.encoded_len();
        let req = convert::put_in(p).map_err(status)?;
        let req = self.ctx.authorize_write(&creds, WriteRequest::Put(req))?;
        let out = self.write(len, req).await?;
        let WriteResponse::Put(resp) = out.response else {
            unreachable!("a put answers with a put response")
        };
        Ok(Response::new(pb::PutResponse {
            header: Some(self.ctx.header(out.revision)),
            prev_kv: resp.prev_kv.map(convert::kv_out),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let creds = Credentials::of(&request);
        let d = request.into_inner();
        let len = d.encoded_len();
        let req = convert::delete_in(d).map_err(status)?;
        let req = self
            .ctx
            .authorize_write(&creds, WriteRequest::DeleteRange(req))?;
        let out = self.write(len, req).await?;
        let WriteResponse::DeleteRange(resp) = out.response else {
            unreachable!("a delete answers with a delete response")
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: Some(self.ctx.header(out.revision)),
            deleted: resp.deleted,
            prev_kvs: resp.prev_kvs.into_iter().map(convert::kv_out).collect(),
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let creds = Credentials::of(&request);
        let t = request.into_inner();
        let len = t.encoded_len();
        let req = convert::txn_in(t, self.ctx.max_txn_ops).map_err(status)?;
        // A txn that only reads goes through the log as well (etcd answers it from a
        // linearizable read view instead; same result, one more fsync here). Like etcd, it
        // is not held to --max-request-bytes: that limit is for what gets written.
        let len = if is_read_only(&req) { 0 } else { len };
        let req = self.ctx.authorize_write(&creds, WriteRequest::Txn(req))?;
        let out = self.write(len, req).await?;
        let WriteResponse::Txn(resp) = out.response else {
            unreachable!("a txn answers with a txn response")
        };
        let header = self.ctx.header(out.revision);
        Ok(Response::new(convert::txn_out(resp, &header)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let c = request.into_inner();
        let len = c.encoded_len();
        let out = self
            .write(
                len,
                WriteRequest::Compact {
                    revision: c.revision,
                },
            )
            .await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(self.ctx.header(out.revision)),
        }))
    }
}

fn is_read_only(t: &shards::TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match op {
        shards::RequestOp::Range(_) => true,
        shards::RequestOp::Txn(inner) => is_read_only(inner),
        _ => false,
    })
}
