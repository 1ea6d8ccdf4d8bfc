//! The write-ahead log, in etcd v3.5's `member/wal` format: raft's entries, hard state,
//! member metadata and checkpoint marks, appended by a writer thread and made durable with one
//! fdatasync per raft Ready (group commit), in files etcd's own tools read.
//!
//! Layout (etcd's `wal` package, v3.5):
//! - files `{seq:016x}-{index:016x}.wal`: the sequence number, then the raft index of the first
//!   entry the file was started for. Each file is preallocated to 64 MB (`SEGMENT_BYTES`,
//!   etcd's `SegmentSizeBytes`); a Ready that takes the file past it ends the file (truncated
//!   to its records) and starts the next one, prepared as `{0,1}.tmp` and renamed into place as
//!   etcd's file pipeline does;
//! - records framed by `etcdfmt::walpb` (8-byte length word with the padding in its top byte,
//!   `walpb.Record{type, crc, data}`), the CRC-32C rolling across records and files;
//! - the first file starts with a CRC record, the metadata (`etcdserverpb.Metadata`, member
//!   and cluster ID) and a snapshot record at index 0; every later file with a CRC record
//!   carrying the previous file's final checksum, the metadata and the current hard state;
//! - entries are `raftpb.Entry`, hard states `raftpb.HardState`;
//! - each durable checkpoint (what truncates rusd's log) is a snapshot record
//!   (`walpb.Snapshot{index, term, conf_state}`), preceded by a `member/snap/*.snap` file (see
//!   `write_snap_file`) so that etcd's tools know where to start reading.
//!
//! Recovery (`recover`) reads from the file holding the entry after the checkpoint on. A torn
//! write at the end of the last file (a frame cut short, or a record with a zeroed 512-byte
//! sector: etcd's test) is zeroed out; any other damage stops start-up naming the file and the
//! offset. Files whose entries all lie at or below a durable checkpoint are released; of
//! those, the oldest are removed while more than `--max-wals` files exist (etcd's purge).
//! A WAL written by an older rusd in its own format is converted once (`wal_legacy`).

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use super::wal_legacy;
use crate::etcdfmt::walpb::{self, SnapshotMark};

/// etcd's `SegmentSizeBytes`: each WAL file is preallocated to this size, and a file is ended
/// once a Ready takes it past it.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The first WAL file of a member (etcd's `wal.Create`).
pub const WAL_FILE_NAME: &str = "0000000000000000-0000000000000000.wal";

/// Where a WAL in rusd's first format goes once converted: `<wal dir>.rusd-legacy`.
pub const LEGACY_SUFFIX: &str = "rusd-legacy";

pub fn wal_file_name(seq: u64, first_index: u64) -> String {
    walpb::file_name(seq, first_index)
}

/// etcd's name of the snapshot file for `term` and `index`.
pub fn snap_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
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
    #[error("wal {0}")]
    Format(#[from] walpb::WalpbError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { path, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Metadata {
    /// `etcdserverpb.Metadata{NodeID, ClusterID}`, both always written (as gogo does).
    fn encode(self) -> Vec<u8> {
        proto::etcdserverpb::Metadata {
            node_id: Some(self.member_id),
            cluster_id: Some(self.cluster_id),
        }
        .encode_to_vec()
    }
}

/// Frames records with the rolling checksum: each record's `crc` is the CRC-32C of the data
/// of every record before it and its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Encoder {
    crc: u32,
}

impl Encoder {
    /// An encoder continuing from `crc` (0 for the first file).
    pub fn new(crc: u32) -> Encoder {
        Encoder { crc }
    }

    pub fn crc(&self) -> u32 {
        self.crc
    }

    fn record(&mut self, out: &mut Vec<u8>, record_type: i64, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        walpb::frame_parts(out, record_type, self.crc, data);
    }

    /// The CRC record that starts every file, carrying the checksum so far.
    pub fn crc_record(&self, out: &mut Vec<u8>) {
        walpb::frame_parts(out, walpb::RECORD_CRC, self.crc, &[]);
    }

    pub fn metadata(&mut self, out: &mut Vec<u8>, metadata: Metadata) {
        self.record(out, walpb::RECORD_METADATA, &metadata.encode());
    }

    pub fn entry(&mut self, out: &mut Vec<u8>, entry: &Entry) {
        let data = entry
            .write_to_bytes()
            .expect("encoding a raft entry cannot fail");
        self.record(out, walpb::RECORD_ENTRY, &data);
    }

    pub fn hard_state(&mut self, out: &mut Vec<u8>, hard_state: &HardState) {
        let data = hard_state
            .write_to_bytes()
            .expect("encoding a hard state cannot fail");
        self.record(out, walpb::RECORD_STATE, &data);
    }

    pub fn snapshot(
        &mut self,
        out: &mut Vec<u8>,
        index: u64,
        term: u64,
        conf_state: Option<&ConfState>,
    ) {
        let mark = SnapshotMark {
            index,
            term,
            conf_state: conf_state.map(|c| {
                c.write_to_bytes()
                    .expect("encoding a conf state cannot fail")
            }),
        };
        self.record(out, walpb::RECORD_SNAPSHOT, &mark.encode());
    }
}

/// One WAL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalFile {
    pub name: String,
    pub seq: u64,
    /// The index in its name: the first entry it was started for.
    pub start_index: u64,
    /// The newest raft index written to it (entries and checkpoint marks; 0 if none).
    pub last_index: u64,
    /// Its records' length: what the log holds, kept here so removals need no stat.
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
    /// The rolling checksum at `end_offset`.
    pub crc: u32,
    /// Bytes of a torn record zeroed at the end of the last file, if any.
    pub truncated_bytes: u64,
    /// The newest raft index in the log (entries and checkpoint marks).
    pub last_index: u64,
    /// Where each term starts, from the checkpoint on: (first index, term).
    pub terms: Vec<(u64, u64)>,
    /// Where a WAL in rusd's first format was moved once converted.
    pub converted_from: Option<PathBuf>,
}

pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

/// `member/snap`, where the `.snap` files go.
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Gives `file` `bytes` of allocated space (etcd's `fileutil.Preallocate` with extension), or
/// at least that length where the filesystem cannot allocate ahead.
fn preallocate(file: &fs::File, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a file descriptor this function borrows; no memory is passed.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if result == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            if file.metadata()?.len() < bytes {
                file.set_len(bytes)?;
            }
            Ok(())
        }
        _ => Err(error),
    }
}

/// The `.wal` files of `dir` by sequence number: (seq, start index, name). Consecutive
/// sequence numbers are required, as etcd does.
fn list_files(dir: &Path) -> Result<Vec<(u64, u64, String)>, WalError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some((seq, index)) = walpb::parse_file_name(&name) {
            names.push((seq, index, name));
        } else if name.ends_with(".tmp") {
            // A file the pipeline prepared but never renamed into place: never part of the log.
            fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    names.sort();
    for pair in names.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::Corrupt {
                path: dir.join(&pair[1].2),
                offset: 0,
                reason: format!("WAL files are not in sequence: it follows {}", pair[0].2),
            });
        }
    }
    Ok(names)
}

/// Reads the WAL in `dir` (creating the directory if needed): the entries after the
/// checkpoint `checkpoint` (its index, term and configuration), the hard state and the
/// metadata. A torn tail of the last file is zeroed. Entries at or below the checkpoint are
/// already in the shards' segments and the checkpoint file: files holding only such entries
/// are not read, and the first entry kept must be the checkpoint's index + 1. A WAL in rusd's
/// first format is converted first (its files moved to `<dir>.rusd-legacy`), with a `.snap`
/// file for the checkpoint in `snap_dir`. Runs once, before the executors start, so plain
/// blocking I/O is fine here.
pub fn recover(
    dir: &Path,
    snap_dir: &Path,
    checkpoint: &SnapshotMetadata,
) -> Result<Recovered, WalError> {
    let staging = sibling(dir, "tmp");
    let legacy = sibling(dir, LEGACY_SUFFIX);
    if !dir.exists() && staging.exists() {
        // A WAL written whole in the staging dir, not yet renamed into place (a conversion or
        // a bootstrap that stopped between its two renames): finish it.
        fs::rename(&staging, dir).map_err(io_error(dir))?;
    } else if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut names = list_files(dir)?;
    let mut converted_from = None;
    if let Some((_, _, first)) = names.first() {
        let path = dir.join(first);
        let mut head = [0u8; 32];
        let read = {
            use std::io::Read as _;
            let mut f = fs::File::open(&path).map_err(io_error(&path))?;
            let mut read = 0;
            while read < head.len() {
                let n = f.read(&mut head[read..]).map_err(io_error(&path))?;
                if n == 0 {
                    break;
                }
                read += n;
            }
            read
        };
        if wal_legacy::is_legacy(&head[..read]) {
            convert_legacy(dir, snap_dir, &names, checkpoint, &legacy)?;
            converted_from = Some(legacy);
            names = list_files(dir)?;
        }
    }
    let mut out = Recovered {
        converted_from,
        terms: vec![(checkpoint.index, checkpoint.term)],
        last_index: checkpoint.index,
        ..Default::default()
    };
    if names.is_empty() {
        return Ok(out);
    }
    // The entries after the checkpoint start in the last file started at or before the entry
    // after it; earlier files hold nothing replay needs.
    let start = names
        .iter()
        .rposition(|(_, index, _)| *index <= checkpoint.index + 1)
        .unwrap_or(0);
    for (position, (seq, index, name)) in names.iter().enumerate().take(start) {
        let path = dir.join(name);
        let bytes = fs::metadata(&path).map_err(io_error(&path))?.len();
        out.files.push(WalFile {
            name: name.clone(),
            seq: *seq,
            start_index: *index,
            last_index: names[position + 1].1.saturating_sub(1).max(*index),
            bytes,
        });
    }
    let mut crc = 0u32;
    // The index of the newest entry read (kept or not), for the continuity checks.
    let mut last_seen: Option<u64> = None;
    let count = names.len();
    for (position, (seq, index, name)) in names.iter().enumerate().skip(start) {
        let path = dir.join(name);
        let is_last = position + 1 == count;
        let mut file_last = 0u64;
        let end = walpb::scan_file(&path, is_last, &mut crc, &mut |record_type, data, _| {
            read_record(
                record_type,
                data,
                checkpoint.index,
                &mut out,
                &mut last_seen,
                &mut file_last,
            )
        })?;
        out.files.push(WalFile {
            name: name.clone(),
            seq: *seq,
            start_index: *index,
            last_index: file_last,
            bytes: end.valid_bytes,
        });
        if is_last {
            out.end_offset = end.valid_bytes;
            out.crc = crc;
            if let Some(torn) = end.torn_bytes {
                out.truncated_bytes = torn;
                zero_to_end(&path, end.valid_bytes, end.file_bytes)?;
            }
        }
    }
    if out.metadata.is_none() {
        return Err(WalError::Corrupt {
            path: dir.join(&names[start].2),
            offset: 0,
            reason: "no metadata record: the WAL's first records are missing".into(),
        });
    }
    if let Some(first) = out.entries.first() {
        if first.index != checkpoint.index + 1 {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "the WAL resumes at raft index {} but the checkpoint is at {}: \
                     entries are missing",
                    first.index, checkpoint.index
                ),
            });
        }
    }
    // Raft may not have persisted the commit index past the checkpoint; the checkpoint itself
    // proves those entries committed.
    if out.hard_state.commit < checkpoint.index {
        out.hard_state.commit = checkpoint.index;
    }
    Ok(out)
}

/// Applies one record to what recovery has gathered.
fn read_record(
    record_type: i64,
    data: &[u8],
    checkpoint: u64,
    out: &mut Recovered,
    last_seen: &mut Option<u64>,
    file_last: &mut u64,
) -> Result<(), String> {
    match record_type {
        walpb::RECORD_ENTRY => {
            let e = Entry::parse_from_bytes(data).map_err(|e| format!("undecodable entry: {e}"))?;
            if let Some(prev) = *last_seen {
                // A re-append may go back (raft overwriting a conflicting suffix), never skip
                // ahead.
                if e.index > prev + 1 {
                    return Err(format!("entry index {} does not follow {prev}", e.index));
                }
            }
            *last_seen = Some(e.index);
            *file_last = (*file_last).max(e.index);
            out.last_index = e.index.max(checkpoint);
            if e.index > checkpoint {
                note_term(&mut out.terms, e.index, e.term);
                // A re-append at an index replaces that index and everything after it.
                let keep = out.entries.partition_point(|x| x.index < e.index);
                out.entries.truncate(keep);
                out.entries.push(e);
            }
        }
        walpb::RECORD_STATE => {
            out.hard_state = HardState::parse_from_bytes(data)
                .map_err(|e| format!("undecodable hard state: {e}"))?;
        }
        walpb::RECORD_METADATA => {
            let decoded = proto::etcdserverpb::Metadata::decode(data)
                .map_err(|e| format!("undecodable metadata: {e}"))?;
            let metadata = Metadata {
                member_id: decoded.node_id.unwrap_or(0),
                cluster_id: decoded.cluster_id.unwrap_or(0),
            };
            if out.metadata.is_some_and(|m| m != metadata) {
                return Err("the metadata differs from an earlier file's".into());
            }
            out.metadata = Some(metadata);
        }
        walpb::RECORD_SNAPSHOT => {
            let mark = SnapshotMark::decode(data)
                .map_err(|e| format!("undecodable snapshot record: {e}"))?;
            if mark.index > checkpoint {
                return Err(format!(
                    "a snapshot record at raft index {} is ahead of the checkpoint at \
                     {checkpoint}",
                    mark.index
                ));
            }
            // Entries after a snapshot resume at the index after it.
            *last_seen = Some(last_seen.map_or(mark.index, |prev| prev.max(mark.index)));
            *file_last = (*file_last).max(mark.index);
            out.last_index = out.last_index.max(mark.index);
        }
        walpb::RECORD_CRC => {}
        other => return Err(format!("unknown record type {other}")),
    }
    Ok(())
}

/// Records that entries from `index` on have `term`, dropping what a re-append replaced.
fn note_term(terms: &mut Vec<(u64, u64)>, index: u64, term: u64) {
    while terms.len() > 1 && terms.last().is_some_and(|&(i, _)| i >= index) {
        terms.pop();
    }
    if terms.last().is_none_or(|&(_, t)| t != term) {
        terms.push((index, term));
    }
}

fn term_at(terms: &[(u64, u64)], index: u64) -> u64 {
    let at = terms.partition_point(|&(i, _)| i <= index);
    if at == 0 {
        0
    } else {
        terms[at - 1].1
    }
}

/// etcd's repair of a torn tail: everything from the last valid record on becomes zeros again
/// (the file keeps its preallocated length), and that is synced.
fn zero_to_end(path: &Path, valid_bytes: u64, file_bytes: u64) -> Result<(), WalError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    f.set_len(valid_bytes).map_err(io_error(path))?;
    if file_bytes > valid_bytes {
        preallocate(&f, file_bytes).map_err(io_error(path))?;
    }
    f.sync_all().map_err(io_error(path))
}

/// Writes a new WAL in `dir` as etcd's `wal.Create` does: the whole first file in
/// `<dir>.tmp` (CRC record, metadata, the snapshot record of `snapshot`, then `entries` and
/// `hard_state` if any), preallocated to `segment_bytes`, synced, then renamed to `dir`
/// (which must be absent or empty). Blocking; start-up and import only.
pub fn create(
    dir: &Path,
    metadata: Metadata,
    snapshot: &SnapshotMetadata,
    entries: &[Entry],
    hard_state: Option<&HardState>,
    segment_bytes: u64,
) -> Result<(), WalError> {
    let staging = sibling(dir, "tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    let mut encoder = Encoder::new(0);
    let mut records = Vec::new();
    encoder.crc_record(&mut records);
    encoder.metadata(&mut records, metadata);
    let conf_state = snapshot.conf_state.as_ref();
    encoder.snapshot(&mut records, snapshot.index, snapshot.term, conf_state);
    for e in entries {
        encoder.entry(&mut records, e);
    }
    if let Some(hs) = hard_state {
        encoder.hard_state(&mut records, hs);
    }
    let path = staging.join(WAL_FILE_NAME);
    let f = fs::File::create(&path).map_err(io_error(&path))?;
    preallocate(&f, segment_bytes).map_err(io_error(&path))?;
    use std::os::unix::fs::FileExt;
    f.write_all_at(&records, 0).map_err(io_error(&path))?;
    f.sync_all().map_err(io_error(&path))?;
    fsync_dir(&staging).map_err(io_error(&staging))?;
    if dir.exists() {
        // Only an empty directory may be replaced (rename fails on one with files).
        fs::remove_dir(dir).map_err(io_error(dir))?;
    }
    fs::rename(&staging, dir).map_err(io_error(dir))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent).map_err(io_error(parent))?;
    }
    Ok(())
}

/// Writes `member/snap/{term}-{index}.snap` as etcd's snapshotter does:
/// `snappb.Snapshot{crc, data}` where `data` is a `raftpb.Snapshot` and `crc` its CRC-32C.
/// rusd's snapshot holds the metadata (index, term, configuration) and no data: the state at
/// the checkpoint is in `member/snap/checkpoint` and the shards' segments, which etcd cannot
/// read anyway. The file is there so that etcd's tools (`etcd-dump-logs`) know which
/// snapshot record of the WAL to start reading from. Written to a `.tmp` file, synced and
/// renamed, so a crash never leaves half a file.
pub fn write_snap_file(snap_dir: &Path, snapshot: &SnapshotMetadata) -> Result<String, WalError> {
    let (name, bytes) = snap_file(snapshot);
    fs::create_dir_all(snap_dir).map_err(io_error(snap_dir))?;
    let path = snap_dir.join(&name);
    let staging = snap_dir.join(format!("{name}.tmp"));
    fs::write(&staging, &bytes)
        .and_then(|()| fs::File::open(&staging)?.sync_all())
        .and_then(|()| fs::rename(&staging, &path))
        .and_then(|()| fsync_dir(snap_dir))
        .map_err(io_error(&path))?;
    Ok(name)
}

/// The name and contents of the `.snap` file for `snapshot`.
fn snap_file(snapshot: &SnapshotMetadata) -> (String, Vec<u8>) {
    let mut raft_snapshot = raft::eraftpb::Snapshot::default();
    *raft_snapshot.mut_metadata() = snapshot.clone();
    let data = raft_snapshot
        .write_to_bytes()
        .expect("encoding a snapshot cannot fail");
    // snappb.Snapshot: crc = 1 (uint32), data = 2 (bytes).
    let mut out = Vec::with_capacity(data.len() + 16);
    out.push(0x08);
    let mut crc = u64::from(crc32c::crc32c(&data));
    while crc >= 0x80 {
        out.push(crc as u8 | 0x80);
        crc >>= 7;
    }
    out.push(crc as u8);
    out.push(0x12);
    let mut len = data.len() as u64;
    while len >= 0x80 {
        out.push(len as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(&data);
    (snap_file_name(snapshot.term, snapshot.index), out)
}

/// The `.snap` files of `snap_dir`, oldest first (etcd's names sort by term, then index).
fn list_snap_files(snap_dir: &Path) -> Result<Vec<String>, WalError> {
    let mut names = Vec::new();
    if !snap_dir.exists() {
        return Ok(names);
    }
    for entry in fs::read_dir(snap_dir).map_err(io_error(snap_dir))? {
        let entry = entry.map_err(io_error(snap_dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if name.ends_with(".snap") && name.len() == 38 {
                names.push(name.to_owned());
            } else if name.ends_with(".snap.tmp") {
                fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Converts a WAL in rusd's first format: its entries after the checkpoint, hard state and
/// metadata are written as a new WAL (etcd's format) in `<dir>.tmp`; then the old directory is
/// moved to `legacy` and the new one takes its place. A crash before the first rename leaves
/// the old WAL as it was; between the two, `recover` finishes the second at the next start.
fn convert_legacy(
    dir: &Path,
    snap_dir: &Path,
    names: &[(u64, u64, String)],
    checkpoint: &SnapshotMetadata,
    legacy: &Path,
) -> Result<(), WalError> {
    if legacy.exists() {
        return Err(WalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason: format!(
                "holds a WAL in rusd's first format, but {} exists too (an earlier \
                 conversion moved the old WAL there); move one of them away",
                legacy.display()
            ),
        });
    }
    let paths: Vec<PathBuf> = names.iter().map(|(_, _, n)| dir.join(n)).collect();
    let old = wal_legacy::read(&paths, checkpoint.index)?;
    let staging = sibling(dir, "tmp");
    if let Some(metadata) = old.metadata {
        let mut entries = old.entries;
        for e in &mut entries {
            super::codec::convert_legacy_entry(e).map_err(|reason| WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!("raft entry {}: {reason}", e.index),
            })?;
        }
        let mut hard_state = old.hard_state;
        hard_state.commit = hard_state.commit.max(checkpoint.index);
        create(
            &staging,
            metadata,
            checkpoint,
            &entries,
            Some(&hard_state),
            SEGMENT_BYTES,
        )?;
        if checkpoint.index > 0 {
            write_snap_file(snap_dir, checkpoint)?;
        }
    }
    fs::rename(dir, legacy).map_err(io_error(dir))?;
    if staging.exists() {
        fs::rename(&staging, dir).map_err(io_error(dir))?;
    } else {
        // An old WAL without even its metadata: the member never started; start afresh.
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent).map_err(io_error(parent))?;
    }
    crate::log_info!(
        "converted the WAL from rusd's first format to etcd's",
        "wal-dir" => dir.display().to_string(),
        "old-files-moved-to" => legacy.display().to_string()
    );
    Ok(())
}

/// Creates the WAL of a brand-new member (etcd's `wal.Create`: metadata and a snapshot record
/// at index 0) and reads it back into `recovered`. Blocking; start-up only.
pub fn bootstrap(
    dir: &Path,
    snap_dir: &Path,
    recovered: &mut Recovered,
    metadata: Metadata,
) -> Result<(), WalError> {
    let start = SnapshotMetadata::default();
    create(dir, metadata, &start, &[], None, SEGMENT_BYTES)?;
    // etcd's data dirs always have `member/snap`; its tools refuse a data dir without one.
    fs::create_dir_all(snap_dir).map_err(io_error(snap_dir))?;
    *recovered = recover(dir, snap_dir, &start)?;
    Ok(())
}

/// How the live WAL lays out and retains its files.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// `member/snap`, where each checkpoint's `.snap` file goes.
    pub snap_dir: PathBuf,
    /// `--max-wals`: WAL files to keep (0 = unlimited); only released files are removed.
    pub max_wal_files: usize,
    /// `--max-snapshots`: `.snap` files to keep (0 = unlimited).
    pub max_snap_files: usize,
    /// Where a file ends and the next starts (`SEGMENT_BYTES`; smaller in tests).
    pub segment_bytes: u64,
}

/// The live WAL, owned by the coordinator on core 0. Writes and fdatasyncs happen on a
/// dedicated thread: start-up runs showed glommio file operations (open, fdatasync) whose
/// completion never reached the coordinator, hanging the member before its first Ready. The
/// coordinator frames each Ready's records (the rolling checksum is its state) and hands them
/// over, waiting on a oneshot, so one Ready is still exactly one write and one fdatasync, and
/// core 0 keeps serving meanwhile.
pub struct Wal {
    jobs: std::sync::mpsc::SyncSender<WalJob>,
    files: Vec<WalFile>,
    /// Bytes in all files' records: what the log holds.
    bytes: u64,
    metadata: Metadata,
    encoder: Encoder,
    /// Where the next record goes in the active file.
    offset: u64,
    /// The newest hard state written (a new file starts with it).
    hard_state: HardState,
    /// The newest raft index written (entries and checkpoint marks).
    last_index: u64,
    terms: Vec<(u64, u64)>,
    snap_files: Vec<String>,
    /// Which of the pipeline's two `.tmp` names the next file is prepared as.
    files_started: u64,
    options: WalOptions,
}

enum WalJob {
    Append {
        records: Vec<u8>,
        done: futures::channel::oneshot::Sender<std::io::Result<()>>,
    },
    /// End the active file at `end` and continue in a new file `name`, prepared as `staging`
    /// (preallocated, starting with `head`, synced) and renamed into place.
    Cut {
        end: u64,
        staging: String,
        name: String,
        head: Vec<u8>,
    },
    /// A durable checkpoint: write its `.snap` file, append and sync its snapshot record, then
    /// remove the WAL and snapshot files retention lets go.
    Checkpoint {
        snap: Option<(String, Vec<u8>)>,
        record: Vec<u8>,
        remove_wal_files: Vec<String>,
        remove_snap_files: Vec<String>,
    },
}

/// Jobs queued for the writer thread: one Ready in flight plus a cut and a checkpoint.
const WAL_JOBS_MAX: usize = 4;

impl Wal {
    pub async fn open(
        dir: &Path,
        recovered: &Recovered,
        options: WalOptions,
    ) -> Result<Wal, WalError> {
        let last = recovered.files.last().expect("recover leaves a WAL file");
        let path = dir.join(&last.name);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let snap_files = list_snap_files(&options.snap_dir)?;
        let bytes = recovered.files.iter().map(|f| f.bytes).sum();
        let (jobs, rx) = std::sync::mpsc::sync_channel::<WalJob>(WAL_JOBS_MAX);
        let thread_dir = dir.to_path_buf();
        let snap_dir = options.snap_dir.clone();
        let end_offset = recovered.end_offset;
        let segment_bytes = options.segment_bytes;
        std::thread::Builder::new()
            .name("rusd-wal".into())
            .spawn(move || writer(thread_dir, snap_dir, segment_bytes, file, end_offset, rx))
            .map_err(io_error(&path))?;
        Ok(Wal {
            jobs,
            files: recovered.files.clone(),
            bytes,
            metadata: recovered
                .metadata
                .expect("the member's metadata is written before the WAL opens"),
            encoder: Encoder::new(recovered.crc),
            offset: recovered.end_offset,
            hard_state: recovered.hard_state.clone(),
            last_index: recovered.last_index,
            terms: recovered.terms.clone(),
            snap_files,
            files_started: 0,
            options,
        })
    }

    fn submit(&self, job: WalJob) -> std::io::Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))
    }

    /// Appends `entries` and `hard_state` and makes them durable with exactly one fdatasync.
    /// A failed cut or checkpoint queued before is reported here. When the active file has
    /// grown past its segment, the next file is started after this write (etcd's cut).
    pub async fn append_and_sync(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> std::io::Result<()> {
        let mut records = Vec::with_capacity(entries.iter().map(|e| e.data.len() + 48).sum());
        for e in entries {
            self.encoder.entry(&mut records, e);
            note_term(&mut self.terms, e.index, e.term);
            self.last_index = e.index;
        }
        if let Some(hs) = hard_state {
            self.encoder.hard_state(&mut records, hs);
            self.hard_state = hs.clone();
        }
        if records.is_empty() {
            return Ok(());
        }
        let len = records.len() as u64;
        let (done, rx) = futures::channel::oneshot::channel();
        self.submit(WalJob::Append { records, done })?;
        rx.await
            .map_err(|_| std::io::Error::other("the WAL writer thread stopped"))??;
        self.offset += len;
        self.bytes += len;
        let active = self.files.last_mut().expect("the WAL has a file");
        active.bytes += len;
        if let Some(last) = entries.last() {
            active.last_index = active.last_index.max(last.index);
        }
        if self.offset >= self.options.segment_bytes {
            self.cut()?;
        }
        Ok(())
    }

    /// Ends the active file and starts the next, named for the entry after the newest,
    /// headed by the running checksum, the metadata and the hard state, so that each file can
    /// be read without the ones before it.
    fn cut(&mut self) -> std::io::Result<()> {
        let seq = self.files.last().map_or(0, |f| f.seq + 1);
        let name = wal_file_name(seq, self.last_index + 1);
        let mut head = Vec::new();
        self.encoder.crc_record(&mut head);
        self.encoder.metadata(&mut head, self.metadata);
        self.encoder.hard_state(&mut head, &self.hard_state);
        let staging = format!("{}.tmp", self.files_started % 2);
        self.files_started += 1;
        self.submit(WalJob::Cut {
            end: self.offset,
            staging,
            name: name.clone(),
            head: head.clone(),
        })?;
        self.bytes += head.len() as u64;
        self.offset = head.len() as u64;
        self.files.push(WalFile {
            name,
            seq,
            start_index: self.last_index + 1,
            last_index: 0,
            bytes: head.len() as u64,
        });
        Ok(())
    }

    /// A checkpoint covering every entry up to `snapshot.index` is durable: records it as a
    /// snapshot record (with its `.snap` file first), releases the files whose entries all
    /// lie at or below it, and removes the oldest released files beyond `--max-wals` and the
    /// oldest `.snap` files beyond `--max-snapshots`. A `snapshot.term` of 0 means the caller
    /// did not know it: the WAL's own record of terms gives it.
    pub fn checkpoint(&mut self, snapshot: &SnapshotMetadata) -> std::io::Result<()> {
        let mut snapshot = snapshot.clone();
        if snapshot.term == 0 {
            snapshot.term = term_at(&self.terms, snapshot.index);
        }
        let index = snapshot.index;
        let mut record = Vec::new();
        self.encoder.snapshot(
            &mut record,
            index,
            snapshot.term,
            snapshot.conf_state.as_ref(),
        );
        let len = record.len() as u64;
        self.offset += len;
        self.bytes += len;
        self.last_index = self.last_index.max(index);
        if let Some(active) = self.files.last_mut() {
            active.bytes += len;
            active.last_index = active.last_index.max(index);
        }
        // Terms before the checkpoint are never asked for again.
        let keep_from = self.terms.partition_point(|&(i, _)| i <= index).max(1) - 1;
        self.terms.drain(..keep_from);

        let snap = (index > 0).then(|| snap_file(&snapshot));
        if let Some((name, _)) = &snap {
            if !self.snap_files.contains(name) {
                self.snap_files.push(name.clone());
            }
        }
        let mut remove_snap_files = Vec::new();
        let max_snaps = self.options.max_snap_files;
        while max_snaps > 0 && self.snap_files.len() > max_snaps {
            remove_snap_files.push(self.snap_files.remove(0));
        }
        let mut remove_wal_files = Vec::new();
        let max_wals = self.options.max_wal_files;
        while max_wals > 0
            && self.files.len() > max_wals
            && self.files.len() > 1
            && self.files[0].last_index <= index
        {
            let file = self.files.remove(0);
            self.bytes -= file.bytes;
            remove_wal_files.push(file.name);
        }
        self.submit(WalJob::Checkpoint {
            snap,
            record,
            remove_wal_files,
            remove_snap_files,
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// The writer thread: runs jobs in order. A failed cut or checkpoint is kept and returned to
/// the next append, which the coordinator treats as fatal.
fn writer(
    dir: PathBuf,
    snap_dir: PathBuf,
    segment_bytes: u64,
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
            WalJob::Cut {
                end,
                staging,
                name,
                head,
            } => {
                let staging = dir.join(staging);
                let result = file
                    .set_len(end)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| {
                        let f = fs::File::create(&staging)?;
                        preallocate(&f, segment_bytes)?;
                        f.write_all_at(&head, 0)?;
                        f.sync_data()?;
                        fs::rename(&staging, dir.join(&name))?;
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
            WalJob::Checkpoint {
                snap,
                record,
                remove_wal_files,
                remove_snap_files,
            } => {
                let result = (|| -> std::io::Result<()> {
                    // The .snap file first, as etcd does: a snapshot record of the WAL then
                    // always has its file.
                    if let Some((name, bytes)) = &snap {
                        fs::create_dir_all(&snap_dir)?;
                        let staging = snap_dir.join(format!("{name}.tmp"));
                        fs::write(&staging, bytes)?;
                        fs::File::open(&staging)?.sync_all()?;
                        fs::rename(&staging, snap_dir.join(name))?;
                        fsync_dir(&snap_dir)?;
                    }
                    file.write_all_at(&record, offset)?;
                    file.sync_data()?;
                    offset += record.len() as u64;
                    for name in &remove_wal_files {
                        fs::remove_file(dir.join(name))?;
                    }
                    if !remove_wal_files.is_empty() {
                        fsync_dir(&dir)?;
                    }
                    for name in &remove_snap_files {
                        match fs::remove_file(snap_dir.join(name)) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    if !remove_snap_files.is_empty() {
                        fsync_dir(&snap_dir)?;
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    failed.get_or_insert(std::io::Error::other(format!(
                        "recording a checkpoint in the WAL: {e}"
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

    fn mark(index: u64, term: u64) -> SnapshotMetadata {
        let mut m = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        m.set_conf_state(ConfState::from((vec![1], vec![])));
        m
    }

    const META: Metadata = Metadata {
        member_id: 0x1234,
        cluster_id: 0x5678,
    };

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Appends, cuts into new files at the segment size, records checkpoints with their
    /// `.snap` files, keeps `max_wal_files` files, and reads it all back as etcd lays it out.
    #[test]
    fn appends_cut_files_checkpoint_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("member/wal");
        let snaps = root.path().join("member/snap");
        let mut recovered = recover(&dir, &snaps, &SnapshotMetadata::default()).unwrap();
        assert!(recovered.files.is_empty() && recovered.metadata.is_none());
        bootstrap(&dir, &snaps, &mut recovered, META).unwrap();
        assert_eq!(names(&dir), vec![WAL_FILE_NAME.to_string()]);
        assert_eq!(
            fs::metadata(dir.join(WAL_FILE_NAME)).unwrap().len(),
            SEGMENT_BYTES
        );
        let options = WalOptions {
            snap_dir: snaps.clone(),
            max_wal_files: 2,
            max_snap_files: 2,
            segment_bytes: 4096,
        };
        let mut wal = futures::executor::block_on(Wal::open(&dir, &recovered, options)).unwrap();
        let payload = vec![7u8; 300];
        for batch in 0..20u64 {
            let entries: Vec<Entry> = (1..=5).map(|i| entry(batch * 5 + i, 2, &payload)).collect();
            let hs = hard_state(2, batch * 5 + 5);
            futures::executor::block_on(wal.append_and_sync(&entries, Some(&hs))).unwrap();
            if batch == 9 || batch == 15 {
                wal.checkpoint(&mark(batch * 5 + 3, 0)).unwrap();
            }
        }
        let files_before_drop = wal.file_count();
        drop(wal);
        // Let the writer thread finish its queue (it ends when the channel closes).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let on_disk: Vec<String> = names(&dir);
        assert_eq!(on_disk.len(), files_before_drop, "{on_disk:?}");
        assert!(
            on_disk.len() >= 2 && !on_disk.contains(&WAL_FILE_NAME.to_string()),
            "the oldest released files go beyond --max-wals: {on_disk:?}"
        );
        let snap_files = names(&snaps);
        assert_eq!(
            snap_files,
            vec![snap_file_name(2, 48), snap_file_name(2, 78)],
            "one .snap file per checkpoint, with the term the WAL knew"
        );
        // A checkpoint at 78: the entries after it, across the remaining files.
        let back = recover(&dir, &snaps, &mark(78, 2)).unwrap();
        let kept: Vec<u64> = back.entries.iter().map(|e| e.index).collect();
        assert_eq!(kept, (79..=100).collect::<Vec<_>>());
        assert_eq!(back.hard_state.commit, 100);
        assert_eq!(back.metadata, Some(META));
        assert_eq!(back.entries[0].data, payload);
        // Every file after the first starts with the checksum the previous one ended at: the
        // importer's reader (etcd's rules) reads the whole directory.
        let etcd = walpb::read_dir(&dir, 78).unwrap();
        assert_eq!(etcd.entries.len(), 22);
        assert_eq!((etcd.member_id, etcd.cluster_id), (0x1234, 0x5678));
        // File names: consecutive sequence numbers, each named for its first entry.
        for name in &on_disk {
            let (_, index) = walpb::parse_file_name(name).unwrap();
            let first = back.files.iter().find(|f| &f.name == name).unwrap();
            assert_eq!(first.start_index, index);
        }
    }

    /// A torn last record is zeroed out and the log goes on before it; damage in the middle
    /// (a flipped bit, a length field that runs over later records) stops recovery naming the
    /// file and the offset.
    #[test]
    fn torn_tail_is_repaired_and_damage_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let snaps = root.path().join("snap");
        let entries: Vec<Entry> = (1..=40).map(|i| entry(i, 1, &[i as u8; 100])).collect();
        create(
            &dir,
            META,
            &SnapshotMetadata::default(),
            &entries,
            Some(&hard_state(1, 40)),
            SEGMENT_BYTES,
        )
        .unwrap();
        let path = dir.join(WAL_FILE_NAME);
        let pristine = fs::read(&path).unwrap();
        let r = recover(&dir, &snaps, &SnapshotMetadata::default()).unwrap();
        assert_eq!(r.entries.len(), 40);
        let end = r.end_offset as usize;
        // The frames: (offset, length) of each.
        let mut frames = Vec::new();
        let mut at = 0;
        while at < end {
            let field = u64::from_le_bytes(pristine[at..at + 8].try_into().unwrap());
            let len = (field & !(0xff << 56)) as usize + ((field >> 56) & 7) as usize;
            frames.push((at, 8 + len));
            at += 8 + len;
        }
        assert_eq!(at, end);

        // The last record (the hard state) torn: its data zeroed as an unwritten sector is.
        let (last, last_len) = *frames.last().unwrap();
        let mut torn = pristine.clone();
        torn[last + 8..last + last_len].fill(0);
        fs::write(&path, &torn).unwrap();
        let r = recover(&dir, &snaps, &SnapshotMetadata::default()).unwrap();
        assert_eq!((r.end_offset, r.entries.len()), (last as u64, 40));
        assert!(r.truncated_bytes > 0);
        let repaired = fs::read(&path).unwrap();
        assert!(repaired[last..].iter().all(|&b| b == 0));
        assert_eq!(repaired.len(), pristine.len(), "the preallocation stays");

        // A bit flipped in an entry in the middle: refused, naming the file and offset.
        let (mid, mid_len) = frames[frames.len() / 2];
        let mut damaged = pristine.clone();
        damaged[mid + mid_len - 20] ^= 0x10;
        fs::write(&path, &damaged).unwrap();
        let error = recover(&dir, &snaps, &SnapshotMetadata::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(WAL_FILE_NAME) && error.contains(&format!("offset {mid}")),
            "{error}"
        );
        // A length field that now runs over the records after it (into the zeroed end): the
        // records it covers are whole and chained, so this is no torn tail.
        let mut damaged = pristine.clone();
        damaged[mid + 2] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        let error = recover(&dir, &snaps, &SnapshotMetadata::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("offset {mid}")), "{error}");
        // Put back, everything is there again.
        fs::write(&path, &pristine).unwrap();
        assert_eq!(
            recover(&dir, &snaps, &SnapshotMetadata::default())
                .unwrap()
                .entries
                .len(),
            40
        );
    }

    /// A WAL written by an older rusd is converted once: its entries after the checkpoint
    /// and its hard state are kept, the old files are moved aside.
    #[test]
    fn converts_a_wal_in_rusds_first_format() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("member/wal");
        let snaps = root.path().join("member/snap");
        fs::create_dir_all(&dir).unwrap();
        let mut first = Vec::new();
        wal_legacy::frame_metadata(&mut first, META);
        let put = |i: u64| {
            super::super::codec::encode_legacy(
                i,
                &super::super::codec::WriteRequest::Compact { revision: i as i64 },
            )
        };
        for i in 1..=10 {
            wal_legacy::frame_entry(&mut first, &entry(i, 2, &put(i)));
        }
        wal_legacy::frame_hard_state(&mut first, &hard_state(2, 10));
        fs::write(dir.join(WAL_FILE_NAME), &first).unwrap();
        let mut second = Vec::new();
        wal_legacy::frame_metadata(&mut second, META);
        wal_legacy::frame_hard_state(&mut second, &hard_state(2, 10));
        for i in 11..=15 {
            wal_legacy::frame_entry(&mut second, &entry(i, 3, &put(i)));
        }
        wal_legacy::frame_hard_state(&mut second, &hard_state(3, 14));
        fs::write(dir.join(wal_file_name(1, 11)), &second).unwrap();

        let r = recover(&dir, &snaps, &mark(8, 2)).unwrap();
        let kept: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(
            kept,
            vec![(9, 2), (10, 2), (11, 3), (12, 3), (13, 3), (14, 3), (15, 3)]
        );
        assert_eq!((r.hard_state.term, r.hard_state.commit), (3, 14));
        // The payloads are etcd's InternalRaftRequest now.
        for e in &r.entries {
            let (id, req) = super::super::codec::decode(&e.data).unwrap();
            assert_eq!(
                (id, req),
                (
                    e.index,
                    super::super::codec::WriteRequest::Compact {
                        revision: e.index as i64
                    }
                )
            );
        }
        assert_eq!(r.metadata, Some(META));
        let legacy = root.path().join("member/wal.rusd-legacy");
        assert_eq!(r.converted_from.as_deref(), Some(legacy.as_path()));
        assert_eq!(
            names(&legacy).len(),
            2,
            "the old files are moved aside whole"
        );
        assert_eq!(names(&dir), vec![WAL_FILE_NAME.to_string()]);
        assert_eq!(names(&snaps), vec![snap_file_name(2, 8)]);
        // The new WAL is etcd's: its reader finds the same entries.
        assert_eq!(walpb::read_dir(&dir, 8).unwrap().entries.len(), 7);
        // And a second start reads it as it is.
        let again = recover(&dir, &snaps, &mark(8, 2)).unwrap();
        assert!(again.converted_from.is_none());
        assert_eq!(again.entries.len(), 7);
    }
}
