//! bbolt's page format (go.etcd.io/bbolt v1.3, the version etcd v3.5 links): a reader that
//! walks the buckets of a database file page by page, and a writer that bulk-loads sorted
//! buckets into a new file as a stream of pages, with bounded memory.
//!
//! The layout, all integers little-endian (bbolt writes its structs in host order, and etcd
//! only runs on little-endian machines; see docs/etcd-formats.md for the byte diagrams):
//!
//! - every page starts with `id u64 | flags u16 | count u16 | overflow u32`; a page with
//!   `overflow = n` spans n + 1 consecutive pages;
//! - pages 0 and 1 are meta pages: `magic u32 | version u32 | page_size u32 | flags u32 |
//!   root {pgid u64, sequence u64} | freelist pgid u64 | high-water pgid u64 | txid u64 |
//!   checksum u64` (FNV-1a 64 over the 56 bytes before the checksum); the valid one with the
//!   higher txid is in force;
//! - leaf pages hold `count` elements `flags u32 | pos u32 | ksize u32 | vsize u32`, branch
//!   pages `pos u32 | ksize u32 | pgid u64`; `pos` is the offset of the key from the element
//!   itself, and a leaf's value follows its key;
//! - a leaf element with flag 1 is a sub-bucket: its value is `root pgid u64 | sequence u64`,
//!   followed, when the root is 0, by the bucket's single inline leaf page;
//! - a freelist page lists free page ids (`u64` each; a count of 0xFFFF means the real count is
//!   the first u64).
//!
//! The writer never needs the whole database in memory: leaves are packed as elements arrive
//! in key order and emitted at once, and only each page's first key is kept to build the branch
//! levels at the end. The same packing runs in a planning pass over sizes alone, so the total
//! size (and every page id) is known before the first byte is written.

use std::fmt;

/// The page size rusd writes (the OS page size on the machines etcd supports, and what etcd
/// writes there). Files with another page size are read as they say.
pub const PAGE_SIZE: usize = 4096;
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;

const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const META_BYTES: usize = 64;
const META_CHECKSUM_OFFSET: usize = 56;
const BUCKET_HEADER_BYTES: usize = 16;

const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// A leaf element that is a nested bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
/// bbolt's marker for "the freelist is not stored" (NoFreelistSync).
const NO_FREELIST: u64 = u64::MAX;
/// Trees deeper than this are corrupt: with at least two keys per branch page, a real tree
/// of 2^64 pages is far shallower.
const DEPTH_MAX: usize = 64;
/// Smallest and largest page sizes accepted in a meta page.
const PAGE_SIZE_MIN: u32 = 512;
const PAGE_SIZE_MAX: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file} is not a valid bbolt database: {reason}")]
    Corrupt { file: String, reason: String },
}

/// Random access to the bytes of a database file.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn size_bytes(&self) -> std::io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size_bytes(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.get(start..start.saturating_add(buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn size_bytes(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn size_bytes(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The meta page in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub root: u64,
    pub freelist: u64,
    /// The high-water mark: pages at and above it are not part of the database.
    pub page_count: u64,
    pub txid: u64,
}

impl Meta {
    fn parse(page: &[u8]) -> Result<Meta, String> {
        let meta = &page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES];
        if u32_at(meta, 0) != MAGIC {
            return Err("bad magic number".into());
        }
        if u32_at(meta, 4) != VERSION {
            return Err(format!("unsupported bbolt version {}", u32_at(meta, 4)));
        }
        if u64_at(meta, META_CHECKSUM_OFFSET) != fnv1a64(&meta[..META_CHECKSUM_OFFSET]) {
            return Err("meta page checksum mismatch".into());
        }
        Ok(Meta {
            page_size: u32_at(meta, 8),
            root: u64_at(meta, 16),
            freelist: u64_at(meta, 32),
            page_count: u64_at(meta, 40),
            txid: u64_at(meta, 48),
        })
    }

    /// The meta page `pgid` (0 or 1) as bbolt writes it.
    fn page(&self, pgid: u64, txid: u64) -> Vec<u8> {
        let mut page = vec![0u8; self.page_size as usize];
        page[0..8].copy_from_slice(&pgid.to_le_bytes());
        page[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
        let meta = &mut page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES];
        meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
        meta[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        meta[16..24].copy_from_slice(&self.root.to_le_bytes());
        meta[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        meta[40..48].copy_from_slice(&self.page_count.to_le_bytes());
        meta[48..56].copy_from_slice(&txid.to_le_bytes());
        let checksum = fnv1a64(&meta[..META_CHECKSUM_OFFSET]);
        meta[56..64].copy_from_slice(&checksum.to_le_bytes());
        page
    }
}

/// Where a bucket's tree lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketRoot {
    Page(u64),
    /// A small bucket stored inside its parent's leaf: the page bytes.
    Inline(Vec<u8>),
}

/// One element of a leaf, as the walk hands it out.
pub struct Element<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub is_bucket: bool,
}

/// A bbolt database opened for reading. Pages are read on demand, so memory stays at a few
/// pages whatever the file's size.
pub struct Reader<R: ReadAt> {
    source: R,
    file: String,
    meta: Meta,
}

impl<R: ReadAt> Reader<R> {
    /// Reads and checks the meta pages. `file` names the database in errors.
    pub fn open(source: R, file: impl Into<String>) -> Result<Reader<R>, BoltError> {
        let file = file.into();
        let size = source.size_bytes().map_err(|source| BoltError::Io {
            file: file.clone(),
            source,
        })?;
        let corrupt = |reason: String| BoltError::Corrupt {
            file: file.clone(),
            reason,
        };
        let header_bytes = (PAGE_HEADER_BYTES + META_BYTES) as u64;
        if size < header_bytes {
            return Err(corrupt(format!("only {size} bytes")));
        }
        let mut first = vec![0u8; PAGE_HEADER_BYTES + META_BYTES];
        source
            .read_exact_at(&mut first, 0)
            .map_err(|e| corrupt(format!("reading meta page 0: {e}")))?;
        // The page size comes from meta 0; if it is damaged, try the usual size for meta 1.
        let meta0 = Meta::parse(&first);
        let page_size = match &meta0 {
            Ok(m) => m.page_size,
            Err(_) => PAGE_SIZE as u32,
        };
        if !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(corrupt(format!("implausible page size {page_size}")));
        }
        let mut second = vec![0u8; PAGE_HEADER_BYTES + META_BYTES];
        let meta1 = source
            .read_exact_at(&mut second, u64::from(page_size))
            .map_err(|e| format!("reading meta page 1: {e}"))
            .and_then(|()| Meta::parse(&second));
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => return Err(corrupt(format!("meta page 0: {a}; meta page 1: {b}"))),
        };
        if meta.page_size != page_size {
            return Err(corrupt("the meta pages disagree on the page size".into()));
        }
        let needed = meta.page_count * u64::from(page_size);
        if size < needed {
            return Err(corrupt(format!(
                "truncated: {size} bytes, but the meta page says {} pages of {page_size} bytes \
                 ({needed} bytes)",
                meta.page_count
            )));
        }
        if meta.root >= meta.page_count || meta.root < 2 {
            return Err(corrupt(format!("root page {} out of range", meta.root)));
        }
        Ok(Reader { source, file, meta })
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    fn corrupt(&self, reason: String) -> BoltError {
        BoltError::Corrupt {
            file: self.file.clone(),
            reason,
        }
    }

    /// Page `pgid` with its overflow pages, checked against the file's bounds.
    fn page(&self, pgid: u64) -> Result<Vec<u8>, BoltError> {
        let page_size = u64::from(self.meta.page_size);
        if pgid < 2 || pgid >= self.meta.page_count {
            return Err(self.corrupt(format!(
                "page {pgid} is out of range (the database has {} pages)",
                self.meta.page_count
            )));
        }
        let mut header = [0u8; PAGE_HEADER_BYTES];
        self.source
            .read_exact_at(&mut header, pgid * page_size)
            .map_err(|e| self.corrupt(format!("reading page {pgid}: {e}")))?;
        if u64_at(&header, 0) != pgid {
            return Err(self.corrupt(format!(
                "page {pgid} says it is page {}",
                u64_at(&header, 0)
            )));
        }
        let overflow = u64::from(u32_at(&header, 12));
        if pgid + overflow >= self.meta.page_count {
            return Err(self.corrupt(format!(
                "page {pgid} overflows past the last page ({overflow} overflow pages)"
            )));
        }
        let mut page = vec![0u8; ((overflow + 1) * page_size) as usize];
        self.source
            .read_exact_at(&mut page, pgid * page_size)
            .map_err(|e| self.corrupt(format!("reading page {pgid}: {e}")))?;
        Ok(page)
    }

    /// The top-level buckets, by name.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, BoltError> {
        let mut out = Vec::new();
        self.walk(&BucketRoot::Page(self.meta.root), &mut |e| {
            if e.is_bucket {
                out.push((
                    e.key.to_vec(),
                    bucket_root(e.value).map_err(|r| r.to_string())?,
                ));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>, BoltError> {
        Ok(self
            .buckets()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, root)| root))
    }

    /// Calls `visit` on every element of the bucket in key order. An error from `visit` stops
    /// the walk and is reported as corruption of this file (it is the caller's verdict on what
    /// it read).
    pub fn walk(
        &self,
        root: &BucketRoot,
        visit: &mut dyn FnMut(Element<'_>) -> Result<(), String>,
    ) -> Result<(), BoltError> {
        match root {
            BucketRoot::Inline(page) => self.walk_page(page, None, 0, visit),
            BucketRoot::Page(pgid) => {
                let page = self.page(*pgid)?;
                self.walk_page(&page, Some(*pgid), 0, visit)
            }
        }
    }

    fn walk_page(
        &self,
        page: &[u8],
        pgid: Option<u64>,
        depth: usize,
        visit: &mut dyn FnMut(Element<'_>) -> Result<(), String>,
    ) -> Result<(), BoltError> {
        let name = pgid.map_or("an inline page".to_string(), |p| format!("page {p}"));
        if depth > DEPTH_MAX {
            return Err(self.corrupt(format!("{name}: the tree is deeper than {DEPTH_MAX}")));
        }
        if page.len() < PAGE_HEADER_BYTES {
            return Err(self.corrupt(format!("{name}: shorter than a page header")));
        }
        let flags = u16_at(page, 8);
        let count = usize::from(u16_at(page, 10));
        let elements_end = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        if elements_end > page.len() {
            return Err(self.corrupt(format!("{name}: {count} elements do not fit")));
        }
        let slice = |at: usize, pos: u32, len: u32| -> Result<&[u8], BoltError> {
            let start = at + pos as usize;
            page.get(start..start + len as usize)
                .ok_or_else(|| self.corrupt(format!("{name}: an element points past the page")))
        };
        match flags {
            FLAG_LEAF => {
                for i in 0..count {
                    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                    let element_flags = u32_at(page, at);
                    let pos = u32_at(page, at + 4);
                    let key_len = u32_at(page, at + 8);
                    let value_len = u32_at(page, at + 12);
                    let key = slice(at, pos, key_len)?;
                    let value = slice(at, pos + key_len, value_len)?;
                    visit(Element {
                        key,
                        value,
                        is_bucket: element_flags & BUCKET_LEAF_FLAG != 0,
                    })
                    .map_err(|reason| self.corrupt(reason))?;
                }
                Ok(())
            }
            FLAG_BRANCH => {
                for i in 0..count {
                    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                    let child = u64_at(page, at + 8);
                    if Some(child) == pgid {
                        return Err(self.corrupt(format!("{name} points to itself")));
                    }
                    let child_page = self.page(child)?;
                    self.walk_page(&child_page, Some(child), depth + 1, visit)?;
                }
                Ok(())
            }
            other => Err(self.corrupt(format!(
                "{name} has flags {other:#x}, expected a branch or leaf page"
            ))),
        }
    }
}

/// The root of a nested bucket from its leaf value.
pub fn bucket_root(value: &[u8]) -> Result<BucketRoot, &'static str> {
    if value.len() < BUCKET_HEADER_BYTES {
        return Err("a bucket header is cut short");
    }
    match u64_at(value, 0) {
        0 => Ok(BucketRoot::Inline(value[BUCKET_HEADER_BYTES..].to_vec())),
        pgid => Ok(BucketRoot::Page(pgid)),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Where written pages go (`None` while planning).
type Sink<'s> = Option<&'s mut dyn FnMut(&[u8])>;

/// Packs the elements of one tree level into pages, in key order.
///
/// In planning mode (`emit` is `None`) only sizes matter; in writing mode every closed page is
/// handed to the sink. Both modes take the same decisions from the same sizes, so a plan
/// predicts the written file exactly.
struct LevelPacker {
    page_size: usize,
    leaf: bool,
    /// Element headers of the open page: (flags, key length, value length or child pgid).
    elements: Vec<(u32, u32, u64)>,
    /// Keys and values of the open page, back to back.
    data: Vec<u8>,
    /// Bytes the open page needs so far (header, elements, data).
    used: usize,
    /// First key and pgid of every closed page: what the level above is built from.
    firsts: Vec<(Vec<u8>, u64)>,
    /// The first key of the open page.
    open_first: Vec<u8>,
    next_pgid: u64,
}

impl LevelPacker {
    fn new(page_size: usize, leaf: bool, first_pgid: u64) -> LevelPacker {
        LevelPacker {
            page_size,
            leaf,
            elements: Vec::new(),
            data: Vec::new(),
            used: PAGE_HEADER_BYTES,
            firsts: Vec::new(),
            open_first: Vec::new(),
            next_pgid: first_pgid,
        }
    }

    /// Adds one element. `value` is `None` when planning (only `value_len` counts).
    fn push(
        &mut self,
        flags: u32,
        key: &[u8],
        value_len: usize,
        value: Option<&[u8]>,
        child: u64,
        emit: &mut Sink<'_>,
    ) {
        assert!(!key.is_empty(), "bbolt keys are never empty");
        let size = ELEMENT_BYTES + key.len() + if self.leaf { value_len } else { 0 };
        if !self.elements.is_empty() && self.used + size > self.page_size {
            self.close(emit);
        }
        if self.elements.is_empty() {
            self.open_first.clear();
            self.open_first.extend_from_slice(key);
        }
        self.used += size;
        let third = if self.leaf { value_len as u64 } else { child };
        self.elements.push((flags, key.len() as u32, third));
        if emit.is_some() {
            self.data.extend_from_slice(key);
            if self.leaf {
                let value = value.expect("writing needs the value");
                assert_eq!(
                    value.len(),
                    value_len,
                    "the planned and written sizes agree"
                );
                self.data.extend_from_slice(value);
            }
        }
    }

    /// Closes the open page (if any element is in it): assigns its pgid and emits it.
    fn close(&mut self, emit: &mut Sink<'_>) {
        if self.elements.is_empty() {
            return;
        }
        let pages = self.used.div_ceil(self.page_size);
        let pgid = self.next_pgid;
        self.next_pgid += pages as u64;
        if let Some(emit) = emit {
            let mut page = vec![0u8; pages * self.page_size];
            page[0..8].copy_from_slice(&pgid.to_le_bytes());
            let flags = if self.leaf { FLAG_LEAF } else { FLAG_BRANCH };
            page[8..10].copy_from_slice(&flags.to_le_bytes());
            page[10..12].copy_from_slice(&(self.elements.len() as u16).to_le_bytes());
            page[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
            let mut data_at = PAGE_HEADER_BYTES + self.elements.len() * ELEMENT_BYTES;
            let mut read = 0;
            for (i, &(element_flags, key_len, third)) in self.elements.iter().enumerate() {
                let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                let pos = (data_at - at) as u32;
                let len = if self.leaf {
                    page[at..at + 4].copy_from_slice(&element_flags.to_le_bytes());
                    page[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                    page[at + 8..at + 12].copy_from_slice(&key_len.to_le_bytes());
                    page[at + 12..at + 16].copy_from_slice(&(third as u32).to_le_bytes());
                    key_len as usize + third as usize
                } else {
                    page[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                    page[at + 4..at + 8].copy_from_slice(&key_len.to_le_bytes());
                    page[at + 8..at + 16].copy_from_slice(&third.to_le_bytes());
                    key_len as usize
                };
                page[data_at..data_at + len].copy_from_slice(&self.data[read..read + len]);
                data_at += len;
                read += len;
            }
            emit(&page);
        }
        self.firsts
            .push((std::mem::take(&mut self.open_first), pgid));
        self.elements.clear();
        self.data.clear();
        self.used = PAGE_HEADER_BYTES;
    }
}

/// Builds one bucket's B+tree from elements in strictly increasing key order: leaves as they
/// fill, then the branch levels (`finish`). Pages get consecutive ids from `first_pgid`.
pub struct TreeWriter<'s> {
    leaves: LevelPacker,
    emit: Sink<'s>,
    last_key: Vec<u8>,
    elements: u64,
    first_pgid: u64,
}

/// What a finished tree occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLayout {
    pub root: u64,
    /// Pages written (the next free pgid is `first_pgid + pages`).
    pub pages: u64,
}

impl<'s> TreeWriter<'s> {
    /// A tree that only counts pages (planning).
    pub fn plan(first_pgid: u64) -> TreeWriter<'static> {
        TreeWriter {
            leaves: LevelPacker::new(PAGE_SIZE, true, first_pgid),
            emit: None,
            last_key: Vec::new(),
            elements: 0,
            first_pgid,
        }
    }

    /// A tree whose pages go to `emit`, each as soon as it is complete.
    pub fn write(first_pgid: u64, emit: &'s mut dyn FnMut(&[u8])) -> TreeWriter<'s> {
        TreeWriter {
            leaves: LevelPacker::new(PAGE_SIZE, true, first_pgid),
            emit: Some(emit),
            last_key: Vec::new(),
            elements: 0,
            first_pgid,
        }
    }

    fn check_order(&mut self, key: &[u8]) {
        assert!(
            self.elements == 0 || key > self.last_key.as_slice(),
            "bbolt keys must be added in increasing order"
        );
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.elements += 1;
    }

    /// Adds a key whose value is `value_len` bytes; `value` may be `None` only when planning.
    pub fn put(&mut self, key: &[u8], value_len: usize, value: Option<&[u8]>) {
        self.check_order(key);
        self.leaves
            .push(0, key, value_len, value, 0, &mut self.emit);
    }

    /// Adds a nested bucket whose tree is rooted at `root` (a page of its own).
    pub fn put_bucket(&mut self, name: &[u8], root: u64) {
        self.check_order(name);
        let mut header = [0u8; BUCKET_HEADER_BYTES];
        header[0..8].copy_from_slice(&root.to_le_bytes());
        let value = self.emit.is_some().then_some(&header[..]);
        self.leaves.push(
            BUCKET_LEAF_FLAG,
            name,
            BUCKET_HEADER_BYTES,
            value,
            0,
            &mut self.emit,
        );
    }

    /// Closes the last leaf and writes the branch levels above the leaves.
    pub fn finish(mut self) -> TreeLayout {
        let first = self.first_pgid;
        if self.elements == 0 {
            // An empty bucket is one empty leaf page, as bbolt creates it.
            let pgid = first;
            if let Some(emit) = &mut self.emit {
                let mut page = vec![0u8; PAGE_SIZE];
                page[0..8].copy_from_slice(&pgid.to_le_bytes());
                page[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
                emit(&page);
            }
            return TreeLayout {
                root: pgid,
                pages: 1,
            };
        }
        self.leaves.close(&mut self.emit);
        let mut level = std::mem::take(&mut self.leaves.firsts);
        let mut next = self.leaves.next_pgid;
        while level.len() > 1 {
            let mut packer = LevelPacker::new(PAGE_SIZE, false, next);
            for (key, child) in &level {
                packer.push(0, key, 0, None, *child, &mut self.emit);
            }
            packer.close(&mut self.emit);
            next = packer.next_pgid;
            level = packer.firsts;
        }
        TreeLayout {
            root: level[0].1,
            pages: next - first,
        }
    }
}

/// The first three pages of a database whose root bucket is at `root` and which has
/// `page_count` pages: two meta pages and an empty freelist at page 2.
pub fn header_pages(root: u64, page_count: u64, txid: u64) -> Vec<u8> {
    assert!(txid >= 1, "meta page 1 carries txid - 1");
    assert!(
        root >= FIRST_DATA_PGID && root < page_count,
        "root inside the file"
    );
    let meta = Meta {
        page_size: PAGE_SIZE as u32,
        root,
        freelist: FREELIST_PGID,
        page_count,
        txid,
    };
    // As bbolt's Tx.WriteTo: the same meta twice, the second with the txid before it.
    let mut out = meta.page(0, txid);
    out.extend_from_slice(&meta.page(1, txid - 1));
    let mut freelist = vec![0u8; PAGE_SIZE];
    freelist[0..8].copy_from_slice(&FREELIST_PGID.to_le_bytes());
    freelist[8..10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
    out.extend_from_slice(&freelist);
    out
}

pub const FREELIST_PGID: u64 = 2;
/// The first page after the meta pages and the freelist.
pub const FIRST_DATA_PGID: u64 = 3;

/// The freelist of a file, when one is stored: the ids of free pages.
pub fn free_pages<R: ReadAt>(reader: &Reader<R>) -> Result<Vec<u64>, BoltError> {
    let freelist = reader.meta.freelist;
    if freelist == NO_FREELIST {
        return Ok(Vec::new());
    }
    let page = reader.page(freelist)?;
    if u16_at(&page, 8) != FLAG_FREELIST {
        return Err(reader.corrupt(format!("page {freelist} is not the freelist")));
    }
    let mut count = usize::from(u16_at(&page, 10));
    let mut at = PAGE_HEADER_BYTES;
    if count == 0xFFFF {
        count = u64_at(&page, at) as usize;
        at += 8;
    }
    if at + count * 8 > page.len() {
        return Err(reader.corrupt(format!("freelist page {freelist} is cut short")));
    }
    Ok((0..count).map(|i| u64_at(&page, at + i * 8)).collect())
}

impl fmt::Display for BucketRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketRoot::Page(pgid) => write!(f, "page {pgid}"),
            BucketRoot::Inline(_) => write!(f, "inline"),
        }
    }
}
