//! The narrow file API a segment log writes through, with an in-memory implementation that can
//! simulate a crash and a fault-injecting wrapper for recovery tests.
//!
//! The server implements `Storage` with glommio `DmaFile`s in the shard's directory; nothing
//! here knows about an async runtime.

use std::collections::BTreeMap;
use std::io;

/// Files are named by plain strings inside one directory. Appends are not durable until `sync`
/// of that file returns; a crash may keep any prefix of the unsynced bytes.
pub trait Storage {
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates an empty file; fails if it exists.
    fn create(&mut self, name: &str) -> io::Result<()>;
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn len(&self, name: &str) -> io::Result<u64>;
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Makes the file's content (and its existence) durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

#[derive(Clone, Debug, Default)]
struct MemFile {
    bytes: Vec<u8>,
    /// How much of `bytes` survives a crash.
    synced_len: usize,
}

/// Files in memory, remembering which bytes were synced so a test can crash it.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    files: BTreeMap<String, MemFile>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates power loss: each file keeps its synced bytes plus at most
    /// `unsynced_bytes_kept` of what was appended after its last sync (a torn write).
    pub fn crash(&mut self, unsynced_bytes_kept: usize) {
        for file in self.files.values_mut() {
            let kept = file
                .bytes
                .len()
                .min(file.synced_len.saturating_add(unsynced_bytes_kept));
            file.bytes.truncate(kept);
            file.synced_len = kept;
        }
    }

    /// The whole content of a file, for tests that poke at bytes.
    pub fn contents(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|file| file.bytes.as_slice())
    }

    /// Total bytes over all files.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|file| file.bytes.len() as u64)
            .sum()
    }

    fn file_mut(&mut self, name: &str) -> io::Result<&mut MemFile> {
        self.files.get_mut(name).ok_or_else(|| not_found(name))
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        if self.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("file {name} exists"),
            ));
        }
        self.files.insert(name.to_owned(), MemFile::default());
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.file_mut(name)?.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.files.get(name).ok_or_else(|| not_found(name))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(file.bytes.len());
        let count = buf.len().min(file.bytes.len() - start);
        buf[..count].copy_from_slice(&file.bytes[start..start + count]);
        Ok(count)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(self
            .files
            .get(name)
            .ok_or_else(|| not_found(name))?
            .bytes
            .len() as u64)
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let file = self.file_mut(name)?;
        let len = usize::try_from(len).expect("in-memory file length fits in usize");
        file.bytes.truncate(len);
        file.synced_len = file.synced_len.min(len);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let file = self.file_mut(name)?;
        file.synced_len = file.bytes.len();
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }
}

/// Wraps a storage and injects the faults real disks have: a failing write or sync, a torn
/// last write, a flipped bit.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    writes: u64,
    syncs: u64,
    fail_write: Option<u64>,
    fail_sync: Option<u64>,
    last_write: Option<(String, u64, usize)>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl<S: Storage> FaultyStorage<S> {
    pub fn new(inner: S) -> Self {
        FaultyStorage {
            inner,
            writes: 0,
            syncs: 0,
            fail_write: None,
            fail_sync: None,
            last_write: None,
        }
    }

    /// The `n`-th append from now (1 = the next) writes only half its bytes and fails.
    pub fn fail_nth_write(&mut self, n: u64) {
        assert!(n >= 1, "writes are counted from 1");
        self.fail_write = Some(self.writes + n);
    }

    /// The `n`-th sync from now (1 = the next) fails without making anything durable.
    pub fn fail_nth_sync(&mut self, n: u64) {
        assert!(n >= 1, "syncs are counted from 1");
        self.fail_sync = Some(self.syncs + n);
    }

    /// Cuts the most recent append down to its first `kept` bytes, as a crash mid-write does.
    pub fn tear_last_write(&mut self, kept: usize) -> io::Result<()> {
        let (name, offset, len) = self
            .last_write
            .clone()
            .ok_or_else(|| injected("tear (nothing written)"))?;
        self.inner.truncate(&name, offset + kept.min(len) as u64)
    }

    /// Flips one bit in place: the silent corruption a checksum must catch.
    pub fn flip_bit(&mut self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        let mut byte = [0u8];
        if self.inner.read_at(name, offset, &mut byte)? != 1 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "flip past the end",
            ));
        }
        // Storage has no overwrite, so rewrite the tail: truncate to the byte and append it back.
        let len = self.inner.len(name)?;
        let mut tail = vec![0u8; (len - offset) as usize];
        self.inner.read_at(name, offset, &mut tail)?;
        tail[0] ^= 1 << (bit % 8);
        self.inner.truncate(name, offset)?;
        self.inner.append(name, &tail)?;
        self.inner.sync(name)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        self.inner.create(name)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.writes += 1;
        let offset = self.inner.len(name)?;
        if self.fail_write == Some(self.writes) {
            self.inner.append(name, &bytes[..bytes.len() / 2])?;
            return Err(injected("write"));
        }
        self.inner.append(name, bytes)?;
        self.last_write = Some((name.to_owned(), offset, bytes.len()));
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(name, offset, buf)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.inner.len(name)
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.syncs += 1;
        if self.fail_sync == Some(self.syncs) {
            return Err(injected("sync"));
        }
        self.inner.sync(name)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
}
