//! The consistent cut behind `Maintenance.Snapshot`: the coordinator's state at its applied
//! index, and every shard's snapshot view as of that same index.
//!
//! The coordinator answers `CoordMsg::SnapshotState` between two apply steps, when every shard
//! has been sent exactly the entries up to the applied index. It then queues
//! `ShardMsg::SnapshotView` on every shard; inboxes are FIFO, so each shard builds its view
//! after those entries and before any later one, without the coordinator waiting for it. A
//! view shares values with its store, so later writes and compactions (which drop versions
//! from the store, not from the view) never change what the snapshot streams.

use futures::channel::oneshot;
use shards::SnapshotView;

use super::checkpoint::CheckpointState;
use crate::runtime::mesh::ShardSet;
use crate::runtime::shard::ShardMsg;

/// The state of one applied index: the coordinator's part now, the shards' parts on their way.
pub struct Cut {
    pub state: CheckpointState,
    pub views: Vec<oneshot::Receiver<SnapshotView>>,
}

/// Asks every shard for its view; called by the coordinator between apply steps.
pub async fn cut(state: CheckpointState, shards: &ShardSet) -> anyhow::Result<Cut> {
    let mut views = Vec::with_capacity(shards.len());
    for shard in 0..shards.len() {
        let (reply, view) = oneshot::channel();
        shards
            .send(shard, ShardMsg::SnapshotView { reply })
            .await
            .map_err(|e| anyhow::anyhow!("asking shard {shard} for its snapshot view: {e}"))?;
        views.push(view);
    }
    Ok(Cut { state, views })
}
