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
    let data = record.encode();
    let padding = (8 - data.len() % 8) % 8;
    let mut length_field = data.len() as u64;
    if padding != 0 {
        length_field |= (0x80 | padding as u64) << 56;
    }
    out.extend_from_slice(&length_field.to_le_bytes());
    out.extend_from_slice(&data);
    out.resize(out.len() + padding, 0);
}

/// etcd's name for the WAL file with sequence `seq` whose first entry is after `index`.
pub fn file_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}.wal")
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
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
        // Read record by record: etcd preallocates 64 MB per file, mostly zeros.
        let io = |source| WalpbError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len() as usize;
        let mut input = std::io::BufReader::with_capacity(1 << 16, file);
        let mut buffer = Vec::new();
        let is_last = position + 1 == count;
        let mut offset = 0usize;
        while offset + 8 <= file_len {
            let corrupt = |reason: String| WalpbError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason,
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
            let end = start + length as usize;
            if end + padding > file_len {
                if is_last {
                    break; // a torn write
                }
                return Err(corrupt("the record runs past the end of the file".into()));
            }
            buffer.resize(length as usize + padding, 0);
            input.read_exact(&mut buffer).map_err(io)?;
            let bytes = &buffer[..length as usize];
            let torn = is_last && has_zero_sector(bytes, start);
            let record = match Record::decode(bytes) {
                Ok(record) => record,
                Err(_) if torn => break,
                Err(e) => return Err(corrupt(format!("undecodable record: {e}"))),
            };
            if record.record_type == RECORD_CRC {
                if crc != 0 && record.crc != crc {
                    return Err(corrupt(format!(
                        "the file starts from checksum {:#010x}, the previous one ended at \
                         {crc:#010x}",
                        record.crc
                    )));
                }
                crc = record.crc;
            } else {
                crc = crc32c::crc32c_append(crc, &record.data);
                if record.crc != crc {
                    if torn {
                        break;
                    }
                    return Err(corrupt(format!(
                        "checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                        record.crc
                    )));
                }
            }
            match record.record_type {
                RECORD_ENTRY => {
                    let entry = Entry::parse_from_bytes(&record.data)
                        .map_err(|e| corrupt(format!("undecodable raft entry: {e}")))?;
                    if entry.index > after {
                        // A re-append replaces that index and everything after it.
                        let keep = wal.entries.partition_point(|e| e.index < entry.index);
                        wal.entries.truncate(keep);
                        wal.entry_files.truncate(keep);
                        let expected = wal.entries.last().map_or(after + 1, |e| e.index + 1);
                        if entry.index != expected {
                            return Err(corrupt(format!(
                                "raft entry {} follows {}: entries are missing",
                                entry.index,
                                expected - 1
                            )));
                        }
                        wal.entries.push(entry);
                        wal.entry_files.push(path.clone());
                    }
                }
                RECORD_STATE => {
                    wal.hard_state = HardState::parse_from_bytes(&record.data)
                        .map_err(|e| corrupt(format!("undecodable hard state: {e}")))?;
                }
                RECORD_METADATA => {
                    if metadata.as_ref().is_some_and(|m| *m != record.data) {
                        return Err(corrupt("the metadata differs from the first file's".into()));
                    }
                    let decoded = proto::etcdserverpb::Metadata::decode(record.data.as_slice())
                        .map_err(|e| corrupt(format!("undecodable metadata: {e}")))?;
                    wal.member_id = decoded.node_id.unwrap_or(0);
                    wal.cluster_id = decoded.cluster_id.unwrap_or(0);
                    metadata = Some(record.data);
                }
                RECORD_SNAPSHOT | RECORD_CRC => {}
                other => return Err(corrupt(format!("unknown record type {other}"))),
            }
            offset = end + padding;
        }
    }
    if metadata.is_none() {
        return Err(WalpbError::Directory {
            dir: dir.to_path_buf(),
            reason: "no metadata record: this is not an etcd WAL".into(),
        });
    }
    Ok(wal)
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
