//! qcow2 → raw while streaming: no temporary file, memory bounded by the tables in flight.
//!
//! IPA downloads a qcow2 into the ramdisk and runs `qemu-img convert` on it (958 MiB of tmpfs for
//! a 2 GiB image; OOM on small machines). Here the file is consumed once, in file order, and every
//! data cluster is written to its guest offset as it passes (the device is random access).
//! Format facts from qemu's `docs/interop/qcow2.txt`.
//!
//! # How the stream is read
//! 1. The start of the file is buffered (at most [`PREFIX_LIMIT`]) until the header and the L1
//!    table are in: the header must be valid and safe (see [`parse_header`]) and the virtual size
//!    must fit the device before anything is written.
//! 2. The L1 table names the host offsets of the L2 tables. Each L2 table is read when the stream
//!    passes it; its entries become *targets*: host byte ranges to copy (or decompress) to guest
//!    offsets when the stream reaches them. Unallocated and zero clusters become zero ranges at
//!    once. `qemu-img` writes every L2 table before the data it maps, so in practice every data
//!    cluster is already a target when it passes.
//! 3. A data cluster that the stream passed before its L2 table was read ("metadata after data",
//!    legal and producible by relocating tables) is *late*. Bytes that passed without being a
//!    target are remembered as runs with a SHA-256 each (never buffered); at the end, each run
//!    holding late clusters is fetched again with an HTTP Range request ([`RangeSource`]) and must
//!    hash to the same digest, so what is written is still exactly the verified file. Without a
//!    range source (compressed containers) a late cluster is a clear error.
//!
//! Memory: the prefix (normally a few clusters), L2 tables while they pass (one cluster each),
//! compressed clusters while they pass, and the targets, coalesced into host-contiguous runs
//! (one or two per L2 table for `qemu-img` output), capped at [`MAX_TARGETS`].
//!
//! Refused: backing files, external data files, encryption, the corrupt bit, extended L2
//! entries (subclusters), unknown incompatible features, tables outside the file, and entries
//! pointing at unaligned or out-of-file offsets.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::io::RangeSource;
use crate::pipeline::{Chunk, Sink};

/// The start of the file buffered while looking for the header and the L1 table.
pub const PREFIX_LIMIT: usize = 16 * 1024 * 1024;
/// At most this many pending targets (host runs still to come) at once (~80 bytes each).
pub const MAX_TARGETS: usize = 1 << 18;
/// At most this many runs of unmapped bytes remembered for re-reading (~48 bytes each).
pub const MAX_UNKNOWN_RUNS: usize = 1 << 18;
/// At most this many late runs (data before its L2 table).
pub const MAX_LATE: usize = 1 << 18;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// qemu `QCOW_MAX_L1_SIZE` / 8.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// Bits 9–55 of L1 and standard L2 entries: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;

/// Incompatible feature bits (qcow2.txt, header bytes 72–79).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_ENCRYPTION: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (compression_type 0, every version).
    Deflate,
    /// zstd (compression_type 1, v3 only).
    Zstd,
}

/// The facts of a qcow2 header that the conversion needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u64,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
    /// Compression of compressed clusters.
    pub compression: Compression,
    /// The dirty bit was set (refcounts may be stale; the mapping is still valid).
    pub dirty: bool,
}

impl Header {
    /// Bytes of guest space one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        self.cluster_size / 8 * self.cluster_size
    }

    /// End of the L1 table in the file.
    pub fn l1_end(&self) -> u64 {
        self.l1_offset + self.l1_size * 8
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn bad(msg: impl std::fmt::Display) -> ImageError {
    ImageError::InvalidImage(format!("qcow2: {msg}"))
}

/// Parse and vet the header in `buf` (the start of the file). `Ok(None)`: more bytes are needed
/// (the whole first cluster, which holds the header extensions), unless `at_eof`.
pub fn parse_header(buf: &[u8], at_eof: bool) -> Result<Option<Header>, ImageError> {
    let need = |n: usize| -> Result<bool, ImageError> {
        if buf.len() >= n {
            Ok(true)
        } else if at_eof {
            Err(bad(format!(
                "file of {} bytes is too short for its header",
                buf.len()
            )))
        } else {
            Ok(false)
        }
    };
    if !need(72)? {
        return Ok(None);
    }
    if &buf[..4] != MAGIC {
        return Err(bad("bad magic"));
    }
    let version = be32(buf, 4);
    if version != 2 && version != 3 {
        return Err(ImageError::UnsupportedFormat(format!(
            "qcow2 version {version} (only 2 and 3 exist)"
        )));
    }
    let cluster_bits = be32(buf, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits} outside 9..=21")));
    }
    let cluster_size = 1u64 << cluster_bits;
    // The header and its extensions live in the first cluster.
    let first = (cluster_size as usize).min(buf.len());
    if !at_eof && buf.len() < cluster_size as usize {
        return Ok(None);
    }
    if version == 3 && !need(104)? {
        return Ok(None);
    }
    let backing_offset = be64(buf, 8);
    if backing_offset != 0 {
        return Err(ImageError::InvalidImage(
            "Security: qcow2 image has a backing file; refusing it (Ironic bug 2071740)".into(),
        ));
    }
    let size = be64(buf, 24);
    let crypt = be32(buf, 32);
    if crypt != 0 {
        return Err(ImageError::InvalidImage(format!(
            "qcow2 image is encrypted (crypt_method {crypt}); Ferric has no key to read it"
        )));
    }
    let l1_size = u64::from(be32(buf, 36));
    // qemu's QCOW_MAX_L1_SIZE (32 MiB of entries): qemu refuses to open a larger active L1
    // table ("Active L1 table too large"), so `qemu-img convert` would fail on it too.
    if l1_size > MAX_L1_ENTRIES {
        return Err(bad(format!(
            "active L1 table of {l1_size} entries is too large (qemu allows {MAX_L1_ENTRIES})"
        )));
    }
    let l1_offset = be64(buf, 40);
    let (incompat, header_len, compression_type) = if version == 3 {
        let header_len = be32(buf, 100) as usize;
        if header_len < 104 || !header_len.is_multiple_of(8) || header_len > first {
            return Err(bad(format!("header_length {header_len} invalid")));
        }
        let ctype = if header_len > 104 { buf[104] } else { 0 };
        (be64(buf, 72), header_len, ctype)
    } else {
        (0, 72, 0)
    };
    if incompat & INCOMPAT_DATA_FILE != 0 {
        return Err(ImageError::InvalidImage(
            "Security: qcow2 image uses an external data file; refusing it (Ironic bug 2071740)"
                .into(),
        ));
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(bad("the image is marked corrupt"));
    }
    if incompat & INCOMPAT_EXTL2 != 0 {
        return Err(ImageError::UnsupportedFormat(
            "qcow2 with extended L2 entries (subclusters) is not supported".into(),
        ));
    }
    let known = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION;
    if incompat & !known != 0 {
        return Err(ImageError::UnsupportedFormat(format!(
            "qcow2 incompatible feature bits {:#x} are unknown",
            incompat & !known
        )));
    }
    let compression = match (compression_type, incompat & INCOMPAT_COMPRESSION != 0) {
        (0, false) => Compression::Deflate,
        (1, true) => Compression::Zstd,
        (t, _) => {
            return Err(bad(format!(
                "compression type {t} with incompatible bit 3 {}",
                if incompat & INCOMPAT_COMPRESSION != 0 {
                    "set"
                } else {
                    "clear"
                }
            )))
        }
    };
    // Header extensions: 8-byte aligned records up to an end marker, within the first cluster.
    let mut at = header_len;
    while at + 8 <= first {
        let ty = be32(buf, at);
        let len = be32(buf, at + 4) as usize;
        if ty == EXT_END {
            break;
        }
        let end = at + 8 + len;
        if end > first {
            return Err(bad(format!(
                "header extension {ty:#x} overruns the first cluster"
            )));
        }
        match ty {
            EXT_DATA_FILE => {
                return Err(ImageError::InvalidImage(
                    "Security: qcow2 image names an external data file; refusing it \
                     (Ironic bug 2071740)"
                        .into(),
                ))
            }
            EXT_ENCRYPTION => {
                return Err(ImageError::InvalidImage(
                    "qcow2 image carries an encryption header; Ferric has no key to read it".into(),
                ))
            }
            // A backing format without a backing file names nothing; other extensions (feature
            // names, bitmaps) do not change the guest content.
            EXT_BACKING_FORMAT => {}
            _ => {}
        }
        at = end.div_ceil(8) * 8;
    }
    let hdr = Header {
        version,
        cluster_bits,
        cluster_size,
        size,
        l1_size,
        l1_offset,
        compression,
        dirty: incompat & INCOMPAT_DIRTY != 0,
    };
    let needed_l1 = size.div_ceil(hdr.l2_coverage());
    if l1_size < needed_l1 {
        return Err(bad(format!(
            "L1 table of {l1_size} entries cannot map a virtual size of {size} bytes"
        )));
    }
    if needed_l1 > 0 && (l1_offset == 0 || !l1_offset.is_multiple_of(cluster_size)) {
        return Err(bad(format!(
            "L1 table offset {l1_offset} is not cluster aligned"
        )));
    }
    Ok(Some(hdr))
}

/// What a target range of the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// An L2 table; `index` is its L1 index.
    L2 { index: u64 },
    /// Raw cluster bytes (possibly a run of several) for guest offset `guest`.
    Raw { guest: u64 },
    /// One compressed cluster for guest offset `guest`.
    Compressed { guest: u64 },
}

impl What {
    fn describe(&self) -> String {
        match self {
            What::L2 { index } => format!("L2 table {index}"),
            What::Raw { guest } => format!("data for guest offset {guest}"),
            What::Compressed { guest } => format!("compressed cluster for guest offset {guest}"),
        }
    }
}

/// A host byte range being collected.
struct Active {
    start: u64,
    end: u64,
    what: What,
    buf: Vec<u8>,
}

/// Host ranges still to come, by start; and those being passed now.
#[derive(Default)]
struct Targets {
    pending: BTreeMap<(u64, u64), (u64, What)>,
    seq: u64,
    active: Vec<Active>,
}

impl Targets {
    fn insert(&mut self, start: u64, end: u64, what: What) -> Result<(), ImageError> {
        if self.pending.len() >= MAX_TARGETS {
            return Err(ImageError::InvalidImage(format!(
                "qcow2 mapping too fragmented to stream: more than {MAX_TARGETS} \
                 discontiguous runs pending"
            )));
        }
        self.seq += 1;
        self.pending.insert((start, self.seq), (end, what));
        Ok(())
    }
}

/// A run of file bytes that passed without being a target, and their digest.
struct UnknownRun {
    start: u64,
    end: u64,
    digest: [u8; 32],
}

/// Everything the per-byte work needs besides the targets.
struct Ctx<'a, 'd> {
    hdr: &'a Header,
    sink: &'a mut Sink<'d>,
    scratch: &'a mut Vec<u8>,
}

/// Receives file bytes that no target wanted: (file offset, bytes).
type UnknownSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), ImageError> + 'a;
/// A completed L2 table: its L1 index and its bytes.
type L2Table = (u64, Vec<u8>);

/// Feed `data` (file bytes at `*pos`) to `targets` until its end or until an L2 table is
/// complete; returns the bytes consumed and the completed tables. `unknown` receives the bytes
/// no target wanted.
fn feed(
    targets: &mut Targets,
    pos: &mut u64,
    data: &[u8],
    ctx: &mut Ctx<'_, '_>,
    mut unknown: Option<&mut UnknownSink<'_>>,
) -> Result<(usize, Vec<L2Table>), ImageError> {
    let mut p = 0usize;
    while p < data.len() {
        let abs = *pos;
        while let Some(entry) = targets.pending.first_entry() {
            if entry.key().0 > abs {
                break;
            }
            let ((start, _), (end, what)) = entry.remove_entry();
            let cap = if matches!(what, What::Raw { .. }) {
                0
            } else {
                (end - start) as usize
            };
            targets.active.push(Active {
                start,
                end,
                what,
                buf: Vec::with_capacity(cap),
            });
        }
        let mut b = abs + (data.len() - p) as u64;
        if let Some(((s, _), _)) = targets.pending.first_key_value() {
            b = b.min(*s);
        }
        for a in &targets.active {
            b = b.min(a.end);
        }
        let n = (b - abs) as usize;
        let slice = &data[p..p + n];
        if targets.active.is_empty() {
            if let Some(u) = unknown.as_mut() {
                u(abs, slice)?;
            }
        } else {
            for a in targets.active.iter_mut() {
                match a.what {
                    What::Raw { guest } => {
                        let g = guest + (abs - a.start);
                        if g < ctx.hdr.size {
                            let keep = (ctx.hdr.size - g).min(n as u64) as usize;
                            ctx.sink.write(g, &slice[..keep])?;
                        }
                    }
                    _ => a.buf.extend_from_slice(slice),
                }
            }
        }
        *pos = b;
        p += n;
        let mut i = 0;
        // Several L1 entries may name the same L2 table: all of them complete here.
        let mut tables = Vec::new();
        while i < targets.active.len() {
            if targets.active[i].end != b {
                i += 1;
                continue;
            }
            let a = targets.active.swap_remove(i);
            match a.what {
                What::Raw { .. } => {}
                What::Compressed { guest } => write_compressed(ctx, guest, &a.buf)?,
                What::L2 { index } => tables.push((index, a.buf)),
            }
        }
        if !tables.is_empty() {
            return Ok((p, tables));
        }
    }
    Ok((p, Vec::new()))
}

fn write_compressed(ctx: &mut Ctx<'_, '_>, guest: u64, input: &[u8]) -> Result<(), ImageError> {
    let cs = ctx.hdr.cluster_size as usize;
    ctx.scratch.resize(cs, 0);
    decompress_cluster(ctx.hdr.compression, input, &mut ctx.scratch[..cs]).map_err(|e| {
        bad(format!(
            "compressed cluster for guest offset {guest} does not decompress: {e}"
        ))
    })?;
    if guest < ctx.hdr.size {
        let keep = (ctx.hdr.size - guest).min(cs as u64) as usize;
        ctx.sink.write(guest, &ctx.scratch[..keep])?;
    }
    Ok(())
}

/// Decompress one cluster; like qemu, the output must fill the cluster exactly.
fn decompress_cluster(c: Compression, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match c {
        Compression::Deflate => {
            let mut d = flate2::Decompress::new(false);
            d.decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| e.to_string())?;
            if d.total_out() as usize != out.len() {
                return Err(format!("{} bytes instead of {}", d.total_out(), out.len()));
            }
            Ok(())
        }
        Compression::Zstd => {
            // A cluster frame declaring a huge window must not make the decoder allocate it.
            let window = input
                .get(4..)
                .and_then(crate::io::decompress::zstd_window)
                .ok_or("truncated zstd frame header")?;
            if window > crate::io::decompress::MAX_ZSTD_WINDOW {
                return Err(format!("zstd window of {window} bytes"));
            }
            let mut src = input;
            let mut dec =
                ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| e.to_string())?;
            dec.read_exact(out).map_err(|e| e.to_string())
        }
    }
}

/// The converter: push the qcow2 file's bytes in order with [`Qcow2Stream::feed`], then call
/// [`Qcow2Stream::finish`].
pub struct Qcow2Stream<'r> {
    ranges: Option<&'r dyn RangeSource>,
    prefix: Option<Vec<u8>>,
    hdr: Option<Header>,
    targets: Targets,
    pos: u64,
    late: Vec<(u64, u64, What)>,
    unknown: Vec<UnknownRun>,
    open_unknown: Option<(u64, u64, Sha256)>,
    max_file: Option<u64>,
    scratch: Vec<u8>,
    /// The last [`WINDOW`] bytes or more of the file, for data that comes shortly before its
    /// L2 table (qemu packs compressed clusters of the next table's range into the current
    /// host cluster): those are resolved from memory, without re-reading.
    recent: std::collections::VecDeque<(u64, Recent)>,
    recent_len: usize,
    /// Bytes re-read with range requests (late data).
    pub reread_bytes: u64,
}

/// Bytes kept for late data that comes shortly before its table.
pub const WINDOW: usize = 4 * 1024 * 1024;

/// A piece of the recent window: a shared download chunk (no copy) or owned bytes.
enum Recent {
    Chunk(Chunk, usize),
    Owned(Vec<u8>),
}

impl Recent {
    fn bytes(&self) -> &[u8] {
        match self {
            Recent::Chunk(c, from) => &c.bytes()[*from..],
            Recent::Owned(v) => v,
        }
    }
}

impl<'r> Qcow2Stream<'r> {
    /// A converter; `ranges` re-reads parts of the file when metadata comes after data (none
    /// for a qcow2 inside a compressed container). A file larger than three times its virtual
    /// size plus 64 MiB is refused as soon as it gets there: a server sending endless bytes, or
    /// a decompression bomb posing as a qcow2, must not keep the converter busy forever (the
    /// digest would only fail at an end that never comes). Only internal snapshots could make a
    /// real image that large, and deploy images have none.
    pub fn new(ranges: Option<&'r dyn RangeSource>) -> Qcow2Stream<'r> {
        Qcow2Stream {
            ranges,
            prefix: Some(Vec::new()),
            hdr: None,
            targets: Targets::default(),
            pos: 0,
            late: Vec::new(),
            unknown: Vec::new(),
            open_unknown: None,
            max_file: None,
            scratch: Vec::new(),
            recent: std::collections::VecDeque::new(),
            recent_len: 0,
            reread_bytes: 0,
        }
    }

    /// The header, once parsed.
    pub fn header(&self) -> Option<&Header> {
        self.hdr.as_ref()
    }

    /// The next bytes of the file. Nothing reaches `sink` before the header and L1 table were
    /// read and vetted.
    pub fn feed(&mut self, data: &[u8], sink: &mut Sink<'_>) -> Result<(), ImageError> {
        if let Some(prefix) = self.prefix.as_mut() {
            prefix.extend_from_slice(data);
            return self.try_start(sink, false);
        }
        self.remember(Recent::Owned(data.to_vec()));
        self.stream(data, sink)
    }

    /// [`Qcow2Stream::feed`] of `chunk.bytes()[from..]`, keeping the chunk (not a copy) in the
    /// recent window.
    pub fn feed_chunk(
        &mut self,
        chunk: &Chunk,
        from: usize,
        sink: &mut Sink<'_>,
    ) -> Result<(), ImageError> {
        if self.prefix.is_some() {
            return self.feed(&chunk.bytes()[from..], sink);
        }
        self.remember(Recent::Chunk(chunk.share(), from));
        self.stream(&chunk.bytes()[from..], sink)
    }

    /// Append the bytes at `self.pos` to the recent window, dropping what is no longer needed.
    fn remember(&mut self, piece: Recent) {
        self.recent_len += piece.bytes().len();
        self.recent.push_back((self.pos, piece));
        while let Some((_, front)) = self.recent.front() {
            let n = front.bytes().len();
            if self.recent_len - n < WINDOW {
                break;
            }
            self.recent_len -= n;
            self.recent.pop_front();
        }
    }

    /// File bytes `[start, end)` if the recent window still holds them (and they were read).
    fn recent_bytes(&self, start: u64, end: u64) -> Option<Vec<u8>> {
        let base = self.recent.front()?.0;
        if start < base || end > self.pos || start >= end {
            return None;
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for (at, piece) in &self.recent {
            let b = piece.bytes();
            let (lo, hi) = (*at, *at + b.len() as u64);
            if hi <= start || lo >= end {
                continue;
            }
            let s = start.max(lo) - lo;
            let e = end.min(hi) - lo;
            out.extend_from_slice(&b[s as usize..e as usize]);
        }
        (out.len() as u64 == end - start).then_some(out)
    }

    fn try_start(&mut self, sink: &mut Sink<'_>, at_eof: bool) -> Result<(), ImageError> {
        let prefix = self.prefix.as_ref().expect("called while buffering");
        let hdr = match parse_header(prefix, at_eof)? {
            Some(h) => h,
            None if prefix.len() > PREFIX_LIMIT => {
                return Err(bad("header not found in the first cluster"))
            }
            None => return Ok(()),
        };
        if hdr.size > sink.device_size() {
            return Err(ImageError::TooLarge {
                image_bytes: hdr.size,
                device_bytes: sink.device_size(),
            });
        }
        let needed_l1 = hdr.size.div_ceil(hdr.l2_coverage());
        let l1_end = if needed_l1 == 0 {
            0
        } else {
            hdr.l1_offset.saturating_add(needed_l1 * 8)
        };
        if l1_end > PREFIX_LIMIT as u64 {
            return Err(ImageError::UnsupportedFormat(format!(
                "qcow2 L1 table at offset {} ends beyond the first {} MiB of the file; \
                 such a layout cannot be streamed",
                hdr.l1_offset,
                PREFIX_LIMIT >> 20
            )));
        }
        if (prefix.len() as u64) < l1_end {
            if at_eof {
                return Err(bad(format!(
                    "L1 table ends at {l1_end}, beyond the end of the file ({} bytes)",
                    prefix.len()
                )));
            }
            return Ok(());
        }
        // Header and L1 are in: from here on the device may be written.
        if hdr.dirty {
            log::warn!("qcow2 image has the dirty bit set; its refcounts are ignored anyway");
        }
        log::info!(
            "qcow2 v{}: virtual size {} bytes, {}-byte clusters, {} L1 entries, {:?} compression",
            hdr.version,
            hdr.size,
            hdr.cluster_size,
            hdr.l1_size,
            hdr.compression
        );
        self.max_file = Some(hdr.size.saturating_mul(3).saturating_add(64 << 20));
        let cov = hdr.l2_coverage();
        for i in 0..needed_l1 {
            let at = (hdr.l1_offset + i * 8) as usize;
            let entry = be64(prefix, at);
            let off = entry & OFFSET_MASK;
            let guest = i * cov;
            if off == 0 {
                let end = (guest + cov).min(hdr.size);
                sink.zero(guest, end - guest)?;
            } else if !off.is_multiple_of(hdr.cluster_size) {
                return Err(bad(format!(
                    "L1 entry {i} points to unaligned offset {off}"
                )));
            } else {
                self.targets
                    .insert(off, off + hdr.cluster_size, What::L2 { index: i })?;
            }
        }
        self.hdr = Some(hdr);
        // Replay the buffered start through the normal path (L2 tables may lie in it).
        let prefix = self.prefix.take().expect("checked above");
        self.remember(Recent::Owned(prefix.clone()));
        self.stream(&prefix, sink)
    }

    fn stream(&mut self, mut data: &[u8], sink: &mut Sink<'_>) -> Result<(), ImageError> {
        let hdr = self.hdr.clone().expect("header parsed");
        if let Some(max) = self.max_file {
            if self.pos + data.len() as u64 > max {
                return Err(ImageError::InvalidImage(format!(
                    "qcow2 file is larger than {max} bytes, far more than its virtual size \
                     of {} bytes needs",
                    hdr.size
                )));
            }
        }
        while !data.is_empty() {
            let track = self.ranges.is_some();
            let unknown = &mut self.unknown;
            let open = &mut self.open_unknown;
            let mut record = |at: u64, bytes: &[u8]| -> Result<(), ImageError> {
                match open {
                    Some((_, end, h)) if *end == at => {
                        h.update(bytes);
                        *end += bytes.len() as u64;
                    }
                    _ => {
                        close_unknown(open, unknown)?;
                        let mut h = Sha256::new();
                        h.update(bytes);
                        *open = Some((at, at + bytes.len() as u64, h));
                    }
                }
                Ok(())
            };
            let mut ctx = Ctx {
                hdr: &hdr,
                sink,
                scratch: &mut self.scratch,
            };
            let (n, tables) = feed(
                &mut self.targets,
                &mut self.pos,
                data,
                &mut ctx,
                if track { Some(&mut record) } else { None },
            )?;
            data = &data[n..];
            for (index, buf) in tables {
                self.parse_l2(&hdr, index, &buf, sink)?;
            }
        }
        Ok(())
    }

    fn parse_l2(
        &mut self,
        hdr: &Header,
        index: u64,
        table: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<(), ImageError> {
        let cs = hdr.cluster_size;
        let base = index * hdr.l2_coverage();
        let mut zero: Option<(u64, u64)> = None;
        let mut run: Option<(u64, u64, u64)> = None; // host start, host end, guest start
        for (i, e) in table.chunks_exact(8).enumerate() {
            let guest = base + i as u64 * cs;
            if guest >= hdr.size {
                break;
            }
            let e = u64::from_be_bytes(e.try_into().expect("8 bytes"));
            if e & COMPRESSED != 0 {
                let x = 62 - (hdr.cluster_bits - 8);
                let off = e & ((1u64 << x) - 1);
                let sectors = ((e >> x) & ((1u64 << (hdr.cluster_bits - 8)) - 1)) + 1;
                let len = sectors * 512 - (off & 511);
                self.add(hdr, sink, off, off + len, What::Compressed { guest })?;
                continue;
            }
            // qcow2.txt defines bit 0 ("reads as zeros") from version 3 on; qemu refuses a v2
            // image using it as corrupt ("Zero cluster entry found in pre-v3 image"), so IPA's
            // `qemu-img convert` fails the deploy. Writing it as zeros would accept an image
            // the reference refuses.
            if hdr.version < 3 && e & ZERO_FLAG != 0 {
                return Err(bad(format!(
                    "L2 table {index} entry {i} has the zero flag (bit 0) set, which version \
                     {} does not define (qemu-img refuses such an image as corrupt)",
                    hdr.version
                )));
            }
            let off = e & OFFSET_MASK;
            let is_zero = off == 0 || e & ZERO_FLAG != 0;
            if is_zero {
                let end = (guest + cs).min(hdr.size);
                zero = match zero {
                    Some((s, z)) if z == guest => Some((s, end)),
                    Some((s, z)) => {
                        sink.zero(s, z - s)?;
                        Some((guest, end))
                    }
                    None => Some((guest, end)),
                };
                continue;
            }
            if !off.is_multiple_of(cs) {
                return Err(bad(format!(
                    "L2 table {index} entry {i} points to unaligned offset {off}"
                )));
            }
            run = match run {
                Some((hs, he, gs)) if he == off && gs + (he - hs) == guest => {
                    Some((hs, he + cs, gs))
                }
                Some((hs, he, gs)) => {
                    self.add(hdr, sink, hs, he, What::Raw { guest: gs })?;
                    Some((off, off + cs, guest))
                }
                None => Some((off, off + cs, guest)),
            };
        }
        if let Some((s, z)) = zero {
            sink.zero(s, z - s)?;
        }
        if let Some((hs, he, gs)) = run {
            self.add(hdr, sink, hs, he, What::Raw { guest: gs })?;
        }
        Ok(())
    }

    /// Register a host range: ahead of the stream → target; behind it but still in the recent
    /// window → written now; further behind → late (re-read at the end).
    fn add(
        &mut self,
        hdr: &Header,
        sink: &mut Sink<'_>,
        start: u64,
        end: u64,
        what: What,
    ) -> Result<(), ImageError> {
        if start >= self.pos {
            return self.targets.insert(start, end, what);
        }
        let pos = self.pos;
        match what {
            What::Raw { guest } => {
                let seen_end = end.min(pos);
                if let Some(bytes) = self.recent_bytes(start, seen_end) {
                    if guest < hdr.size {
                        let keep = (hdr.size - guest).min(bytes.len() as u64) as usize;
                        sink.write(guest, &bytes[..keep])?;
                    }
                    if end > pos {
                        self.targets.insert(
                            pos,
                            end,
                            What::Raw {
                                guest: guest + (pos - start),
                            },
                        )?;
                    }
                    return Ok(());
                }
            }
            What::Compressed { guest } => {
                if let Some(bytes) = self.recent_bytes(start, end.min(pos)) {
                    if end <= pos {
                        let mut ctx = Ctx {
                            hdr,
                            sink,
                            scratch: &mut self.scratch,
                        };
                        return write_compressed(&mut ctx, guest, &bytes);
                    }
                    // Straddles the current position: continue collecting from the stream.
                    self.targets.active.push(Active {
                        start,
                        end,
                        what,
                        buf: bytes,
                    });
                    return Ok(());
                }
            }
            What::L2 { .. } => {}
        }
        let split = match what {
            What::Raw { guest } if end > pos => Some(guest + (pos - start)),
            _ => None,
        };
        let late_end = if split.is_some() { pos } else { end };
        if self.ranges.is_none() {
            return Err(ImageError::UnsupportedFormat(format!(
                "qcow2 {} at file offset {start} comes more than {} MiB before the L2 table \
                 that maps it; this layout needs re-reading parts of the file, which is \
                 impossible inside a compressed container or without HTTP Range support",
                what.describe(),
                WINDOW >> 20
            )));
        }
        if self.late.len() >= MAX_LATE {
            return Err(ImageError::InvalidImage(format!(
                "qcow2 has more than {MAX_LATE} runs of data before their L2 tables"
            )));
        }
        self.late.push((start, late_end, what));
        if let Some(guest) = split {
            self.targets.insert(pos, end, What::Raw { guest })?;
        }
        Ok(())
    }

    /// The file ended: complete what is pending, then re-read late data. Returns the bytes
    /// re-read with range requests.
    pub fn finish(mut self, sink: &mut Sink<'_>) -> Result<u64, ImageError> {
        if self.prefix.is_some() {
            self.try_start(sink, true)?;
        }
        close_unknown(&mut self.open_unknown, &mut self.unknown)?;
        let hdr = self.hdr.clone().expect("header parsed");
        let eof = self.pos;
        for a in std::mem::take(&mut self.targets.active) {
            match a.what {
                // qemu's compressed length is rounded up to a sector, which may pass the end
                // of the file; the missing bytes are not part of the deflate/zstd data.
                What::Compressed { guest } => {
                    let mut buf = a.buf;
                    buf.resize((a.end - a.start) as usize, 0);
                    let mut ctx = Ctx {
                        hdr: &hdr,
                        sink,
                        scratch: &mut self.scratch,
                    };
                    write_compressed(&mut ctx, guest, &buf)?;
                }
                what => {
                    return Err(bad(format!(
                        "{} at offset {} ends at {}, beyond the end of the file ({eof} bytes)",
                        what.describe(),
                        a.start,
                        a.end
                    )))
                }
            }
        }
        if let Some(((start, _), (_, what))) = self.targets.pending.first_key_value() {
            return Err(bad(format!(
                "{} at offset {start} is beyond the end of the file ({eof} bytes)",
                what.describe()
            )));
        }
        if !self.late.is_empty() {
            self.resolve_late(&hdr, sink)?;
        }
        Ok(self.reread_bytes)
    }

    /// Fetch each remembered run that holds late data again, copy the late data out, and check
    /// the run's digest against the one taken while streaming.
    fn resolve_late(&mut self, hdr: &Header, sink: &mut Sink<'_>) -> Result<(), ImageError> {
        let ranges = self.ranges.expect("late data is refused without ranges");
        let mut late = std::mem::take(&mut self.late);
        late.sort_by_key(|l| l.0);
        let mut by_run: BTreeMap<usize, Targets> = BTreeMap::new();
        for (start, end, what) in late {
            // Runs are in file order; find the one containing `start`.
            let i = self.unknown.partition_point(|r| r.end <= start);
            match self.unknown.get(i) {
                Some(r) if r.start <= start && end <= r.end => {
                    by_run.entry(i).or_default().insert(start, end, what)?;
                }
                _ => {
                    return Err(bad(format!(
                        "{} at file offsets {start}..{end} overlaps other metadata; \
                         cannot re-read it safely",
                        what.describe()
                    )))
                }
            }
        }
        log::info!(
            "qcow2: {} run(s) of data came before their L2 tables; re-reading them",
            by_run.len()
        );
        let mut buf = vec![0u8; 1 << 20];
        for (i, mut targets) in by_run {
            let run = &self.unknown[i];
            let (start, end) = (run.start, run.end);
            let mut src = ranges.open_range(start, end)?;
            let mut hasher = Sha256::new();
            let mut pos = start;
            while pos < end {
                let want = ((end - pos) as usize).min(buf.len());
                let n = crate::io::read_full(&mut src, &mut buf[..want]).map_err(|e| {
                    ImageError::Download {
                        url: "(range request)".into(),
                        reason: format!("re-reading qcow2 bytes {start}..{end}: {e}"),
                    }
                })?;
                if n == 0 {
                    return Err(ImageError::Download {
                        url: "(range request)".into(),
                        reason: format!("re-reading qcow2 bytes {start}..{end}: ended at {pos}"),
                    });
                }
                hasher.update(&buf[..n]);
                let mut data = &buf[..n];
                while !data.is_empty() {
                    let mut ctx = Ctx {
                        hdr,
                        sink,
                        scratch: &mut self.scratch,
                    };
                    let (used, _) = feed(&mut targets, &mut pos, data, &mut ctx, None)?;
                    data = &data[used..];
                }
            }
            self.reread_bytes += end - start;
            let digest: [u8; 32] = hasher.finalize().into();
            if digest != self.unknown[i].digest {
                return Err(ImageError::InvalidImage(format!(
                    "the server returned different bytes for {start}..{end} on a range \
                     request than in the download; refusing the image"
                )));
            }
        }
        Ok(())
    }
}

fn close_unknown(
    open: &mut Option<(u64, u64, Sha256)>,
    runs: &mut Vec<UnknownRun>,
) -> Result<(), ImageError> {
    if let Some((start, end, h)) = open.take() {
        if runs.len() >= MAX_UNKNOWN_RUNS {
            return Err(ImageError::InvalidImage(format!(
                "qcow2 layout too fragmented: more than {MAX_UNKNOWN_RUNS} unmapped runs"
            )));
        }
        runs.push(UnknownRun {
            start,
            end,
            digest: h.finalize().into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_v3(incompat: u64, backing: u64, crypt: u32) -> Vec<u8> {
        let mut h = vec![0u8; 65536];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn a_plain_header_parses() {
        let h = parse_header(&header_v3(0, 0, 0), false).unwrap().unwrap();
        assert_eq!(h.cluster_size, 65536);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.l1_offset, 3 << 16);
        assert_eq!(h.compression, Compression::Deflate);
        // Not enough bytes yet: wait for the whole first cluster.
        assert_eq!(
            parse_header(&header_v3(0, 0, 0)[..4096], false).unwrap(),
            None
        );
    }

    #[test]
    fn unsafe_or_unsupported_headers_are_refused() {
        let msg = |h: Vec<u8>| parse_header(&h, false).unwrap_err().to_string();
        assert!(msg(header_v3(0, 4096, 0)).contains("backing file"));
        assert!(msg(header_v3(INCOMPAT_DATA_FILE, 0, 0)).contains("external data file"));
        assert!(msg(header_v3(0, 0, 2)).contains("encrypted"));
        assert!(msg(header_v3(INCOMPAT_EXTL2, 0, 0)).contains("subclusters"));
        assert!(msg(header_v3(INCOMPAT_CORRUPT, 0, 0)).contains("corrupt"));
        assert!(msg(header_v3(1 << 9, 0, 0)).contains("unknown"));
        let mut ext = header_v3(0, 0, 0);
        ext[112..116].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        ext[116..120].copy_from_slice(&8u32.to_be_bytes());
        assert!(msg(ext).contains("external data file"));
        let mut huge_l1 = header_v3(0, 0, 0);
        huge_l1[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(msg(huge_l1).contains("too large"));
        let mut small_l1 = header_v3(0, 0, 0);
        small_l1[36..40].copy_from_slice(&1u32.to_be_bytes());
        assert!(msg(small_l1).contains("cannot map"));
    }

    #[test]
    fn compressed_cluster_must_fill_the_cluster() {
        let data: Vec<u8> = (0..512u32).map(|i| (i % 7) as u8).collect();
        let mut enc = flate2::Compress::new(flate2::Compression::default(), false);
        let mut comp = vec![0u8; 1024];
        enc.compress(&data, &mut comp, flate2::FlushCompress::Finish)
            .unwrap();
        comp.truncate(enc.total_out() as usize);
        let mut out = vec![0u8; 512];
        decompress_cluster(Compression::Deflate, &comp, &mut out).unwrap();
        assert_eq!(out, data);
        let mut big = vec![0u8; 1024];
        assert!(decompress_cluster(Compression::Deflate, &comp, &mut big).is_err());
    }
}
