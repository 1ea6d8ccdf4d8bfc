//! Snapshots sent from the leader to a follower that is too far behind for the log (or new):
//! the applier's state at one applied index plus every version the shards retain, as a
//! stream of chunks the peer transport carries apart from raft messages.
//!
//! Chunk layout (little-endian), one frame per chunk:
//! ```text
//! header: 0x01 | "rusdsnap" | version u32 (=1) | checkpoint frame (see checkpoint.rs)
//! events: 0x02 | count u32 | count × event
//! end:    0x03 | events u64 | crc32c u32 over every earlier chunk, in order
//! event:  kind u8 (0 put, 1 delete) | key_len u32 | key | value_len u32 | value
//!         | create_revision i64 | mod_revision i64 | version i64 | lease i64 | sub i64
//! ```
//! Events come in (revision, sub-revision) order, so each receiving shard's share is in
//! order too and can be written out as it arrives: the receiver holds one chunk at a time.

use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shards::{Event, EventKind, KeyValue};

use super::checkpoint::{self, CheckpointState};

const MAGIC: &[u8; 8] = b"rusdsnap";
const VERSION: u32 = 1;
const FRAME_HEADER: u8 = 1;
const FRAME_EVENTS: u8 = 2;
const FRAME_END: u8 = 3;
/// Event bytes per chunk: large enough to amortize per-message costs, small enough that a
/// chunk in flight costs little memory on either side.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// No key or value in a snapshot may claim more than this (etcd's request limit is far
/// below); a larger length is corruption.
const FIELD_BYTES_MAX: u32 = 64 << 20;

/// Everything a follower needs to continue from the leader's applied index.
#[derive(Debug)]
pub struct SnapshotImage {
    /// The applier's state; `raft_index` and `raft_term` are the snapshot's.
    pub state: CheckpointState,
    /// Every retained version of every shard, in (revision, sub-revision) order. The values
    /// are shared with the leader's stores, not copied.
    pub events: Vec<Event>,
}

impl SnapshotImage {
    pub fn index(&self) -> u64 {
        self.state.raft_index
    }
}

/// Produces an image's chunks one at a time.
pub struct ImageEncoder {
    image: Rc<SnapshotImage>,
    next_event: usize,
    header_sent: bool,
    done: bool,
    crc: u32,
}

impl ImageEncoder {
    pub fn new(image: Rc<SnapshotImage>) -> Self {
        ImageEncoder {
            image,
            next_event: 0,
            header_sent: false,
            done: false,
            crc: 0,
        }
    }

    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        if !self.header_sent {
            self.header_sent = true;
            out.put_u8(FRAME_HEADER);
            out.put_slice(MAGIC);
            out.put_u32_le(VERSION);
            out.put_slice(&checkpoint::encode_state(&self.image.state));
        } else if self.next_event < self.image.events.len() {
            out.put_u8(FRAME_EVENTS);
            out.put_u32_le(0);
            let mut count = 0u32;
            while self.next_event < self.image.events.len() && out.len() < CHUNK_BYTES {
                put_event(&mut out, &self.image.events[self.next_event]);
                self.next_event += 1;
                count += 1;
            }
            out[1..5].copy_from_slice(&count.to_le_bytes());
        } else {
            self.done = true;
            out.put_u8(FRAME_END);
            out.put_u64_le(self.image.events.len() as u64);
            out.put_u32_le(self.crc);
            return Some(out.freeze());
        }
        self.crc = crc32c::crc32c_append(self.crc, &out);
        Some(out.freeze())
    }
}

impl crate::peer::SnapshotSource for ImageEncoder {
    fn next_chunk(&mut self) -> Option<Bytes> {
        ImageEncoder::next_chunk(self)
    }
}

fn put_event(out: &mut BytesMut, e: &Event) {
    out.put_u8(match e.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.put_u32_le(e.kv.key.len() as u32);
    out.put_slice(&e.kv.key);
    out.put_u32_le(e.kv.value.len() as u32);
    out.put_slice(&e.kv.value);
    out.put_i64_le(e.kv.create_revision);
    out.put_i64_le(e.kv.mod_revision);
    out.put_i64_le(e.kv.version);
    out.put_i64_le(e.kv.lease);
    out.put_i64_le(e.sub_revision);
}

/// What a chunk held.
#[derive(Debug)]
pub enum Chunk {
    Header(Box<CheckpointState>),
    Events(Vec<Event>),
    /// The end, checked: the stream is whole.
    End,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot stream: {0}")]
pub struct TransferError(pub String);

fn bad(what: impl Into<String>) -> TransferError {
    TransferError(what.into())
}

/// Reads a stream chunk by chunk, checking its order, counts and checksum.
#[derive(Default)]
pub struct ImageDecoder {
    header_seen: bool,
    events: u64,
    last_revision: (i64, i64),
    crc: u32,
    ended: bool,
}

impl ImageDecoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Chunk, TransferError> {
        if self.ended {
            return Err(bad("data after the end"));
        }
        let mut buf = chunk;
        let kind = get_u8(&mut buf)?;
        let result = match kind {
            FRAME_HEADER if !self.header_seen => {
                if buf.len() < 12 || &buf[..8] != MAGIC {
                    return Err(bad("not a rusd snapshot"));
                }
                let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
                if version != VERSION {
                    return Err(bad(format!("unsupported version {version}")));
                }
                let state = checkpoint::decode_state(&buf[12..]).map_err(bad)?;
                self.header_seen = true;
                Chunk::Header(Box::new(state))
            }
            FRAME_EVENTS if self.header_seen => {
                let count = get_u32(&mut buf)?;
                let mut events = Vec::with_capacity(count.min(65536) as usize);
                for _ in 0..count {
                    let e = get_event(&mut buf)?;
                    let at = (e.kv.mod_revision, e.sub_revision);
                    if at <= self.last_revision {
                        return Err(bad(format!("revision {at:?} out of order")));
                    }
                    self.last_revision = at;
                    events.push(e);
                }
                if !buf.is_empty() {
                    return Err(bad("trailing bytes in an events chunk"));
                }
                self.events += u64::from(count);
                Chunk::Events(events)
            }
            FRAME_END if self.header_seen => {
                let total = get_u64(&mut buf)?;
                let crc = get_u32(&mut buf)?;
                // Found by tests/fuzz_decoders.rs: bytes after the checksum were ignored, so a
                // damaged end chunk could pass.
                if !buf.is_empty() {
                    return Err(bad("trailing bytes in the end chunk"));
                }
                if total != self.events {
                    return Err(bad(format!(
                        "the end says {total} events, {} came",
                        self.events
                    )));
                }
                if crc != self.crc {
                    return Err(bad("checksum mismatch"));
                }
                self.ended = true;
                return Ok(Chunk::End);
            }
            other => return Err(bad(format!("unexpected frame {other}"))),
        };
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        Ok(result)
    }

    pub fn ended(&self) -> bool {
        self.ended
    }
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, TransferError> {
    if buf.is_empty() {
        return Err(bad("truncated"));
    }
    Ok(buf.get_u8())
}

fn get_u32(buf: &mut &[u8]) -> Result<u32, TransferError> {
    if buf.len() < 4 {
        return Err(bad("truncated"));
    }
    Ok(buf.get_u32_le())
}

fn get_u64(buf: &mut &[u8]) -> Result<u64, TransferError> {
    if buf.len() < 8 {
        return Err(bad("truncated"));
    }
    Ok(buf.get_u64_le())
}

fn get_i64(buf: &mut &[u8]) -> Result<i64, TransferError> {
    if buf.len() < 8 {
        return Err(bad("truncated"));
    }
    Ok(buf.get_i64_le())
}

fn get_field(buf: &mut &[u8]) -> Result<Bytes, TransferError> {
    let n = get_u32(buf)?;
    if n > FIELD_BYTES_MAX || buf.len() < n as usize {
        return Err(bad("truncated or oversized field"));
    }
    let (head, tail) = buf.split_at(n as usize);
    *buf = tail;
    Ok(Bytes::copy_from_slice(head))
}

fn get_event(buf: &mut &[u8]) -> Result<Event, TransferError> {
    let kind = match get_u8(buf)? {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        k => return Err(bad(format!("unknown event kind {k}"))),
    };
    let key = get_field(buf)?;
    let value = get_field(buf)?;
    let create_revision = get_i64(buf)?;
    let mod_revision = get_i64(buf)?;
    let version = get_i64(buf)?;
    let lease = get_i64(buf)?;
    let sub_revision = get_i64(buf)?;
    if key.is_empty() || mod_revision < 1 {
        return Err(bad("an event without a key or revision"));
    }
    Ok(Event {
        kind,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
            lease,
        },
        prev_kv: None,
        sub_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: i64, sub: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(vec![7u8; 100]),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
            sub_revision: sub,
        }
    }

    fn image(n: i64) -> Rc<SnapshotImage> {
        Rc::new(SnapshotImage {
            state: CheckpointState {
                raft_index: 100 + n as u64,
                revision: n + 1,
                ..Default::default()
            },
            events: (2..=n + 1).map(|r| put(&format!("k{r}"), r, 0)).collect(),
        })
    }

    fn chunks(image: Rc<SnapshotImage>) -> Vec<Bytes> {
        let mut enc = ImageEncoder::new(image);
        std::iter::from_fn(|| enc.next_chunk()).collect()
    }

    #[test]
    fn a_stream_round_trips_in_bounded_chunks() {
        let all = chunks(image(10_000));
        assert!(all.len() > 3, "the events span several chunks");
        assert!(all.iter().all(|c| c.len() < CHUNK_BYTES + 1024));
        let mut dec = ImageDecoder::default();
        let mut events = 0;
        for c in &all {
            match dec.feed(c).unwrap() {
                Chunk::Header(state) => assert_eq!(state.raft_index, 10_100),
                Chunk::Events(evs) => events += evs.len(),
                Chunk::End => {}
            }
        }
        assert!(dec.ended());
        assert_eq!(events, 10_000);
    }

    #[test]
    fn damage_is_refused() {
        let all = chunks(image(50));
        // A flipped byte in an events chunk: the checksum at the end catches it even where
        // the decoding does not.
        let mut dec = ImageDecoder::default();
        dec.feed(&all[0]).unwrap();
        let mut damaged = all[1].to_vec();
        let at = damaged.len() - 3;
        damaged[at] ^= 0x40;
        let outcome = dec.feed(&damaged).and_then(|_| dec.feed(&all[2]));
        assert!(outcome.is_err());
        // A lost chunk: the count at the end does not match.
        let mut dec = ImageDecoder::default();
        dec.feed(&all[0]).unwrap();
        assert!(dec.feed(&all[2]).is_err());
        // Events before the header, and truncation anywhere.
        assert!(ImageDecoder::default().feed(&all[1]).is_err());
        for cut in 0..all[0].len() {
            assert!(ImageDecoder::default().feed(&all[0][..cut]).is_err());
        }
    }
}
