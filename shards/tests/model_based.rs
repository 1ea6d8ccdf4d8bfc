//! Random operation sequences run side by side on the store and the reference model; any
//! divergence in a response, an event, an error or the retained history fails the test.

mod model;
pub mod strategies;

use model::Model;
use proptest::prelude::*;
use shards::*;
use strategies::{op_sequence, Op};

/// Applies `ops` to both, checking every answer. The revision bookkeeping is the server's:
/// a write that changes nothing does not consume a revision.
fn run(ops: &[Op]) -> Result<(MvccStore, Model), TestCaseError> {
    let mut store = MvccStore::new();
    let mut model = Model::default();
    let mut revision = 1i64;
    for op in ops {
        match op {
            Op::Put(req) => {
                let got = store.put(revision + 1, 0, req);
                prop_assert_eq!(&got, &model.put(revision + 1, 0, req), "put {:?}", req);
                if got.is_ok() {
                    revision += 1;
                }
            }
            Op::Delete(req) => {
                let got = store.delete_range(revision + 1, 0, req);
                prop_assert_eq!(
                    &got,
                    &model.delete_range(revision + 1, 0, req),
                    "delete {:?}",
                    req
                );
                if got.0.deleted > 0 {
                    revision += 1;
                }
            }
            Op::Txn(req) => {
                let got = store.txn(revision + 1, req);
                prop_assert_eq!(&got, &model.txn(revision + 1, req), "txn {:?}", req);
                if matches!(got, Ok(TxnOutcome { wrote: true, .. })) {
                    revision += 1;
                }
            }
            Op::Compact(pick, steps) => {
                let at = i64::from(*pick) % (revision + 1);
                // Lazily: reads must not depend on how far the reclaiming got.
                store.start_compaction(at);
                for _ in 0..*steps {
                    store.compaction_step(2);
                }
                model.compact(at);
            }
            Op::Range(req, pick) => {
                let at = i64::from(*pick) % (revision + 1);
                prop_assert_eq!(
                    store.range(req, at),
                    model.range(req, at),
                    "range {:?} at {}",
                    req,
                    at
                );
            }
            Op::History(key, end, from, length) => {
                let from = i64::from(*from) % (revision + 2);
                let to = from + i64::from(*length);
                prop_assert_eq!(
                    store.history(key, end, from, to),
                    model.history(key, end, from, to),
                    "history {:?}..{:?} {}..={}",
                    key,
                    end,
                    from,
                    to
                );
            }
        }
        prop_assert_eq!(store.key_count(), model.key_count());
        prop_assert_eq!(store.last_revision(), model.last_revision());
        prop_assert_eq!(store.compact_revision(), model.compact_revision);
    }
    let retained: Vec<_> = store
        .retained_events()
        .into_iter()
        .map(|event| (event.kv.key, event.kv.mod_revision, event.sub_revision))
        .collect();
    prop_assert_eq!(retained, model.retained());
    Ok((store, model))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_model(ops in op_sequence(48)) {
        run(&ops)?;
    }

    /// Compacting eagerly or lazily, or rebuilding from the retained events, gives one hash.
    #[test]
    fn hash_depends_only_on_retained_history(ops in op_sequence(32)) {
        let (mut store, _) = run(&ops)?;
        let revision = store.last_revision();
        let lazy = store.hash_kv(revision);
        while store.compaction_step(1) {}
        prop_assert_eq!(lazy, store.hash_kv(revision));
        let mut rebuilt = MvccStore::new();
        for event in store.retained_events() {
            rebuilt.apply_event(&event);
        }
        rebuilt.compact(store.compact_revision());
        prop_assert_eq!(rebuilt.hash_kv(revision), lazy);
        prop_assert_eq!(rebuilt.key_count(), store.key_count());
        prop_assert_eq!(rebuilt.approximate_bytes(), store.approximate_bytes());
    }
}
