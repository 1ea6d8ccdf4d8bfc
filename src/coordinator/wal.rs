//! The write-ahead log: raft's entries and hard state, appended by a writer thread and made
//! durable with one fdatasync per raft Ready (group commit).
//!
//! Record framing (all little-endian):
//! ```text
//! +------------+--------------+---------+-------------------+
//! | len: u32   | crc32c: u32  | type:u8 | payload (len B)   |
//! +------------+--------------+---------+-------------------+
//! ```
//! `crc32c` covers `type` and `payload`. Types: 1 = raft Entry (protobuf, raft-rs's own
//! encoding), 2 = HardState (protobuf), 3 = member metadata (member_id u64, cluster_id u64).
//! A record cut short at the end of the file is a torn write and is truncated at recovery; a
//! checksum failure anywhere is corruption and stops start-up.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

const HEADER_BYTES: usize = 9;
/// No single record may claim more than this; anything larger is corruption, not a big entry
/// (requests are capped at --max-request-bytes, far below).
const RECORD_BYTES_MAX: u32 = 256 << 20;

const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_METADATA: u8 = 3;

pub const WAL_FILE_NAME: &str = "0000000000000000-0000000000000000.wal";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wal {path}: corrupt record at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub member_id: u64,
    pub cluster_id: u64,
}

/// What a WAL holds after recovery.
#[derive(Debug, Default)]
pub struct Recovered {
    pub metadata: Option<Metadata>,
    pub hard_state: HardState,
    /// Entries in index order, with later (re-)appends of an index replacing the earlier suffix.
    pub entries: Vec<Entry>,
    /// Where the next record goes (the valid length of the file).
    pub end_offset: u64,
    /// Bytes of torn tail removed, if any.
    pub truncated_bytes: u64,
}

pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

pub fn frame(out: &mut Vec<u8>, record_type: u8, payload: &[u8]) {
    let mut crc = crc32c::crc32c(&[record_type]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(record_type);
    out.extend_from_slice(payload);
}

pub fn frame_entry(out: &mut Vec<u8>, e: &Entry) {
    let payload = e
        .write_to_bytes()
        .expect("encoding a raft entry cannot fail");
    frame(out, TYPE_ENTRY, &payload);
}

pub fn frame_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    let payload = hs
        .write_to_bytes()
        .expect("encoding a hard state cannot fail");
    frame(out, TYPE_HARD_STATE, &payload);
}

pub fn frame_metadata(out: &mut Vec<u8>, m: Metadata) {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&m.member_id.to_le_bytes());
    payload.extend_from_slice(&m.cluster_id.to_le_bytes());
    frame(out, TYPE_METADATA, &payload);
}

/// Reads the WAL in `dir` (creating the directory if needed), truncating a torn tail.
/// Runs once, before the executors start, so plain blocking I/O is fine here.
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(WAL_FILE_NAME);
    let mut data = Vec::new();
    match fs::File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(io(&path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::File::create(&path).map_err(io(&path))?;
            fsync_dir(dir).map_err(io(dir))?;
        }
        Err(e) => return Err(io(&path)(e)),
    }
    let mut out = Recovered::default();
    let mut offset = 0usize;
    while offset < data.len() {
        if data.len() - offset < HEADER_BYTES {
            break; // torn header
        }
        let len = u32::from_le_bytes(data[offset..offset + 4].try_into().unwrap());
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap());
        let record_type = data[offset + 8];
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if len > RECORD_BYTES_MAX {
            return Err(corrupt(format!("record length {len} is implausible")));
        }
        let end = offset + HEADER_BYTES + len as usize;
        if end > data.len() {
            // A record cut short by a crash is the last thing in the file. If a whole, valid
            // record follows, this length field was damaged instead: corruption, not a tail.
            if let Some(at) = valid_record_after(&data, offset + 1) {
                return Err(corrupt(format!(
                    "record length {len} runs past the end of the file, but a valid record \
                     follows at offset {at}"
                )));
            }
            break; // torn payload
        }
        let payload = &data[offset + HEADER_BYTES..end];
        let actual = crc32c::crc32c_append(crc32c::crc32c(&[record_type]), payload);
        if actual != crc {
            return Err(corrupt(format!(
                "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
            )));
        }
        match record_type {
            TYPE_ENTRY => {
                let e = Entry::parse_from_bytes(payload)
                    .map_err(|e| corrupt(format!("undecodable entry: {e}")))?;
                // A re-append at an index replaces that index and everything after it, the
                // way raft overwrites a conflicting suffix.
                let keep = out.entries.partition_point(|x| x.index < e.index);
                out.entries.truncate(keep);
                if let Some(last) = out.entries.last() {
                    if last.index + 1 != e.index {
                        return Err(corrupt(format!(
                            "entry index {} does not follow {}",
                            e.index, last.index
                        )));
                    }
                }
                out.entries.push(e);
            }
            TYPE_HARD_STATE => {
                out.hard_state = HardState::parse_from_bytes(payload)
                    .map_err(|e| corrupt(format!("undecodable hard state: {e}")))?;
            }
            TYPE_METADATA => {
                if payload.len() != 16 {
                    return Err(corrupt("metadata record of wrong size".into()));
                }
                out.metadata = Some(Metadata {
                    member_id: u64::from_le_bytes(payload[..8].try_into().unwrap()),
                    cluster_id: u64::from_le_bytes(payload[8..].try_into().unwrap()),
                });
            }
            other => return Err(corrupt(format!("unknown record type {other}"))),
        }
        offset = end;
    }
    out.end_offset = offset as u64;
    out.truncated_bytes = (data.len() - offset) as u64;
    if out.truncated_bytes > 0 {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        f.set_len(offset as u64).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    Ok(out)
}

/// The first offset at or after `from` where a complete record with a matching checksum
/// starts, if any.
fn valid_record_after(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_BYTES <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let end = at + HEADER_BYTES + len;
        if len as u32 <= RECORD_BYTES_MAX && end <= data.len() && (1..=3).contains(&data[at + 8]) {
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap());
            let actual = crc32c::crc32c_append(
                crc32c::crc32c(&[data[at + 8]]),
                &data[at + HEADER_BYTES..end],
            );
            if actual == crc {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

/// Writes the bootstrap records of a brand-new member and syncs them (blocking; start-up only).
pub fn bootstrap(dir: &Path, metadata: Metadata, end_offset: u64) -> Result<u64, WalError> {
    let path = dir.join(WAL_FILE_NAME);
    let mut buf = Vec::new();
    frame_metadata(&mut buf, metadata);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
    f.write_all(&buf)
        .and_then(|_| f.sync_data())
        .map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
    Ok(end_offset + buf.len() as u64)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The live WAL, owned by the coordinator on core 0. Writes and fdatasyncs happen on a
/// dedicated thread: start-up runs showed glommio file operations (open, fdatasync) whose
/// completion never reached the coordinator, hanging the member before its first Ready. The
/// coordinator hands each Ready's records over and waits under `runtime::recheck`, so one
/// Ready is still exactly one write and one fdatasync, and core 0 keeps serving meanwhile.
pub struct Wal {
    jobs: std::sync::mpsc::SyncSender<WalJob>,
    offset: u64,
}

struct WalJob {
    records: Vec<u8>,
    done: futures::channel::oneshot::Sender<std::io::Result<()>>,
}

impl Wal {
    pub async fn open(dir: &Path, end_offset: u64) -> Result<Wal, WalError> {
        let path = dir.join(WAL_FILE_NAME);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| WalError::Io {
                path: path.clone(),
                source,
            })?;
        // One Ready in flight at a time: the coordinator waits for each before the next.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<WalJob>(1);
        std::thread::Builder::new()
            .name("rusd-wal".into())
            .spawn(move || {
                use std::os::unix::fs::FileExt;
                let mut offset = end_offset;
                for job in rx {
                    let result = file
                        .write_all_at(&job.records, offset)
                        .and_then(|()| file.sync_data());
                    if result.is_ok() {
                        offset += job.records.len() as u64;
                    }
                    let _ = job.done.send(result);
                }
            })
            .map_err(|source| WalError::Io { path, source })?;
        Ok(Wal {
            jobs,
            offset: end_offset,
        })
    }

    /// Appends already-framed records and makes them durable with exactly one fdatasync.
    pub async fn append_and_sync(&mut self, records: Vec<u8>) -> std::io::Result<()> {
        let len = records.len() as u64;
        let (done, rx) = futures::channel::oneshot::channel();
        self.jobs
            .send(WalJob { records, done })
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))?;
        crate::runtime::recheck(rx)
            .await
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))??;
        self.offset += len;
        Ok(())
    }

    pub fn size_bytes(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    #[test]
    fn recovers_truncates_torn_tail_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let r = recover(&wal).unwrap();
        assert!(r.entries.is_empty());
        let mut buf = Vec::new();
        frame_metadata(
            &mut buf,
            Metadata {
                member_id: 1,
                cluster_id: 2,
            },
        );
        frame_entry(&mut buf, &entry(1, 1, b"a"));
        frame_entry(&mut buf, &entry(2, 1, b"b"));
        frame_entry(&mut buf, &entry(2, 2, b"c")); // overwrites index 2
        let mut hs = HardState::default();
        hs.commit = 2;
        hs.term = 2;
        frame_hard_state(&mut buf, &hs);
        let good_len = buf.len();
        frame_entry(&mut buf, &entry(3, 2, b"torn"));
        buf.truncate(buf.len() - 2);
        fs::write(wal.join(WAL_FILE_NAME), &buf).unwrap();

        let r = recover(&wal).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(&r.entries[1].data[..], b"c");
        assert_eq!(r.hard_state.commit, 2);
        assert_eq!(r.end_offset, good_len as u64);
        assert!(r.truncated_bytes > 0);
        assert_eq!(
            fs::metadata(wal.join(WAL_FILE_NAME)).unwrap().len(),
            good_len as u64
        );

        // A length field damaged so that it runs past the end, with records after it: that is
        // corruption, not a torn tail, and must not silently drop what follows.
        let mut damaged = fs::read(wal.join(WAL_FILE_NAME)).unwrap();
        let second = HEADER_BYTES + 16;
        damaged[second + 2] ^= 0x02;
        fs::write(wal.join(WAL_FILE_NAME), &damaged).unwrap();
        assert!(matches!(recover(&wal), Err(WalError::Corrupt { .. })));
        damaged[second + 2] ^= 0x02;
        fs::write(wal.join(WAL_FILE_NAME), &damaged).unwrap();

        // Flip one payload bit in the second record: start-up must refuse, naming the offset.
        let mut data = fs::read(wal.join(WAL_FILE_NAME)).unwrap();
        let second = HEADER_BYTES + 16;
        data[second + HEADER_BYTES + 1] ^= 0x40;
        fs::write(wal.join(WAL_FILE_NAME), &data).unwrap();
        match recover(&wal) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected corruption error, got {other:?}"),
        }
    }
}
