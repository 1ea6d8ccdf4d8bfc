//! The seams the raft node, the applier and the watch hub are written against, so that the
//! deterministic simulation (`crate::sim`) can run several members in one thread: the clock,
//! the raft log's durable storage (the WAL), and the checkpoint store. The fourth seam, the peer
//! transport, is `crate::peer::Transport`; the fifth, randomness, is a seed (the raft node draws
//! raft's election jitter from a seeded generator instead of raft-rs's thread-local one).
//!
//! The server's implementations are here too: glommio timers, the file WAL (`super::wal`) and
//! the checkpoint file (`super::checkpoint`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use super::checkpoint::{self, CheckpointState};
use super::wal;

pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Monotonic time and timers. Code under the seams never calls `Instant::now` or a runtime's
/// timer directly: in the simulation, time is virtual and moves only when every task waits.
pub trait Clock: Clone + 'static {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()>;
}

/// The server's clock: the OS monotonic clock and glommio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        Box::pin(async move {
            glommio::timer::sleep(duration).await;
        })
    }
}

/// The raft log's durable storage: the raft node persists every Ready through it before
/// anything of that Ready is acknowledged.
pub trait RaftLog {
    /// Makes `entries` and `hard_state` durable, with one sync for both.
    fn persist<'a>(
        &'a mut self,
        entries: &'a [Entry],
        hard_state: Option<&'a HardState>,
    ) -> LocalFuture<'a, anyhow::Result<()>>;
    /// A checkpoint covering every entry up to `snapshot.index` is durable: entries at or
    /// below it are never replayed again and their storage may go. `snapshot` also carries the
    /// checkpoint's term (0 if the caller does not know it) and the configuration, which the
    /// WAL records as etcd records a snapshot.
    fn checkpoint_saved(&mut self, snapshot: &SnapshotMetadata) -> anyhow::Result<()>;
    /// Bytes the log occupies (for Status and metrics).
    fn size_bytes(&self) -> u64;
}

/// The server's raft log: the WAL files under `member/wal`.
pub struct FileRaftLog {
    wal: wal::Wal,
}

impl FileRaftLog {
    pub fn new(wal: wal::Wal) -> Self {
        FileRaftLog { wal }
    }
}

impl RaftLog for FileRaftLog {
    fn persist<'a>(
        &'a mut self,
        entries: &'a [Entry],
        hard_state: Option<&'a HardState>,
    ) -> LocalFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            // A failed WAL write leaves us unable to promise durability: the caller stops the
            // member rather than acknowledge anything.
            self.wal
                .append_and_sync(entries, hard_state)
                .await
                .map_err(|e| anyhow::anyhow!("writing the WAL: {e}"))
        })
    }

    fn checkpoint_saved(&mut self, snapshot: &SnapshotMetadata) -> anyhow::Result<()> {
        self.wal
            .checkpoint(snapshot)
            .map_err(|e| anyhow::anyhow!("recording the checkpoint in the WAL: {e}"))?;
        crate::log_info!(
            "compacted Raft logs",
            "compact-index" => snapshot.index,
            "wal-files" => self.wal.file_count()
        );
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.wal.size_bytes()
    }
}

/// Where the applier's checkpoint state goes. `save` must be atomic: after a crash, either the
/// previous checkpoint or this one is read back, whole.
pub trait CheckpointStore {
    fn save(&mut self, state: CheckpointState) -> LocalFuture<'static, Result<(), String>>;
}

/// The server's checkpoint store: `member/snap/checkpoint`, written on a thread of its own
/// because it is a few blocking writes and fsyncs.
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    pub fn new(dir: PathBuf) -> Self {
        FileCheckpointStore { dir }
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn save(&mut self, state: CheckpointState) -> LocalFuture<'static, Result<(), String>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            std::thread::Builder::new()
                .name("rusd-checkpoint".into())
                .spawn(move || {
                    let _ = tx.send(checkpoint::write(&dir, &state).map_err(|e| e.to_string()));
                })
                .map_err(|e| e.to_string())?;
            rx.await
                .map_err(|_| "the checkpoint writer stopped".to_string())?
        })
    }
}
