//! Start-up recovery of the shards: each shard's segment log is read back to the last
//! checkpoint (in parallel, one thread per shard), and a member restarted with a different
//! `--shards` has its keyspace re-partitioned first. The WAL entries after the checkpoint are
//! replayed later, by the coordinator, through the normal apply path.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use shards::{Event, MvccStore, SegmentLog};

use crate::coordinator::checkpoint::{self, CheckpointState};
use crate::runtime::disk::FileStorage;
use crate::runtime::shard::{Shard, SEGMENT_BYTES_MAX};

/// The recovered shards, in shard order, and every leased key they hold.
pub struct RecoveredShards {
    pub shards: Vec<Shard>,
    pub lease_keys: Vec<(Bytes, i64)>,
}

/// Opens (or creates) the segment logs of `count` shards as of `state`'s checkpoint.
pub fn recover_shards(
    data_dir: &Path,
    count: usize,
    state: Option<&mut CheckpointState>,
) -> anyhow::Result<RecoveredShards> {
    let checkpoint = state.as_ref().map_or(0, |s| s.raft_index);
    let recorded = state.as_ref().map(|s| s.shard_count as usize);
    if let (Some(state), Some(old)) = (state, recorded) {
        if old != count {
            repartition(data_dir, old, count, state)?;
        }
    }
    // Directories of other shard counts: left over from a re-partition that finished, or
    // written before the first checkpoint by a run with another --shards (whose entries the
    // WAL still holds). Nothing in them is needed.
    remove_other_layouts(data_dir, count)?;
    let logs = open_all(data_dir, count, checkpoint)?;
    let mut lease_keys = Vec::new();
    let mut shards = Vec::with_capacity(count);
    for (log, store) in logs {
        lease_keys.extend(store.leased_keys());
        shards.push(Shard::new(store, log));
    }
    Ok(RecoveredShards { shards, lease_keys })
}

type Opened = (SegmentLog<FileStorage>, MvccStore);

/// Opens every shard's log at the checkpoint, one thread each: the index rebuild is the long
/// part of a restart, and the shards are independent.
fn open_all(data_dir: &Path, count: usize, checkpoint: u64) -> anyhow::Result<Vec<Opened>> {
    let threads: Vec<_> = (0..count)
        .map(|shard| {
            let dir = checkpoint::shard_dir(data_dir, count, shard);
            std::thread::Builder::new()
                .name(format!("rusd-recover-{shard}"))
                .spawn(move || open_one(&dir, checkpoint))
                .context("starting a recovery thread")
        })
        .collect::<anyhow::Result<_>>()?;
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("a shard recovery thread panicked"))?
        })
        .collect()
}

fn open_one(dir: &Path, checkpoint: u64) -> anyhow::Result<Opened> {
    if checkpoint > 0 && !has_segments(dir) {
        // A checkpoint says this shard's data is on disk: an empty directory is lost data.
        anyhow::bail!(
            "shard directory {} has no segment files, but the checkpoint at raft index \
             {checkpoint} needs them",
            dir.display()
        );
    }
    let storage = FileStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let (log, store, _) = SegmentLog::open_at(storage, SEGMENT_BYTES_MAX, Some(checkpoint))
        .with_context(|| format!("recovering shard {}", dir.display()))?;
    Ok((log, store))
}

fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("segment-"))
    })
}

fn layout_dirs(data_dir: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let member = data_dir.join("member");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&member) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", member.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shards-"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push((n, entry.path()));
    }
    Ok(out)
}

fn remove_other_layouts(data_dir: &Path, count: usize) -> anyhow::Result<()> {
    for (n, dir) in layout_dirs(data_dir)? {
        if n != count {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Re-partitions a keyspace written by `old` shards into `new` ones: every version the old
/// shards retain is routed by key into new segment logs, which are synced before the
/// checkpoint file is rewritten to name the new layout. A crash before that rewrite leaves the
/// old layout in force (and the half-built new one is discarded at the next start).
fn repartition(
    data_dir: &Path,
    old: usize,
    new: usize,
    state: &mut CheckpointState,
) -> anyhow::Result<()> {
    crate::log_info!(
        "re-partitioning the keyspace for a new shard count",
        "from-shards" => old,
        "to-shards" => new,
        "checkpoint-index" => state.raft_index
    );
    let checkpoint = state.raft_index;
    let target_root = checkpoint::shards_root(data_dir, new);
    if target_root.exists() {
        std::fs::remove_dir_all(&target_root)
            .with_context(|| format!("removing {}", target_root.display()))?;
    }
    let opened = open_all(data_dir, old, checkpoint)?;
    let compact_revision = opened
        .iter()
        .map(|(_, store)| store.compact_revision())
        .max()
        .unwrap_or(0);
    let mut routed: Vec<Vec<Event>> = vec![Vec::new(); new];
    for (_, store) in &opened {
        for event in store.retained_events() {
            routed[shards::shard_for_key(&event.kv.key, new)].push(event);
        }
    }
    drop(opened);
    for (shard, mut events) in routed.into_iter().enumerate() {
        events.sort_by_key(|e| (e.kv.mod_revision, e.sub_revision));
        let dir = checkpoint::shard_dir(data_dir, new, shard);
        let storage =
            FileStorage::open(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (mut log, _, _) = SegmentLog::open(storage, SEGMENT_BYTES_MAX)
            .with_context(|| format!("creating {}", dir.display()))?;
        // One record per revision. Records need increasing raft indexes at or below the
        // checkpoint: revision - 1 is one (every revision above 1 was made by a distinct
        // entry after the leader's first, empty one), and the compaction goes at the
        // checkpoint index itself.
        let mut start = 0;
        while start < events.len() {
            let revision = events[start].kv.mod_revision;
            let end = start
                + events[start..]
                    .iter()
                    .take_while(|e| e.kv.mod_revision == revision)
                    .count();
            let index = u64::try_from(revision - 1).context("event revision below 2")?;
            anyhow::ensure!(
                index < checkpoint,
                "revision {revision} cannot precede checkpoint {checkpoint}"
            );
            log.append(index, revision, &events[start..end])?;
            start = end;
        }
        if compact_revision > 0 {
            log.append_compaction(checkpoint, compact_revision)?;
        }
        log.sync()?;
    }
    state.shard_count = new as u32;
    checkpoint::write(&checkpoint::checkpoint_dir(data_dir), state)?;
    Ok(())
}
