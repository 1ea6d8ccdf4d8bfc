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
    let mut layout = checkpoint::default_layout(count);
    if let Some(state) = state {
        if state.shard_count as usize != count {
            repartition(data_dir, count, state)?;
        }
        layout = state.layout_name();
    }
    // Other layouts: left over from a re-partition or a snapshot install that finished, or
    // written before the first checkpoint by a run with another --shards (whose entries the
    // WAL still holds), or a snapshot install that did not finish. Nothing in them is needed.
    remove_other_layouts(data_dir, &layout)?;
    let logs = open_all(data_dir, &layout, count, checkpoint)?;
    let mut lease_keys = Vec::new();
    let mut shards = Vec::with_capacity(count);
    for (index, (log, store)) in logs.into_iter().enumerate() {
        lease_keys.extend(store.leased_keys());
        let root = data_dir.to_path_buf();
        let opener: crate::runtime::shard::StorageOpener<FileStorage> =
            Box::new(move |layout, shard| {
                FileStorage::open(&checkpoint::shard_dir(&root, layout, shard))
            });
        shards.push(Shard::new(store, log, index, opener, SEGMENT_BYTES_MAX));
    }
    Ok(RecoveredShards { shards, lease_keys })
}

type Opened = (SegmentLog<FileStorage>, MvccStore);

/// Opens every shard's log at the checkpoint, one thread each: the index rebuild is the long
/// part of a restart, and the shards are independent.
fn open_all(
    data_dir: &Path,
    layout: &str,
    count: usize,
    checkpoint: u64,
) -> anyhow::Result<Vec<Opened>> {
    let threads: Vec<_> = (0..count)
        .map(|shard| {
            let dir = checkpoint::shard_dir(data_dir, layout, shard);
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

fn layout_dirs(data_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
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
        let Some(name) = name.to_str() else {
            continue;
        };
        if checkpoint::layout_shard_count(name).is_some() {
            out.push((name.to_string(), entry.path()));
        }
    }
    Ok(out)
}

fn remove_other_layouts(data_dir: &Path, keep: &str) -> anyhow::Result<()> {
    for (name, dir) in layout_dirs(data_dir)? {
        if name != keep {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Re-partitions a keyspace written by `old` shards into `new` ones: every version the old
/// shards retain is routed by key into new segment logs, which are synced before the
/// checkpoint file is rewritten to name the new layout. A crash before that rewrite leaves the
/// old layout in force (and the half-built new one is discarded at the next start).
fn repartition(data_dir: &Path, new: usize, state: &mut CheckpointState) -> anyhow::Result<()> {
    let old = state.shard_count as usize;
    let old_layout = state.layout_name();
    let new_layout = checkpoint::default_layout(new);
    crate::log_info!(
        "re-partitioning the keyspace for a new shard count",
        "from-shards" => old,
        "to-shards" => new,
        "checkpoint-index" => state.raft_index
    );
    let checkpoint = state.raft_index;
    let target_root = checkpoint::shards_root(data_dir, &new_layout);
    if target_root.exists() {
        std::fs::remove_dir_all(&target_root)
            .with_context(|| format!("removing {}", target_root.display()))?;
    }
    let opened = open_all(data_dir, &old_layout, old, checkpoint)?;
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
        let dir = checkpoint::shard_dir(data_dir, &new_layout, shard);
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
    state.layout = new_layout;
    checkpoint::write(&checkpoint::checkpoint_dir(data_dir), state)?;
    Ok(())
}
