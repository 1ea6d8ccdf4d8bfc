//! `shards::Storage` on plain files in one directory: what a shard's segment log writes
//! through in the server.
//!
//! Appends are buffered in memory and written with one write(2) per `APPEND_BUFFER_BYTES`
//! (or before any other operation on the file), so a put costs a memcpy, not a syscall. That
//! keeps the storage contract: nothing appended is durable until `sync`, and a crash keeps
//! some prefix of the unsynced bytes. The only blocking calls on a shard's core are the
//! fdatasync at a checkpoint (once per `--snapshot-count` entries) and segment rewrites after
//! a compaction, which the shards crate bounds per call.
//!
//! Plain `std::fs` rather than glommio's `DmaFile`: the `Storage` trait is synchronous (the
//! shard core never awaits), and buffered writes land in the page cache in microseconds.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Appends gathered before one write(2). A bound, so a burst of puts costs bounded memory.
const APPEND_BUFFER_BYTES: usize = 256 * 1024;

pub struct FileStorage {
    dir: PathBuf,
    /// Open handles for appending, by file name.
    files: HashMap<String, fs::File>,
    /// Appended bytes not yet written, and the file they belong to.
    buffered: Option<(String, Vec<u8>)>,
}

impl FileStorage {
    /// Opens (creating if needed, with its parents) the directory a segment log lives in.
    pub fn open(dir: &Path) -> io::Result<FileStorage> {
        fs::create_dir_all(dir)?;
        // The directory and its parent (`member/shards-N/shard-i`) may both be new.
        for ancestor in dir.ancestors().skip(1).take(2) {
            sync_dir(ancestor)?;
        }
        Ok(FileStorage {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            buffered: None,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut fs::File> {
        if !self.files.contains_key(name) {
            let file = fs::OpenOptions::new()
                .append(true)
                .read(true)
                .open(self.path(name))?;
            self.files.insert(name.to_owned(), file);
        }
        Ok(self.files.get_mut(name).expect("just inserted"))
    }

    /// Writes out buffered appends (of any file).
    fn flush(&mut self) -> io::Result<()> {
        if let Some((name, bytes)) = self.buffered.take() {
            if !bytes.is_empty() {
                self.handle(&name)?.write_all(&bytes)?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl shards::Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        self.flush()?;
        let file = fs::OpenOptions::new()
            .append(true)
            .read(true)
            .create_new(true)
            .open(self.path(name))?;
        self.files.insert(name.to_owned(), file);
        // The new name must survive a crash as surely as the bytes synced into it.
        sync_dir(&self.dir)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        if self.buffered.as_ref().is_some_and(|(held, _)| held != name) {
            self.flush()?;
        }
        let (_, buffer) = self
            .buffered
            .get_or_insert_with(|| (name.to_owned(), Vec::new()));
        buffer.extend_from_slice(bytes);
        if buffer.len() >= APPEND_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        // Reads come from recovery and rewrites of sealed segments, never from the file being
        // appended to, so buffered bytes never need to be visible here; check anyway.
        if self
            .buffered
            .as_ref()
            .is_some_and(|(held, b)| held == name && !b.is_empty())
        {
            return Err(io::Error::other(format!(
                "read of {name} while appends to it are buffered"
            )));
        }
        fs::File::open(self.path(name))?.read_at(buf, offset)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        let buffered = match &self.buffered {
            Some((held, bytes)) if held == name => bytes.len() as u64,
            _ => 0,
        };
        Ok(fs::metadata(self.path(name))?.len() + buffered)
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.flush()?;
        fs::OpenOptions::new()
            .write(true)
            .open(self.path(name))?
            .set_len(len)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.flush()?;
        self.handle(name)?.sync_data()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        if self.buffered.as_ref().is_some_and(|(held, _)| held == name) {
            self.buffered = None;
        }
        self.files.remove(name);
        fs::remove_file(self.path(name))?;
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::{PutRequest, SegmentLog};

    #[test]
    fn a_segment_log_on_files_reopens_to_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileStorage::open(&dir.path().join("shard-0")).unwrap();
        let (mut log, mut store, index) = SegmentLog::open(storage, 4096).unwrap();
        assert_eq!(index, 0);
        for n in 0..200u64 {
            let main = n as i64 + 2;
            let req = PutRequest {
                key: format!("key{}", n % 17).into_bytes().into(),
                value: vec![b'v'; 100].into(),
                ..Default::default()
            };
            let (_, event) = store.put(main, 0, &req).unwrap();
            log.append(n + 1, main, &[event]).unwrap();
            if n == 99 {
                log.rotate().unwrap();
            }
        }
        log.sync().unwrap();
        let names = log.segment_names();
        assert!(names.len() > 2, "4 KiB segments rotate: {names:?}");
        drop(log);

        let storage = FileStorage::open(&dir.path().join("shard-0")).unwrap();
        let (_, recovered, index) = SegmentLog::open(storage, 4096).unwrap();
        assert_eq!(index, 200);
        assert_eq!(recovered.retained_events(), store.retained_events());

        // At the checkpoint taken by the rotation after entry 100, later segments go.
        let storage = FileStorage::open(&dir.path().join("shard-0")).unwrap();
        let (log, at_100, index) = SegmentLog::open_at(storage, 4096, Some(100)).unwrap();
        assert_eq!(index, 100);
        assert_eq!(at_100.last_revision(), 101);
        assert!(log.segment_names().len() < names.len());
    }
}
