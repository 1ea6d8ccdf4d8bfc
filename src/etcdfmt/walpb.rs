//! etcd v3.5's WAL format (`member/wal/*.wal`): files named `{seq:016x}-{index:016x}.wal`,
//! each a sequence of frames
//!
//! ```text
//! +---------------------------------+-----------------------------+---------+
//! | length field: u64 little-endian | walpb.Record (protobuf)     | padding |
//! +---------------------------------+-----------------------------+---------+
//! ```
//!
//! The length field's low 56 bits are the record's length; when its top bit is set, bits 56-58
//! give the zero padding that aligns the next frame to 8 bytes. A zero length field is the
//! preallocated (zeroed) end of a file. `walpb.Record` is `type int64 = 1, crc uint32 = 2,
//! data bytes = 3`; `crc` is the CRC-32C of the data of every record so far, rolling across
//! files: each file starts with a CRC record carrying the value the previous file ended with.
//! Types: 1 metadata (`etcdserverpb.Metadata`), 2 raft entry (`raftpb.Entry`), 3 hard state
//! (`raftpb.HardState`), 4 CRC, 5 snapshot marker (`walpb.Snapshot`).
//!
//! This module reads such a directory the way etcd's `wal.ReadAll` does (every file, in order,
//! every checksum verified); a damaged file stops the read with its name and offset. Only a
//! torn write at the end of the last file (a frame cut short, or one holding a zeroed 512-byte
//! sector) is taken as its end.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

pub const RECORD_METADATA: i64 = 1;
pub const RECORD_ENTRY: i64 = 2;
pub const RECORD_STATE: i64 = 3;
pub const RECORD_CRC: i64 = 4;
pub const RECORD_SNAPSHOT: i64 = 5;

/// etcd's `maxWALEntrySizeLimit`: a larger frame is corruption.
const RECORD_BYTES_MAX: u64 = 10 << 20;
const SECTOR_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum WalpbError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt etcd WAL at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{dir}: {reason}")]
    Directory { dir: PathBuf, reason: String },
}

/// One decoded `walpb.Record`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub record_type: i64,
    pub crc: u32,
    pub data: Vec<u8>,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Record {
    /// `walpb.Record` in protobuf wire format; gogo writes `type` and `crc` even when zero.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 16);
        out.push(0x08);
        put_varint(&mut out, self.record_type as u64);
        out.push(0x10);
        put_varint(&mut out, u64::from(self.crc));
        if !self.data.is_empty() {
            out.push(0x1a);
            put_varint(&mut out, self.data.len() as u64);
            out.extend_from_slice(&self.data);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let mut record = Record::default();
        let mut at = 0;
        while at < bytes.len() {
            let tag = read_varint(bytes, &mut at).ok_or("truncated field tag")?;
            match (tag >> 3, tag & 7) {
                (1, 0) => {
                    record.record_type =
                        read_varint(bytes, &mut at).ok_or("truncated record type")? as i64
                }
                (2, 0) => record.crc = read_varint(bytes, &mut at).ok_or("truncated crc")? as u32,
                (3, 2) => {
                    let len = read_varint(bytes, &mut at).ok_or("truncated data length")?;
                    let end = at
                        .checked_add(usize::try_from(len).map_err(|_| "data length overflows")?)
                        .filter(|&end| end <= bytes.len())
                        .ok_or("data runs past the record")?;
                    record.data = bytes[at..end].to_vec();
                    at = end;
                }
                (field, wire) => {
                    return Err(format!("unexpected field {field} (wire type {wire})"))
                }
            }
        }
        Ok(record)
    }
}

/// The frame of one record: length field, record, padding to 8 bytes.
pub fn frame(out: &mut Vec<u8>, record: &Record) {
    frame_parts(out, record.record_type, record.crc, &record.data);
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// The frame of the record `{record_type, crc, data}`, encoded straight into `out` (the WAL's
/// hot path: no intermediate record buffer).
pub fn frame_parts(out: &mut Vec<u8>, record_type: i64, crc: u32, data: &[u8]) {
    let mut len = 1 + varint_len(record_type as u64) + 1 + varint_len(u64::from(crc));
    if !data.is_empty() {
        len += 1 + varint_len(data.len() as u64) + data.len();
    }
    let padding = (8 - len % 8) % 8;
    let mut length_field = len as u64;
    if padding != 0 {
        length_field |= (0x80 | padding as u64) << 56;
    }
    out.reserve(8 + len + padding);
    out.extend_from_slice(&length_field.to_le_bytes());
    out.push(0x08);
    put_varint(out, record_type as u64);
    out.push(0x10);
    put_varint(out, u64::from(crc));
    if !data.is_empty() {
        out.push(0x1a);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
    out.resize(out.len() + padding, 0);
}

/// `walpb.Snapshot`: the raft index and term a snapshot (for rusd: a checkpoint) covers, and
/// the configuration then (a `raftpb.ConfState`, kept encoded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMark {
    pub index: u64,
    pub term: u64,
    pub conf_state: Option<Vec<u8>>,
}

impl SnapshotMark {
    /// As etcd's gogo encoding writes it: `index` and `term` always, `conf_state` if set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.push(0x08);
        put_varint(&mut out, self.index);
        out.push(0x10);
        put_varint(&mut out, self.term);
        if let Some(conf_state) = &self.conf_state {
            out.push(0x1a);
            put_varint(&mut out, conf_state.len() as u64);
            out.extend_from_slice(conf_state);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotMark, String> {
        let mut mark = SnapshotMark::default();
        let mut at = 0;
        while at < bytes.len() {
            let tag = read_varint(bytes, &mut at).ok_or("truncated field tag")?;
            match (tag >> 3, tag & 7) {
                (1, 0) => mark.index = read_varint(bytes, &mut at).ok_or("truncated index")?,
                (2, 0) => mark.term = read_varint(bytes, &mut at).ok_or("truncated term")?,
                (3, 2) => {
                    let len = read_varint(bytes, &mut at).ok_or("truncated conf state")?;
                    let end = at
                        .checked_add(usize::try_from(len).map_err(|_| "length overflows")?)
                        .filter(|&end| end <= bytes.len())
                        .ok_or("conf state runs past the record")?;
                    mark.conf_state = Some(bytes[at..end].to_vec());
                    at = end;
                }
                (field, wire) => {
                    return Err(format!("unexpected field {field} (wire type {wire})"))
                }
            }
        }
        Ok(mark)
    }
}

/// etcd's name for the WAL file with sequence `seq` whose first entry is after `index`.
pub fn file_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}.wal")
}

pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// The `.wal` files of `dir`, by sequence number.
pub fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, WalpbError> {
    let io = |source| WalpbError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some((seq, _)) = entry.file_name().to_str().and_then(parse_file_name) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    for pair in files.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalpbError::Directory {
                dir: dir.to_path_buf(),
                reason: format!(
                    "WAL files are not in sequence: {} is followed by {}",
                    pair[0].1.display(),
                    pair[1].1.display()
                ),
            });
        }
    }
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// What an etcd WAL directory holds.
#[derive(Debug, Default)]
pub struct EtcdWal {
    /// (member ID, cluster ID) from the metadata records.
    pub member_id: u64,
    pub cluster_id: u64,
    pub hard_state: HardState,
    /// Entries after `after`, in index order, later appends of an index replacing the suffix
    /// from it (raft's log truncation), as etcd's `ReadAll` keeps them.
    pub entries: Vec<Entry>,
    /// The file each kept entry was read from, for error messages.
    pub entry_files: Vec<PathBuf>,
}

/// What `scan_file` hands each record to: its type, data and offset in the file.
pub type RecordVisitor<'a> = dyn FnMut(i64, &[u8], u64) -> Result<(), String> + 'a;

/// How a file's scan ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileEnd {
    /// The length of the valid records (where the next record goes).
    pub valid_bytes: u64,
    /// The file's length on disk (preallocated space included).
    pub file_bytes: u64,
    /// A torn record was found at `valid_bytes` (the last file only): its frame's length,
    /// capped at the end of the file.
    pub torn_bytes: Option<u64>,
}

/// Reads one WAL file's records in order, verifying each checksum against the rolling `crc`
/// (updated as it goes), and hands each record's type, data and offset to `visit`; an error
/// from `visit` is reported as corruption at that record. A torn write (a frame cut short, or
/// one holding a zeroed 512-byte sector, as etcd's decoder tells them) ends the scan in the
/// last file and is corruption in any other.
pub fn scan_file(
    path: &Path,
    is_last: bool,
    crc: &mut u32,
    visit: &mut RecordVisitor<'_>,
) -> Result<FileEnd, WalpbError> {
    // Read record by record: etcd preallocates 64 MB per file, mostly zeros.
    let io = |source| WalpbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len() as usize;
    let mut input = std::io::BufReader::with_capacity(1 << 16, file);
    let mut buffer = Vec::new();
    let mut offset = 0usize;
    let mut end = FileEnd {
        file_bytes: file_len as u64,
        ..Default::default()
    };
    while offset + 8 <= file_len {
        let corrupt = |reason: String| WalpbError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let mut torn = |frame_bytes: usize| {
            if is_last {
                end.torn_bytes = Some(frame_bytes.min(file_len - offset) as u64);
                Ok(())
            } else {
                Err(corrupt(
                    "a torn record in a WAL file that is not the last".to_string(),
                ))
            }
        };
        let mut header = [0u8; 8];
        input.read_exact(&mut header).map_err(io)?;
        let length_field = u64::from_le_bytes(header);
        if length_field == 0 {
            break; // the preallocated, zeroed end of the file
        }
        let length = length_field & !(0xff << 56);
        let padding = if length_field >> 63 == 1 {
            ((length_field >> 56) & 0x7) as usize
        } else {
            0
        };
        if length >= RECORD_BYTES_MAX {
            return Err(corrupt(format!("record length {length} is implausible")));
        }
        let start = offset + 8;
        let record_end = start + length as usize;
        let frame_bytes = 8 + length as usize + padding;
        // A torn write is the end of the log only if no chained pair of whole records
        // follows it: records that verify against each other after the damage were written
        // by later, acknowledged writes, so the damage is corruption (a length field or a
        // record changed in place), never a torn tail to cut off.
        if record_end + padding > file_len {
            if let Some(at) = followed(input.get_ref(), offset + 8, file_len).map_err(io)? {
                return Err(corrupt(format!(
                    "record length {length} runs past the end of the file, but whole records \
                     follow at offset {at}"
                )));
            }
            torn(frame_bytes)?;
            break;
        }
        buffer.resize(length as usize + padding, 0);
        input.read_exact(&mut buffer).map_err(io)?;
        let bytes = &buffer[..length as usize];
        let zero_sector = has_zero_sector(bytes, start);
        let record = match Record::decode(bytes) {
            Ok(record) => record,
            Err(e) if zero_sector => {
                if let Some(at) = followed(input.get_ref(), offset + 8, file_len).map_err(io)? {
                    return Err(corrupt(format!(
                        "undecodable record ({e}), and whole records follow at offset {at}"
                    )));
                }
                torn(frame_bytes)?;
                break;
            }
            Err(e) => return Err(corrupt(format!("undecodable record: {e}"))),
        };
        if record.record_type == RECORD_CRC {
            if *crc != 0 && record.crc != *crc {
                return Err(corrupt(format!(
                    "the file starts from checksum {:#010x}, the previous one ended at \
                     {:#010x}",
                    record.crc, *crc
                )));
            }
            *crc = record.crc;
        } else {
            let next = crc32c::crc32c_append(*crc, &record.data);
            if record.crc != next {
                if zero_sector
                    && followed(input.get_ref(), offset + 8, file_len)
                        .map_err(io)?
                        .is_none()
                {
                    torn(frame_bytes)?;
                    break;
                }
                return Err(corrupt(format!(
                    "checksum mismatch (stored {:#010x}, computed {next:#010x})",
                    record.crc
                )));
            }
            *crc = next;
        }
        visit(record.record_type, &record.data, offset as u64).map_err(corrupt)?;
        offset = record_end + padding;
    }
    end.valid_bytes = offset as u64;
    Ok(end)
}

/// Reads every record of every WAL file in `dir`, keeping the entries after index `after`.
pub fn read_dir(dir: &Path, after: u64) -> Result<EtcdWal, WalpbError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(WalpbError::Directory {
            dir: dir.to_path_buf(),
            reason: "no WAL files".into(),
        });
    }
    let mut wal = EtcdWal::default();
    let mut metadata: Option<Vec<u8>> = None;
    let mut crc = 0u32;
    let count = files.len();
    for (position, path) in files.iter().enumerate() {
        let is_last = position + 1 == count;
        scan_file(path, is_last, &mut crc, &mut |record_type, data, _| {
            match record_type {
                RECORD_ENTRY => {
                    let entry = Entry::parse_from_bytes(data)
                        .map_err(|e| format!("undecodable raft entry: {e}"))?;
                    if entry.index > after {
                        // A re-append replaces that index and everything after it.
                        let keep = wal.entries.partition_point(|e| e.index < entry.index);
                        wal.entries.truncate(keep);
                        wal.entry_files.truncate(keep);
                        let expected = wal.entries.last().map_or(after + 1, |e| e.index + 1);
                        if entry.index != expected {
                            return Err(format!(
                                "raft entry {} follows {}: entries are missing",
                                entry.index,
                                expected - 1
                            ));
                        }
                        wal.entries.push(entry);
                        wal.entry_files.push(path.clone());
                    }
                }
                RECORD_STATE => {
                    wal.hard_state = HardState::parse_from_bytes(data)
                        .map_err(|e| format!("undecodable hard state: {e}"))?;
                }
                RECORD_METADATA => {
                    if metadata.as_ref().is_some_and(|m| m.as_slice() != data) {
                        return Err("the metadata differs from the first file's".into());
                    }
                    let decoded = proto::etcdserverpb::Metadata::decode(data)
                        .map_err(|e| format!("undecodable metadata: {e}"))?;
                    wal.member_id = decoded.node_id.unwrap_or(0);
                    wal.cluster_id = decoded.cluster_id.unwrap_or(0);
                    metadata = Some(data.to_vec());
                }
                RECORD_SNAPSHOT => {
                    SnapshotMark::decode(data)
                        .map_err(|e| format!("undecodable snapshot record: {e}"))?;
                }
                RECORD_CRC => {}
                other => return Err(format!("unknown record type {other}")),
            }
            Ok(())
        })?;
    }
    if metadata.is_none() {
        return Err(WalpbError::Directory {
            dir: dir.to_path_buf(),
            reason: "no metadata record: this is not an etcd WAL".into(),
        });
    }
    Ok(wal)
}

/// Where whole records chained to each other start in `file` after `from`, if anywhere.
fn followed(file: &std::fs::File, from: usize, file_len: usize) -> std::io::Result<Option<usize>> {
    use std::os::unix::fs::FileExt as _;
    let mut rest = vec![0u8; file_len.saturating_sub(from)];
    file.read_exact_at(&mut rest, from as u64)?;
    Ok(chained_pair_in(&rest).map(|at| from + at))
}

/// The offset of the first frame in `bytes` (at a multiple of 8, as every frame starts) that
/// holds a whole record of a known type directly followed by another whose checksum continues
/// the first's: proof that records written after it are there.
fn chained_pair_in(bytes: &[u8]) -> Option<usize> {
    let frame_at = |at: usize| -> Option<(Record, usize)> {
        let header = bytes.get(at..at + 8)?;
        let length_field = u64::from_le_bytes(header.try_into().ok()?);
        let length = length_field & !(0xff << 56);
        if length_field == 0 || length >= RECORD_BYTES_MAX {
            return None;
        }
        let padding = if length_field >> 63 == 1 {
            ((length_field >> 56) & 0x7) as usize
        } else {
            0
        };
        let end = at + 8 + length as usize;
        let record = Record::decode(bytes.get(at + 8..end)?).ok()?;
        (RECORD_METADATA..=RECORD_SNAPSHOT)
            .contains(&record.record_type)
            .then_some((record, end + padding))
    };
    let mut at = 0;
    while at + 16 <= bytes.len() {
        if let Some((first, next)) = frame_at(at) {
            if let Some((second, _)) = frame_at(next) {
                let chained = if second.record_type == RECORD_CRC {
                    second.crc == first.crc
                } else {
                    second.crc == crc32c::crc32c_append(first.crc, &second.data)
                };
                if chained {
                    return Some(at);
                }
            }
        }
        at += 8;
    }
    None
}

/// etcd's torn-write test: some 512-byte sector of the record (aligned in the file) is all
/// zeros.
fn has_zero_sector(bytes: &[u8], file_offset: usize) -> bool {
    let mut at = 0;
    let mut offset = file_offset;
    while at < bytes.len() {
        let len = (SECTOR_BYTES - offset % SECTOR_BYTES).min(bytes.len() - at);
        if bytes[at..at + len].iter().all(|&b| b == 0) {
            return true;
        }
        at += len;
        offset += len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_pad_to_eight_bytes_and_records_round_trip() {
        let record = Record {
            record_type: RECORD_ENTRY,
            crc: 0xdead_beef,
            data: vec![1, 2, 3],
        };
        let mut out = Vec::new();
        frame(&mut out, &record);
        assert_eq!(out.len() % 8, 0);
        let length_field = u64::from_le_bytes(out[..8].try_into().unwrap());
        let length = (length_field & !(0xff << 56)) as usize;
        let padding = ((length_field >> 56) & 0x7) as usize;
        assert_eq!(8 + length + padding, out.len());
        assert_eq!(Record::decode(&out[8..8 + length]).unwrap(), record);
    }
}
