//! The moving parts of the image write: buffers, the device, the writer stage and the sink.
//!
//! # Design
//! [`crate::write::write_stream_with`] runs four stages in scoped threads, joined by bounded
//! channels so memory stays bounded whatever the image size:
//!
//! ```text
//! image-download ──chunks──▶ image-hash-0 [, image-hash-1]   (digests of the downloaded bytes)
//!        │
//!        └──────chunks──▶ converter (caller's thread) ──WriteOps──▶ image-writer ──▶ device
//! ```
//!
//! - `image-download` reads the source (length check, progress) into 1 MiB page-aligned
//!   [`Chunk`]s and hands each to the hashers and the converter (shared, not copied).
//! - `image-hash-N` feeds every chunk to one digest (a second digest gets its own thread).
//! - The converter ([`crate::write`]) detects the format, unwraps gzip/zstd, turns qcow2 into
//!   guest writes, and emits [`WriteOp`]s through a [`Sink`], which holds back the first MiB.
//! - `image-writer` ([`run_writer`]) writes data with O_DIRECT where the device allows it,
//!   turns aligned all-zero blocks and known-zero ranges into BLKZEROOUT (block devices) or
//!   hole punching (regular files), and returns buffers to the [`Pool`].
//!
//! Chunks return to the pool when the last holder drops them, so after warm-up no stage
//! allocates. A stage that fails drops its channel ends; the others see a closed channel and
//! stop, and the first real error is reported.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::error::{ImageError, IoContext};
use crate::sys::{self, AlignedBuf};

/// Size of the download chunks and of the converter's output buffers.
pub const CHUNK: usize = 1024 * 1024;
/// Bytes of the image (guest offsets for qcow2) kept in memory until the checksum matched.
pub const HOLD_BACK: u64 = 1024 * 1024;
/// Bytes zeroed at each end of the device before writing and after a failure.
pub const WIPE_BYTES: u64 = 1024 * 1024;
/// Granularity of the all-zero block detection of the writer.
const ZERO_BLOCK: usize = 64 * 1024;
/// Channel depths (in chunks) between the stages.
pub const DEPTH: usize = 4;

/// A free list of [`CHUNK`]-sized aligned buffers.
pub struct Pool {
    free: Mutex<Vec<AlignedBuf>>,
    keep: usize,
}

impl Pool {
    /// A pool keeping at most `keep` free buffers.
    pub fn new(keep: usize) -> Arc<Pool> {
        Arc::new(Pool {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer to fill (its content is whatever the last user left).
    pub fn builder(self: &Arc<Self>) -> ChunkBuilder {
        let buf = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(CHUNK));
        ChunkBuilder {
            buf,
            len: 0,
            pool: self.clone(),
        }
    }

    fn put(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// A buffer being filled; [`ChunkBuilder::freeze`] makes it a shareable [`Chunk`].
pub struct ChunkBuilder {
    buf: AlignedBuf,
    len: usize,
    pool: Arc<Pool>,
}

impl ChunkBuilder {
    /// Bytes filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn space(&self) -> usize {
        CHUNK - self.len
    }

    /// Append as much of `data` as fits; returns the count taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.space());
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// The whole buffer, for filling by a reader; then [`ChunkBuilder::set_len`].
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[..]
    }

    /// Declare the first `len` bytes filled.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(CHUNK);
    }

    /// Make it immutable and shareable.
    pub fn freeze(self) -> Chunk {
        Chunk {
            buf: Some(Arc::new(self.buf)),
            len: self.len,
            pool: self.pool,
        }
    }
}

/// An immutable, cheaply shared buffer of image bytes; back to the pool when the last holder
/// drops it.
pub struct Chunk {
    buf: Option<Arc<AlignedBuf>>,
    len: usize,
    pool: Arc<Pool>,
}

impl Chunk {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }

    /// Another handle on the same bytes.
    pub fn share(&self) -> Chunk {
        Chunk {
            buf: self.buf.clone(),
            len: self.len,
            pool: self.pool.clone(),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // `into_inner` succeeds for exactly one of the holders, the last one.
        if let Some(buf) = self.buf.take().and_then(Arc::into_inner) {
            self.pool.put(buf);
        }
    }
}

/// What the download stage sends the converter.
pub type ChunkResult = Result<Chunk, ImageError>;

/// The converter's view of the download: whole chunks (zero copy) or a `Read`.
pub struct ChunkSource {
    rx: Receiver<ChunkResult>,
    cur: Option<(Chunk, usize)>,
    /// The download stage's error, once seen (reported instead of the `io::Error` that
    /// carried it through a decompressor).
    pub error: Option<ImageError>,
}

impl ChunkSource {
    /// Read from `rx`.
    pub fn new(rx: Receiver<ChunkResult>) -> ChunkSource {
        ChunkSource {
            rx,
            cur: None,
            error: None,
        }
    }

    /// The next chunk and the offset of its first unread byte; `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<(Chunk, usize)>, ImageError> {
        if let Some(cur) = self.cur.take() {
            return Ok(Some(cur));
        }
        match self.rx.recv() {
            Ok(Ok(chunk)) => Ok(Some((chunk, 0))),
            Ok(Err(e)) => Err(e),
            // The download stage ended (all sent) — or died, in which case it sent its error.
            Err(_) => Ok(None),
        }
    }

    /// Put back a chunk (or its unread rest) to be read again.
    pub fn unread(&mut self, chunk: Chunk, from: usize) {
        self.cur = Some((chunk, from));
    }
}

/// Marker inside the `io::Error` a [`ChunkSource`] read returns when the download failed.
#[derive(Debug)]
pub struct SourceFailed;

impl std::fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the image download failed")
    }
}

impl std::error::Error for SourceFailed {}

impl std::io::Read for ChunkSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (chunk, off) = match self.cur.take() {
                Some(c) => c,
                None => match self.rx.recv() {
                    Ok(Ok(chunk)) => (chunk, 0),
                    Ok(Err(e)) => {
                        self.error = Some(e);
                        return Err(std::io::Error::other(SourceFailed));
                    }
                    Err(_) => return Ok(0),
                },
            };
            let bytes = &chunk.bytes()[off..];
            if bytes.is_empty() {
                continue;
            }
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            if off + n < chunk.bytes().len() {
                self.cur = Some((chunk, off + n));
            }
            return Ok(n);
        }
    }
}

/// One instruction for the writer stage.
pub enum WriteOp {
    /// Write `chunk.bytes()[start..start + len]` at `offset`.
    Data {
        /// Device offset.
        offset: u64,
        /// Buffer holding the bytes.
        chunk: Chunk,
        /// First byte in the chunk.
        start: usize,
        /// Count.
        len: usize,
    },
    /// Make `len` bytes at `offset` read back as zeros.
    Zero {
        /// Device offset.
        offset: u64,
        /// Count.
        len: u64,
    },
}

/// The target device (or regular file in tests), opened for writing.
pub struct Disk {
    /// Buffered handle: head, unaligned pieces, wipes, fsync.
    pub file: File,
    /// O_DIRECT handle on block devices that accept it.
    direct: Option<File>,
    /// Size in bytes.
    pub size: u64,
    /// Path, for messages.
    pub path: PathBuf,
    /// A block device (as opposed to a regular file).
    pub is_block: bool,
    /// Logical sector size (alignment of O_DIRECT and BLKZEROOUT).
    pub sector: u64,
}

impl Disk {
    /// Open `path` write-only (no create, no truncate: a missing device must fail, not become a
    /// file), plus an O_DIRECT handle on block devices.
    pub fn open(path: &Path) -> Result<Disk, ImageError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .io_context(|| format!("opening {} for writing", path.display()))?;
        let size = sys::device_size(&file)
            .io_context(|| format!("reading the size of {}", path.display()))?;
        let is_block =
            sys::is_block_device(&file).io_context(|| format!("stat of {}", path.display()))?;
        let sector = u64::from(
            sys::logical_sector_size(&file)
                .io_context(|| format!("reading the sector size of {}", path.display()))?,
        )
        .clamp(512, 65536);
        // Regular files (tests) stay buffered: O_DIRECT on tmpfs fails, and hole punching is the
        // fast path there anyway.
        let direct = if is_block {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    log::info!(
                        "O_DIRECT refused on {} ({e}); buffered writes",
                        path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Disk {
            file,
            direct,
            size,
            path: path.to_path_buf(),
            is_block,
            sector,
        })
    }

    /// A handle on a regular file for unit tests.
    #[cfg(test)]
    pub fn from_file(file: File, path: &Path) -> Disk {
        Disk::from_files(file, None, path)
    }

    /// A regular file with a separate handle standing in for the O_DIRECT one (unit tests
    /// inject write errors through it).
    #[cfg(test)]
    pub fn from_files(file: File, direct: Option<File>, path: &Path) -> Disk {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Disk {
            file,
            direct,
            size,
            path: path.to_path_buf(),
            is_block: false,
            sector: 512,
        }
    }

    /// Buffered write of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        self.file.write_all_at(buf, offset).io_context(|| {
            format!(
                "writing {} bytes at offset {offset} of {}",
                buf.len(),
                self.path.display()
            )
        })
    }

    /// Zero the first and the last [`WIPE_BYTES`] and fsync.
    pub fn zero_ends(&self) -> std::io::Result<()> {
        let head = WIPE_BYTES.min(self.size);
        let tail_start = self.size.saturating_sub(WIPE_BYTES).max(head);
        let zeros = vec![0u8; WIPE_BYTES as usize];
        self.file.write_all_at(&zeros[..head as usize], 0)?;
        self.file
            .write_all_at(&zeros[..(self.size - tail_start) as usize], tail_start)?;
        self.file.sync_data()
    }

    /// Wipe after a failure; the original error is returned (wrapped when the wipe fails too,
    /// so the caller knows the disk may hold a partial image).
    pub fn fail(&self, err: ImageError) -> ImageError {
        match self.zero_ends() {
            Ok(()) => {
                log::warn!(
                    "image write to {} failed ({err}); partition tables wiped",
                    self.path.display()
                );
                self.reread_partitions();
                err
            }
            Err(wipe_error) => {
                log::error!(
                    "image write to {} failed ({err}) and wiping it failed too: {wipe_error}",
                    self.path.display()
                );
                ImageError::WipeFailed {
                    error: Box::new(err),
                    wipe_error,
                }
            }
        }
    }

    /// Ask the kernel to re-read the partition table (logged, never fatal).
    pub fn reread_partitions(&self) {
        if let Err(e) = sys::reread_partitions(&self.file) {
            match e.raw_os_error() {
                Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                    log::debug!("no partition re-read on {}: {e}", self.path.display())
                }
                _ => log::warn!(
                    "re-reading the partition table of {} failed: {e}",
                    self.path.display()
                ),
            }
        }
    }
}

/// What the writer stage did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Bytes written as data.
    pub data_bytes: u64,
    /// Bytes zeroed without writing buffers (BLKZEROOUT or hole punching).
    pub zeroed_bytes: u64,
    /// Whether O_DIRECT writes were used (and kept working).
    pub direct: bool,
}

/// The writer stage: apply every op from `rx` to `disk`.
pub fn run_writer(disk: &Disk, rx: Receiver<WriteOp>) -> Result<WriterStats, ImageError> {
    let mut w = Writer {
        disk,
        direct_ok: disk.direct.is_some(),
        stats: WriterStats::default(),
        zero: None,
    };
    for op in rx {
        match op {
            WriteOp::Data {
                offset,
                chunk,
                start,
                len,
            } => w.data(offset, &chunk.bytes()[start..start + len])?,
            WriteOp::Zero { offset, len } => w.pending_zero(offset, len)?,
        }
    }
    w.flush_zero()?;
    w.stats.direct = w.direct_ok;
    Ok(w.stats)
}

struct Writer<'d> {
    disk: &'d Disk,
    direct_ok: bool,
    stats: WriterStats,
    /// A zero range not yet applied, extended while contiguous ranges follow.
    zero: Option<(u64, u64)>,
}

impl Writer<'_> {
    /// Write `data` at `offset`, turning aligned all-zero blocks into zero ranges.
    fn data(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        let mut pos = 0usize;
        let mut run_start = 0usize; // start of the pending data run
        while pos < data.len() {
            // Blocks are aligned on the device, so a zero range stays aligned.
            let dev = offset + pos as u64;
            let to_boundary = ZERO_BLOCK - (dev % ZERO_BLOCK as u64) as usize;
            let end = (pos + to_boundary).min(data.len());
            let whole = end - pos == ZERO_BLOCK;
            if whole && is_zero(&data[pos..end]) {
                if run_start < pos {
                    self.write_data(offset + run_start as u64, &data[run_start..pos])?;
                }
                self.pending_zero(dev, ZERO_BLOCK as u64)?;
                run_start = end;
            }
            pos = end;
        }
        if run_start < data.len() {
            self.write_data(offset + run_start as u64, &data[run_start..])?;
        }
        Ok(())
    }

    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        // Data and zero ranges never overlap, so a pending zero range may stay pending.
        self.stats.data_bytes += data.len() as u64;
        let sector = self.disk.sector;
        if self.direct_ok {
            if let Some(direct) = &self.disk.direct {
                // The sector-aligned middle goes direct, ragged edges buffered.
                let head = ((sector - offset % sector) % sector).min(data.len() as u64) as usize;
                let body = (data.len() - head) / sector as usize * sector as usize;
                let body_ptr = data[head..].as_ptr() as usize;
                if body > 0 && body_ptr.is_multiple_of(sys::BUF_ALIGN.min(sector as usize)) {
                    let at = offset + head as u64;
                    match direct.write_all_at(&data[head..head + body], at) {
                        Ok(()) => {
                            if head > 0 {
                                self.disk.write_at(&data[..head], offset)?;
                            }
                            if head + body < data.len() {
                                self.disk.write_at(&data[head + body..], at + body as u64)?;
                            }
                            return Ok(());
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            log::info!(
                                "O_DIRECT write refused on {} ({e}); buffered writes from now on",
                                self.disk.path.display()
                            );
                            self.direct_ok = false;
                        }
                        Err(e) => {
                            return Err(ImageError::io(
                                format!(
                                    "writing {body} bytes at offset {at} of {}",
                                    self.disk.path.display()
                                ),
                                e,
                            ))
                        }
                    }
                }
            }
        }
        self.disk.write_at(data, offset)
    }

    fn pending_zero(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        if len == 0 {
            return Ok(());
        }
        match &mut self.zero {
            Some((start, n)) if *start + *n == offset => {
                *n += len;
                Ok(())
            }
            _ => {
                self.flush_zero()?;
                self.zero = Some((offset, len));
                Ok(())
            }
        }
    }

    fn flush_zero(&mut self) -> Result<(), ImageError> {
        let Some((offset, len)) = self.zero.take() else {
            return Ok(());
        };
        self.stats.zeroed_bytes += len;
        zero_range(self.disk, offset, len)
    }
}

/// Make `[offset, offset + len)` of the disk read back as zeros: BLKZEROOUT on the
/// sector-aligned middle of a block device, hole punching in a regular file, written zeros
/// where neither works (BLKZEROOUT itself falls back to writing zero pages in the kernel when
/// the device has no write-zeroes command).
pub fn zero_range(disk: &Disk, offset: u64, len: u64) -> Result<(), ImageError> {
    let ctx = || {
        format!(
            "zeroing {len} bytes at offset {offset} of {}",
            disk.path.display()
        )
    };
    let end = offset + len;
    if disk.is_block {
        let s = disk.sector;
        let a = offset.div_ceil(s) * s;
        let b = end / s * s;
        if a < b {
            match sys::zero_out(&disk.file, a, b - a) {
                Ok(()) => {
                    write_zeros(disk, offset, a - offset).io_context(ctx)?;
                    return write_zeros(disk, b, end - b).io_context(ctx);
                }
                Err(e) => log::debug!("BLKZEROOUT on {}: {e}", disk.path.display()),
            }
        }
    } else {
        match sys::punch_hole(&disk.file, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) => log::debug!("hole punching in {}: {e}", disk.path.display()),
        }
    }
    write_zeros(disk, offset, len).io_context(ctx)
}

fn write_zeros(disk: &Disk, mut offset: u64, len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 65536] = [0; 65536];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROS.len() as u64) as usize;
        disk.file.write_all_at(&ZEROS[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// True when every byte is zero (compares 16 bytes at a time; the compiler vectorises it).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    let body = words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0);
    body && words.remainder().iter().all(|&b| b == 0)
}

/// The converter's output: image bytes at device offsets, with the first [`HOLD_BACK`] bytes
/// kept in memory, and the device size enforced.
pub struct Sink<'d> {
    tx: SyncSender<WriteOp>,
    pool: Arc<Pool>,
    disk: &'d Disk,
    head: Vec<u8>,
    cur: Option<(u64, ChunkBuilder)>,
    zero: Option<(u64, u64)>,
    end: u64,
    committed: bool,
}

impl<'d> Sink<'d> {
    /// Send ops on `tx`, buffers from `pool`.
    pub fn new(tx: SyncSender<WriteOp>, pool: Arc<Pool>, disk: &'d Disk) -> Sink<'d> {
        Sink {
            tx,
            pool,
            disk,
            head: vec![0u8; HOLD_BACK as usize],
            cur: None,
            zero: None,
            end: 0,
            committed: false,
        }
    }

    /// True once the device was modified (its ends zeroed): from then on a failure must wipe.
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// Device size.
    pub fn device_size(&self) -> u64 {
        self.disk.size
    }

    /// A fresh output buffer from the pool.
    pub fn builder(&self) -> ChunkBuilder {
        self.pool.builder()
    }

    /// The point of no return: zero both ends of the device (stale MBR/GPT, GPT backup), as
    /// IPA's `destroy_disk_metadata` does before a write.
    pub fn commit(&mut self) -> Result<(), ImageError> {
        if !self.committed {
            self.committed = true;
            self.disk
                .zero_ends()
                .io_context(|| format!("zeroing the ends of {}", self.disk.path.display()))?;
        }
        Ok(())
    }

    fn check_end(&mut self, end: u64) -> Result<(), ImageError> {
        if end > self.disk.size {
            return Err(ImageError::TooLarge {
                image_bytes: end,
                device_bytes: self.disk.size,
            });
        }
        self.end = self.end.max(end);
        Ok(())
    }

    /// Copy `data` to device offset `offset`.
    pub fn write(&mut self, mut offset: u64, mut data: &[u8]) -> Result<(), ImageError> {
        self.check_end(offset + data.len() as u64)?;
        self.commit()?;
        if offset < HOLD_BACK {
            let n = ((HOLD_BACK - offset) as usize).min(data.len());
            self.head[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
            offset += n as u64;
            data = &data[n..];
        }
        while !data.is_empty() {
            let contiguous =
                matches!(&self.cur, Some((o, b)) if o + b.len() as u64 == offset && b.space() > 0);
            if !contiguous {
                self.flush_cur()?;
                self.cur = Some((offset, self.pool.builder()));
            }
            let (_, b) = self.cur.as_mut().expect("set above");
            let n = b.push(data);
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Write `chunk.bytes()[start..]` at `offset` without copying (where past the head).
    pub fn write_chunk(
        &mut self,
        offset: u64,
        chunk: Chunk,
        start: usize,
    ) -> Result<(), ImageError> {
        let len = chunk.bytes().len() - start;
        if offset < HOLD_BACK {
            return self.write(offset, &chunk.bytes()[start..]);
        }
        self.check_end(offset + len as u64)?;
        self.commit()?;
        if len > 0 {
            self.send(WriteOp::Data {
                offset,
                chunk,
                start,
                len,
            })?;
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` zero.
    pub fn zero(&mut self, mut offset: u64, mut len: u64) -> Result<(), ImageError> {
        self.check_end(offset + len)?;
        self.commit()?;
        if offset < HOLD_BACK {
            let n = (HOLD_BACK - offset).min(len);
            self.head[offset as usize..(offset + n) as usize].fill(0);
            offset += n;
            len -= n;
        }
        if len == 0 {
            return Ok(());
        }
        match &mut self.zero {
            Some((s, n)) if *s + *n == offset => *n += len,
            _ => {
                if let Some((s, n)) = self.zero.take() {
                    self.send(WriteOp::Zero { offset: s, len: n })?;
                }
                self.zero = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_cur(&mut self) -> Result<(), ImageError> {
        if let Some((offset, b)) = self.cur.take() {
            let len = b.len();
            if len > 0 {
                self.send(WriteOp::Data {
                    offset,
                    chunk: b.freeze(),
                    start: 0,
                    len,
                })?;
            }
        }
        Ok(())
    }

    fn send(&mut self, op: WriteOp) -> Result<(), ImageError> {
        self.tx.send(op).map_err(|_| {
            // The writer stage stopped; its own error is the one reported.
            ImageError::io(
                "handing data to the image writer",
                std::io::Error::other("the writer stage stopped"),
            )
        })
    }

    /// Flush buffered ops; returns the held-back head (trimmed to the image) and the image end.
    pub fn finish(mut self) -> Result<(Vec<u8>, u64), ImageError> {
        self.commit()?;
        self.flush_cur()?;
        if let Some((s, n)) = self.zero.take() {
            self.send(WriteOp::Zero { offset: s, len: n })?;
        }
        let mut head = std::mem::take(&mut self.head);
        head.truncate(self.end.min(HOLD_BACK) as usize);
        Ok((head, self.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn is_zero_checks_every_byte() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[17] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn chunks_return_to_the_pool_once() {
        let pool = Pool::new(4);
        let mut b = pool.builder();
        b.push(b"abc");
        let c = b.freeze();
        let d = c.share();
        drop(c);
        assert_eq!(pool.free.lock().unwrap().len(), 0, "still shared");
        assert_eq!(d.bytes(), b"abc");
        drop(d);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }

    fn file_disk(size: usize) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0xAAu8; size]).unwrap();
        let file = OpenOptions::new().write(true).open(f.path()).unwrap();
        let disk = Disk::from_file(file, f.path());
        (f, disk)
    }

    #[test]
    fn writer_turns_zero_blocks_into_holes_and_writes_the_rest() {
        let (f, disk) = file_disk(4 << 20);
        let pool = Pool::new(4);
        let (tx, rx) = mpsc::sync_channel(4);
        let mut b = pool.builder();
        let mut data = vec![0u8; CHUNK];
        data[..100].fill(7); // block 0 has data
        data[3 * ZERO_BLOCK + 5] = 9; // block 3 has data
        b.push(&data);
        tx.send(WriteOp::Data {
            offset: 2 << 20,
            chunk: b.freeze(),
            start: 0,
            len: CHUNK,
        })
        .unwrap();
        tx.send(WriteOp::Zero {
            offset: 1 << 20,
            len: 4096,
        })
        .unwrap();
        drop(tx);
        let stats = run_writer(&disk, rx).unwrap();
        assert_eq!(stats.data_bytes, 2 * ZERO_BLOCK as u64);
        assert_eq!(stats.zeroed_bytes, (CHUNK - 2 * ZERO_BLOCK) as u64 + 4096);
        let back = std::fs::read(f.path()).unwrap();
        assert!(back[2 << 20..3 << 20] == data[..]);
        assert!(back[1 << 20..(1 << 20) + 4096].iter().all(|&x| x == 0));
        assert!(back[(1 << 20) + 4096..2 << 20].iter().all(|&x| x == 0xAA));
        assert!(back[3 << 20..].iter().all(|&x| x == 0xAA));
    }

    #[test]
    fn sink_holds_back_the_head_and_enforces_the_size() {
        let (_f, disk) = file_disk(3 << 20);
        let pool = Pool::new(4);
        let (tx, rx) = mpsc::sync_channel(64);
        let mut sink = Sink::new(tx, pool, &disk);
        sink.write(HOLD_BACK - 3, b"abcdef").unwrap();
        sink.zero(10, 5).unwrap();
        let e = sink.write(3 << 20, b"x").unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e:?}");
        let (head, end) = sink.finish().unwrap();
        assert_eq!(end, HOLD_BACK + 3);
        assert_eq!(head.len(), HOLD_BACK as usize);
        assert_eq!(&head[HOLD_BACK as usize - 3..], b"abc");
        let ops: Vec<WriteOp> = rx.into_iter().collect();
        assert_eq!(ops.len(), 1);
        match &ops[0] {
            WriteOp::Data {
                offset, chunk, len, ..
            } => {
                assert_eq!((*offset, *len), (HOLD_BACK, 3));
                assert_eq!(&chunk.bytes()[..3], b"def");
            }
            WriteOp::Zero { .. } => panic!("no zero op expected"),
        }
    }
}
