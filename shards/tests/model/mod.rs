//! A deliberately naive reference model of one shard: a flat log of every write, replayed from
//! scratch for each question. Slow and obviously correct; the store must agree with it.

#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use shards::*;

#[derive(Clone, Debug)]
struct Write {
    main: i64,
    sub: i64,
    key: Bytes,
    /// `None` for a delete.
    put: Option<(Bytes, i64)>,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    log: Vec<Write>,
    pub compact_revision: i64,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == b"\0" {
        key >= start
    } else {
        key >= start && key < end
    }
}

fn matches(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering::*;
    let ordering = match &c.target {
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::Create(n) => kv.create_revision.cmp(n),
        CompareTarget::Mod(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
    };
    match c.result {
        CompareResult::Equal => ordering == Equal,
        CompareResult::NotEqual => ordering != Equal,
        CompareResult::Greater => ordering == Greater,
        CompareResult::Less => ordering == Less,
    }
}

impl Model {
    pub fn last_revision(&self) -> i64 {
        self.log.last().map_or(0, |write| write.main)
    }

    /// Every key's state after replaying the writes up to `revision`.
    pub fn state_at(&self, revision: i64) -> BTreeMap<Bytes, KeyValue> {
        let mut state: BTreeMap<Bytes, KeyValue> = BTreeMap::new();
        for write in self.log.iter().take_while(|write| write.main <= revision) {
            match &write.put {
                None => {
                    state.remove(&write.key);
                }
                Some((value, lease)) => {
                    let previous = state.get(&write.key);
                    let kv = KeyValue {
                        key: write.key.clone(),
                        create_revision: previous.map_or(write.main, |p| p.create_revision),
                        mod_revision: write.main,
                        version: previous.map_or(1, |p| p.version + 1),
                        value: value.clone(),
                        lease: *lease,
                    };
                    state.insert(write.key.clone(), kv);
                }
            }
        }
        state
    }

    pub fn key_count(&self) -> usize {
        self.state_at(i64::MAX).len()
    }

    pub fn range(&self, req: &RangeRequest, revision: i64) -> Result<RangeResponse, MvccError> {
        if revision > 0 && revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let revision = if revision <= 0 { i64::MAX } else { revision };
        let live: Vec<KeyValue> = self
            .state_at(revision)
            .into_values()
            .filter(|kv| in_range(&kv.key, &req.key, &req.range_end))
            .collect();
        let count = live.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: vec![],
                more: false,
                count,
            });
        }
        let mut kvs: Vec<KeyValue> = live
            .into_iter()
            .filter(|kv| req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            .filter(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            .filter(|kv| {
                req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision
            })
            .filter(|kv| {
                req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision
            })
            .collect();
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::Ascend,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        let field = |kv: &KeyValue| -> (Vec<u8>, i64) {
            match req.sort_target {
                SortTarget::Key => (kv.key.to_vec(), 0),
                SortTarget::Version => (vec![], kv.version),
                SortTarget::Create => (vec![], kv.create_revision),
                SortTarget::Mod => (vec![], kv.mod_revision),
                SortTarget::Value => (kv.value.to_vec(), 0),
            }
        };
        // Ties stay in ascending key order in both directions.
        kvs.sort_by(|a, b| match order {
            SortOrder::Descend => field(b).cmp(&field(a)),
            _ => field(a).cmp(&field(b)),
        });
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
        Ok(RangeResponse { kvs, more, count })
    }

    /// Every event ever, with prev_kv, in (revision, sub-revision) order.
    fn all_events(&self) -> Vec<Event> {
        let mut state: BTreeMap<Bytes, KeyValue> = BTreeMap::new();
        let mut events = Vec::new();
        for write in &self.log {
            let previous = state.get(&write.key).cloned();
            match &write.put {
                None => {
                    state.remove(&write.key);
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: write.key.clone(),
                            mod_revision: write.main,
                            ..Default::default()
                        },
                        prev_kv: previous,
                        sub_revision: write.sub,
                    });
                }
                Some((value, lease)) => {
                    let kv = KeyValue {
                        key: write.key.clone(),
                        create_revision: previous
                            .as_ref()
                            .map_or(write.main, |p| p.create_revision),
                        mod_revision: write.main,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        value: value.clone(),
                        lease: *lease,
                    };
                    state.insert(write.key.clone(), kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev_kv: previous,
                        sub_revision: write.sub,
                    });
                }
            }
        }
        events
    }

    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<Event>, MvccError> {
        // etcd serves a watch from the compact revision itself: what survives at it (each
        // key's live newest version), without prev_kv (the revision before is compacted).
        let compact = self.compact_revision;
        if from.max(1) < compact {
            return Err(MvccError::Compacted);
        }
        let retained = self.retained();
        Ok(self
            .all_events()
            .into_iter()
            .filter(|e| {
                in_range(&e.kv.key, key, range_end)
                    && e.kv.mod_revision >= from
                    && e.kv.mod_revision <= to
                    && (e.kv.mod_revision > compact
                        || retained.contains(&(
                            e.kv.key.clone(),
                            e.kv.mod_revision,
                            e.sub_revision,
                        )))
            })
            .map(|mut e| {
                if e.kv.mod_revision <= compact {
                    e.prev_kv = None;
                }
                e
            })
            .collect())
    }

    /// The events a compacted store must still hold: everything after the compact revision,
    /// plus each key's newest version at it when that version is live or a tombstone exactly at
    /// the compact revision (etcd keeps that one so a watch from there sees the delete).
    pub fn retained(&self) -> Vec<(Bytes, i64, i64)> {
        let compact = self.compact_revision;
        let mut newest_at_compaction: BTreeMap<Bytes, &Write> = BTreeMap::new();
        for write in self.log.iter().filter(|w| w.main <= compact) {
            newest_at_compaction.insert(write.key.clone(), write);
        }
        let mut kept: Vec<(Bytes, i64, i64)> = newest_at_compaction
            .values()
            .filter(|w| w.put.is_some() || w.main == compact)
            .map(|w| (w.key.clone(), w.main, w.sub))
            .collect();
        kept.extend(
            self.log
                .iter()
                .filter(|w| w.main > compact)
                .map(|w| (w.key.clone(), w.main, w.sub)),
        );
        kept.sort_by_key(|(_, main, sub)| (*main, *sub));
        kept
    }

    pub fn compact(&mut self, revision: i64) {
        self.compact_revision = self.compact_revision.max(revision);
    }

    pub fn compare(&self, c: &Compare) -> bool {
        let state = self.state_at(i64::MAX);
        let found: Vec<&KeyValue> = state
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        if found.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_))
                && matches(c, &KeyValue::default());
        }
        found.into_iter().all(|kv| matches(c, kv))
    }

    fn live(&self, key: &[u8]) -> Option<KeyValue> {
        self.state_at(i64::MAX).get(key).cloned()
    }

    pub fn put(
        &mut self,
        main: i64,
        sub: i64,
        req: &PutRequest,
    ) -> Result<(PutResponse, Event), MvccError> {
        let previous = self.live(&req.key);
        if (req.ignore_value || req.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = if req.ignore_value {
            previous.as_ref().unwrap().value.clone()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease {
            previous.as_ref().unwrap().lease
        } else {
            req.lease
        };
        self.log.push(Write {
            main,
            sub,
            key: req.key.clone(),
            put: Some((value, lease)),
        });
        let event = self.all_events().pop().unwrap();
        Ok((
            PutResponse {
                prev_kv: if req.prev_kv { previous } else { None },
            },
            event,
        ))
    }

    pub fn delete_range(
        &mut self,
        main: i64,
        first_sub: i64,
        req: &DeleteRangeRequest,
    ) -> (DeleteRangeResponse, Vec<Event>) {
        let doomed: Vec<KeyValue> = self
            .state_at(i64::MAX)
            .into_values()
            .filter(|kv| in_range(&kv.key, &req.key, &req.range_end))
            .collect();
        for (offset, kv) in doomed.iter().enumerate() {
            self.log.push(Write {
                main,
                sub: first_sub + offset as i64,
                key: kv.key.clone(),
                put: None,
            });
        }
        let events = self.all_events().split_off(self.log.len() - doomed.len());
        let response = DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        };
        (response, events)
    }

    fn path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            if let RequestOp::Txn(nested) = op {
                self.path(nested, path);
            }
        }
    }

    fn check(
        &self,
        main: i64,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        ranges: bool,
    ) -> Result<(), MvccError> {
        let succeeded = path[*at];
        *at += 1;
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            match op {
                RequestOp::Put(p)
                    if !ranges
                        && (p.ignore_value || p.ignore_lease)
                        && self.live(&p.key).is_none() =>
                {
                    return Err(MvccError::KeyNotFound)
                }
                RequestOp::Range(r) if ranges && r.revision > main - 1 => {
                    return Err(MvccError::FutureRevision)
                }
                RequestOp::Range(r)
                    if ranges && r.revision != 0 && r.revision < self.compact_revision =>
                {
                    return Err(MvccError::Compacted)
                }
                RequestOp::Txn(nested) => self.check(main, nested, path, at, ranges)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        main: i64,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        events: &mut Vec<Event>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*at];
        *at += 1;
        let mut responses = vec![];
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r, r.revision)?),
                RequestOp::Put(p) => {
                    let (response, event) = self.put(main, events.len() as i64, p)?;
                    events.push(event);
                    ResponseOp::Put(response)
                }
                RequestOp::DeleteRange(d) => {
                    let (response, deleted) = self.delete_range(main, events.len() as i64, d);
                    events.extend(deleted);
                    ResponseOp::DeleteRange(response)
                }
                RequestOp::Txn(nested) => {
                    ResponseOp::Txn(self.apply(main, nested, path, at, events)?)
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    pub fn txn(&mut self, main: i64, req: &TxnRequest) -> Result<TxnOutcome, MvccError> {
        let mut path = vec![];
        self.path(req, &mut path);
        self.check(main, req, &path, &mut 0, false)?;
        self.check(main, req, &path, &mut 0, true)?;
        let saved = self.clone();
        let mut events = vec![];
        match self.apply(main, req, &path, &mut 0, &mut events) {
            Ok(response) => Ok(TxnOutcome {
                wrote: !events.is_empty(),
                response,
                events,
            }),
            Err(error) => {
                *self = saved;
                Err(error)
            }
        }
    }
}
