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
use std::io::Read;
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

/// The first WAL file of a member. Later files are named `{seq:016x}-{index:016x}.wal`
/// (etcd's scheme): the sequence number, then the first raft index the file was opened for.
pub const WAL_FILE_NAME: &str = "0000000000000000-0000000000000000.wal";

fn wal_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_wal_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    u64::from_str_radix(index, 16).ok()?;
    u64::from_str_radix(seq, 16).ok()
}

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

/// One WAL file and the newest raft index written to it (0 if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalFile {
    pub name: String,
    pub seq: u64,
    pub last_index: u64,
    /// Its length: what it costs on disk, kept here so removals need no stat.
    pub bytes: u64,
}

/// What a WAL holds after recovery.
#[derive(Debug, Default)]
pub struct Recovered {
    pub metadata: Option<Metadata>,
    pub hard_state: HardState,
    /// Entries after the checkpoint, in index order, with later (re-)appends of an index
    /// replacing the earlier suffix.
    pub entries: Vec<Entry>,
    /// Every WAL file, oldest first; the last one is appended to.
    pub files: Vec<WalFile>,
    /// Where the next record goes in the last file (its valid length).
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

/// Reads every WAL file in `dir` (creating the directory and the first file if needed),
/// truncating a torn tail of the last file. Entries at or below `checkpoint` are already in the
/// shards' segments and the checkpoint file, so they are checked but not kept; the first entry
/// kept must then be `checkpoint + 1`. Runs once, before the executors start, so plain
/// blocking I/O is fine here.
pub fn recover(dir: &Path, checkpoint: u64) -> Result<Recovered, WalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut names: Vec<(u64, String)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        if let Some(name) = name.to_str() {
            if let Some(seq) = parse_wal_file_name(name) {
                names.push((seq, name.to_owned()));
            }
        }
    }
    names.sort();
    if names.is_empty() {
        let path = dir.join(WAL_FILE_NAME);
        fs::File::create(&path).map_err(io(&path))?;
        fsync_dir(dir).map_err(io(dir))?;
        names.push((0, WAL_FILE_NAME.to_owned()));
    }
    let mut out = Recovered::default();
    // The index of the newest entry read (kept or not), for the continuity checks.
    let mut last_seen: Option<u64> = None;
    let count = names.len();
    for (position, (seq, name)) in names.into_iter().enumerate() {
        let path = dir.join(&name);
        let is_last = position + 1 == count;
        let mut data = Vec::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io(&path))?;
        let (valid, file_last) =
            read_file(&path, &data, checkpoint, &mut out, &mut last_seen, is_last)?;
        out.files.push(WalFile {
            name,
            seq,
            last_index: file_last,
            bytes: valid as u64,
        });
        if is_last {
            out.end_offset = valid as u64;
            out.truncated_bytes = (data.len() - valid) as u64;
            if out.truncated_bytes > 0 {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(valid as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
        }
    }
    if let Some(first) = out.entries.first() {
        if first.index != checkpoint + 1 {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "the WAL resumes at raft index {} but the checkpoint is at {checkpoint}: \
                     entries are missing",
                    first.index
                ),
            });
        }
    }
    // Raft may not have persisted the commit index past the checkpoint; the checkpoint itself
    // proves those entries committed.
    if out.hard_state.commit < checkpoint {
        out.hard_state.commit = checkpoint;
    }
    Ok(out)
}

/// Reads one WAL file's records into `out`; returns the valid length and the newest entry
/// index in it. A torn tail is tolerated in the last file only: earlier files were synced
/// whole before the next one was started.
fn read_file(
    path: &Path,
    data: &[u8],
    checkpoint: u64,
    out: &mut Recovered,
    last_seen: &mut Option<u64>,
    is_last: bool,
) -> Result<(usize, u64), WalError> {
    let mut offset = 0usize;
    let mut file_last = 0u64;
    while offset < data.len() {
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let torn = |reason: &str| {
            if is_last {
                Ok(())
            } else {
                Err(corrupt(format!(
                    "{reason} in a WAL file that is not the last"
                )))
            }
        };
        if data.len() - offset < HEADER_BYTES {
            torn("incomplete record header")?;
            break;
        }
        let len = u32::from_le_bytes(data[offset..offset + 4].try_into().unwrap());
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap());
        let record_type = data[offset + 8];
        if len > RECORD_BYTES_MAX {
            return Err(corrupt(format!("record length {len} is implausible")));
        }
        let end = offset + HEADER_BYTES + len as usize;
        if end > data.len() {
            // A record cut short by a crash is the last thing in the file. If a whole, valid
            // record follows, this length field was damaged instead: corruption, not a tail.
            if let Some(at) = valid_record_after(data, offset + 1) {
                return Err(corrupt(format!(
                    "record length {len} runs past the end of the file, but a valid record \
                     follows at offset {at}"
                )));
            }
            torn("incomplete record")?;
            break;
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
                if let Some(prev) = *last_seen {
                    // A re-append may go back (raft overwriting a conflicting suffix), never
                    // skip ahead.
                    if e.index > prev + 1 {
                        return Err(corrupt(format!(
                            "entry index {} does not follow {prev}",
                            e.index
                        )));
                    }
                }
                *last_seen = Some(e.index);
                file_last = file_last.max(e.index);
                if e.index > checkpoint {
                    // A re-append at an index replaces that index and everything after it.
                    let keep = out.entries.partition_point(|x| x.index < e.index);
                    out.entries.truncate(keep);
                    out.entries.push(e);
                }
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
    Ok((offset, file_last))
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

/// Writes the bootstrap records of a brand-new member into the last WAL file and syncs them
/// (blocking; start-up only).
pub fn bootstrap(
    dir: &Path,
    recovered: &mut Recovered,
    metadata: Metadata,
) -> Result<(), WalError> {
    let name = &recovered
        .files
        .last()
        .expect("recover leaves a WAL file")
        .name;
    let path = dir.join(name);
    let mut buf = Vec::new();
    frame_metadata(&mut buf, metadata);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
    use std::os::unix::fs::FileExt;
    f.write_all_at(&buf, recovered.end_offset)
        .and_then(|_| f.sync_data())
        .map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
    recovered.end_offset += buf.len() as u64;
    if let Some(last) = recovered.files.last_mut() {
        last.bytes = recovered.end_offset;
    }
    recovered.metadata = Some(metadata);
    Ok(())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The live WAL, owned by the coordinator on core 0. Writes and fdatasyncs happen on a
/// dedicated thread: start-up runs showed glommio file operations (open, fdatasync) whose
/// completion never reached the coordinator, hanging the member before its first Ready. The
/// coordinator hands each Ready's records over and waits on a oneshot, so one
/// Ready is still exactly one write and one fdatasync, and core 0 keeps serving meanwhile.
///
/// At a checkpoint the WAL moves to a new file (`rotate`); once the checkpoint is durable,
/// files whose entries all lie at or below it are removed (`remove_through`).
pub struct Wal {
    jobs: std::sync::mpsc::SyncSender<WalJob>,
    files: Vec<WalFile>,
    /// Bytes in all files: what the WAL costs on disk.
    bytes: u64,
    metadata: Metadata,
}

enum WalJob {
    Append {
        records: Vec<u8>,
        done: futures::channel::oneshot::Sender<std::io::Result<()>>,
    },
    /// Switch to a new file that starts with `head` (synced, with its directory entry).
    Rotate {
        name: String,
        head: Vec<u8>,
    },
    Remove {
        names: Vec<String>,
    },
}

/// Jobs queued for the writer thread: one Ready in flight plus a rotation and a removal.
const WAL_JOBS_MAX: usize = 4;

impl Wal {
    pub async fn open(dir: &Path, recovered: &Recovered) -> Result<Wal, WalError> {
        let last = recovered.files.last().expect("recover leaves a WAL file");
        let path = dir.join(&last.name);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| WalError::Io {
                path: path.clone(),
                source,
            })?;
        let bytes = recovered.files.iter().map(|f| f.bytes).sum();
        let (jobs, rx) = std::sync::mpsc::sync_channel::<WalJob>(WAL_JOBS_MAX);
        let thread_dir = dir.to_path_buf();
        let end_offset = recovered.end_offset;
        std::thread::Builder::new()
            .name("rusd-wal".into())
            .spawn(move || writer(thread_dir, file, end_offset, rx))
            .map_err(|source| WalError::Io { path, source })?;
        Ok(Wal {
            jobs,
            files: recovered.files.clone(),
            bytes,
            metadata: recovered
                .metadata
                .expect("the member's metadata is written before the WAL opens"),
        })
    }

    fn submit(&self, job: WalJob) -> std::io::Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))
    }

    /// Appends already-framed records and makes them durable with exactly one fdatasync.
    /// `last_index` is the newest entry among them (0 if none). A failed rotation or removal
    /// queued before is reported here.
    pub async fn append_and_sync(
        &mut self,
        records: Vec<u8>,
        last_index: u64,
    ) -> std::io::Result<()> {
        let len = records.len() as u64;
        let (done, rx) = futures::channel::oneshot::channel();
        self.submit(WalJob::Append { records, done })?;
        rx.await
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))??;
        self.bytes += len;
        let active = self.files.last_mut().expect("the WAL has a file");
        active.bytes += len;
        active.last_index = active.last_index.max(last_index);
        Ok(())
    }

    /// Starts a new file for entries from `next_index` on, headed by the member metadata and
    /// `hard_state`, so each file can be read without the ones before it.
    pub fn rotate(&mut self, next_index: u64, hard_state: &HardState) -> std::io::Result<()> {
        let seq = self.files.last().map_or(0, |f| f.seq + 1);
        let name = wal_file_name(seq, next_index);
        let mut head = Vec::new();
        frame_metadata(&mut head, self.metadata);
        frame_hard_state(&mut head, hard_state);
        self.bytes += head.len() as u64;
        self.files.push(WalFile {
            name: name.clone(),
            seq,
            last_index: 0,
            bytes: head.len() as u64,
        });
        self.submit(WalJob::Rotate { name, head })
    }

    /// Removes the files (never the active one) whose entries are all at or below `index`: a
    /// checkpoint at `index` is durable, so replay never needs them.
    pub fn remove_through(&mut self, index: u64) -> std::io::Result<()> {
        let active = self.files.len() - 1;
        let mut names = Vec::new();
        let mut kept = Vec::new();
        for (i, f) in self.files.drain(..).enumerate() {
            if i < active && f.last_index <= index {
                self.bytes -= f.bytes;
                names.push(f.name);
            } else {
                kept.push(f);
            }
        }
        self.files = kept;
        if names.is_empty() {
            return Ok(());
        }
        self.submit(WalJob::Remove { names })
    }

    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// The writer thread: runs jobs in order. A failed rotation or removal is kept and returned to
/// the next append, which the coordinator treats as fatal.
fn writer(
    dir: PathBuf,
    mut file: fs::File,
    mut offset: u64,
    rx: std::sync::mpsc::Receiver<WalJob>,
) {
    use std::os::unix::fs::FileExt;
    let mut failed: Option<std::io::Error> = None;
    for job in rx {
        match job {
            WalJob::Append { records, done } => {
                crate::failpoint!("raftBeforeSave");
                let result = match failed.take() {
                    Some(e) => Err(e),
                    None => file
                        .write_all_at(&records, offset)
                        .and_then(|()| file.sync_data()),
                };
                crate::failpoint!("raftAfterSave");
                if result.is_ok() {
                    offset += records.len() as u64;
                }
                let _ = done.send(result);
            }
            WalJob::Rotate { name, head } => {
                let path = dir.join(&name);
                let result = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|f| {
                        f.write_all_at(&head, 0)?;
                        f.sync_data()?;
                        fsync_dir(&dir)?;
                        Ok(f)
                    });
                match result {
                    Ok(f) => {
                        file = f;
                        offset = head.len() as u64;
                    }
                    Err(e) => {
                        failed.get_or_insert(std::io::Error::other(format!(
                            "starting WAL file {name}: {e}"
                        )));
                    }
                }
            }
            WalJob::Remove { names } => {
                let result = names
                    .iter()
                    .try_for_each(|name| fs::remove_file(dir.join(name)))
                    .and_then(|()| fsync_dir(&dir));
                if let Err(e) = result {
                    failed.get_or_insert(std::io::Error::other(format!(
                        "removing old WAL files: {e}"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hard_state(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn files_after_a_checkpoint_resume_at_the_next_index() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        fs::create_dir_all(&wal).unwrap();
        let meta = Metadata {
            member_id: 1,
            cluster_id: 2,
        };
        let mut first = Vec::new();
        frame_metadata(&mut first, meta);
        for i in 1..=10 {
            frame_entry(&mut first, &entry(i, 1, b"x"));
        }
        frame_hard_state(&mut first, &hard_state(1, 10));
        fs::write(wal.join(WAL_FILE_NAME), &first).unwrap();
        let mut second = Vec::new();
        frame_metadata(&mut second, meta);
        frame_hard_state(&mut second, &hard_state(1, 10));
        for i in 11..=15 {
            frame_entry(&mut second, &entry(i, 1, b"y"));
        }
        fs::write(wal.join(wal_file_name(1, 11)), &second).unwrap();

        // A checkpoint at 8: entries 9.. are kept, across both files.
        let r = recover(&wal, 8).unwrap();
        let kept: Vec<u64> = r.entries.iter().map(|e| e.index).collect();
        assert_eq!(kept, (9..=15).collect::<Vec<_>>());
        assert_eq!(r.files.len(), 2);
        assert_eq!((r.files[0].last_index, r.files[1].last_index), (10, 15));
        assert_eq!(r.metadata, Some(meta));

        // The first file removed after a checkpoint at 12: fine.
        fs::remove_file(wal.join(WAL_FILE_NAME)).unwrap();
        let r = recover(&wal, 12).unwrap();
        assert_eq!(r.entries.first().map(|e| e.index), Some(13));
        // ... but with the checkpoint at 5, entries 6..10 are missing: refused.
        let error = recover(&wal, 5).unwrap_err().to_string();
        assert!(error.contains("entries are missing"), "{error}");
        // A commit index behind the checkpoint is raised to it.
        assert!(recover(&wal, 14).unwrap().hard_state.commit >= 14);

        // A torn tail is only acceptable in the last file.
        fs::write(wal.join(WAL_FILE_NAME), &first[..first.len() - 3]).unwrap();
        let error = recover(&wal, 0).unwrap_err().to_string();
        assert!(error.contains("not the last"), "{error}");
    }

    #[test]
    fn recovers_truncates_torn_tail_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let r = recover(&wal, 0).unwrap();
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
        frame_hard_state(&mut buf, &hard_state(2, 2));
        let good_len = buf.len();
        frame_entry(&mut buf, &entry(3, 2, b"torn"));
        buf.truncate(buf.len() - 2);
        fs::write(wal.join(WAL_FILE_NAME), &buf).unwrap();

        let r = recover(&wal, 0).unwrap();
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
        assert!(matches!(recover(&wal, 0), Err(WalError::Corrupt { .. })));
        damaged[second + 2] ^= 0x02;
        fs::write(wal.join(WAL_FILE_NAME), &damaged).unwrap();

        // Flip one payload bit in the second record: start-up must refuse, naming the offset.
        let mut data = fs::read(wal.join(WAL_FILE_NAME)).unwrap();
        let second = HEADER_BYTES + 16;
        data[second + HEADER_BYTES + 1] ^= 0x40;
        fs::write(wal.join(WAL_FILE_NAME), &data).unwrap();
        match recover(&wal, 0) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected corruption error, got {other:?}"),
        }
    }
}
