//! The hashes of the last compactions, as etcd keeps them: while it compacts at revision C,
//! etcd hashes the store as HashKV at C saw it just before (compact revision: the previous
//! one), keeps the newest `COMPACTION_HASHES_MAX` such hashes in memory, and answers a later
//! HashKV at exactly C with the kept hash and that previous compact revision (even once C is
//! compacted away by a later compaction). Members compare these values, so a rusd member must
//! answer them too. Written by the coordinator when it applies a compaction; read by HashKV
//! on any core.

use std::sync::Mutex;

/// How many compaction hashes are kept (etcd's hashStorageMaxSize).
pub const COMPACTION_HASHES_MAX: usize = 10;

/// The hash taken by the compaction at `revision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionHash {
    pub revision: i64,
    /// The compact revision before this compaction (0: none).
    pub previous_compact_revision: i64,
    pub hash: u32,
}

/// The newest `COMPACTION_HASHES_MAX` compaction hashes, by revision. When full, the oldest
/// revision is dropped.
#[derive(Debug, Default)]
pub struct CompactionHashes {
    hashes: Mutex<Vec<CompactionHash>>,
}

impl CompactionHashes {
    pub fn store(&self, hash: CompactionHash) {
        let mut hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        hashes.retain(|h| h.revision != hash.revision);
        let at = hashes.partition_point(|h| h.revision < hash.revision);
        hashes.insert(at, hash);
        if hashes.len() > COMPACTION_HASHES_MAX {
            let excess = hashes.len() - COMPACTION_HASHES_MAX;
            hashes.drain(..excess);
        }
    }

    /// The kept hash of the compaction at exactly `revision`.
    pub fn get(&self, revision: i64) -> Option<CompactionHash> {
        let hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        hashes.iter().find(|h| h.revision == revision).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(revision: i64) -> CompactionHash {
        CompactionHash {
            revision,
            previous_compact_revision: revision - 1,
            hash: revision as u32 * 7,
        }
    }

    #[test]
    fn keeps_the_newest_by_revision() {
        let kept = CompactionHashes::default();
        for revision in (1..=COMPACTION_HASHES_MAX as i64 + 3).rev() {
            kept.store(hash(revision));
        }
        // Stored newest first: the three lowest revisions are the ones dropped.
        for revision in 1..=3 {
            assert_eq!(kept.get(revision), None);
        }
        for revision in 4..=COMPACTION_HASHES_MAX as i64 + 3 {
            assert_eq!(kept.get(revision), Some(hash(revision)));
        }
        kept.store(hash(100));
        assert_eq!(kept.get(4), None);
        assert_eq!(kept.get(100), Some(hash(100)));
    }
}
