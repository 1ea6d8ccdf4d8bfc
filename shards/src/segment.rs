//! The segment log: the shard's append-only record of every version it holds, tagged with raft
//! indexes, from which `open` rebuilds the store; and its incremental garbage collection.
//!
//! Byte layout and recovery rules: docs/segment-format.md. Segments are written without fsync
//! on the critical path; `sync` is the checkpoint the server takes before truncating its WAL.

use std::collections::BTreeMap;
use std::io;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::storage::Storage;
use crate::store::{MvccStore, Version};
use crate::types::{Event, EventKind};

/// Bumped on any incompatible change of a record's payload.
pub const FORMAT_VERSION: u32 = 1;
/// length (u32) + CRC32C (u32) + type (u8).
pub const FRAME_HEADER_BYTES: usize = 9;
/// No record is this large; a length above it is corruption, not a record.
pub const RECORD_PAYLOAD_MAX_BYTES: u32 = 1 << 30;

/// The type byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// First record of every file: format version, sequence and generation.
    Header = 1,
    /// The versions one raft entry produced in this shard.
    Events = 2,
    /// A compaction applied at a raft index.
    Compaction = 3,
    /// Last record of a rewritten segment: the rewrite is complete, and the raft index the
    /// original ended at (its last records may have been dropped).
    Seal = 4,
}

impl RecordType {
    fn from_byte(byte: u8) -> Option<RecordType> {
        [
            RecordType::Header,
            RecordType::Events,
            RecordType::Compaction,
            RecordType::Seal,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct HeaderRecord {
    format_version: u32,
    sequence: u64,
    generation: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct EventRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    sub_revision: i64,
    create_revision: i64,
    version: i64,
    lease: i64,
    tombstone: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct EventsRecord {
    raft_index: u64,
    revision: i64,
    events: Vec<EventRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct CompactionRecord {
    raft_index: u64,
    compact_revision: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct SealRecord {
    raft_index: u64,
    revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment I/O failed on {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    /// Start-up must stop: a record that is not a torn tail failed its checks.
    #[error("segment {file} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// An earlier write or sync failed; what reached the disk is unknown (fsync errors are not
    /// retryable), so the log refuses work until the process restarts and recovers.
    #[error("segment log is unusable after an earlier I/O failure; restart to recover")]
    Poisoned,
}

fn io_error(file: &str) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        file: file.to_owned(),
        source,
    }
}

fn encode<T>(value: &T) -> AlignedVec
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value).expect("serializing into memory cannot fail")
}

/// One framed record: length and CRC32C little-endian, then the type, then the payload.
/// The CRC covers the type byte and the payload.
pub fn frame(kind: RecordType, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("record fits in u32");
    assert!(
        length <= RECORD_PAYLOAD_MAX_BYTES,
        "record of {length} bytes is too large"
    );
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind as u8]), payload);
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.push(kind as u8);
    bytes.extend_from_slice(payload);
    bytes
}

enum Parsed<'a> {
    Record {
        kind: RecordType,
        payload: &'a [u8],
        next: usize,
    },
    End,
    /// The bytes end inside a frame: what a crash during an append leaves.
    Torn,
    Corrupt(String),
}

fn parse_frame(bytes: &[u8], offset: usize) -> Parsed<'_> {
    let rest = &bytes[offset..];
    if rest.is_empty() {
        return Parsed::End;
    }
    if rest.len() < FRAME_HEADER_BYTES {
        return Parsed::Torn;
    }
    let length = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if length > RECORD_PAYLOAD_MAX_BYTES {
        return Parsed::Corrupt(format!("record length {length} is impossible"));
    }
    let end = FRAME_HEADER_BYTES + length as usize;
    if rest.len() < end {
        // A torn append leaves a prefix of its frame. If a shorter extent already matches the
        // checksum, the record is whole and its length field was damaged: that is corruption,
        // and truncating there would silently drop synced records.
        let mut running = crc32c::crc32c(&rest[8..9]);
        for next_byte in FRAME_HEADER_BYTES..=rest.len() {
            if running == crc {
                return Parsed::Corrupt("length field does not match the record".to_owned());
            }
            if next_byte < rest.len() {
                running = crc32c::crc32c_append(running, &rest[next_byte..next_byte + 1]);
            }
        }
        return Parsed::Torn;
    }
    if crc32c::crc32c(&rest[8..end]) != crc {
        return Parsed::Corrupt("checksum mismatch".to_owned());
    }
    match RecordType::from_byte(rest[8]) {
        Some(kind) => Parsed::Record {
            kind,
            payload: &rest[FRAME_HEADER_BYTES..end],
            next: offset + end,
        },
        None => Parsed::Corrupt(format!("unknown record type {}", rest[8])),
    }
}

/// rkyv needs its input aligned; a payload inside a file buffer is not.
fn aligned(payload: &[u8]) -> AlignedVec {
    let mut copy = AlignedVec::with_capacity(payload.len());
    copy.extend_from_slice(payload);
    copy
}

/// The size of a Header frame; its payload has a fixed size.
fn header_frame_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let payload = encode(&HeaderRecord {
            format_version: FORMAT_VERSION,
            sequence: 0,
            generation: 0,
        });
        (FRAME_HEADER_BYTES + payload.len()) as u64
    })
}

fn segment_name(sequence: u64, generation: u32) -> String {
    format!("segment-{sequence:010}-{generation:03}.log")
}

fn parse_segment_name(name: &str) -> Option<(u64, u32)> {
    let middle = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    let (sequence, generation) = middle.split_once('-')?;
    Some((sequence.parse().ok()?, generation.parse().ok()?))
}

fn read_all<S: Storage>(storage: &S, name: &str) -> Result<Vec<u8>, SegmentError> {
    let len = storage.len(name).map_err(io_error(name))?;
    let mut bytes = vec![0u8; usize::try_from(len).expect("segment fits in memory")];
    let mut filled = 0;
    while filled < bytes.len() {
        let read = storage
            .read_at(name, filled as u64, &mut bytes[filled..])
            .map_err(io_error(name))?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    bytes.truncate(filled);
    Ok(bytes)
}

fn is_sealed(bytes: &[u8]) -> bool {
    let mut offset = 0;
    let mut last = None;
    loop {
        match parse_frame(bytes, offset) {
            Parsed::Record { kind, next, .. } => {
                last = Some(kind);
                offset = next;
            }
            Parsed::End => return last == Some(RecordType::Seal),
            Parsed::Torn | Parsed::Corrupt(_) => return false,
        }
    }
}

#[derive(Clone, Debug)]
struct Segment {
    sequence: u64,
    generation: u32,
    name: String,
    len: u64,
    /// Highest raft index of any record in it (0 when none).
    last_raft_index: u64,
    /// Lowest revision of a version in it (i64::MAX when none): whether compaction can matter.
    min_revision: i64,
    max_revision: i64,
    /// The durable compact revision it was last rewritten at.
    rewritten_at: i64,
}

impl Segment {
    fn new(sequence: u64, generation: u32) -> Segment {
        Segment {
            sequence,
            generation,
            name: segment_name(sequence, generation),
            len: 0,
            last_raft_index: 0,
            min_revision: i64::MAX,
            max_revision: 0,
            rewritten_at: 0,
        }
    }

    fn note_events(&mut self, revision: i64, has_events: bool) {
        if has_events {
            self.min_revision = self.min_revision.min(revision);
        }
        self.max_revision = self.max_revision.max(revision);
    }
}

/// A segment rewrite in progress: copy the retained records of `source` into a new
/// generation, a budget of bytes at a time.
#[derive(Debug)]
struct Rewrite {
    sequence: u64,
    source: String,
    target: Segment,
    read_offset: u64,
    /// Records dropped so far; a rewrite that drops nothing is thrown away.
    dropped: bool,
    compact_revision: i64,
}

/// One shard's segment files. Lives on the shard's core.
#[derive(Debug)]
pub struct SegmentLog<S: Storage> {
    storage: S,
    segment_bytes_max: u64,
    /// Ordered by sequence; the last one is the active segment, the only one appended to.
    segments: Vec<Segment>,
    last_raft_index: u64,
    synced_raft_index: u64,
    /// Newest compaction appended, and newest one synced: only the synced one may drop
    /// records from rewritten segments.
    appended_compact_revision: i64,
    durable_compact_revision: i64,
    /// The compaction appended before the last `rotate`: durable once the server confirms
    /// that checkpoint (`checkpoint_saved`).
    rotated_compact_revision: i64,
    rewrite: Option<Rewrite>,
    poisoned: bool,
}

impl<S: Storage> SegmentLog<S> {
    /// Rebuild the store from every segment; returns the log, the store and the last raft index
    /// recorded. A torn tail record of the last segment is truncated; any other damage is an
    /// error naming the file and offset.
    pub fn open(
        storage: S,
        segment_bytes_max: u64,
    ) -> Result<(Self, MvccStore, u64), SegmentError> {
        Self::open_at(storage, segment_bytes_max, None)
    }

    /// `open`, for a server whose durable state is a checkpoint at raft index `checkpoint`:
    /// the store is rebuilt as of that index exactly, because the server replays its WAL from
    /// there. Segments started after that checkpoint (their first record is past it: written
    /// after the rotation a checkpoint ends with, see `rotate`) are removed, and a new active
    /// segment is started so that later records never share a segment with older ones. A
    /// record past the checkpoint inside an older segment breaks that invariant: an error.
    pub fn open_at(
        mut storage: S,
        segment_bytes_max: u64,
        checkpoint: Option<u64>,
    ) -> Result<(Self, MvccStore, u64), SegmentError> {
        let mut generations: BTreeMap<u64, Vec<(u32, String)>> = BTreeMap::new();
        for name in storage.list().map_err(io_error("<segment directory>"))? {
            if let Some((sequence, generation)) = parse_segment_name(&name) {
                generations
                    .entry(sequence)
                    .or_default()
                    .push((generation, name));
            }
        }

        // A rewrite leaves a newer generation beside its source until it is sealed and synced;
        // then the source is removed. Either file may survive a crash in between.
        let mut chosen: Vec<(u64, u32, String, Vec<u8>)> = Vec::new();
        let mut stale = Vec::new();
        for (sequence, mut candidates) in generations {
            candidates.sort_unstable_by_key(|candidate| std::cmp::Reverse(candidate.0));
            let newest = candidates[0].clone();
            let mut picked = None;
            for (generation, name) in candidates {
                if picked.is_some() {
                    stale.push(name);
                    continue;
                }
                let bytes = read_all(&storage, &name)?;
                if generation == 0 || is_sealed(&bytes) {
                    picked = Some((sequence, generation, name, bytes));
                } else {
                    stale.push(name);
                }
            }
            let picked = match picked {
                Some(picked) => picked,
                // Only an unsealed rewrite is left: scan it so the error says what is wrong.
                None => {
                    stale.retain(|name| *name != newest.1);
                    let bytes = read_all(&storage, &newest.1)?;
                    (sequence, newest.0, newest.1, bytes)
                }
            };
            chosen.push(picked);
        }
        if let Some(limit) = checkpoint {
            // Segments are in index order, so those past the checkpoint are a suffix.
            if let Some(first_past) = chosen
                .iter()
                .position(|(_, _, _, bytes)| first_record_index(bytes).is_some_and(|i| i > limit))
            {
                stale.extend(chosen.drain(first_past..).map(|(_, _, name, _)| name));
            }
        }
        for name in stale {
            storage.remove(&name).map_err(io_error(&name))?;
        }

        let mut store = MvccStore::new();
        let mut applied = 0u64;
        let mut segments = Vec::new();
        let chosen_count = chosen.len();
        for (position, (sequence, generation, name, bytes)) in chosen.into_iter().enumerate() {
            let is_last = position + 1 == chosen_count;
            let mut segment = Segment::new(sequence, generation);
            segment.name = name;
            let limit = checkpoint.unwrap_or(u64::MAX);
            let valid_len = replay_segment(
                &mut store,
                &mut applied,
                &mut segment,
                &bytes,
                is_last,
                limit,
            )?;
            if valid_len < bytes.len() as u64 {
                storage
                    .truncate(&segment.name, valid_len)
                    .map_err(io_error(&segment.name))?;
            }
            segment.len = valid_len;
            segments.push(segment);
        }
        let last_raft_index = segments
            .iter()
            .map(|segment| segment.last_raft_index)
            .max()
            .unwrap_or(0);
        // Reclaim in one go: nothing is being served yet, and it makes memory figures exact.
        while store.compaction_step(usize::MAX) {}

        let mut log = SegmentLog {
            storage,
            segment_bytes_max,
            segments,
            last_raft_index,
            synced_raft_index: last_raft_index,
            appended_compact_revision: store.compact_revision(),
            durable_compact_revision: store.compact_revision(),
            rotated_compact_revision: store.compact_revision(),
            rewrite: None,
            poisoned: false,
        };
        match log.segments.last() {
            None => log.start_segment(1)?,
            // A crash right after creating a segment can leave it without its header.
            Some(last) if last.len == 0 => {
                let name = last.name.clone();
                log.storage.remove(&name).map_err(io_error(&name))?;
                let sequence = last.sequence;
                log.segments.pop();
                log.start_segment(sequence)?;
            }
            Some(last) => {
                // What we read may have been only in the page cache; recovery reports it durable.
                let name = last.name.clone();
                log.storage.sync(&name).map_err(io_error(&name))?;
            }
        }
        if checkpoint.is_some() {
            log.rotate()?;
        }
        Ok((log, store, last_raft_index))
    }

    /// The server saved the checkpoint taken by the last `rotate`: the compaction it covers may
    /// now drop records from rewritten segments.
    pub fn checkpoint_saved(&mut self) {
        self.durable_compact_revision = self
            .durable_compact_revision
            .max(self.rotated_compact_revision);
    }

    /// Syncs the active segment and, if it holds any record, starts a new one. The server
    /// rotates at every checkpoint, so each segment lies wholly at or before a checkpoint or
    /// wholly after it, and `open_at` can drop what a crash left past the checkpoint.
    pub fn rotate(&mut self) -> Result<(), SegmentError> {
        self.usable()?;
        let active = self
            .segments
            .last()
            .expect("an open log has an active segment");
        let name = active.name.clone();
        let sequence = active.sequence + 1;
        let has_records = active.len > header_frame_bytes();
        let result = self.storage.sync(&name).map_err(io_error(&name));
        self.guarded(result)?;
        self.synced_raft_index = self.last_raft_index;
        // Not durable for rewrites yet: until the server has saved this checkpoint, a crash
        // restarts from the previous one, which still needs every version this compaction
        // would drop (the WAL replays the puts that depend on them).
        self.rotated_compact_revision = self.appended_compact_revision;
        if has_records {
            let result = self.start_segment(sequence);
            self.guarded(result)?;
        }
        Ok(())
    }

    fn start_segment(&mut self, sequence: u64) -> Result<(), SegmentError> {
        let segment = Segment::new(sequence, 0);
        let header = frame(
            RecordType::Header,
            &encode(&HeaderRecord {
                format_version: FORMAT_VERSION,
                sequence,
                generation: 0,
            }),
        );
        let name = segment.name.clone();
        self.storage.create(&name).map_err(io_error(&name))?;
        self.storage
            .append(&name, &header)
            .map_err(io_error(&name))?;
        self.storage.sync(&name).map_err(io_error(&name))?;
        self.segments.push(Segment {
            len: header.len() as u64,
            ..segment
        });
        Ok(())
    }

    fn usable(&self) -> Result<(), SegmentError> {
        if self.poisoned {
            Err(SegmentError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Runs a storage operation; any failure poisons the log.
    fn guarded<T>(&mut self, result: Result<T, SegmentError>) -> Result<T, SegmentError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_record(
        &mut self,
        kind: RecordType,
        payload: &[u8],
        raft_index: u64,
    ) -> Result<(), SegmentError> {
        let bytes = frame(kind, payload);
        let active = self
            .segments
            .last()
            .expect("an open log has an active segment");
        if active.len > header_frame_bytes()
            && active.len + bytes.len() as u64 > self.segment_bytes_max
        {
            // The finished segment is synced now so that a crash can tear only the last
            // segment's tail: corruption anywhere else is then always an error.
            let name = active.name.clone();
            let sequence = active.sequence + 1;
            let result = self.storage.sync(&name).map_err(io_error(&name));
            self.guarded(result)?;
            let result = self.start_segment(sequence);
            self.guarded(result)?;
        }
        let active = self
            .segments
            .last_mut()
            .expect("an open log has an active segment");
        let name = active.name.clone();
        let result = self.storage.append(&name, &bytes).map_err(io_error(&name));
        self.guarded(result)?;
        let active = self
            .segments
            .last_mut()
            .expect("an open log has an active segment");
        active.len += bytes.len() as u64;
        active.last_raft_index = raft_index;
        self.last_raft_index = raft_index;
        Ok(())
    }

    /// Record the events one raft entry produced (all at `revision`); not synced. An entry at
    /// or below the last recorded raft index is ignored, so WAL replay may overlap the log.
    pub fn append(
        &mut self,
        raft_index: u64,
        revision: i64,
        events: &[Event],
    ) -> Result<(), SegmentError> {
        self.usable()?;
        if raft_index <= self.last_raft_index {
            return Ok(());
        }
        let record = EventsRecord {
            raft_index,
            revision,
            events: events
                .iter()
                .map(|event| {
                    assert_eq!(
                        event.kv.mod_revision, revision,
                        "one entry's events share its revision"
                    );
                    let tombstone = event.kind == EventKind::Delete;
                    EventRecord {
                        key: event.kv.key.to_vec(),
                        value: if tombstone {
                            Vec::new()
                        } else {
                            event.kv.value.to_vec()
                        },
                        sub_revision: event.sub_revision,
                        create_revision: event.kv.create_revision,
                        version: event.kv.version,
                        lease: event.kv.lease,
                        tombstone,
                    }
                })
                .collect(),
        };
        self.write_record(RecordType::Events, &encode(&record), raft_index)?;
        self.segments
            .last_mut()
            .expect("active segment")
            .note_events(revision, !events.is_empty());
        Ok(())
    }

    /// Record a compaction applied at `raft_index`; not synced.
    pub fn append_compaction(
        &mut self,
        raft_index: u64,
        compact_revision: i64,
    ) -> Result<(), SegmentError> {
        self.usable()?;
        if raft_index <= self.last_raft_index {
            return Ok(());
        }
        let record = CompactionRecord {
            raft_index,
            compact_revision,
        };
        self.write_record(RecordType::Compaction, &encode(&record), raft_index)?;
        self.appended_compact_revision = self.appended_compact_revision.max(compact_revision);
        Ok(())
    }

    /// Make everything appended durable; returns the raft index now durable (the checkpoint).
    pub fn sync(&mut self) -> Result<u64, SegmentError> {
        self.usable()?;
        let name = self.segments.last().expect("active segment").name.clone();
        let result = self.storage.sync(&name).map_err(io_error(&name));
        self.guarded(result)?;
        self.synced_raft_index = self.last_raft_index;
        self.durable_compact_revision = self.appended_compact_revision;
        Ok(self.synced_raft_index)
    }

    pub fn synced_raft_index(&self) -> u64 {
        self.synced_raft_index
    }

    /// The newest raft index appended (synced or not).
    pub fn last_raft_index(&self) -> u64 {
        self.last_raft_index
    }

    /// The current segment file names, oldest first.
    pub fn segment_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .map(|segment| segment.name.clone())
            .collect()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    fn next_candidate(&self) -> Option<u64> {
        let (_, sealed) = self.segments.split_last()?;
        sealed
            .iter()
            .find(|segment| {
                segment.min_revision <= self.durable_compact_revision
                    && segment.rewritten_at < self.durable_compact_revision
            })
            .map(|segment| segment.sequence)
    }

    /// Rewrite old segments without the versions compaction dropped, doing at most about
    /// `budget_bytes` of reading per call so that the core's latency stays flat. Returns true
    /// while work is left. Only a compaction that is durable (synced by `sync`, or covered by
    /// a saved checkpoint) drops records, and only while the store has applied no newer one:
    /// the store says which versions that durable compaction keeps only until a newer one
    /// drops more. A restart replays the WAL after the durable point, and the puts it replays
    /// need the versions before them. Rewriting pauses (returns false) until then.
    ///
    /// `store` must be the store this log records (it has applied everything appended).
    pub fn compact_step(
        &mut self,
        store: &MvccStore,
        budget_bytes: u64,
    ) -> Result<bool, SegmentError> {
        self.usable()?;
        let result = self.compact_step_inner(store, budget_bytes);
        self.guarded(result)
    }

    fn compact_step_inner(
        &mut self,
        store: &MvccStore,
        budget_bytes: u64,
    ) -> Result<bool, SegmentError> {
        if store.compact_revision() != self.durable_compact_revision {
            return Ok(false);
        }
        let mut work = 0u64;
        loop {
            if self.rewrite.is_none() {
                let Some(sequence) = self.next_candidate() else {
                    return Ok(false);
                };
                self.start_rewrite(sequence)?;
            }
            if self.copy_records(store, budget_bytes, &mut work)? {
                self.finish_rewrite()?;
            }
            if work >= budget_bytes {
                return Ok(self.rewrite.is_some() || self.next_candidate().is_some());
            }
        }
    }

    fn segment_index(&self, sequence: u64) -> usize {
        self.segments
            .iter()
            .position(|segment| segment.sequence == sequence)
            .expect("segment in the log")
    }

    fn start_rewrite(&mut self, sequence: u64) -> Result<(), SegmentError> {
        let source = &self.segments[self.segment_index(sequence)];
        let generation = source.generation + 1;
        let mut target = Segment::new(sequence, generation);
        target.last_raft_index = source.last_raft_index;
        let header = frame(
            RecordType::Header,
            &encode(&HeaderRecord {
                format_version: FORMAT_VERSION,
                sequence,
                generation,
            }),
        );
        let source = source.name.clone();
        // A crash may have left an unsealed attempt under this name; open removes those, but a
        // failed attempt in this process may not have been.
        if self.storage.len(&target.name).is_ok() {
            self.storage
                .remove(&target.name)
                .map_err(io_error(&target.name))?;
        }
        self.storage
            .create(&target.name)
            .map_err(io_error(&target.name))?;
        self.storage
            .append(&target.name, &header)
            .map_err(io_error(&target.name))?;
        target.len = header.len() as u64;
        let source_len = self.storage.len(&source).map_err(io_error(&source))?;
        let first = read_frame_at(&self.storage, &source, 0, source_len)?;
        self.rewrite = Some(Rewrite {
            sequence,
            source,
            read_offset: first.1,
            target,
            dropped: false,
            compact_revision: self.durable_compact_revision,
        });
        Ok(())
    }

    /// Copies records until the budget is spent; true when the source is exhausted.
    fn copy_records(
        &mut self,
        store: &MvccStore,
        budget_bytes: u64,
        work: &mut u64,
    ) -> Result<bool, SegmentError> {
        let rewrite = self.rewrite.as_mut().expect("a rewrite in progress");
        let source_len = self
            .storage
            .len(&rewrite.source)
            .map_err(io_error(&rewrite.source))?;
        while *work < budget_bytes {
            if rewrite.read_offset >= source_len {
                return Ok(true);
            }
            let ((kind, payload), next) = read_frame_at(
                &self.storage,
                &rewrite.source,
                rewrite.read_offset,
                source_len,
            )?;
            *work += next - rewrite.read_offset;
            let offset = rewrite.read_offset;
            rewrite.read_offset = next;
            let corrupt = |reason: String| SegmentError::Corrupt {
                file: rewrite.source.clone(),
                offset,
                reason,
            };
            let kept = match kind {
                RecordType::Header | RecordType::Seal => {
                    // The target has its own header, and gets a seal for the whole source.
                    None
                }
                RecordType::Compaction => Some(frame(kind, &payload)),
                RecordType::Events => {
                    let mut record = rkyv::from_bytes::<EventsRecord, rancor::Error>(&payload)
                        .map_err(|error| corrupt(format!("undecodable events record: {error}")))?;
                    let before = record.events.len();
                    let compact_revision = rewrite.compact_revision;
                    // A version above the durable compact revision is always kept. At or below
                    // it, the store is the judge; a version it dropped for a newer, not yet
                    // durable compaction is still in the WAL after our checkpoint, so replay
                    // drops it again.
                    record.events.retain(|event| {
                        record.revision > compact_revision
                            || store.is_retained(&event.key, record.revision, event.sub_revision)
                    });
                    if record.events.len() < before {
                        rewrite.dropped = true;
                    }
                    if record.events.is_empty() {
                        rewrite.dropped |= before == 0;
                        None
                    } else {
                        rewrite.target.note_events(record.revision, true);
                        Some(frame(kind, &encode(&record)))
                    }
                }
            };
            if let Some(bytes) = kept {
                self.storage
                    .append(&rewrite.target.name, &bytes)
                    .map_err(io_error(&rewrite.target.name))?;
                rewrite.target.len += bytes.len() as u64;
            }
        }
        Ok(rewrite.read_offset >= source_len)
    }

    fn finish_rewrite(&mut self) -> Result<(), SegmentError> {
        let mut rewrite = self.rewrite.take().expect("a rewrite in progress");
        let index = self.segment_index(rewrite.sequence);
        if !rewrite.dropped {
            self.storage
                .remove(&rewrite.target.name)
                .map_err(io_error(&rewrite.target.name))?;
            self.segments[index].rewritten_at = rewrite.compact_revision;
            return Ok(());
        }
        let seal = frame(
            RecordType::Seal,
            &encode(&SealRecord {
                raft_index: self.segments[index].last_raft_index,
                revision: self.segments[index].max_revision,
            }),
        );
        let name = rewrite.target.name.clone();
        self.storage.append(&name, &seal).map_err(io_error(&name))?;
        self.storage.sync(&name).map_err(io_error(&name))?;
        self.storage
            .remove(&rewrite.source)
            .map_err(io_error(&rewrite.source))?;
        rewrite.target.len += seal.len() as u64;
        rewrite.target.max_revision = self.segments[index].max_revision;
        rewrite.target.rewritten_at = rewrite.compact_revision;
        self.segments[index] = rewrite.target;
        Ok(())
    }
}

/// Reads the frame at `offset` of a file that must be intact (it was validated at open or
/// written by this process): any damage is corruption.
fn read_frame_at<S: Storage>(
    storage: &S,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<((RecordType, Vec<u8>), u64), SegmentError> {
    let corrupt = |reason: &str| SegmentError::Corrupt {
        file: name.to_owned(),
        offset,
        reason: reason.to_owned(),
    };
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if offset + FRAME_HEADER_BYTES as u64 > len {
        return Err(corrupt("incomplete record"));
    }
    storage
        .read_at(name, offset, &mut header)
        .map_err(io_error(name))?;
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    if length > RECORD_PAYLOAD_MAX_BYTES
        || offset + FRAME_HEADER_BYTES as u64 + u64::from(length) > len
    {
        return Err(corrupt("incomplete record"));
    }
    let mut bytes = header.to_vec();
    bytes.resize(FRAME_HEADER_BYTES + length as usize, 0);
    let mut filled = FRAME_HEADER_BYTES;
    while filled < bytes.len() {
        let read = storage
            .read_at(name, offset + filled as u64, &mut bytes[filled..])
            .map_err(io_error(name))?;
        if read == 0 {
            return Err(corrupt("incomplete record"));
        }
        filled += read;
    }
    match parse_frame(&bytes, 0) {
        Parsed::Record {
            kind,
            payload,
            next,
        } => Ok(((kind, payload.to_vec()), offset + next as u64)),
        Parsed::Corrupt(reason) => Err(corrupt(&reason)),
        Parsed::Torn | Parsed::End => Err(corrupt("incomplete record")),
    }
}

/// Applies one segment's records to `store`; returns the length of its valid prefix.
/// The raft index of a segment's first record after its header, if it has one that parses.
fn first_record_index(bytes: &[u8]) -> Option<u64> {
    let mut offset = 0;
    loop {
        let Parsed::Record {
            kind,
            payload,
            next,
        } = parse_frame(bytes, offset)
        else {
            return None;
        };
        let payload = aligned(payload);
        match kind {
            RecordType::Header => offset = next,
            RecordType::Events => {
                let record = rkyv::access::<ArchivedEventsRecord, rancor::Error>(&payload).ok()?;
                return Some(record.raft_index.to_native());
            }
            RecordType::Compaction => {
                let record =
                    rkyv::access::<ArchivedCompactionRecord, rancor::Error>(&payload).ok()?;
                return Some(record.raft_index.to_native());
            }
            RecordType::Seal => {
                let record = rkyv::access::<ArchivedSealRecord, rancor::Error>(&payload).ok()?;
                return Some(record.raft_index.to_native());
            }
        }
    }
}

fn replay_segment(
    store: &mut MvccStore,
    applied: &mut u64,
    segment: &mut Segment,
    bytes: &[u8],
    is_last: bool,
    limit: u64,
) -> Result<u64, SegmentError> {
    let mut offset = 0usize;
    let file = segment.name.clone();
    loop {
        let corrupt = |reason: String| SegmentError::Corrupt {
            file: file.clone(),
            offset: offset as u64,
            reason,
        };
        let past_limit = |raft_index: u64| {
            (raft_index > limit).then(|| {
                corrupt(format!(
                    "record at raft index {raft_index} is past the checkpoint at {limit} in a \
                     segment that starts before it"
                ))
            })
        };
        let (kind, payload, next) = match parse_frame(bytes, offset) {
            Parsed::End => return Ok(offset as u64),
            Parsed::Torn if is_last => return Ok(offset as u64),
            Parsed::Torn => {
                return Err(corrupt(
                    "incomplete record in a segment that is not the last".to_owned(),
                ))
            }
            Parsed::Corrupt(reason) => return Err(corrupt(reason)),
            Parsed::Record {
                kind,
                payload,
                next,
            } => (kind, payload, next),
        };
        let payload = aligned(payload);
        if (offset == 0) != (kind == RecordType::Header) {
            return Err(corrupt(
                "the header must be the first record, and only the first".to_owned(),
            ));
        }
        match kind {
            RecordType::Header => {
                let header = rkyv::access::<ArchivedHeaderRecord, rancor::Error>(&payload)
                    .map_err(|error| corrupt(format!("undecodable header: {error}")))?;
                if header.format_version.to_native() != FORMAT_VERSION {
                    return Err(corrupt(format!(
                        "unsupported format version {}",
                        header.format_version.to_native()
                    )));
                }
                if header.sequence.to_native() != segment.sequence
                    || header.generation.to_native() != segment.generation
                {
                    return Err(corrupt("header does not match the file name".to_owned()));
                }
            }
            RecordType::Events => {
                let record = rkyv::access::<ArchivedEventsRecord, rancor::Error>(&payload)
                    .map_err(|error| corrupt(format!("undecodable events record: {error}")))?;
                let raft_index = record.raft_index.to_native();
                let revision = record.revision.to_native();
                if let Some(error) = past_limit(raft_index) {
                    return Err(error);
                }
                segment.last_raft_index = segment.last_raft_index.max(raft_index);
                segment.note_events(revision, !record.events.is_empty());
                if raft_index > *applied {
                    if !record.events.is_empty()
                        && (revision < store.last_revision()
                            || revision <= store.compact_revision())
                    {
                        return Err(corrupt(format!("revision {revision} goes backwards")));
                    }
                    for event in record.events.iter() {
                        let version = Version {
                            main: revision,
                            sub: event.sub_revision.to_native(),
                            create_revision: event.create_revision.to_native(),
                            version: event.version.to_native(),
                            lease: event.lease.to_native(),
                        };
                        let value = (!event.tombstone).then_some(event.value.as_slice());
                        store.restore_version(event.key.as_slice(), version, value);
                    }
                    *applied = raft_index;
                }
            }
            RecordType::Compaction => {
                let record = rkyv::access::<ArchivedCompactionRecord, rancor::Error>(&payload)
                    .map_err(|error| corrupt(format!("undecodable compaction record: {error}")))?;
                let raft_index = record.raft_index.to_native();
                if let Some(error) = past_limit(raft_index) {
                    return Err(error);
                }
                segment.last_raft_index = segment.last_raft_index.max(raft_index);
                if raft_index > *applied {
                    store.start_compaction(record.compact_revision.to_native());
                    *applied = raft_index;
                }
            }
            RecordType::Seal => {
                let record = rkyv::access::<ArchivedSealRecord, rancor::Error>(&payload)
                    .map_err(|error| corrupt(format!("undecodable seal: {error}")))?;
                let raft_index = record.raft_index.to_native();
                if let Some(error) = past_limit(raft_index) {
                    return Err(error);
                }
                segment.last_raft_index = segment.last_raft_index.max(raft_index);
                segment.max_revision = segment.max_revision.max(record.revision.to_native());
                *applied = (*applied).max(raft_index);
            }
        }
        offset = next;
    }
}
