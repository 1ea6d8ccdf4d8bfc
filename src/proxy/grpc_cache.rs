//! The gRPC proxy's range cache, as etcd's `grpcproxy/cache`: answers to serializable ranges,
//! keyed by the whole request (and the caller's auth token, so one user's answer is never
//! served to another), bounded in entries and bytes with least-recently-used eviction.
//!
//! Like etcd's, the cache is kept current only by what passes through the proxy: a put,
//! delete or txn through the proxy drops every cached range it touches (ranges at a fixed
//! revision are immutable and never dropped that way), a compaction through the proxy makes
//! ranges below the compacted revision fail as compacted. Writes made directly to the cluster
//! are not seen: a serializable read through the proxy may be stale until the entry is evicted
//! or a write through the proxy touches it, which serializable reads allow.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use proto::etcdserverpb::{RangeRequest, RangeResponse};

/// Entries kept at most (etcd's `DefaultMaxEntries`).
pub const CACHE_ENTRIES_MAX: usize = 2048;
/// Bytes of cached answers kept at most; beyond it the least recently used go first.
pub const CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

struct Entry {
    response: RangeResponse,
    bytes: usize,
    /// Position in the LRU order.
    tick: u64,
    /// The key interval the entry depends on; `None` for ranges at a fixed revision.
    interval: Option<(Vec<u8>, Vec<u8>)>,
}

/// Why a cached range cannot be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum CacheMiss {
    /// Not cached: ask the cluster.
    Absent,
    /// The requested revision is below a compaction seen through the proxy.
    Compacted,
}

#[derive(Default)]
pub struct RangeCache {
    entries: HashMap<Vec<u8>, Entry>,
    lru: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    bytes: usize,
    compacted_revision: i64,
    pub hits: u64,
    pub misses: u64,
}

/// The cache key of a request: its encoding with `serializable` set (a linearizable answer is
/// cached as a serializable one, as etcd does), then the auth token.
fn cache_key(token: &str, request: &RangeRequest) -> Vec<u8> {
    let mut r = request.clone();
    r.serializable = true;
    let mut key = r.encode_to_vec();
    key.push(0xff);
    key.extend_from_slice(token.as_bytes());
    key
}

/// Whether the key interval `[a_start, a_end)` meets `[b_start, b_end)`. An empty end is the
/// single key; an end of `\0` is "to the end of the keyspace".
fn intersects(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    fn upper(start: &[u8], end: &[u8]) -> Option<Vec<u8>> {
        match end {
            [] => {
                let mut e = start.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        }
    }
    let a_upper = upper(a_start, a_end);
    let b_upper = upper(b_start, b_end);
    let below = |start: &[u8], upper: &Option<Vec<u8>>| match upper {
        Some(u) => start < u.as_slice(),
        None => true,
    };
    below(b_start, &a_upper) && below(a_start, &b_upper)
}

impl RangeCache {
    pub fn new() -> RangeCache {
        RangeCache {
            compacted_revision: -1,
            ..Default::default()
        }
    }

    /// Cached answers.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The cached answer to `request` by the holder of `token`.
    pub fn get(&mut self, token: &str, request: &RangeRequest) -> Result<RangeResponse, CacheMiss> {
        let key = cache_key(token, request);
        if request.revision > 0 && request.revision < self.compacted_revision {
            self.remove(&key);
            self.hits += 1;
            return Err(CacheMiss::Compacted);
        }
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                e.tick = tick;
                self.lru.insert(tick, key);
                self.hits += 1;
                Ok(e.response.clone())
            }
            None => {
                self.misses += 1;
                Err(CacheMiss::Absent)
            }
        }
    }

    /// Caches the answer to `request`.
    pub fn add(&mut self, token: &str, request: &RangeRequest, response: &RangeResponse) {
        if request.revision != 0 && request.revision <= self.compacted_revision {
            return;
        }
        let key = cache_key(token, request);
        let bytes = key.len() + response.encoded_len();
        if bytes > CACHE_BYTES_MAX / 16 {
            // One answer may not take a large share of the cache.
            return;
        }
        self.remove(&key);
        self.tick += 1;
        let interval =
            (request.revision == 0).then(|| (request.key.to_vec(), request.range_end.to_vec()));
        self.lru.insert(self.tick, key.clone());
        self.bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                response: response.clone(),
                bytes,
                tick: self.tick,
                interval,
            },
        );
        while self.entries.len() > CACHE_ENTRIES_MAX || self.bytes > CACHE_BYTES_MAX {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    /// Drops every current-revision entry whose keys meet `[key, range_end)`.
    pub fn invalidate(&mut self, key: &[u8], range_end: &[u8]) {
        let stale: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.interval
                    .as_ref()
                    .is_some_and(|(k, end)| intersects(k, end, key, range_end))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.remove(&k);
        }
    }

    /// Records a compaction at `revision`.
    pub fn compact(&mut self, revision: i64) {
        self.compacted_revision = self.compacted_revision.max(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::mvccpb::KeyValue;

    fn range(key: &str, end: &str, revision: i64) -> RangeRequest {
        RangeRequest {
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
            revision,
            serializable: true,
            ..Default::default()
        }
    }

    fn answer(value: &str) -> RangeResponse {
        RangeResponse {
            kvs: vec![KeyValue {
                key: b"k".to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            }],
            count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn hit_after_add_and_linearizable_cached_as_serializable() {
        let mut c = RangeCache::new();
        let mut linearizable = range("k", "", 0);
        linearizable.serializable = false;
        assert_eq!(c.get("", &range("k", "", 0)), Err(CacheMiss::Absent));
        c.add("", &linearizable, &answer("v1"));
        assert_eq!(c.get("", &range("k", "", 0)).unwrap(), answer("v1"));
        assert_eq!((c.hits, c.misses), (1, 1));
    }

    #[test]
    fn tokens_do_not_share_answers() {
        let mut c = RangeCache::new();
        c.add("alice", &range("k", "", 0), &answer("v"));
        assert_eq!(c.get("bob", &range("k", "", 0)), Err(CacheMiss::Absent));
        assert!(c.get("alice", &range("k", "", 0)).is_ok());
    }

    #[test]
    fn writes_drop_the_ranges_they_touch_only() {
        let mut c = RangeCache::new();
        c.add("", &range("a", "c", 0), &answer("ab"));
        c.add("", &range("x", "", 0), &answer("x"));
        c.add("", &range("", "\0", 0), &answer("all"));
        c.add("", &range("b", "", 5), &answer("b@5"));
        c.invalidate(b"b", b"");
        assert_eq!(c.get("", &range("a", "c", 0)), Err(CacheMiss::Absent));
        assert_eq!(c.get("", &range("", "\0", 0)), Err(CacheMiss::Absent));
        assert!(c.get("", &range("x", "", 0)).is_ok(), "x is outside [b]");
        assert!(
            c.get("", &range("b", "", 5)).is_ok(),
            "fixed revisions never change"
        );
        c.invalidate(b"w", b"y");
        assert_eq!(c.get("", &range("x", "", 0)), Err(CacheMiss::Absent));
    }

    #[test]
    fn compaction_refuses_older_revisions() {
        let mut c = RangeCache::new();
        c.add("", &range("k", "", 3), &answer("old"));
        c.compact(10);
        assert_eq!(c.get("", &range("k", "", 3)), Err(CacheMiss::Compacted));
        c.add("", &range("k", "", 4), &answer("old"));
        assert_eq!(c.entries(), 0, "below the compaction nothing is cached");
    }

    #[test]
    fn bounded_by_entries_with_lru_eviction() {
        let mut c = RangeCache::new();
        for i in 0..CACHE_ENTRIES_MAX + 10 {
            c.add("", &range(&format!("k{i}"), "", 0), &answer("v"));
            if i == 20 {
                // Touch k0 so it is more recent than k1..k20.
                assert!(c.get("", &range("k0", "", 0)).is_ok());
            }
        }
        assert_eq!(c.entries(), CACHE_ENTRIES_MAX);
        assert!(
            c.get("", &range("k0", "", 0)).is_ok(),
            "recently used survives"
        );
        assert_eq!(c.get("", &range("k1", "", 0)), Err(CacheMiss::Absent));
    }

    #[test]
    fn interval_rules() {
        assert!(intersects(b"a", b"", b"a", b""));
        assert!(!intersects(b"a", b"", b"b", b""));
        assert!(intersects(b"a", b"c", b"b", b""));
        assert!(!intersects(b"a", b"c", b"c", b""));
        assert!(intersects(b"a", b"\0", b"zzz", b""));
        assert!(!intersects(b"b", b"\0", b"a", b""));
    }
}
