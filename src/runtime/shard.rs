//! The shard worker: one per core, owning that core's `MvccStore`. It runs requests from the
//! other cores one at a time, synchronously; the store itself never awaits.

use bytes::Bytes;
use futures::channel::oneshot;
use shards::{
    Compare, CompareOutcome, DeleteRangeRequest, DeleteRangeResponse, Event, KeyValue, MvccError,
    MvccStore, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnOutcome, TxnRequest,
};

/// Messages a shard worker accepts. Replies travel over `Send` oneshots.
pub enum ShardMsg {
    Range {
        req: RangeRequest,
        revision: i64,
        reply: oneshot::Sender<Result<RangeResponse, MvccError>>,
    },
    Put {
        main: i64,
        sub: i64,
        req: PutRequest,
        reply: oneshot::Sender<Result<(PutResponse, Event), MvccError>>,
    },
    DeleteRange {
        main: i64,
        first_sub: i64,
        req: DeleteRangeRequest,
        reply: oneshot::Sender<(DeleteRangeResponse, Vec<Event>)>,
    },
    /// Delete exactly these keys, each at its given sub-revision (multi-shard delete ranges,
    /// whose sub-revisions follow the global key order).
    DeleteKeys {
        main: i64,
        keys: Vec<(Bytes, i64)>,
        reply: oneshot::Sender<(Vec<KeyValue>, Vec<Event>)>,
    },
    Compare {
        compares: Vec<Compare>,
        reply: oneshot::Sender<Vec<CompareOutcome>>,
    },
    Txn {
        main: i64,
        req: TxnRequest,
        reply: oneshot::Sender<Result<TxnOutcome, MvccError>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<()>,
    },
    History {
        key: Bytes,
        range_end: Bytes,
        from: i64,
        to: i64,
        reply: oneshot::Sender<Result<Vec<Event>, MvccError>>,
    },
    HashKv {
        revision: i64,
        reply: oneshot::Sender<u32>,
    },
    Stats {
        reply: oneshot::Sender<ShardStats>,
    },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ShardStats {
    pub bytes: usize,
}

/// Runs until every sender is gone. A dropped reply receiver (the client went away) is not an
/// error: the work is done either way, which keeps apply deterministic.
pub async fn run(rx: flume::Receiver<ShardMsg>) {
    let mut store = MvccStore::new();
    while let Ok(msg) = super::recheck(rx.recv_async()).await {
        handle(&mut store, msg);
    }
}

pub fn handle(store: &mut MvccStore, msg: ShardMsg) {
    match msg {
        ShardMsg::Range {
            req,
            revision,
            reply,
        } => {
            let _ = reply.send(store.range(&req, revision));
        }
        ShardMsg::Put {
            main,
            sub,
            req,
            reply,
        } => {
            let _ = reply.send(store.put(main, sub, &req));
        }
        ShardMsg::DeleteRange {
            main,
            first_sub,
            req,
            reply,
        } => {
            let _ = reply.send(store.delete_range(main, first_sub, &req));
        }
        ShardMsg::DeleteKeys { main, keys, reply } => {
            let mut prev = Vec::with_capacity(keys.len());
            let mut events = Vec::with_capacity(keys.len());
            for (key, sub) in keys {
                let req = DeleteRangeRequest {
                    key,
                    range_end: Bytes::new(),
                    prev_kv: true,
                };
                let (resp, evs) = store.delete_range(main, sub, &req);
                prev.extend(resp.prev_kvs);
                events.extend(evs);
            }
            let _ = reply.send((prev, events));
        }
        ShardMsg::Compare { compares, reply } => {
            let _ = reply.send(compares.iter().map(|c| store.compare(c)).collect());
        }
        ShardMsg::Txn { main, req, reply } => {
            let _ = reply.send(store.txn(main, &req));
        }
        ShardMsg::Compact { revision, reply } => {
            store.compact(revision);
            let _ = reply.send(());
        }
        ShardMsg::History {
            key,
            range_end,
            from,
            to,
            reply,
        } => {
            let _ = reply.send(store.history(&key, &range_end, from, to));
        }
        ShardMsg::HashKv { revision, reply } => {
            let _ = reply.send(store.hash_kv(revision));
        }
        ShardMsg::Stats { reply } => {
            let _ = reply.send(ShardStats {
                bytes: store.approximate_bytes(),
            });
        }
    }
}
