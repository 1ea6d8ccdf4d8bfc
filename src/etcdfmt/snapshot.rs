//! An etcd v3.5 database file built from rusd's state at one applied index: the coordinator's
//! checkpoint state and every shard's snapshot view. This is what `Maintenance.Snapshot`
//! streams and what `etcdutl snapshot restore` reads.
//!
//! Memory: the `key` bucket is produced by merging the shards' views (each sorted by revision)
//! and packed into pages as it goes, so the writer holds one page plus the first key of every
//! page of that bucket; the other buckets are small and held whole. The views themselves hold
//! 56 bytes per version and one copy of each key; values are shared with the stores.
//!
//! Layout: meta pages 0 and 1, an empty freelist at page 2, then each bucket's tree in bucket
//! order (leaves, then branch levels), then the root bucket's tree. A planning pass over sizes
//! alone gives every page id and the total size before the first byte is produced.

use shards::{encode_key_value, key_value_encoded_len, SnapshotVersion, SnapshotView};

use super::bbolt::{header_pages, TreeLayout, TreeWriter, FIRST_DATA_PGID, PAGE_SIZE};
use super::schema::{self, BUCKETS, BUCKET_KEY};
use crate::coordinator::checkpoint::CheckpointState;

/// The bbolt transaction ID written in the meta pages (any value above 0 works; etcd's files
/// carry whatever their last commit had).
const TXID: u64 = 2;

/// Elements of a small bucket, sorted by key.
type Elements = Vec<(Vec<u8>, Vec<u8>)>;

/// What goes into the database, with the page plan computed.
pub struct Database<'a> {
    views: &'a [SnapshotView],
    /// Every bucket but `key`, by name.
    small: Vec<(&'static [u8], Elements)>,
    layouts: Vec<TreeLayout>,
    root: TreeLayout,
    page_count: u64,
}

/// The buckets other than `key`, as etcd v3.5 fills them for `state`.
fn small_buckets(state: &CheckpointState) -> Vec<(&'static [u8], Elements)> {
    let mut out = Vec::new();
    for name in BUCKETS {
        let mut elements: Elements = match name {
            schema::BUCKET_ALARM => state
                .alarms
                .iter()
                .map(|a| (schema::alarm_key(a), Vec::new()))
                .collect(),
            schema::BUCKET_AUTH => schema::auth_entries(&state.auth),
            schema::BUCKET_AUTH_ROLES => state
                .auth
                .roles
                .iter()
                .map(|r| (r.name.clone().into_bytes(), schema::role_value(r)))
                .collect(),
            schema::BUCKET_AUTH_USERS => state
                .auth
                .users
                .iter()
                .map(|u| (u.name.clone().into_bytes(), schema::user_value(u)))
                .collect(),
            schema::BUCKET_CLUSTER => vec![(
                schema::CLUSTER_VERSION.to_vec(),
                schema::CLUSTER_VERSION_3_5.to_vec(),
            )],
            schema::BUCKET_KEY => continue,
            schema::BUCKET_LEASE => state
                .leases
                .iter()
                .map(|l| (schema::lease_key(l.id), schema::lease_value(l)))
                .collect(),
            schema::BUCKET_MEMBERS => state
                .members
                .iter()
                .map(|m| (schema::member_key(m.id), schema::member_value(m)))
                .collect(),
            schema::BUCKET_MEMBERS_REMOVED => Vec::new(),
            schema::BUCKET_META => {
                let mut meta = vec![
                    (
                        schema::META_CONSISTENT_INDEX.to_vec(),
                        schema::u64_value(state.raft_index),
                    ),
                    (
                        schema::META_TERM.to_vec(),
                        schema::u64_value(state.raft_term),
                    ),
                    (
                        schema::META_CONF_STATE.to_vec(),
                        schema::conf_state_value(&state.voters, &state.learners),
                    ),
                ];
                if state.compact_revision > 0 {
                    // rusd compacts at once: the scheduled compaction is the finished one.
                    let revision = schema::revision_key(state.compact_revision, 0, false);
                    meta.push((schema::META_SCHEDULED_COMPACT.to_vec(), revision.clone()));
                    meta.push((schema::META_FINISHED_COMPACT.to_vec(), revision));
                }
                meta
            }
            _ => unreachable!("every bucket is listed"),
        };
        elements.sort();
        elements.dedup_by(|a, b| a.0 == b.0);
        out.push((name, elements));
    }
    out
}

/// The versions of every view in (revision, sub-revision) order: a k-way merge over views
/// that are each sorted that way.
struct Merged<'a> {
    views: &'a [SnapshotView],
    positions: Vec<usize>,
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a SnapshotView, &'a SnapshotVersion);

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, (i64, u32))> = None;
        for (shard, view) in self.views.iter().enumerate() {
            if let Some(v) = view.versions.get(self.positions[shard]) {
                let at = (v.main, v.sub);
                if best.is_none_or(|(_, b)| at < b) {
                    best = Some((shard, at));
                }
            }
        }
        let (shard, _) = best?;
        let view = &self.views[shard];
        let version = &view.versions[self.positions[shard]];
        self.positions[shard] += 1;
        Some((view, version))
    }
}

fn merged(views: &[SnapshotView]) -> Merged<'_> {
    Merged {
        views,
        positions: vec![0; views.len()],
    }
}

/// Feeds the `key` bucket to `tree`; encodes values only when `writing`.
fn feed_key_bucket(views: &[SnapshotView], tree: &mut TreeWriter<'_>, writing: bool) {
    let mut key = Vec::with_capacity(schema::REVISION_KEY_BYTES + 1);
    let mut value = Vec::new();
    for (view, v) in merged(views) {
        let tombstone = v.value.is_none();
        key.clear();
        schema::write_revision_key(&mut key, v.main, i64::from(v.sub), tombstone);
        let name = view.key(v);
        // etcd stores a tombstone as a KeyValue holding only the key.
        let (create, version, data, lease) = match &v.value {
            Some(data) => (v.create_revision, i64::from(v.version), &data[..], v.lease),
            None => (0, 0, &[][..], 0),
        };
        let modified = if tombstone { 0 } else { v.main };
        let len = key_value_encoded_len(name, create, modified, version, data, lease);
        if writing {
            value.clear();
            encode_key_value(&mut value, name, create, modified, version, data, lease);
            tree.put(&key, len, Some(&value));
        } else {
            tree.put(&key, len, None);
        }
    }
}

fn feed_small(elements: &Elements, tree: &mut TreeWriter<'_>, writing: bool) {
    for (key, value) in elements {
        tree.put(key, value.len(), writing.then_some(value.as_slice()));
    }
}

impl<'a> Database<'a> {
    /// Plans the file. Every view must already be sorted by revision.
    pub fn plan(state: &CheckpointState, views: &'a [SnapshotView]) -> Database<'a> {
        for view in views {
            debug_assert!(view.versions.is_sorted_by_key(|v| (v.main, v.sub)));
        }
        let small = small_buckets(state);
        let mut layouts = Vec::with_capacity(BUCKETS.len());
        let mut next = FIRST_DATA_PGID;
        let mut small_iter = small.iter();
        for name in BUCKETS {
            let mut tree = TreeWriter::plan(next);
            if name == BUCKET_KEY {
                feed_key_bucket(views, &mut tree, false);
            } else {
                let (_, elements) = small_iter.next().expect("one list per small bucket");
                feed_small(elements, &mut tree, false);
            }
            let layout = tree.finish();
            next += layout.pages;
            layouts.push(layout);
        }
        let mut root_tree = TreeWriter::plan(next);
        for (name, layout) in BUCKETS.iter().zip(&layouts) {
            root_tree.put_bucket(name, layout.root);
        }
        let root = root_tree.finish();
        Database {
            views,
            small,
            layouts,
            root,
            page_count: next + root.pages,
        }
    }

    /// The size of the file `write` produces.
    pub fn size_bytes(&self) -> u64 {
        self.page_count * PAGE_SIZE as u64
    }

    /// Produces the file, page after page, into `sink`.
    pub fn write(&self, sink: &mut dyn FnMut(&[u8])) {
        sink(&header_pages(self.root.root, self.page_count, TXID));
        let mut next = FIRST_DATA_PGID;
        let mut small_iter = self.small.iter();
        for (name, planned) in BUCKETS.iter().zip(&self.layouts) {
            let mut tree = TreeWriter::write(next, sink);
            if *name == BUCKET_KEY {
                feed_key_bucket(self.views, &mut tree, true);
            } else {
                let (_, elements) = small_iter.next().expect("one list per small bucket");
                feed_small(elements, &mut tree, true);
            }
            let layout = tree.finish();
            assert_eq!(layout, *planned, "the written tree matches its plan");
            next += layout.pages;
        }
        let mut root_tree = TreeWriter::write(next, sink);
        for (name, layout) in BUCKETS.iter().zip(&self.layouts) {
            root_tree.put_bucket(name, layout.root);
        }
        let root = root_tree.finish();
        assert_eq!(root, self.root, "the root bucket matches its plan");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::checkpoint::{LeaseRecord, MemberRecord};
    use crate::etcdfmt::bbolt::{free_pages, Reader};
    use bytes::Bytes;
    use shards::{DeleteRangeRequest, MvccStore, PutRequest};

    fn put(store: &mut MvccStore, main: i64, key: &str, value: Vec<u8>) {
        store
            .put(
                main,
                0,
                &PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: value.into(),
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn state(revision: i64, compact_revision: i64) -> CheckpointState {
        CheckpointState {
            raft_index: 40,
            raft_term: 2,
            voters: vec![7],
            revision,
            compact_revision,
            leases: vec![LeaseRecord {
                id: 5,
                ttl_secs: 60,
            }],
            members: vec![MemberRecord {
                id: 7,
                name: "m".into(),
                peer_urls: vec!["http://localhost:2380".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn build(state: &CheckpointState, stores: &[MvccStore]) -> Vec<u8> {
        let mut views: Vec<SnapshotView> = stores.iter().map(MvccStore::snapshot_view).collect();
        views.iter_mut().for_each(SnapshotView::sort_by_revision);
        let db = Database::plan(state, &views);
        let mut out = Vec::new();
        db.write(&mut |page| out.extend_from_slice(page));
        assert_eq!(out.len() as u64, db.size_bytes());
        out
    }

    /// Every version the stores retain comes back from the file's `key` bucket, in revision
    /// order, across shards; every page is reachable exactly once.
    #[test]
    fn key_bucket_holds_every_retained_version_in_revision_order() {
        let mut stores = vec![MvccStore::new(), MvccStore::new()];
        let mut main = 1;
        let mut expected = Vec::new();
        for round in 0..300 {
            main += 1;
            let key = format!("key-{}", round % 40);
            // Sizes from tiny to several pages, to exercise overflow pages.
            let value = vec![b'v'; (round * 37) % 9000];
            put(&mut stores[round % 2], main, &key, value);
        }
        main += 1;
        stores[0].delete_range(
            main,
            0,
            &DeleteRangeRequest {
                key: Bytes::from_static(b"key-0"),
                range_end: Bytes::new(),
                prev_kv: false,
            },
        );
        for store in &mut stores {
            store.compact(100);
        }
        for store in &stores {
            expected.extend(store.retained_events());
        }
        expected.sort_by_key(|e| (e.kv.mod_revision, e.sub_revision));
        let file = build(&state(main, 100), &stores);
        let reader = Reader::open(file, "test.db").unwrap();
        let names: Vec<Vec<u8>> = reader.buckets().unwrap().into_iter().map(|b| b.0).collect();
        assert_eq!(
            names,
            BUCKETS.iter().map(|b| b.to_vec()).collect::<Vec<_>>()
        );
        let key_bucket = reader.bucket(BUCKET_KEY).unwrap().unwrap();
        let mut got = Vec::new();
        reader
            .walk(&key_bucket, &mut |e| {
                let (main, sub, tombstone) = schema::parse_revision_key(e.key)?;
                let kv = <proto::mvccpb::KeyValue as prost::Message>::decode(e.value)
                    .map_err(|e| e.to_string())?;
                got.push((main, sub, tombstone, kv));
                Ok(())
            })
            .unwrap();
        assert_eq!(got.len(), expected.len());
        for ((main, sub, tombstone, kv), event) in got.iter().zip(&expected) {
            assert_eq!((*main, *sub), (event.kv.mod_revision, event.sub_revision));
            assert_eq!(*tombstone, event.kind == shards::EventKind::Delete);
            assert_eq!(kv.key, event.kv.key);
            if !tombstone {
                assert_eq!(kv.value, event.kv.value);
                assert_eq!(kv.version, event.kv.version);
                assert_eq!(kv.create_revision, event.kv.create_revision);
                assert_eq!(kv.mod_revision, event.kv.mod_revision);
            }
        }
        assert!(free_pages(&reader).unwrap().is_empty());
        let meta = reader.bucket(schema::BUCKET_META).unwrap().unwrap();
        let mut meta_keys = Vec::new();
        reader
            .walk(&meta, &mut |e| {
                meta_keys.push(String::from_utf8_lossy(e.key).into_owned());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            meta_keys,
            [
                "confState",
                "consistent_index",
                "finishedCompactRev",
                "scheduledCompactRev",
                "term"
            ]
        );
    }

    /// A key bucket of many pages needs branch levels; the reader finds every element.
    #[test]
    fn many_versions_build_a_multi_level_tree() {
        let mut store = MvccStore::new();
        for main in 2..40_000 {
            put(&mut store, main, &format!("k{main}"), b"value".to_vec());
        }
        let file = build(&state(40_000, 0), &[store]);
        let reader = Reader::open(file, "big.db").unwrap();
        let root = reader.bucket(BUCKET_KEY).unwrap().unwrap();
        let mut count = 0;
        let mut last = Vec::new();
        reader
            .walk(&root, &mut |e| {
                assert!(e.key > last.as_slice());
                last = e.key.to_vec();
                count += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(count, 40_000 - 2);
    }

    #[test]
    fn damage_is_reported_with_the_file_name() {
        let file = build(&state(1, 0), &[MvccStore::new()]);
        let cut = file[..file.len() - PAGE_SIZE].to_vec();
        let error = Reader::open(cut, "cut.db").err().unwrap().to_string();
        assert!(
            error.contains("cut.db") && error.contains("truncated"),
            "{error}"
        );
        let mut flipped = file.clone();
        flipped[PAGE_SIZE * 3 + 20] ^= 0xff;
        flipped[30] ^= 0xff;
        flipped[PAGE_SIZE + 30] ^= 0xff;
        let error = Reader::open(flipped, "flipped.db")
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("flipped.db") && error.contains("checksum"),
            "{error}"
        );
    }
}
