//! `Maintenance.Snapshot`: etcd v3.5's bbolt database of the member's state at one applied
//! index, streamed in 32 KiB messages and followed by a message holding the SHA-256 of
//! everything sent, as etcd sends it (`etcdctl snapshot save` checks that the trailer is
//! there; `etcdutl snapshot restore` checks the digest).
//!
//! The database is produced on a thread of its own (sorting views and packing pages is CPU
//! work that must not stall a core's executor) and handed to the gRPC stream through a bounded
//! channel: at most `CHUNKS_AHEAD` messages wait for a slow client, then the thread waits too.
//! At most `SNAPSHOTS_IN_FLIGHT_MAX` snapshots are produced at once; further requests wait
//! for a slot before their cut is taken.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Instant;

use futures::Stream;
use proto::etcdserverpb as pb;
use tonic::Status;

use super::status::status;
use super::Context;
use crate::coordinator::snapshot::Cut;
use crate::coordinator::CoordMsg;
use crate::error::EtcdError;
use crate::etcdfmt::snapshot::Database;

/// etcd's `snapshotSendBufferSize`: the blob size of every message but the last two.
const CHUNK_BYTES: usize = 32 * 1024;
/// Messages produced ahead of the client.
const CHUNKS_AHEAD: usize = 16;
/// Snapshots produced at once; each holds its views (O(versions) small records) until done.
const SNAPSHOTS_IN_FLIGHT_MAX: usize = 2;

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Slots for snapshots in flight: a send takes one (waiting while all are taken), a receive
/// gives it back.
fn slots() -> &'static (async_channel::Sender<()>, async_channel::Receiver<()>) {
    static SLOTS: OnceLock<(async_channel::Sender<()>, async_channel::Receiver<()>)> =
        OnceLock::new();
    SLOTS.get_or_init(|| async_channel::bounded(SNAPSHOTS_IN_FLIGHT_MAX))
}

/// Takes the cut and starts the thread that produces the database.
pub async fn start(ctx: &Context) -> Result<SnapshotStream, Status> {
    let (take, give_back) = slots();
    take.send(())
        .await
        .map_err(|_| status(EtcdError::Stopped))?;
    let give_back = give_back.clone();
    let cut = match ctx
        .coordinator
        .ask(|reply| CoordMsg::SnapshotState { reply })
        .await
    {
        Ok(cut) => cut,
        Err(e) => {
            let _ = give_back.try_recv();
            return Err(status(e));
        }
    };
    let (tx, rx) = flume::bounded(CHUNKS_AHEAD);
    let spawned = std::thread::Builder::new()
        .name("rusd-snapshot".into())
        .spawn(move || {
            produce(cut, &tx);
            let _ = give_back.try_recv();
        });
    if let Err(e) = spawned {
        let _ = slots().1.try_recv();
        return Err(Status::internal(format!(
            "starting the snapshot thread: {e}"
        )));
    }
    Ok(Box::pin(rx.into_stream()))
}

type Sender = flume::Sender<Result<pb::SnapshotResponse, Status>>;

fn produce(cut: Cut, tx: &Sender) {
    let Cut { state, views } = cut;
    let mut views: Vec<_> = match views
        .into_iter()
        .map(futures::executor::block_on)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(views) => views,
        Err(_) => {
            let _ = tx.send(Err(status(EtcdError::Stopped)));
            return;
        }
    };
    for view in &mut views {
        view.sort_by_revision();
    }
    let db = Database::plan(&state, &views);
    let total = db.size_bytes();
    let size = human_bytes(total);
    let started = Instant::now();
    crate::log_info!(
        "sending database snapshot to client",
        "total-bytes" => total,
        "size" => size.clone()
    );
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    let mut sent = 0u64;
    let mut client_gone = false;
    let mut flush = |chunk: &mut Vec<u8>, sent: &mut u64, client_gone: &mut bool| {
        if *client_gone || chunk.is_empty() {
            return;
        }
        digest.update(chunk);
        *sent += chunk.len() as u64;
        let message = pb::SnapshotResponse {
            header: None,
            remaining_bytes: total - *sent,
            blob: std::mem::replace(chunk, Vec::with_capacity(CHUNK_BYTES)).into(),
        };
        *client_gone = tx.send(Ok(message)).is_err();
    };
    db.write(&mut |mut bytes: &[u8]| {
        while !bytes.is_empty() {
            let take = (CHUNK_BYTES - chunk.len()).min(bytes.len());
            chunk.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if chunk.len() == CHUNK_BYTES {
                flush(&mut chunk, &mut sent, &mut client_gone);
            }
        }
    });
    flush(&mut chunk, &mut sent, &mut client_gone);
    if client_gone {
        crate::log_warn!(
            "failed to send database snapshot to client",
            "total-bytes" => total,
            "sent-bytes" => sent,
            "error" => "the client went away"
        );
        return;
    }
    let sha = digest.finish();
    crate::log_info!(
        "sending database sha256 checksum to client",
        "total-bytes" => total,
        "checksum-size" => sha.as_ref().len()
    );
    let trailer = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.as_ref().to_vec().into(),
    };
    if tx.send(Ok(trailer)).is_ok() {
        crate::log_info!(
            "successfully sent database snapshot to client",
            "total-bytes" => total,
            "size" => size,
            "took" => human_since(started)
        );
    }
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let value = (bytes as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// go-humanize's `Time` for a moment in the past.
fn human_since(started: Instant) -> String {
    let seconds = started.elapsed().as_secs();
    match seconds {
        0 => "now".into(),
        1 => "1 second ago".into(),
        2..=59 => format!("{seconds} seconds ago"),
        60..=119 => "1 minute ago".into(),
        120..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=7199 => "1 hour ago".into(),
        _ => format!("{} hours ago", seconds / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_go_humanize_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(1_548_288), "1.5 MB");
        assert_eq!(human_bytes(2_375_680), "2.4 MB");
        // 123.5 rounds to even, as Go's %.0f does.
        assert_eq!(human_bytes(123_456_789), "124 MB");
    }
}
