//! Cross-core plumbing: typed calls from any core to a shard worker, and the multi-shard read
//! (fan-out plus k-way merge) that gives a Range over several shards etcd's exact answer.

use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use shards::{KeyValue, MvccError, RangeRequest, RangeResponse, SortOrder, SortTarget};

use super::shard::ShardMsg;

/// Messages a shard's inbox holds before senders wait. A full inbox makes the sender's task
/// wait (backpressure to the client's stream), never drops work.
pub const SHARD_INBOX_MAX: usize = 4096;

/// Send handles to every shard worker; cheap to clone, usable from any core and any `Send`
/// future (gRPC handlers included).
#[derive(Clone)]
pub struct ShardSet {
    senders: Arc<[flume::Sender<ShardMsg>]>,
}

#[derive(Debug, thiserror::Error)]
#[error("shard worker has stopped")]
pub struct ShardGone;

impl ShardSet {
    pub fn new(senders: Vec<flume::Sender<ShardMsg>>) -> Self {
        assert!(!senders.is_empty(), "at least one shard");
        ShardSet {
            senders: senders.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Never true for a running member (it has at least one shard); here for the `len` idiom.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    pub fn owner(&self, key: &[u8]) -> usize {
        shards::shard_for_key(key, self.senders.len())
    }

    /// Sends one message built around a fresh oneshot and waits for the reply.
    pub async fn call<T: Send + 'static>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<T, ShardGone> {
        let (tx, rx) = oneshot::channel();
        let msg = make(tx);
        self.senders[shard]
            .send_async(msg)
            .await
            .map_err(|_| ShardGone)?;
        rx.await.map_err(|_| ShardGone)
    }

    /// Sends a message without waiting for its reply (the caller holds the receiver).
    pub async fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardGone> {
        self.senders[shard]
            .send_async(msg)
            .await
            .map_err(|_| ShardGone)
    }

    /// Calls every shard at once and gathers the replies in shard order.
    pub async fn call_all<T: Send + 'static>(
        &self,
        make: impl Fn(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<Vec<T>, ShardGone> {
        let calls = (0..self.len()).map(|i| self.call(i, &make));
        futures::future::try_join_all(calls).await
    }

    /// The shards a key range can touch: the owner of a single key, else all of them
    /// (keys are hash-partitioned, so any real range spans every shard).
    pub fn shards_for(&self, key: &[u8], range_end: &[u8]) -> Vec<usize> {
        if range_end.is_empty() {
            vec![self.owner(key)]
        } else {
            (0..self.len()).collect()
        }
    }

    /// etcd's Range, as of `revision` (already resolved and checked against future/compacted by
    /// the caller), over every shard the range touches.
    pub async fn range(
        &self,
        req: &RangeRequest,
        revision: i64,
    ) -> Result<Result<RangeResponse, MvccError>, ShardGone> {
        let targets = self.shards_for(&req.key, &req.range_end);
        // etcd's unsorted-with-a-target-and-a-limit case takes the first limit+1 keys in key
        // order and sorts only those; the merge plan does that for one shard as for many.
        let quirk = req.sort_order == SortOrder::None
            && req.sort_target != SortTarget::Key
            && req.limit > 0;
        if targets.len() == 1 && !quirk {
            let req = req.clone();
            return self
                .call(targets[0], move |reply| ShardMsg::Range {
                    req,
                    revision,
                    reply,
                })
                .await;
        }
        let plan = MergePlan::new(req);
        let sub = plan.shard_request.clone();
        let parts = if targets.len() == 1 {
            vec![
                self.call(targets[0], |reply| ShardMsg::Range {
                    req: sub,
                    revision,
                    reply,
                })
                .await?,
            ]
        } else {
            self.call_all(|reply| ShardMsg::Range {
                req: sub.clone(),
                revision,
                reply,
            })
            .await?
        };
        let mut ok = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Ok(r) => ok.push(r),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(plan.merge(ok)))
    }
}

/// How a multi-shard Range is split and put back together so the result equals what one etcd
/// store would return. etcd (v3.5 applier) reads limit+1 keys in key order unless a sort order
/// or a revision filter is set, in which case it reads everything, filters, sorts and then cuts
/// at `limit`, setting `more` when it cut.
pub struct MergePlan {
    original: RangeRequest,
    pub shard_request: RangeRequest,
    fetch_all: bool,
}

impl MergePlan {
    pub fn new(req: &RangeRequest) -> Self {
        let fetch_all = req.sort_order != SortOrder::None
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let mut shard_request = req.clone();
        if fetch_all {
            shard_request.limit = 0;
        } else if req.limit > 0 {
            shard_request.limit = req.limit + 1;
            // Unsorted with a non-key target: etcd sorts the first limit+1 keys (in key
            // order) by the target. Shards must hand back key order so the merge can pick
            // the global first limit+1 before sorting.
            shard_request.sort_target = SortTarget::Key;
        }
        MergePlan {
            original: req.clone(),
            shard_request,
            fetch_all,
        }
    }

    pub fn merge(&self, parts: Vec<RangeResponse>) -> RangeResponse {
        let req = &self.original;
        let count = parts.iter().map(|p| p.count).sum();
        if req.count_only {
            return RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            };
        }
        let mut kvs: Vec<KeyValue> = parts.into_iter().flat_map(|p| p.kvs).collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        if !self.fetch_all && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            let target = req.sort_target;
            kvs.sort_by(|a, b| {
                let ord = compare_by(target, a, b);
                if order == SortOrder::Descend {
                    ord.reverse()
                } else {
                    ord
                }
            });
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        RangeResponse { kvs, more, count }
    }
}

fn compare_by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> std::cmp::Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, version: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            version,
            create_revision: 2,
            mod_revision: 2 + version,
            lease: 0,
        }
    }

    /// Splitting a key set across shards and merging must equal answering from one store.
    #[test]
    fn merge_equals_single_store_answer() {
        let all: Vec<KeyValue> = (0..10).map(|i| kv(&format!("k{i}"), (i * 7) % 4)).collect();
        for limit in [0i64, 1, 3, 9, 10, 11] {
            for (order, target) in [
                (SortOrder::None, SortTarget::Key),
                (SortOrder::Descend, SortTarget::Key),
                (SortOrder::Ascend, SortTarget::Version),
                (SortOrder::None, SortTarget::Version),
            ] {
                let req = RangeRequest {
                    key: Bytes::from_static(b"k"),
                    range_end: Bytes::from_static(b"l"),
                    limit,
                    sort_order: order,
                    sort_target: target,
                    ..Default::default()
                };
                let plan = MergePlan::new(&req);
                // One "store" answer computed by the merge itself over a single part that holds
                // everything, against a split into two parts answered per shard.
                let answer = |part: &[KeyValue]| {
                    let sub = &plan.shard_request;
                    let mut kvs = part.to_vec();
                    if sub.sort_order != SortOrder::None || sub.sort_target != SortTarget::Key {
                        let single = MergePlan::new(sub);
                        return single.merge(vec![RangeResponse {
                            kvs,
                            more: false,
                            count: part.len() as i64,
                        }]);
                    }
                    let count = kvs.len() as i64;
                    let mut more = false;
                    if sub.limit > 0 && kvs.len() > sub.limit as usize {
                        kvs.truncate(sub.limit as usize);
                        more = true;
                    }
                    RangeResponse { kvs, more, count }
                };
                let whole = plan.merge(vec![answer(&all)]);
                let (even, odd): (Vec<_>, Vec<_>) = all
                    .iter()
                    .cloned()
                    .enumerate()
                    .partition(|(i, _)| i % 2 == 0);
                let even: Vec<_> = even.into_iter().map(|(_, k)| k).collect();
                let odd: Vec<_> = odd.into_iter().map(|(_, k)| k).collect();
                let split = plan.merge(vec![answer(&even), answer(&odd)]);
                assert_eq!(
                    whole, split,
                    "limit {limit} order {order:?} target {target:?}"
                );
                assert_eq!(whole.count, 10);
                if limit > 0 && limit < 10 {
                    assert!(whole.more);
                    assert_eq!(whole.kvs.len(), limit as usize);
                }
            }
        }
    }
}
