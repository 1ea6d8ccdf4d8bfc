//! The client histories of a run and the checks over them:
//! - every member produced the same events at every revision (its watch feed), with no gap;
//! - every acknowledged write is in that history, at the revision it was answered with;
//! - every read saw exactly the state at the revision it reported;
//! - real-time order: an operation that started after another finished has a revision at
//!   least as new (strictly newer for a write). With etcd's revisions as the linearization
//!   points, these make the history linearizable.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use shards::{Event, EventKind};

#[derive(Clone, Debug)]
pub enum Op {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    Get { key: Bytes, linearizable: bool },
}

/// Fields only failure reports read (through `Debug`).
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub enum Outcome {
    Put {
        revision: i64,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    /// The value and mod revision found, at the reported store revision.
    Get {
        revision: i64,
        found: Option<(Bytes, i64)>,
    },
    /// No answer or an error: the write may or may not have happened.
    Failed(String),
}

#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct Record {
    pub client: usize,
    pub member: usize,
    pub op: Op,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

type State = BTreeMap<Bytes, (Bytes, i64)>;

/// The store at every revision, built from the agreed event history.
pub struct Model {
    states: BTreeMap<i64, State>,
    events: BTreeMap<i64, Vec<Event>>,
}

impl Model {
    pub fn new(history: &BTreeMap<i64, Vec<Event>>) -> Result<Model, String> {
        let mut states = BTreeMap::new();
        let mut state = State::new();
        states.insert(1, state.clone());
        for (expected, (&rev, events)) in (2..).zip(history) {
            if rev != expected {
                return Err(format!("revision {expected} is missing from the history"));
            }
            for e in events {
                match e.kind {
                    EventKind::Put => {
                        state.insert(e.kv.key.clone(), (e.kv.value.clone(), rev));
                    }
                    EventKind::Delete => {
                        state.remove(&e.kv.key);
                    }
                }
            }
            states.insert(rev, state.clone());
        }
        Ok(Model {
            states,
            events: history.clone(),
        })
    }

    pub fn last_revision(&self) -> i64 {
        *self
            .states
            .keys()
            .next_back()
            .expect("revision 1 is always there")
    }

    fn at(&self, revision: i64) -> Option<&State> {
        self.states.get(&revision)
    }
}

/// Checks every record against the model; returns the first violation.
pub fn check_history(model: &Model, records: &[Record]) -> Result<(), String> {
    for r in records {
        match (&r.op, &r.outcome) {
            (Op::Put { key, value }, Outcome::Put { revision }) => {
                let events = model
                    .events
                    .get(revision)
                    .ok_or_else(|| format!("acknowledged {r:?} is not in the history"))?;
                let ok = events
                    .iter()
                    .any(|e| e.kind == EventKind::Put && e.kv.key == *key && e.kv.value == *value);
                if !ok {
                    return Err(format!(
                        "acknowledged {r:?}: revision {revision} holds {events:?}"
                    ));
                }
            }
            (Op::Delete { key }, Outcome::Delete { revision, deleted }) => {
                if *deleted > 0 {
                    let ok = model.events.get(revision).is_some_and(|evs| {
                        evs.iter()
                            .any(|e| e.kind == EventKind::Delete && e.kv.key == *key)
                    });
                    if !ok {
                        return Err(format!("acknowledged {r:?} is not in the history"));
                    }
                } else {
                    let state = model
                        .at(*revision)
                        .ok_or_else(|| format!("{r:?}: no revision {revision}"))?;
                    if state.contains_key(key) {
                        return Err(format!("{r:?} deleted nothing, but the key was there"));
                    }
                }
            }
            (Op::Get { key, .. }, Outcome::Get { revision, found }) => {
                let state = model
                    .at(*revision)
                    .ok_or_else(|| format!("{r:?}: read at a revision never produced"))?;
                let expected = state.get(key).cloned();
                if expected != *found {
                    return Err(format!(
                        "{r:?}: the store at revision {revision} holds {expected:?}"
                    ));
                }
            }
            (_, Outcome::Failed(_)) => {}
            (op, outcome) => return Err(format!("outcome {outcome:?} does not fit {op:?}")),
        }
    }
    check_real_time(records)
}

/// The revision an answered operation is linearized at, whether it wrote, and whether it
/// promises real-time order (a serializable read does not).
fn point(r: &Record) -> Option<(i64, bool, bool)> {
    match (&r.op, &r.outcome) {
        (_, Outcome::Put { revision }) => Some((*revision, true, true)),
        (_, Outcome::Delete { revision, deleted }) => Some((*revision, *deleted > 0, true)),
        (Op::Get { linearizable, .. }, Outcome::Get { revision, .. }) => {
            Some((*revision, false, *linearizable))
        }
        _ => None,
    }
}

fn check_real_time(records: &[Record]) -> Result<(), String> {
    let mut by_end: Vec<(Duration, i64)> = records
        .iter()
        .filter_map(|r| point(r).map(|(rev, _, _)| (r.end, rev)))
        .collect();
    by_end.sort();
    let mut by_start: Vec<&Record> = records.iter().filter(|r| point(r).is_some()).collect();
    by_start.sort_by_key(|r| r.start);
    let mut seen = 0;
    let mut newest = 0;
    for r in by_start {
        while seen < by_end.len() && by_end[seen].0 < r.start {
            newest = newest.max(by_end[seen].1);
            seen += 1;
        }
        let (rev, wrote, ordered) = point(r).expect("filtered");
        if !ordered {
            continue;
        }
        if rev < newest || (wrote && rev == newest) {
            return Err(format!(
                "{r:?} is at revision {rev}, but an operation that finished before it started \
                 was already at {newest}"
            ));
        }
    }
    Ok(())
}
