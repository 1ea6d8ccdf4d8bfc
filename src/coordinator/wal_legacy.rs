//! The reader of rusd's first WAL format (before the WAL became etcd's), kept so that a data
//! dir written by an older rusd still starts: `wal::recover` converts such a directory once.
//!
//! Record framing (all little-endian): `len: u32, crc32c: u32, type: u8, payload (len bytes)`,
//! the checksum over type and payload. Types: 1 = raft Entry, 2 = HardState (both protobuf),
//! 3 = member metadata (member_id u64, cluster_id u64). Every file starts with a metadata
//! record.

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::wal::{Metadata, WalError};

const HEADER_BYTES: usize = 9;
/// No single record may claim more than this; anything larger is corruption.
const RECORD_BYTES_MAX: u32 = 256 << 20;
const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_METADATA: u8 = 3;

/// What an old-format WAL holds.
#[derive(Debug, Default)]
pub struct LegacyWal {
    pub metadata: Option<Metadata>,
    pub hard_state: HardState,
    /// Entries after the checkpoint, in index order.
    pub entries: Vec<Entry>,
}

/// Whether `data` (the start of a WAL file) is in the old format: its first record is a
/// whole metadata record with a matching checksum, or the file is empty (an old rusd created
/// the first file empty before writing the metadata).
pub fn is_legacy(data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    if data.len() < HEADER_BYTES + 16 {
        return false;
    }
    let len = u32::from_le_bytes(data[..4].try_into().unwrap());
    let crc = u32::from_le_bytes(data[4..8].try_into().unwrap());
    len == 16
        && data[8] == TYPE_METADATA
        && crc32c::crc32c_append(
            crc32c::crc32c(&[TYPE_METADATA]),
            &data[HEADER_BYTES..HEADER_BYTES + 16],
        ) == crc
}

/// Reads old-format files (oldest first), keeping the entries after `checkpoint`. A torn tail
/// of the last file is dropped (it was never acknowledged); a checksum failure anywhere stops
/// start-up naming the file.
pub fn read(files: &[std::path::PathBuf], checkpoint: u64) -> Result<LegacyWal, WalError> {
    let mut out = LegacyWal::default();
    for (position, path) in files.iter().enumerate() {
        let data = std::fs::read(path).map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
        read_file(
            path,
            &data,
            checkpoint,
            &mut out,
            position + 1 == files.len(),
        )?;
    }
    if let Some(first) = out.entries.first() {
        if first.index != checkpoint + 1 {
            return Err(WalError::Corrupt {
                path: files[0].clone(),
                offset: 0,
                reason: format!(
                    "the WAL resumes at raft index {} but the checkpoint is at {checkpoint}: \
                     entries are missing",
                    first.index
                ),
            });
        }
    }
    Ok(out)
}

fn read_file(
    path: &Path,
    data: &[u8],
    checkpoint: u64,
    out: &mut LegacyWal,
    is_last: bool,
) -> Result<(), WalError> {
    let mut offset = 0usize;
    while offset < data.len() {
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let end = if data.len() - offset < HEADER_BYTES {
            None
        } else {
            let len = u32::from_le_bytes(data[offset..offset + 4].try_into().unwrap());
            if len > RECORD_BYTES_MAX {
                return Err(corrupt(format!("record length {len} is implausible")));
            }
            Some(offset + HEADER_BYTES + len as usize).filter(|&end| end <= data.len())
        };
        let Some(end) = end else {
            if is_last {
                break;
            }
            return Err(corrupt(
                "incomplete record in a WAL file that is not the last".into(),
            ));
        };
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap());
        let record_type = data[offset + 8];
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
                if e.index > checkpoint {
                    let keep = out.entries.partition_point(|x| x.index < e.index);
                    out.entries.truncate(keep);
                    if let Some(last) = out.entries.last() {
                        if e.index != last.index + 1 {
                            return Err(corrupt(format!(
                                "entry index {} does not follow {}",
                                e.index, last.index
                            )));
                        }
                    }
                    out.entries.push(e);
                }
            }
            TYPE_HARD_STATE => {
                out.hard_state = HardState::parse_from_bytes(payload)
                    .map_err(|e| corrupt(format!("undecodable hard state: {e}")))?;
            }
            TYPE_METADATA if payload.len() == 16 => {
                out.metadata = Some(Metadata {
                    member_id: u64::from_le_bytes(payload[..8].try_into().unwrap()),
                    cluster_id: u64::from_le_bytes(payload[8..].try_into().unwrap()),
                });
            }
            other => return Err(corrupt(format!("unknown record type {other}"))),
        }
        offset = end;
    }
    Ok(())
}

/// The old format's framing, for tests that build a data dir as an older rusd wrote it.
pub fn frame(out: &mut Vec<u8>, record_type: u8, payload: &[u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[record_type]), payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(record_type);
    out.extend_from_slice(payload);
}

pub fn frame_entry(out: &mut Vec<u8>, e: &Entry) {
    frame(out, TYPE_ENTRY, &e.write_to_bytes().unwrap());
}

pub fn frame_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    frame(out, TYPE_HARD_STATE, &hs.write_to_bytes().unwrap());
}

pub fn frame_metadata(out: &mut Vec<u8>, m: Metadata) {
    let mut payload = m.member_id.to_le_bytes().to_vec();
    payload.extend_from_slice(&m.cluster_id.to_le_bytes());
    frame(out, TYPE_METADATA, &payload);
}
