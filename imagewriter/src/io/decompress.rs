//! Unwrap gzip and zstd streams, refusing anything after the compressed data.
//!
//! Pure-Rust decoders only (the agent is a static musl binary in a small ramdisk): flate2 with
//! miniz_oxide (32 KiB window) and ruzstd (window checked against [`MAX_ZSTD_WINDOW`] before
//! decoding). Each decoder pushes its output into a `Write`, the converter's input.
//!
//! xz is refused: the only pure-Rust decoder (lzma-rs 0.3) keeps every decompressed byte of an
//! LZMA2 block in memory until the block ends, and `xz` writes a whole image as one block, so
//! memory would grow with the image (an OOM in the ramdisk for any real image). Concatenated members/frames are accepted where the format's own tools produce them
//! (`cat a.gz b.gz`, multi-frame zstd, zstd skippable frames); any other byte after the last one
//! is trailing garbage and fails the image: a truncated-then-padded or spliced file must not be
//! written as if it were whole.

use std::io::{self, BufRead, BufReader, Read, Write};

use super::sniff::ImageFormat;

/// Output buffer size: one read of decompressed data.
const OUT_BUF: usize = 1024 * 1024;
/// zstd frame magic (RFC 8878 §3.1.1), little endian.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// zstd skippable frames: magic 0x184D2A5? (RFC 8878 §3.1.2).
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

/// Why a decompression stopped.
#[derive(Debug)]
pub enum DecompressError {
    /// Reading the compressed bytes failed (the error of the source).
    Source(io::Error),
    /// The output `Write` failed (the converter's error).
    Sink(io::Error),
    /// The compressed stream is corrupt or followed by garbage.
    Corrupt(String),
}

/// Largest zstd window accepted (the decoder's memory): levels 1–19 use at most 8 MiB; `--long`
/// and `--ultra` frames need more and are refused with a clear message.
pub const MAX_ZSTD_WINDOW: u64 = 32 * 1024 * 1024;

/// Decompress `format` (gzip or zstd) from `src` into `out`; returns the decompressed size.
pub fn decompress(
    format: ImageFormat,
    src: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<u64, DecompressError> {
    let mut src = Tracked {
        inner: src,
        failed: None,
    };
    let mut out = TrackedOut {
        inner: out,
        failed: None,
        total: 0,
    };
    let result = {
        let mut buffered = BufReader::with_capacity(256 * 1024, &mut src);
        match format {
            ImageFormat::Gzip => gzip(&mut buffered, &mut out),
            ImageFormat::Zstd => zstd(&mut buffered, &mut out),
            other => Err(format!("{other} is not a compression format")),
        }
    };
    // A failure of either end is reported as itself, not as corruption.
    if let Some(e) = out.failed.take() {
        return Err(DecompressError::Sink(e));
    }
    if let Some(e) = src.failed.take() {
        return Err(DecompressError::Source(e));
    }
    result
        .map(|()| out.total)
        .map_err(|m| DecompressError::Corrupt(format!("{format} stream: {m}")))
}

/// Remembers the first error of the source.
struct Tracked<'a> {
    inner: &'a mut dyn Read,
    failed: Option<io::Error>,
}

impl Read for Tracked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if self.failed.is_none() {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Remembers the first error of the sink and counts bytes.
struct TrackedOut<'a> {
    inner: &'a mut dyn Write,
    failed: Option<io::Error>,
    total: u64,
}

impl Write for TrackedOut<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.total += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
                Err(copy)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pump(dec: &mut dyn Read, out: &mut dyn Write) -> Result<(), String> {
    let mut buf = vec![0u8; OUT_BUF];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        };
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

/// gzip (RFC 1952): every member is decoded and its CRC-32 and size checked (flate2); bytes
/// after the last member must be another member, so garbage fails as a bad header.
fn gzip(src: &mut dyn BufRead, out: &mut dyn Write) -> Result<(), String> {
    let mut dec = flate2::bufread::MultiGzDecoder::new(src);
    pump(&mut dec, out)
}

/// zstd: frames and skippable frames until the end; anything else is garbage. ruzstd checks
/// each frame's content checksum when present.
fn zstd(src: &mut dyn BufRead, out: &mut dyn Write) -> Result<(), String> {
    let mut frames = 0u64;
    loop {
        let head = src.fill_buf().map_err(|e| e.to_string())?;
        if head.is_empty() {
            return if frames == 0 {
                Err("empty".into())
            } else {
                Ok(())
            };
        }
        let mut magic = [0u8; 4];
        read_exact_or(src, &mut magic, "trailing garbage after the last frame")?;
        let magic = u32::from_le_bytes(magic);
        if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE {
            let mut size = [0u8; 4];
            read_exact_or(src, &mut size, "truncated skippable frame")?;
            let size = u64::from(u32::from_le_bytes(size));
            let skipped =
                io::copy(&mut src.take(size), &mut io::sink()).map_err(|e| e.to_string())?;
            if skipped != size {
                return Err("truncated skippable frame".into());
            }
        } else if magic == ZSTD_MAGIC {
            let header = src.fill_buf().map_err(|e| e.to_string())?;
            match zstd_window(header) {
                Some(w) if w <= MAX_ZSTD_WINDOW => {}
                Some(w) => {
                    return Err(format!(
                        "frame {frames} needs a {} MiB window; at most {} MiB is accepted \
                         (recompress without --long/--ultra)",
                        w >> 20,
                        MAX_ZSTD_WINDOW >> 20
                    ))
                }
                None => return Err(format!("frame {frames}: truncated header")),
            }
            let magic_bytes = magic.to_le_bytes();
            let mut frame = (&magic_bytes[..]).chain(&mut *src);
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut frame)
                .map_err(|e| format!("frame {frames}: {e}"))?;
            pump(&mut dec, out).map_err(|e| format!("frame {frames}: {e}"))?;
            // ruzstd computes the content checksum but leaves the comparison to the caller.
            let frame_dec = dec.into_frame_decoder();
            if let Some(stored) = frame_dec.get_checksum_from_data() {
                if frame_dec.get_calculated_checksum() != Some(stored) {
                    return Err(format!("frame {frames}: content checksum mismatch"));
                }
            }
        } else if frames == 0 {
            return Err("not a zstd frame".into());
        } else {
            return Err(format!(
                "trailing garbage after frame {frames} (magic {magic:#010x})"
            ));
        }
        frames += 1;
    }
}

fn read_exact_or(src: &mut dyn BufRead, buf: &mut [u8], what: &str) -> Result<(), String> {
    src.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            what.to_string()
        } else {
            e.to_string()
        }
    })
}

/// The window size a zstd frame header declares (RFC 8878 §3.1.1.1): the Window_Descriptor,
/// or the Frame_Content_Size of a single-segment frame. `header` starts after the magic.
pub(crate) fn zstd_window(header: &[u8]) -> Option<u64> {
    let fhd = *header.first()?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *header.get(1)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    let did_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 1 + did_len;
    let fcs = header.get(at..at + fcs_len)?;
    let mut v = fcs
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if fcs_len == 2 {
        v += 256;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: ImageFormat, data: &[u8]) -> Result<Vec<u8>, DecompressError> {
        let mut out = Vec::new();
        decompress(format, &mut &data[..], &mut out)?;
        Ok(out)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn payload() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn gzip_members_and_garbage() {
        let p = payload();
        assert_eq!(run(ImageFormat::Gzip, &gz(&p)).unwrap(), p);
        let mut two = gz(&p[..1000]);
        two.extend(gz(&p[1000..]));
        assert_eq!(run(ImageFormat::Gzip, &two).unwrap(), p);
        let mut junk = gz(&p);
        junk.extend_from_slice(b"garbage!");
        assert!(matches!(
            run(ImageFormat::Gzip, &junk),
            Err(DecompressError::Corrupt(_))
        ));
        let mut zeros = gz(&p);
        zeros.extend_from_slice(&[0u8; 512]);
        assert!(matches!(
            run(ImageFormat::Gzip, &zeros),
            Err(DecompressError::Corrupt(_))
        ));
        let whole = gz(&p);
        let cut = &whole[..whole.len() - 4];
        assert!(matches!(
            run(ImageFormat::Gzip, cut),
            Err(DecompressError::Corrupt(_))
        ));
    }

    // `printf 'hello zstd\n' | zstd -19 --check`: one frame with a content checksum.
    const ZSTD_HELLO: &[u8] = &[
        0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68, 0x59, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20,
        0x7a, 0x73, 0x74, 0x64, 0x0a, 0x6c, 0x57, 0xf9, 0x51,
    ];

    #[test]
    fn zstd_frames_skippable_and_garbage() {
        assert_eq!(run(ImageFormat::Zstd, ZSTD_HELLO).unwrap(), b"hello zstd\n");
        let mut two = ZSTD_HELLO.to_vec();
        two.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        two.extend_from_slice(ZSTD_HELLO);
        assert_eq!(
            run(ImageFormat::Zstd, &two).unwrap(),
            b"hello zstd\nhello zstd\n"
        );
        let mut junk = ZSTD_HELLO.to_vec();
        junk.extend_from_slice(b"junk");
        match run(ImageFormat::Zstd, &junk) {
            Err(DecompressError::Corrupt(m)) => assert!(m.contains("trailing garbage"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut short = ZSTD_HELLO.to_vec();
        short.push(0x28);
        assert!(matches!(
            run(ImageFormat::Zstd, &short),
            Err(DecompressError::Corrupt(_))
        ));
        let mut bad = ZSTD_HELLO.to_vec();
        bad[12] ^= 0xff; // the content checksum no longer matches
        assert!(run(ImageFormat::Zstd, &bad).is_err());
    }

    #[test]
    fn zstd_windows_are_bounded() {
        // Window_Descriptor 0x58: exponent 11, mantissa 0 → 2 MiB.
        assert_eq!(zstd_window(&[0x04, 0x58]), Some(2 << 20));
        // 0xb8: exponent 23 → 8 GiB.
        assert_eq!(zstd_window(&[0x04, 0xb8]), Some(8 << 30));
        // ZSTD_HELLO's header: Window_Descriptor 0x68 → 8 MiB.
        assert_eq!(zstd_window(&ZSTD_HELLO[4..]), Some(8 << 20));
        // Single segment, 1-byte content size 11.
        assert_eq!(zstd_window(&[0x20, 0x0b]), Some(11));
        // Single segment, 2-byte content size: value + 256.
        assert_eq!(zstd_window(&[0x60, 0x00, 0x01]), Some(256 + 256));
        assert_eq!(zstd_window(&[0x04]), None);
        let mut huge = ZSTD_HELLO[..4].to_vec();
        huge.extend_from_slice(&[0x04, 0xb8, 0, 0, 0, 0]);
        match run(ImageFormat::Zstd, &huge) {
            Err(DecompressError::Corrupt(m)) => assert!(m.contains("window"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sink_errors_are_reported_as_such() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("device full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = gz(&payload());
        match decompress(ImageFormat::Gzip, &mut &data[..], &mut Full) {
            Err(DecompressError::Sink(e)) => assert_eq!(e.to_string(), "device full"),
            other => panic!("{other:?}"),
        }
    }
}
