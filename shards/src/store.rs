//! The MVCC index of one shard: every key's history, ranges at a revision, txns, compaction and hash.
//!
//! The store is pure and synchronous: the caller hands it revisions, it never reads a clock,
//! draws a random number or does I/O. What it produces (responses, events) is plain data.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::types::*;

/// One version of a key, or a tombstone when `value` is `None`.
///
/// Kept at 48 bytes: this struct is paid once per version, so it is the main term of the
/// memory per key. `sub` and `version` are 32-bit for that reason; the asserts in
/// `MvccStore::put` and `apply_event` keep them honest.
#[derive(Clone, Debug)]
struct Entry {
    main: i64,
    create_revision: i64,
    lease: i64,
    /// `Arc<[u8]>` rather than `Bytes`: 16 bytes instead of 32 per version, and still shared
    /// (not copied) with every response that reads it.
    value: Option<Arc<[u8]>>,
    sub: u32,
    version: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

/// The estimated cost of one key in the map beyond its bytes: a B-tree slot (two boxed slices)
/// at the typical two-thirds node fill.
const KEY_OVERHEAD_BYTES: usize = 48;
/// The `Arc` header in front of every stored value.
const VALUE_HEADER_BYTES: usize = 16;

impl Entry {
    fn tombstone(main: i64, sub: u32) -> Entry {
        Entry {
            main,
            create_revision: 0,
            lease: 0,
            value: None,
            sub,
            version: 0,
        }
    }

    fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    fn value_bytes(&self) -> Bytes {
        match &self.value {
            Some(value) if !value.is_empty() => Bytes::from_owner(Arc::clone(value)),
            _ => Bytes::new(),
        }
    }

    fn value_slice(&self) -> &[u8] {
        self.value.as_deref().unwrap_or(&[])
    }

    fn key_value(&self, key: &[u8], with_value: bool) -> KeyValue {
        self.key_value_shared(&Bytes::copy_from_slice(key), with_value)
    }

    /// `key_value` with a key the caller already holds as `Bytes` (shared, not copied).
    fn key_value_shared(&self, key: &Bytes, with_value: bool) -> KeyValue {
        if self.is_tombstone() {
            return KeyValue {
                key: key.clone(),
                mod_revision: self.main,
                ..KeyValue::default()
            };
        }
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.main,
            version: i64::from(self.version),
            value: if with_value {
                self.value_bytes()
            } else {
                Bytes::new()
            },
            lease: self.lease,
        }
    }

    fn revision(&self) -> (i64, u32) {
        (self.main, self.sub)
    }

    fn footprint(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self
                .value
                .as_ref()
                .map_or(0, |value| value.len() + VALUE_HEADER_BYTES)
    }
}

/// Appends a version to a key's history.
fn push_version(entries: &mut Box<[Entry]>, entry: Entry) {
    let last = entries.last().expect("a key in the map has a history");
    assert!(
        last.revision() < entry.revision(),
        "revisions of a key only grow"
    );
    let mut grown = std::mem::take(entries).into_vec();
    // Exact growth keeps the common short histories tight; long ones grow geometrically so
    // that a hot key does not copy its history on every write.
    if grown.len() < 8 {
        grown.reserve_exact(1);
    }
    grown.push(entry);
    *entries = grown.into_boxed_slice();
}

/// The newest entry of `entries` at or below `revision`, if it is a live version.
fn live_at(entries: &[Entry], revision: i64) -> Option<&Entry> {
    let index = entries.partition_point(|entry| entry.main <= revision);
    let entry = entries.get(index.checked_sub(1)?)?;
    (!entry.is_tombstone()).then_some(entry)
}

fn newest_live(entries: &[Entry]) -> Option<&Entry> {
    entries.last().filter(|entry| !entry.is_tombstone())
}

/// A key range as B-tree bounds.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// etcd's key-range rules: an empty `range_end` is the single key, `"\0"` is every key from
/// `key` on (so `key = "\0"` with it is every key), anything else is `[key, range_end)`.
pub(crate) fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        return Some((Bound::Included(key), Bound::Included(key)));
    }
    if range_end == b"\0" {
        return Some((Bound::Included(key), Bound::Unbounded));
    }
    // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
    if range_end <= key {
        return None;
    }
    Some((Bound::Included(key), Bound::Excluded(range_end)))
}

/// True when `key` lies in etcd's range `[key_start, range_end)` (same rules as `key_bounds`).
pub fn key_in_range(key: &[u8], key_start: &[u8], range_end: &[u8]) -> bool {
    match key_bounds(key_start, range_end) {
        None => false,
        Some((_, Bound::Included(single))) => key == single,
        Some((_, Bound::Unbounded)) => key >= key_start,
        Some((_, Bound::Excluded(end))) => key >= key_start && key < end,
    }
}

/// The outcome of one compare on one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareOutcome {
    /// Some live key of the compare's range lives in this shard.
    pub keys_found: bool,
    /// Every live key of the range in this shard satisfies the compare (true when none).
    pub all_true: bool,
}

/// A whole txn's result inside one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    pub response: TxnResponse,
    /// Ordered by sub-revision, each with prev_kv when the key existed.
    pub events: Vec<Event>,
    /// False when the taken branch wrote nothing: the store is unchanged and `main` unused.
    pub wrote: bool,
}

fn compare_fields(
    c: &Compare,
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
    value: &[u8],
) -> bool {
    let ordering = match &c.target {
        CompareTarget::Version(operand) => version.cmp(operand),
        CompareTarget::Create(operand) => create.cmp(operand),
        CompareTarget::Mod(operand) => modified.cmp(operand),
        CompareTarget::Lease(operand) => lease.cmp(operand),
        CompareTarget::Value(operand) => value.cmp(operand.as_ref()),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// The global result of a compare from every shard's outcome, by etcd's rule: with no key in
/// the range the compare runs against an empty KeyValue, except that a Value compare is then
/// false; otherwise every key in the range must satisfy it.
pub fn combine_compare(c: &Compare, outcomes: &[CompareOutcome]) -> bool {
    if outcomes.iter().any(|outcome| outcome.keys_found) {
        return outcomes.iter().all(|outcome| outcome.all_true);
    }
    if matches!(c.target, CompareTarget::Value(_)) {
        return false;
    }
    compare_fields(c, 0, 0, 0, 0, &[])
}

/// The bookkeeping of one recorded version, as a segment record carries it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Version {
    pub main: i64,
    pub sub: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One key with its history, as the map holds them.
type KeyHistory<'a> = (&'a Box<[u8]>, &'a Box<[Entry]>);

/// The keys of one range with their histories, in key order.
enum KeyIter<'a> {
    Single(Option<KeyHistory<'a>>),
    Range(std::collections::btree_map::Range<'a, Box<[u8]>, Box<[Entry]>>),
}

impl<'a> Iterator for KeyIter<'a> {
    type Item = KeyHistory<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            KeyIter::Single(item) => item.take(),
            KeyIter::Range(range) => range.next(),
        }
    }
}

/// What a txn has changed so far, so that a failure half-way can put the store back.
struct Undo {
    /// Each touched key with the number of entries it had before (`None`: it did not exist).
    keys: Vec<(Box<[u8]>, Option<usize>)>,
    last_revision: i64,
    live_keys: usize,
    approximate_bytes: usize,
}

/// One shard's keyspace with its full (uncompacted) history.
///
/// Lives on the core that owns the shard; it is `Send` so it can be built elsewhere (recovery)
/// and moved there.
#[derive(Debug, Default)]
pub struct MvccStore {
    /// Boxed slices, not `String`/`Vec`/`Bytes`: the B-tree slot is paid per key and a node is
    /// often only half full, so every byte of slot costs about two.
    keys: BTreeMap<Box<[u8]>, Box<[Entry]>>,
    last_revision: i64,
    compact_revision: i64,
    /// The next key whose history still holds versions that compaction made unreachable.
    /// Reads already ignore them; trimming is incremental so a compaction never pauses a core
    /// for the whole keyspace.
    compaction_cursor: Option<Box<[u8]>>,
    live_keys: usize,
    approximate_bytes: usize,
}

impl MvccStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Newest main revision this shard has applied a write at (0 if none).
    pub fn last_revision(&self) -> i64 {
        self.last_revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Live keys at the newest revision.
    pub fn key_count(&self) -> usize {
        self.live_keys
    }

    /// An estimate of the memory the shard holds, for dbSize reporting.
    pub fn approximate_bytes(&self) -> usize {
        self.approximate_bytes
    }

    fn range_iter<'a>(&'a self, key: &'a [u8], range_end: &'a [u8]) -> KeyIter<'a> {
        if range_end.is_empty() {
            // One lookup instead of the two bound searches a B-tree range costs.
            return KeyIter::Single(self.keys.get_key_value(key));
        }
        match key_bounds(key, range_end) {
            Some(bounds) => KeyIter::Range(self.keys.range::<[u8], _>(bounds)),
            None => KeyIter::Single(None),
        }
    }

    /// Range as of `revision` (0 or less means the newest state). The caller has already
    /// rejected future revisions; this rejects compacted ones.
    pub fn range(&self, req: &RangeRequest, revision: i64) -> Result<RangeResponse, MvccError> {
        if revision > 0 && revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        Ok(self.range_at(req, if revision <= 0 { i64::MAX } else { revision }))
    }

    fn range_at(&self, req: &RangeRequest, revision: i64) -> RangeResponse {
        let live = self
            .range_iter(&req.key, &req.range_end)
            .filter_map(|(key, entries)| live_at(entries, revision).map(|entry| (key, entry)));
        if req.count_only {
            return RangeResponse {
                kvs: Vec::new(),
                more: false,
                count: live.count() as i64,
            };
        }
        let limit = usize::try_from(req.limit).ok().filter(|&limit| limit > 0);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let order = effective_sort_order(req);
        let with_value = !req.keys_only;

        if !filtered && order == SortOrder::None {
            let mut response = RangeResponse::default();
            for (key, entry) in live {
                response.count += 1;
                if limit.is_none_or(|limit| response.kvs.len() < limit) {
                    response.kvs.push(entry.key_value(key, with_value));
                } else {
                    response.more = true;
                }
            }
            return response;
        }

        // etcd counts before filtering and sorting, then filters, sorts and cuts at limit.
        let mut count = 0i64;
        let mut selected: Vec<(&[u8], &Entry)> = live
            .map(|(key, entry)| (&**key, entry))
            .inspect(|_| count += 1)
            .filter(|(_, entry)| {
                (req.max_mod_revision == 0 || entry.main <= req.max_mod_revision)
                    && (req.min_mod_revision == 0 || entry.main >= req.min_mod_revision)
                    && (req.max_create_revision == 0
                        || entry.create_revision <= req.max_create_revision)
                    && (req.min_create_revision == 0
                        || entry.create_revision >= req.min_create_revision)
            })
            .collect();
        sort_selected(&mut selected, order, req.sort_target);
        let more = limit.is_some_and(|limit| selected.len() > limit);
        if let Some(limit) = limit {
            selected.truncate(limit);
        }
        RangeResponse {
            kvs: selected
                .into_iter()
                .map(|(key, entry)| entry.key_value(key, with_value))
                .collect(),
            more,
            count,
        }
    }

    /// The checks every write makes: revisions only grow, and never reach into compacted
    /// history.
    fn check_write(&self, main: i64) {
        assert!(
            main >= self.last_revision,
            "write at revision {main} after {}",
            self.last_revision
        );
        assert!(
            main > self.compact_revision,
            "write at revision {main} at or below compaction"
        );
    }

    fn push_entry(&mut self, key: &[u8], entry: Entry) {
        self.check_write(entry.main);
        let new_live = !entry.is_tombstone();
        self.approximate_bytes += entry.footprint();
        self.last_revision = entry.main;
        match self.keys.get_mut(key) {
            Some(entries) => {
                let was_live = !entries
                    .last()
                    .expect("a key in the map has a history")
                    .is_tombstone();
                push_version(entries, entry);
                match (was_live, new_live) {
                    (false, true) => self.live_keys += 1,
                    (true, false) => self.live_keys -= 1,
                    _ => {}
                }
            }
            None => {
                // Writes never delete an absent key; a lone tombstone only comes from restoring
                // one that a compaction at its revision kept (see `restore_version`).
                self.approximate_bytes += key.len() + KEY_OVERHEAD_BYTES;
                self.keys.insert(key.into(), vec![entry].into_boxed_slice());
                if new_live {
                    self.live_keys += 1;
                }
            }
        }
    }

    /// Put `req` at (main, sub).
    ///
    /// One B-tree search for a key that exists (its history is found once and grown in place),
    /// two for a new key: the search is the main cost of a put in a large store, since every
    /// comparison follows a boxed key.
    pub fn put(
        &mut self,
        main: i64,
        sub: i64,
        req: &PutRequest,
    ) -> Result<(PutResponse, Event), MvccError> {
        let sub = u32::try_from(sub).expect("sub-revision fits in 32 bits");
        self.check_write(main);
        let history = self.keys.get_mut(req.key.as_ref());
        let previous = history
            .as_deref()
            .and_then(|entries| newest_live(entries))
            .cloned();
        if (req.ignore_value || req.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = match &previous {
            Some(previous) if req.ignore_value => {
                previous.value.clone().expect("a live entry has a value")
            }
            _ => Arc::from(req.value.as_ref()),
        };
        let lease = match &previous {
            Some(previous) if req.ignore_lease => previous.lease,
            _ => req.lease,
        };
        let entry = Entry {
            main,
            create_revision: previous
                .as_ref()
                .map_or(main, |previous| previous.create_revision),
            lease,
            value: Some(value),
            sub,
            version: previous.as_ref().map_or(1, |previous| {
                previous
                    .version
                    .checked_add(1)
                    .expect("version of a key fits in 32 bits")
            }),
        };
        // One copy of the key for the event's two key-values. A copy, not the request's bytes:
        // those are a slice of the whole raft entry, which a key kept by a lease would pin.
        let key = Bytes::copy_from_slice(&req.key);
        let kv = entry.key_value_shared(&key, true);
        let prev_kv = previous
            .as_ref()
            .map(|previous| previous.key_value_shared(&key, true));
        self.approximate_bytes += entry.footprint();
        self.last_revision = main;
        match history {
            Some(entries) => {
                // A key with a history but no live version (deleted) comes back to life.
                if previous.is_none() {
                    self.live_keys += 1;
                }
                push_version(entries, entry);
            }
            None => {
                self.approximate_bytes += req.key.len() + KEY_OVERHEAD_BYTES;
                self.keys
                    .insert(req.key.as_ref().into(), vec![entry].into_boxed_slice());
                self.live_keys += 1;
            }
        }
        let response = PutResponse {
            prev_kv: if req.prev_kv { prev_kv.clone() } else { None },
        };
        Ok((
            response,
            Event {
                kind: EventKind::Put,
                kv,
                prev_kv,
                sub_revision: i64::from(sub),
            },
        ))
    }

    /// Puts several keys at one main revision, each at its own sub-revision: one shard's share
    /// of a multi-shard txn, applied as one step instead of one message per put. Every put is
    /// checked against the state before the first one is written, so it writes all or nothing
    /// (the keys are distinct: etcd's request validation refuses a txn that puts a key twice).
    /// Answers in the order of `puts`.
    pub fn put_many(
        &mut self,
        main: i64,
        puts: &[(i64, PutRequest)],
    ) -> Result<Vec<(PutResponse, Event)>, MvccError> {
        if puts
            .iter()
            .any(|(_, put)| (put.ignore_value || put.ignore_lease) && !self.is_live(&put.key))
        {
            return Err(MvccError::KeyNotFound);
        }
        let mut out = Vec::with_capacity(puts.len());
        for (sub, put) in puts {
            out.push(self.put(main, *sub, put)?);
        }
        Ok(out)
    }

    /// Delete every live key in the range at (main, first_sub), (main, first_sub + 1), ... in key
    /// order. Deleting nothing changes nothing.
    pub fn delete_range(
        &mut self,
        main: i64,
        first_sub: i64,
        req: &DeleteRangeRequest,
    ) -> (DeleteRangeResponse, Vec<Event>) {
        let doomed: Vec<(Box<[u8]>, Entry)> = self
            .range_iter(&req.key, &req.range_end)
            .filter_map(|(key, entries)| {
                newest_live(entries).map(|entry| (key.clone(), entry.clone()))
            })
            .collect();
        let mut response = DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: Vec::new(),
        };
        let mut events = Vec::with_capacity(doomed.len());
        for (offset, (key, previous)) in doomed.into_iter().enumerate() {
            let sub =
                u32::try_from(first_sub + offset as i64).expect("sub-revision fits in 32 bits");
            let tombstone = Entry::tombstone(main, sub);
            let kv = tombstone.key_value(&key, false);
            self.push_entry(&key, tombstone);
            let prev_kv = previous.key_value(&key, true);
            if req.prev_kv {
                response.prev_kvs.push(prev_kv.clone());
            }
            events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(prev_kv),
                sub_revision: i64::from(sub),
            });
        }
        (response, events)
    }

    /// Evaluate one compare on the newest state of this shard's keys in the compare's range.
    pub fn compare(&self, c: &Compare) -> CompareOutcome {
        let mut outcome = CompareOutcome {
            keys_found: false,
            all_true: true,
        };
        for (_, entries) in self.range_iter(&c.key, &c.range_end) {
            if let Some(entry) = newest_live(entries) {
                outcome.keys_found = true;
                let holds = compare_fields(
                    c,
                    entry.create_revision,
                    entry.main,
                    i64::from(entry.version),
                    entry.lease,
                    entry.value_slice(),
                );
                if !holds {
                    outcome.all_true = false;
                    break;
                }
            }
        }
        outcome
    }

    fn is_live(&self, key: &[u8]) -> bool {
        self.keys
            .get(key)
            .and_then(|entries| newest_live(entries))
            .is_some()
    }

    fn compares_hold(&self, compares: &[Compare]) -> bool {
        compares
            .iter()
            .all(|c| combine_compare(c, &[self.compare(c)]))
    }

    /// Every compare of the txn and of the nested txns on the taken path, evaluated up front on
    /// the pre-txn state, depth first (etcd's `compareToPath`).
    fn txn_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = self.compares_hold(&req.compare);
        path.push(succeeded);
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            if let RequestOp::Txn(nested) = op {
                self.txn_path(nested, path);
            }
        }
    }

    /// etcd's `checkRequests` with `checkPut` then `checkRange`, on the pre-txn state.
    fn txn_check(
        &self,
        main: i64,
        req: &TxnRequest,
        path: &[bool],
        check_ranges: bool,
    ) -> Result<(), MvccError> {
        let mut position = 0;
        self.txn_check_at(main, req, path, &mut position, check_ranges)
    }

    fn txn_check_at(
        &self,
        main: i64,
        req: &TxnRequest,
        path: &[bool],
        position: &mut usize,
        check_ranges: bool,
    ) -> Result<(), MvccError> {
        let succeeded = path[*position];
        *position += 1;
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            match op {
                RequestOp::Put(put)
                    if !check_ranges
                        && (put.ignore_value || put.ignore_lease)
                        && !self.is_live(&put.key) =>
                {
                    return Err(MvccError::KeyNotFound);
                }
                RequestOp::Range(range) if check_ranges && range.revision != 0 => {
                    if range.revision > main - 1 {
                        return Err(MvccError::FutureRevision);
                    }
                    if range.revision < self.compact_revision {
                        return Err(MvccError::Compacted);
                    }
                }
                RequestOp::Txn(nested) => {
                    self.txn_check_at(main, nested, path, position, check_ranges)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Run a whole txn inside this shard at main revision `main` (the current global revision
    /// plus one), sub-revisions from 0.
    pub fn txn(&mut self, main: i64, req: &TxnRequest) -> Result<TxnOutcome, MvccError> {
        let mut path = Vec::new();
        self.txn_path(req, &mut path);
        self.txn_check(main, req, &path, false)?;
        self.txn_check(main, req, &path, true)?;
        let mut undo = Undo {
            keys: Vec::new(),
            last_revision: self.last_revision,
            live_keys: self.live_keys,
            approximate_bytes: self.approximate_bytes,
        };
        let mut events = Vec::new();
        let mut position = 0;
        match self.txn_apply(main, req, &path, &mut position, &mut events, &mut undo) {
            Ok(response) => {
                let wrote = !events.is_empty();
                Ok(TxnOutcome {
                    response,
                    events,
                    wrote,
                })
            }
            Err(error) => {
                self.rollback(undo);
                Err(error)
            }
        }
    }

    fn txn_apply(
        &mut self,
        main: i64,
        req: &TxnRequest,
        path: &[bool],
        position: &mut usize,
        events: &mut Vec<Event>,
        undo: &mut Undo,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*position];
        *position += 1;
        let mut responses = Vec::new();
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            let response = match op {
                RequestOp::Range(range) => {
                    let revision = if range.revision == 0 {
                        i64::MAX
                    } else {
                        range.revision
                    };
                    ResponseOp::Range(self.range_at(range, revision))
                }
                RequestOp::Put(put) => {
                    self.remember(&put.key, undo);
                    // Only a put after a delete of the same key in one txn can fail here, and
                    // etcd's request validation rejects such txns before they reach a shard.
                    let (response, event) = self.put(main, events.len() as i64, put)?;
                    events.push(event);
                    ResponseOp::Put(response)
                }
                RequestOp::DeleteRange(delete) => {
                    for (key, entries) in self.range_iter(&delete.key, &delete.range_end) {
                        if newest_live(entries).is_some() {
                            undo.keys.push((key.clone(), Some(entries.len())));
                        }
                    }
                    let (response, deleted) = self.delete_range(main, events.len() as i64, delete);
                    events.extend(deleted);
                    ResponseOp::DeleteRange(response)
                }
                RequestOp::Txn(nested) => {
                    ResponseOp::Txn(self.txn_apply(main, nested, path, position, events, undo)?)
                }
            };
            responses.push(response);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn remember(&self, key: &[u8], undo: &mut Undo) {
        undo.keys
            .push((key.into(), self.keys.get(key).map(|entries| entries.len())));
    }

    fn rollback(&mut self, undo: Undo) {
        // Newest changes first, so that a key touched twice ends at its oldest saved length.
        for (key, length) in undo.keys.into_iter().rev() {
            match length {
                None => {
                    self.keys.remove(&key);
                }
                Some(length) => {
                    let entries = self
                        .keys
                        .get_mut(&key)
                        .expect("a remembered key still exists");
                    let mut kept = std::mem::take(entries).into_vec();
                    kept.truncate(length);
                    *entries = kept.into_boxed_slice();
                }
            }
        }
        self.last_revision = undo.last_revision;
        self.live_keys = undo.live_keys;
        self.approximate_bytes = undo.approximate_bytes;
    }

    /// Compact at `revision`: every version that no read at or above `revision` can see is
    /// dropped, as are tombstones at or below it (and keys left with nothing). Compacting at or
    /// below the current compact revision does nothing, so a replayed compaction is harmless.
    pub fn compact(&mut self, revision: i64) {
        self.start_compaction(revision);
        while self.compaction_step(usize::MAX) {}
    }

    /// Make `revision` the compact revision at once (reads below it fail from now on), and
    /// leave the memory to be reclaimed by `compaction_step`.
    pub fn start_compaction(&mut self, revision: i64) {
        if revision <= self.compact_revision {
            return;
        }
        self.compact_revision = revision;
        // A newer compaction subsumes a running one: start over from the first key.
        self.compaction_cursor = Some(Box::default());
    }

    /// Reclaim the versions the compaction made unreachable in at most `max_keys` keys.
    /// Returns true while work is left. Bounded so that a core never pauses for the whole
    /// keyspace; observable state (ranges, history, hash) does not depend on its progress.
    pub fn compaction_step(&mut self, max_keys: usize) -> bool {
        let Some(cursor) = self.compaction_cursor.take() else {
            return false;
        };
        let revision = self.compact_revision;
        let mut emptied = Vec::new();
        let mut next = None;
        let mut freed = 0usize;
        for (visited, (key, entries)) in self
            .keys
            .range_mut::<[u8], _>((Bound::Included(&*cursor), Bound::Unbounded))
            .enumerate()
        {
            if visited == max_keys {
                next = Some(key.clone());
                break;
            }
            let below = entries.partition_point(|entry| entry.main <= revision);
            if below == 0 {
                continue;
            }
            let newest = &entries[below - 1];
            let dropped = if newest.is_tombstone() && newest.main < revision {
                below
            } else {
                below - 1
            };
            if dropped == 0 {
                continue;
            }
            freed += entries[..dropped]
                .iter()
                .map(Entry::footprint)
                .sum::<usize>();
            *entries = entries[dropped..].to_vec().into_boxed_slice();
            if entries.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            freed += key.len() + KEY_OVERHEAD_BYTES;
            self.keys.remove(&key);
        }
        self.approximate_bytes -= freed;
        self.compaction_cursor = next;
        self.compaction_cursor.is_some()
    }

    /// True when a read at or above the compact revision, or history after it, can still see
    /// the version of `key` at (main, sub). Used to drop compacted records from segments.
    pub fn is_retained(&self, key: &[u8], main: i64, sub: i64) -> bool {
        let Some(entries) = self.keys.get(key) else {
            return false;
        };
        let Ok(index) =
            entries.binary_search_by(|entry| (entry.main, i64::from(entry.sub)).cmp(&(main, sub)))
        else {
            return false;
        };
        self.visible_after_compaction(entries, index)
    }

    fn visible_after_compaction(&self, entries: &[Entry], index: usize) -> bool {
        let entry = &entries[index];
        if entry.main > self.compact_revision {
            return true;
        }
        let newest_at_compaction =
            entries.partition_point(|entry| entry.main <= self.compact_revision) - 1;
        // etcd (since 3.5.15) keeps a tombstone that sits exactly at the compact revision, so
        // a watch from that revision still sees the delete; the next compaction drops it.
        index == newest_at_compaction
            && (!entry.is_tombstone() || entry.main == self.compact_revision)
    }

    /// All events with from <= mod_revision <= to for keys in [key, range_end), ordered by
    /// (revision, sub-revision), each with prev_kv when the key existed before.
    ///
    /// `from` below the compact revision is compacted history. From the compact revision
    /// itself, as etcd serves a watch: each key's version that survived compaction there (a
    /// tombstone does not), without prev_kv (the revision before it is compacted).
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<Event>, MvccError> {
        let from = from.max(1);
        let compact = self.compact_revision;
        if from < compact {
            return Err(MvccError::Compacted);
        }
        let mut events = Vec::new();
        for (key, entries) in self.range_iter(key, range_end) {
            let start = entries.partition_point(|entry| entry.main < from);
            for index in start..entries.len() {
                let entry = &entries[index];
                if entry.main > to {
                    break;
                }
                if entry.main <= compact && !self.visible_after_compaction(entries, index) {
                    continue;
                }
                let prev_kv = index
                    .checked_sub(1)
                    .filter(|_| entry.main > compact)
                    .map(|previous| &entries[previous])
                    .filter(|previous| !previous.is_tombstone())
                    .map(|previous| previous.key_value(key, true));
                events.push(Event {
                    kind: if entry.is_tombstone() {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    kv: entry.key_value(key, true),
                    prev_kv,
                    sub_revision: i64::from(entry.sub),
                });
            }
        }
        events.sort_by_key(|event| (event.kv.mod_revision, event.sub_revision));
        Ok(events)
    }

    /// Deterministic CRC32C (Castagnoli, as etcd) over every version a read at or below
    /// `revision` can reach once compaction has finished: etcd's HashKV record stream, i.e. the
    /// bucket name "key", then for each version in (revision, sub-revision) order its 17- or
    /// 18-byte revision key and its protobuf-encoded KeyValue.
    pub fn hash_kv(&self, revision: i64) -> u32 {
        combine_hash_records(&[self.hash_records(revision)])
    }

    /// This store's part of the HashKV stream at `revision`, sorted by (revision,
    /// sub-revision): each record's CRC and length, so shards can be merged into the one
    /// stream etcd hashes (`combine_hash_records`) without shipping the bytes.
    pub fn hash_records(&self, revision: i64) -> Vec<HashRecord> {
        self.records_to_hash(revision, false)
    }

    /// This store's part of the hash etcd computes while it compacts at `revision` (and keeps,
    /// answering HashKV at exactly that revision with it afterwards): the records of a
    /// HashKV at `revision` taken before the compaction, except that a tombstone exactly at
    /// `revision` counts as kept (`current`), since the compaction keeps it; that only decides
    /// whether any record is kept at all. Call it before `compact(revision)`.
    pub fn compaction_hash_records(&self, revision: i64) -> Vec<HashRecord> {
        self.records_to_hash(revision, true)
    }

    fn records_to_hash(&self, revision: i64, tombstone_at_revision_kept: bool) -> Vec<HashRecord> {
        let compact = self.compact_revision;
        let mut records: Vec<(i64, u32, &[u8], &Entry, bool)> = Vec::new();
        for (key, entries) in &self.keys {
            let newest = entries.partition_point(|entry| entry.main <= revision);
            for (index, entry) in entries[..newest].iter().enumerate() {
                if !self.visible_after_compaction(entries, index) {
                    continue;
                }
                // etcd never hashes the tombstone a compaction at its revision keeps: older
                // etcd versions deleted it, and members of both must agree.
                if entry.main == compact && entry.is_tombstone() {
                    continue;
                }
                let current = index + 1 == newest
                    && (!entry.is_tombstone()
                        || (tombstone_at_revision_kept && entry.main == revision));
                records.push((entry.main, entry.sub, key, entry, current));
            }
        }
        records.sort_unstable_by_key(|&(main, sub, _, _, _)| (main, sub));
        let mut out = Vec::with_capacity(records.len());
        let mut buffer = Vec::with_capacity(128);
        for (main, sub, key, entry, current) in records {
            buffer.clear();
            buffer.extend_from_slice(&main.to_be_bytes());
            buffer.push(b'_');
            buffer.extend_from_slice(&i64::from(sub).to_be_bytes());
            if entry.is_tombstone() {
                buffer.push(b't');
                encode_key_value(&mut buffer, key, 0, 0, 0, &[], 0);
            } else {
                encode_key_value(
                    &mut buffer,
                    key,
                    entry.create_revision,
                    entry.main,
                    i64::from(entry.version),
                    entry.value_slice(),
                    entry.lease,
                );
            }
            out.push(HashRecord {
                main,
                sub,
                crc: crc32c::crc32c(&buffer),
                len: buffer.len() as u32,
                below_compaction: main <= compact,
                current,
            });
        }
        out
    }

    /// Apply an event as recorded (segment replay, snapshot install): the version, create
    /// revision and lease are taken as given, not recomputed, because compaction may have
    /// removed the versions they were computed from.
    pub fn apply_event(&mut self, event: &Event) {
        let kv = &event.kv;
        let tombstone = event.kind == EventKind::Delete;
        let version = Version {
            main: kv.mod_revision,
            sub: event.sub_revision,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        };
        self.restore_version(&kv.key, version, (!tombstone).then_some(kv.value.as_ref()));
    }

    /// `apply_event` without building an Event: recovery feeds archived records straight in.
    pub(crate) fn restore_version(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) {
        let sub = u32::try_from(version.sub).expect("sub-revision fits in 32 bits");
        // A tombstone may arrive for a key with no versions left: the one a compaction at its
        // very revision keeps, or one whose older versions a rewritten segment dropped for a
        // compaction that WAL replay applies again (which then drops the tombstone too).
        let entry = match value {
            None => Entry::tombstone(version.main, sub),
            Some(value) => Entry {
                main: version.main,
                create_revision: version.create_revision,
                lease: version.lease,
                value: Some(Arc::from(value)),
                sub,
                version: u32::try_from(version.version).expect("version fits in 32 bits"),
            },
        };
        self.push_entry(key, entry);
    }

    /// Every live key attached to a lease, with its lease: what the server's lease table needs
    /// after a restart from a checkpoint (attachments are not persisted separately).
    pub fn leased_keys(&self) -> Vec<(Bytes, i64)> {
        self.keys
            .iter()
            .filter_map(|(key, entries)| {
                let newest = entries.last()?;
                (!newest.is_tombstone() && newest.lease != 0)
                    .then(|| (Bytes::copy_from_slice(key), newest.lease))
            })
            .collect()
    }

    /// Every version still held, as put/delete events without prev_kv, in (revision,
    /// sub-revision) order: what a snapshot or a rewritten segment must carry. Replaying them
    /// with `apply_event` and then compacting at `compact_revision` rebuilds an equal store.
    pub fn retained_events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        for (key, entries) in &self.keys {
            for (index, entry) in entries.iter().enumerate() {
                if self.visible_after_compaction(entries, index) {
                    events.push(Event {
                        kind: if entry.is_tombstone() {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        },
                        kv: entry.key_value(key, true),
                        prev_kv: None,
                        sub_revision: i64::from(entry.sub),
                    });
                }
            }
        }
        events.sort_by_key(|event| (event.kv.mod_revision, event.sub_revision));
        events
    }
}

/// One version as a snapshot holds it: its revision, its key (an index into
/// `SnapshotView::keys`), its metadata and a shared reference to its value (`None` for a
/// tombstone). 56 bytes whatever the value's size: the value itself is never copied.
#[derive(Clone, Debug)]
pub struct SnapshotVersion {
    pub main: i64,
    pub create_revision: i64,
    pub lease: i64,
    pub value: Option<Arc<[u8]>>,
    pub sub: u32,
    pub key: u32,
    pub version: u32,
}

const _: () = assert!(std::mem::size_of::<SnapshotVersion>() == 56);

/// Every version a store retains at one instant, detached from the store: later writes and
/// compactions change the store, never the view. Values are shared with the store (and keep
/// their memory alive while the view lives); each key is copied once.
#[derive(Clone, Debug, Default)]
pub struct SnapshotView {
    /// Every key with a retained version, in key order, back to back (one allocation, not one
    /// per key: taking the view is a pause of the shard's core).
    key_bytes: Vec<u8>,
    /// Where each key ends in `key_bytes`.
    key_ends: Vec<usize>,
    /// Grouped by key in key order until `sort_by_revision` is called.
    pub versions: Vec<SnapshotVersion>,
    pub compact_revision: i64,
    pub last_revision: i64,
}

impl SnapshotView {
    /// Orders the versions by (revision, sub-revision): etcd's `key` bucket order.
    pub fn sort_by_revision(&mut self) {
        self.versions.sort_unstable_by_key(|v| (v.main, v.sub));
    }

    pub fn key(&self, version: &SnapshotVersion) -> &[u8] {
        let index = version.key as usize;
        let start = index
            .checked_sub(1)
            .map_or(0, |before| self.key_ends[before]);
        &self.key_bytes[start..self.key_ends[index]]
    }

    /// Keys with a retained version.
    pub fn key_count(&self) -> usize {
        self.key_ends.len()
    }
}

impl MvccStore {
    /// Every retained version (what `retained_events` lists), as a view that does not borrow
    /// the store. O(versions) small records plus the keys; values are shared, not copied.
    pub fn snapshot_view(&self) -> SnapshotView {
        let mut view = SnapshotView {
            key_bytes: Vec::new(),
            key_ends: Vec::new(),
            versions: Vec::new(),
            compact_revision: self.compact_revision,
            last_revision: self.last_revision,
        };
        for (key, entries) in &self.keys {
            let index = u32::try_from(view.key_ends.len()).expect("fewer than 2^32 keys per shard");
            let mut any = false;
            for (position, entry) in entries.iter().enumerate() {
                if !self.visible_after_compaction(entries, position) {
                    continue;
                }
                any = true;
                view.versions.push(SnapshotVersion {
                    main: entry.main,
                    create_revision: entry.create_revision,
                    lease: entry.lease,
                    value: entry.value.clone(),
                    sub: entry.sub,
                    key: index,
                    version: entry.version,
                });
            }
            if any {
                view.key_bytes.extend_from_slice(key);
                view.key_ends.push(view.key_bytes.len());
            }
        }
        view
    }
}

fn effective_sort_order(req: &RangeRequest) -> SortOrder {
    match (req.sort_order, req.sort_target) {
        // The index already yields key order.
        (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    }
}

/// Stable sort on the target: ties keep ascending key order in both directions, which is what
/// etcd's sort gives on the small results it sorts with insertion sort, and a total order the
/// server can merge shards with.
fn sort_selected(selected: &mut [(&[u8], &Entry)], order: SortOrder, target: SortTarget) {
    let compare = |a: &(&[u8], &Entry), b: &(&[u8], &Entry)| -> Ordering {
        match target {
            SortTarget::Key => a.0.cmp(b.0),
            SortTarget::Version => a.1.version.cmp(&b.1.version),
            SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
            SortTarget::Mod => a.1.main.cmp(&b.1.main),
            SortTarget::Value => a.1.value_slice().cmp(b.1.value_slice()),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => selected.sort_by(compare),
        SortOrder::Descend => selected.sort_by(|a, b| compare(b, a)),
    }
}

fn encode_varint(buffer: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buffer.push((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.push(value as u8);
}

/// One version's record in etcd's HashKV stream, summarised by its CRC32C and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRecord {
    pub main: i64,
    pub sub: u32,
    pub crc: u32,
    pub len: u32,
    /// At or below the compact revision (still stored: compaction kept it).
    pub below_compaction: bool,
    /// Its key's newest version at the hashed revision, and live (in a compaction's hash, also
    /// a tombstone exactly at the compacted revision, which the compaction keeps).
    pub current: bool,
}

/// etcd's HashKV over the records of every shard: CRC32C of "key" followed by every hashed
/// record in (revision, sub-revision) order, assembled with CRC combination.
///
/// etcd hashes a stored record at or below the compact revision only if a compaction at the
/// hashed revision would keep it (it is `current`), except when no record at all is current:
/// then every stored one is hashed. Records above the compact revision are always hashed.
pub fn combine_hash_records(parts: &[Vec<HashRecord>]) -> u32 {
    let any_current = parts.iter().flatten().any(|r| r.current);
    let mut all: Vec<&HashRecord> = parts
        .iter()
        .flatten()
        .filter(|r| !r.below_compaction || r.current || !any_current)
        .collect();
    all.sort_unstable_by_key(|r| (r.main, r.sub));
    all.iter().fold(crc32c::crc32c(b"key"), |crc, r| {
        crc32c::crc32c_combine(crc, r.crc, r.len as usize)
    })
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The length of `encode_key_value`'s output for the same fields, without encoding.
pub fn key_value_encoded_len(
    key: &[u8],
    create: i64,
    modified: i64,
    version: i64,
    value: &[u8],
    lease: i64,
) -> usize {
    let bytes_field = |len: usize| {
        if len == 0 {
            0
        } else {
            1 + varint_len(len as u64) + len
        }
    };
    let number_field = |number: i64| {
        if number == 0 {
            0
        } else {
            1 + varint_len(number as u64)
        }
    };
    bytes_field(key.len())
        + number_field(create)
        + number_field(modified)
        + number_field(version)
        + bytes_field(value.len())
        + number_field(lease)
}

/// mvccpb.KeyValue in protobuf wire format, zero fields omitted as proto3 does (and as etcd's
/// `key` bucket and HashKV store it).
pub fn encode_key_value(
    buffer: &mut Vec<u8>,
    key: &[u8],
    create: i64,
    modified: i64,
    version: i64,
    value: &[u8],
    lease: i64,
) {
    let bytes_field = |buffer: &mut Vec<u8>, tag: u8, bytes: &[u8]| {
        if !bytes.is_empty() {
            buffer.push(tag);
            encode_varint(buffer, bytes.len() as u64);
            buffer.extend_from_slice(bytes);
        }
    };
    bytes_field(buffer, 0x0a, key);
    for (tag, number) in [(0x10u8, create), (0x18, modified), (0x20, version)] {
        if number != 0 {
            buffer.push(tag);
            encode_varint(buffer, number as u64);
        }
    }
    bytes_field(buffer, 0x2a, value);
    if lease != 0 {
        buffer.push(0x30);
        encode_varint(buffer, lease as u64);
    }
}

#[cfg(test)]
mod snapshot_view_timing {
    use super::*;

    /// How long a shard pauses to take its snapshot view (run by hand:
    /// `cargo test --release -p shards snapshot_view_of_500k -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn snapshot_view_of_500k_keys() {
        let mut store = MvccStore::new();
        for main in 2..500_002i64 {
            let req = PutRequest {
                key: Bytes::from(format!("/registry/pods/default/pod-{main:08}")),
                value: Bytes::from(vec![b'v'; 256]),
                ..Default::default()
            };
            store.put(main, 0, &req).unwrap();
        }
        let started = std::time::Instant::now();
        let mut view = store.snapshot_view();
        let taken = started.elapsed();
        let started = std::time::Instant::now();
        view.sort_by_revision();
        println!(
            "view of {} versions: {taken:?} on the shard, sort {:?} on the snapshot thread",
            view.versions.len(),
            started.elapsed()
        );
        assert_eq!(view.versions.len(), 500_000);
    }
}
