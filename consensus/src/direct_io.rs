//! Writing large, write-once data around the kernel's page cache: a redb storage backend for the
//! Raft log, and a file writer for snapshots.
//!
//! A Raft log entry of a full batch is one page of about 1 MiB, written once, read back from
//! redb's own cache while it is recent, and otherwise only by a replica catching up. Writing it
//! through the page cache copies every byte into freshly allocated cache pages: on this machine's
//! VM that copy was a quarter of all CPU time under load (a page the guest has not touched lately
//! costs a fault in the host; BENCHMARKS.md). A direct write (`O_DIRECT`) hands the buffer to the
//! device instead, and leaves the page cache alone.
//!
//! Small writes (redb's headers, branch and leaf pages) still go through the page cache: one direct
//! write costs a device request, which is dearer than a buffered copy for a few KiB. Reads always
//! use the page cache. Linux keeps the two paths coherent: a direct write first writes back any
//! cached dirty pages of its range and drops the cached pages afterwards, so a later read sees it.
//! Durability is unchanged: `sync_data` is `fdatasync` on the file, which covers data written by
//! both paths and flushes the device's cache.
//!
//! A snapshot is the same case at a larger scale: the whole ledger, written once, read again only
//! if a lagging replica needs it. [`DirectFileWriter`] writes it in aligned 1 MiB chunks.
//!
//! Where the file system refuses direct I/O (tmpfs, some overlay mounts) the backend writes
//! everything through the page cache.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Direct I/O needs offsets, lengths and buffer addresses aligned to the device's logical block;
/// 4 KiB covers every common device (and redb's pages are multiples of it).
const DIRECT_ALIGNMENT: usize = 4096;

/// Writes at least this large go around the page cache. Below it a device request per write
/// costs more than the copy it saves (an 8 KiB direct write took ~34 us of CPU here, a 1 MiB one
/// ~120 us against ~2.3 ms buffered into cold pages).
pub const DIRECT_WRITE_BYTES_MIN: usize = 128 * 1024;

#[derive(Debug)]
pub struct DirectWriteBackend {
    /// redb's own file backend: reads, length, sync, locks, and every small write.
    buffered: FileBackend,
    /// The same file opened with `O_DIRECT`, or `None` where the file system refuses it.
    direct: Option<File>,
    /// Cleared for good when a direct write is refused, so that the store keeps working.
    direct_enabled: AtomicBool,
    /// An aligned copy of the page being written: redb's page buffers carry no alignment promise.
    scratch: Mutex<AlignedBuffer>,
}

impl DirectWriteBackend {
    pub fn open(path: &Path) -> io::Result<DirectWriteBackend> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let buffered = FileBackend::new(file).map_err(io::Error::other)?;
        let direct = open_direct(path)?;
        let direct_enabled = AtomicBool::new(direct.is_some());
        Ok(DirectWriteBackend { buffered, direct, direct_enabled, scratch: Mutex::new(AlignedBuffer::new(0)) })
    }

    fn write_direct(&self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut scratch = self.scratch.lock().expect("no writer panics holding the scratch buffer");
        if scratch.as_mut_slice().len() < data.len() {
            *scratch = AlignedBuffer::new(data.len());
        }
        let aligned = &mut scratch.as_mut_slice()[..data.len()];
        aligned.copy_from_slice(data);
        file.write_all_at(aligned, offset)
    }
}

/// Opens `path` for direct writes, or `None` where the file system refuses `O_DIRECT` (EINVAL).
fn open_direct(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!(path = %path.display(), "the file system refuses O_DIRECT: writing through the page cache");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

fn direct_eligible(offset: u64, data: &[u8]) -> bool {
    data.len() >= DIRECT_WRITE_BYTES_MIN
        && data.len().is_multiple_of(DIRECT_ALIGNMENT)
        && offset.is_multiple_of(DIRECT_ALIGNMENT as u64)
}

impl StorageBackend for DirectWriteBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.buffered.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.buffered.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.buffered.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.buffered.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if let Some(file) = &self.direct
            && self.direct_enabled.load(Ordering::Relaxed)
            && direct_eligible(offset, data)
        {
            match self.write_direct(file, offset, data) {
                Ok(()) => return Ok(()),
                // EINVAL: this file system or device wants another alignment. Nothing was written;
                // fall back to the page cache for this and every later write.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(%error, "a direct write was refused: writing through the page cache from now on");
                    self.direct_enabled.store(false, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        self.buffered.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.buffered.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.buffered.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.buffered.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.buffered.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.buffered.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.buffered.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.buffered.query_lock_range(start, end)
    }
}

/// Bytes a [`DirectFileWriter`] gathers before each direct write.
const DIRECT_CHUNK_BYTES: usize = 1024 * 1024;

/// A buffer whose usable part starts on a [`DIRECT_ALIGNMENT`] boundary.
struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "AlignedBuffer({} bytes)", self.bytes.len() - DIRECT_ALIGNMENT)
    }
}

impl AlignedBuffer {
    fn new(len: usize) -> AlignedBuffer {
        let bytes = vec![0; len + DIRECT_ALIGNMENT];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGNMENT);
        AlignedBuffer { bytes, start }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        let end = self.bytes.len() - DIRECT_ALIGNMENT + self.start;
        &mut self.bytes[self.start..end]
    }
}

/// Writes a new file sequentially, in aligned chunks with `O_DIRECT`; the last, partial chunk goes
/// through the page cache. [`DirectFileWriter::finish`] makes the whole file durable.
#[derive(Debug)]
pub struct DirectFileWriter {
    /// The file opened normally: the tail, `fsync`, and the handle returned by `finish`.
    buffered: File,
    /// The file opened with `O_DIRECT`, or `None` where the file system refuses it.
    direct: Option<File>,
    chunk: AlignedBuffer,
    chunk_len: usize,
    /// Where the chunk being gathered starts in the file.
    offset: u64,
    direct_bytes: u64,
}

impl DirectFileWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<DirectFileWriter> {
        let buffered = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        let direct = open_direct(path)?;
        Ok(DirectFileWriter {
            buffered,
            direct,
            chunk: AlignedBuffer::new(DIRECT_CHUNK_BYTES),
            chunk_len: 0,
            offset: 0,
            direct_bytes: 0,
        })
    }

    fn write_chunk(&mut self) -> io::Result<()> {
        let chunk = &self.chunk.as_mut_slice()[..self.chunk_len];
        let written = match &self.direct {
            Some(direct) if chunk.len() == DIRECT_CHUNK_BYTES => match direct.write_all_at(chunk, self.offset) {
                Ok(()) => {
                    self.direct_bytes += chunk.len() as u64;
                    true
                }
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    false
                }
                Err(error) => return Err(error),
            },
            _ => false,
        };
        if !written {
            self.buffered.write_all_at(chunk, self.offset)?;
        }
        self.offset += self.chunk_len as u64;
        self.chunk_len = 0;
        Ok(())
    }

    /// Bytes written around the page cache so far (0 where the file system refuses direct I/O).
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// Writes what is left and makes the file durable (`fsync`); returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        if self.chunk_len > 0 {
            self.write_chunk()?;
        }
        self.buffered.sync_all()?;
        Ok(self.buffered)
    }
}

impl Write for DirectFileWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = bytes.len().min(DIRECT_CHUNK_BYTES - self.chunk_len);
        self.chunk.as_mut_slice()[self.chunk_len..self.chunk_len + taken].copy_from_slice(&bytes[..taken]);
        self.chunk_len += taken;
        if self.chunk_len == DIRECT_CHUNK_BYTES {
            self.write_chunk()?;
        }
        Ok(taken)
    }

    /// Chunks are written when full; `finish` writes the rest. Flushing a partial chunk early would
    /// leave the next direct write misaligned.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
