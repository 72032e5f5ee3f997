//! Formats from the bytes: qcow2 (every layout in tests/fixtures/images, made by qemu-img) read
//! back exactly as `qemu-img convert -O raw`; gzip/zstd/xz containers; the refusals of
//! Ironic bug 2071740; zero ranges. On tempfile disks, no network (see http_pipeline.rs).

mod common;

use std::io::Cursor;

use common::*;
use ferric_imagewriter::checksum::{ExpectedDigest, HashAlgo};
use ferric_imagewriter::io::RangeSource;
use ferric_imagewriter::write::{write_stream_with, Progress, StreamOptions, WriteReport};
use ferric_imagewriter::ImageError;
use sha2::{Digest, Sha256};

fn no_progress(_: Progress) {}

fn sha256(data: &[u8]) -> ExpectedDigest {
    ExpectedDigest::new(HashAlgo::Sha256, &sha256_hex(data)).unwrap()
}

/// Write `file` (bytes as downloaded) onto a fresh disk of `disk_size` bytes.
fn write(
    file: &[u8],
    disk_format: Option<&str>,
    permitted: Option<&[String]>,
    ranges: Option<&dyn RangeSource>,
    dev: &tempfile::NamedTempFile,
) -> Result<WriteReport, ImageError> {
    let expected = sha256(file);
    let opts = StreamOptions {
        content_length: Some(file.len() as u64),
        expected: &expected,
        disk_format,
        permitted_formats: permitted,
        ranges,
        also: None,
    };
    write_stream_with(Cursor::new(file.to_vec()), &opts, dev.path(), &no_progress)
}

/// The device holds exactly the expected raw bytes over the image's length, and the old
/// content between the image and the last MiB (zeroed by design) is untouched.
fn assert_reads_back(dev: &tempfile::NamedTempFile, name: &str) {
    let (size, sha) = fixture_expectations()[name].clone();
    let d = read_disk(dev.path());
    let got: String = Sha256::digest(&d[..size as usize])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        got, sha,
        "{name}: device differs from qemu-img convert -O raw"
    );
    let last = d.len() - MIB;
    assert!(
        all(&d[size as usize..last], FILL),
        "{name}: wrote past the image"
    );
    assert!(all(&d[last..], 0), "{name}: last MiB not zeroed");
}

const QCOW2: &[&str] = &[
    "v3-64k.qcow2",
    "v2-64k.qcow2",
    "v3-512.qcow2",
    "v3-2m.qcow2",
    "v3-deflate.qcow2",
    "v2-deflate-4k.qcow2",
    "v3-zstd.qcow2",
    "v3-zeroflag.qcow2",
    "v3-l2-after-data-near.qcow2",
    "v3-l2-after-data.qcow2",
];

#[test]
fn qcow2_reads_back_as_qemu_img_convert() {
    for name in QCOW2 {
        let file = fixture(name);
        let (size, _) = fixture_expectations()[*name].clone();
        let dev = disk(size as usize + 3 * MIB);
        let report = write(&file, Some("qcow2"), None, Some(&file), &dev)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.bytes_written, size, "{name}");
        assert_eq!(report.format, "qcow2", "{name}");
        assert_eq!(report.bytes_downloaded, file.len() as u64, "{name}");
        assert_eq!(report.digest_hex, sha256_hex(&file), "{name}");
        assert_reads_back(&dev, name);
        if *name == "v3-l2-after-data.qcow2" {
            // 8 MiB of data passed before the tables: beyond the window, re-read and verified.
            assert!(report.bytes_reread >= 4 * MIB as u64, "{report:?}");
        } else {
            // Everything else, including late clusters still in the window, needs no re-read.
            assert_eq!(report.bytes_reread, 0, "{name}: nothing to re-read");
            // Most of the guest disk is unallocated: zeroed, not written.
            assert!(
                report.bytes_zeroed > size / 2,
                "{name}: only {} bytes zeroed",
                report.bytes_zeroed
            );
        }
    }
}

#[test]
fn qcow2_with_tables_after_data_needs_ranges() {
    let file = fixture("v3-l2-after-data.qcow2");
    let dev = disk(10 * MIB);
    let err = write(&file, Some("qcow2"), None, None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedFormat(ref m) if m.contains("before the L2 table")),
        "{err:?}"
    );
    assert_no_image(dev.path());
    // Inside a compressed container there is nothing to re-read either.
    let dev = disk(10 * MIB);
    let err = write(
        &fixture("v3-l2-after-data.qcow2.zst"),
        None,
        None,
        Some(&fixture("v3-l2-after-data.qcow2.zst")),
        &dev,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFormat(_)), "{err:?}");
    assert_no_image(dev.path());
}

/// Failed before or after the point of no return: untouched, or both ends wiped.
fn assert_no_image(path: &std::path::Path) {
    let d = read_disk(path);
    if !all(&d, FILL) {
        assert_wiped(path);
    }
}

/// A range source that serves different bytes than the download: the writer must notice.
struct Lying(Vec<u8>);

impl RangeSource for Lying {
    fn open_range(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn std::io::Read + Send + '_>, ImageError> {
        let mut v = self.0[start as usize..end as usize].to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 1;
        Ok(Box::new(Cursor::new(v)))
    }
}

#[test]
fn rereads_must_match_the_download() {
    let file = fixture("v3-l2-after-data.qcow2");
    let dev = disk(10 * MIB);
    let lying = Lying(file.clone());
    let err = write(&file, Some("qcow2"), None, Some(&lying), &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("different bytes")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn containers_are_unwrapped() {
    for (name, format) in [
        ("raw.gz", "gzip+gpt"),
        ("raw.zst", "zstd+gpt"),
        ("v3-64k.qcow2.gz", "gzip+qcow2"),
    ] {
        let file = fixture(name);
        let dev = disk(10 * MIB);
        let report = write(&file, None, None, None, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.format, format);
        assert_eq!(report.bytes_downloaded, file.len() as u64);
        assert_reads_back(&dev, name);
    }
}

#[test]
fn xz_is_refused_before_writing() {
    // No pure-Rust xz decoder with bounded memory (see io::decompress).
    let dev = disk(10 * MIB);
    let err = write(&fixture("raw.xz"), Some("raw"), None, None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedFormat(ref m) if m.contains("xz")),
        "{err:?}"
    );
    assert_untouched(dev.path());
}

#[test]
fn unsafe_qcow2_is_refused_before_writing() {
    for (name, what) in [
        ("backing.qcow2", "backing file"),
        ("datafile.qcow2", "external data file"),
        ("luks.qcow2", "encrypted"),
        ("extl2.qcow2", "subclusters"),
    ] {
        let dev = disk(10 * MIB);
        let err = write(&fixture(name), Some("qcow2"), None, None, &dev).unwrap_err();
        assert!(err.to_string().contains(what), "{name}: {err}");
        assert!(
            matches!(
                err,
                ImageError::InvalidImage(_) | ImageError::UnsupportedFormat(_)
            ),
            "{name}: {err:?}"
        );
        assert_untouched(dev.path());
    }
}

/// The zero flag (bit 0 of a standard L2 entry) exists from version 3 on; qemu-img refuses a
/// version 2 image using it as corrupt, and so must Ferric (found by the qcow2 fuzz target,
/// fuzz/regressions/qcow2/v2-zero-flag-accepted), allocated cluster or not.
#[test]
fn v2_qcow2_with_the_zero_flag_is_refused() {
    let file = fixture("v2-64k.qcow2");
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!(&file[4..8], &2u32.to_be_bytes());
    let l2 = (be64(&file, be64(&file, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    // Entries of the first L2 table that map guest clusters inside the virtual size.
    let clusters = (be64(&file, 24) / 65536) as usize;
    let entries = || (0..clusters).map(|i| l2 + 8 * i);
    let allocated = entries().find(|&at| be64(&file, at) != 0).unwrap();
    let unallocated = entries().find(|&at| be64(&file, at) == 0).unwrap();
    for at in [allocated, unallocated] {
        let mut bad = file.clone();
        bad[at + 7] |= 1;
        let dev = disk(10 * MIB);
        let err = write(&bad, Some("qcow2"), None, Some(&bad), &dev).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidImage(ref m)
                if m.contains("zero flag") && m.contains("version 2")),
            "{err:?}"
        );
        // qemu-img puts L2 tables before the data: refused before anything is written.
        assert_untouched(dev.path());
    }
}

#[test]
fn format_must_be_the_declared_and_permitted_one() {
    let qcow = fixture("v3-64k.qcow2");
    let dev = disk(10 * MIB);
    let err = write(&qcow, Some("raw"), None, None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("actually qcow2")),
        "{err:?}"
    );
    assert_untouched(dev.path());

    // The same qcow2 inside gzip, declared raw: still a qcow2.
    let err = write(&fixture("v3-64k.qcow2.gz"), Some("raw"), None, None, &dev).unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert_untouched(dev.path());

    let raw_only = vec!["raw".to_string(), "gpt".to_string()];
    let err = write(&qcow, None, Some(&raw_only), None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("permitted_image_formats")),
        "{err:?}"
    );
    assert_untouched(dev.path());

    let raw = image_bytes(2 * MIB, 40);
    let err = write(&raw, Some("qcow2"), None, None, &dev).unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert_untouched(dev.path());
}

#[test]
fn gzip_with_trailing_garbage_fails_and_wipes() {
    let dev = disk(10 * MIB);
    let err = write(&fixture("raw-garbage.gz"), Some("raw"), None, None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("gzip")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn gzip_bomb_is_bounded_by_the_device() {
    // 256 MiB of zeros compress to ~250 KiB; the disk has 8 MiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; MIB];
    for _ in 0..256 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let dev = disk(8 * MIB);
    let err = write(&bomb, Some("raw"), None, None, &dev).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { device_bytes, image_bytes }
            if device_bytes == 8 * MIB as u64 && image_bytes > device_bytes),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn zero_blocks_of_raw_images_are_zeroed_not_written() {
    // 4 MiB of data, 8 MiB of zeros, 1 MiB of data: the zeros must land as zeros on a disk
    // that held 0xAA, without being written as buffers.
    let mut image = image_bytes(13 * MIB, 41);
    image[4 * MIB..12 * MIB].fill(0);
    let dev = disk(16 * MIB);
    let report = write(&image, Some("raw"), None, None, &dev).unwrap();
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
    assert_eq!(report.bytes_zeroed, 8 * MIB as u64);
    assert_eq!(report.format, "raw");
}

/// A source with arbitrary read sizes from a deterministic generator, and optionally an error
/// at a chosen offset.
struct Jittery {
    data: Vec<u8>,
    pos: usize,
    rng: u64,
    fail_at: Option<usize>,
}

impl std::io::Read for Jittery {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fail_at == Some(self.pos) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mut n = (self.rng % 200_000) as usize + 1;
        if self.rng.is_multiple_of(7) {
            n = 1 + (self.rng % 13) as usize; // tiny reads too
        }
        let mut end = (self.pos + n)
            .min(self.data.len())
            .min(self.pos + buf.len());
        if let Some(f) = self.fail_at {
            end = end.min(f);
        }
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

#[test]
fn short_reads_and_injected_errors_property() {
    // Deterministic cases: every fixture kind, many read patterns, errors at many offsets.
    let cases = [
        ("v3-64k.qcow2", Some("qcow2")),
        ("v3-2m.qcow2", Some("qcow2")),
        ("v3-deflate.qcow2", Some("qcow2")),
        ("raw.gz", Some("raw")),
    ];
    for (name, fmt) in cases {
        let file = fixture(name);
        for seed in 1..=6u64 {
            let fail_at = match seed % 3 {
                0 => None,
                1 => Some((seed as usize * 7919) % 4096), // within the first MiB
                _ => Some(file.len() - file.len() / 4 + seed as usize),
            };
            let dev = disk(10 * MIB);
            let expected = sha256(&file);
            let opts = StreamOptions {
                content_length: Some(file.len() as u64),
                expected: &expected,
                disk_format: fmt,
                permitted_formats: None,
                ranges: None,
                also: None,
            };
            let src = Jittery {
                data: file.clone(),
                pos: 0,
                rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                fail_at,
            };
            let result = write_stream_with(src, &opts, dev.path(), &no_progress);
            match fail_at {
                None => {
                    result.unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
                    assert_reads_back(&dev, name);
                }
                Some(at) => {
                    let err = result.unwrap_err();
                    assert!(
                        err.to_string().contains("injected reset"),
                        "{name} seed {seed}: {err}"
                    );
                    // The first download chunk (1 MiB) is complete before anything is written.
                    if at < MIB {
                        assert_untouched(dev.path());
                    } else {
                        assert_wiped(dev.path());
                    }
                }
            }
        }
    }
}

#[test]
fn endless_bytes_after_a_qcow2_are_cut_off() {
    // A server that keeps sending after the qcow2 (no Content-Length): the converter stops at
    // 3x the virtual size + 64 MiB instead of reading forever.
    let file = fixture("v3-64k.qcow2");
    let expected = sha256(&file);
    let opts = StreamOptions {
        content_length: None,
        expected: &expected,
        disk_format: Some("qcow2"),
        permitted_formats: None,
        ranges: None,
        also: None,
    };
    let endless = std::io::Read::chain(Cursor::new(file), std::io::repeat(0));
    let dev = disk(10 * MIB);
    let err = write_stream_with(endless, &opts, dev.path(), &no_progress).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("larger than")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn two_digests_are_verified_together() {
    let image = image_bytes(5 * MIB + 99, 42);
    let sha = sha256(&image);
    let md5_hex: String = {
        use md5::Digest as _;
        md5::Md5::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let md5 = ExpectedDigest::new(HashAlgo::Md5, &md5_hex).unwrap();
    let opts = StreamOptions {
        content_length: Some(image.len() as u64),
        expected: &sha,
        disk_format: Some("raw"),
        permitted_formats: None,
        ranges: None,
        also: Some(&md5),
    };
    let dev = disk(8 * MIB);
    let report =
        write_stream_with(Cursor::new(image.clone()), &opts, dev.path(), &no_progress).unwrap();
    assert_eq!(report.digest_hex, sha256_hex(&image));
    assert_eq!(report.also_digest_hex.as_deref(), Some(md5_hex.as_str()));

    // The second digest alone failing fails the write and wipes the disk.
    let wrong = ExpectedDigest::new(HashAlgo::Md5, &"0".repeat(32)).unwrap();
    let opts = StreamOptions {
        also: Some(&wrong),
        ..opts
    };
    let dev = disk(8 * MIB);
    let err = write_stream_with(Cursor::new(image), &opts, dev.path(), &no_progress).unwrap_err();
    assert!(
        matches!(err, ImageError::ChecksumMismatch { ref algo, ref actual, .. }
            if algo == "md5" && actual == &md5_hex),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn mutated_qcow2_never_panics_or_hangs() {
    // Hostile input: bytes of the header, L1, refcount and L2 areas flipped at random
    // (deterministic generator). Every outcome must be a result: written, or an error with the
    // disk untouched or wiped.
    for name in ["v3-64k.qcow2", "v3-deflate.qcow2", "v2-deflate-4k.qcow2"] {
        let base = fixture(name);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..40 {
            let mut file = base.clone();
            let flips = 1 + next() % 8;
            for _ in 0..flips {
                // Mostly metadata (first 320 KiB), sometimes anywhere.
                let span = if next() % 4 == 0 {
                    file.len()
                } else {
                    320 * 1024
                };
                let at = (next() as usize) % span.min(file.len());
                file[at] ^= 1 << (next() % 8);
            }
            let dev = disk(10 * MIB);
            let expected = sha256(&file);
            let opts = StreamOptions {
                content_length: Some(file.len() as u64),
                expected: &expected,
                disk_format: None,
                permitted_formats: None,
                ranges: Some(&file),
                also: None,
            };
            match write_stream_with(Cursor::new(file.clone()), &opts, dev.path(), &no_progress) {
                Ok(r) => assert!(r.bytes_written <= 10 * MIB as u64, "{name} round {round}"),
                Err(_) => assert_no_image(dev.path()),
            }
        }
    }
}

#[test]
fn l1_entries_sharing_one_l2_table_read_like_qemu() {
    // v3-512: 512-byte clusters, each L1 entry maps 32 KiB. Point every L1 entry at the first
    // L2 table: qemu then reads the first 32 KiB of the guest repeated over the whole disk.
    let orig = fixture("v3-512.qcow2");
    let (size, _) = fixture_expectations()["v3-512.qcow2"].clone();
    let dev = disk(size as usize + 3 * MIB);
    write(&orig, Some("qcow2"), None, None, &dev).unwrap();
    let first = read_disk(dev.path())[..32 * 1024].to_vec();

    let be = |b: &[u8], at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    let mut shared = orig.clone();
    let l1_size = be(&shared, 36, 4) as usize;
    let l1_off = be(&shared, 40, 8) as usize;
    let entry0 = shared[l1_off..l1_off + 8].to_vec();
    for i in 1..l1_size {
        shared[l1_off + 8 * i..l1_off + 8 * i + 8].copy_from_slice(&entry0);
    }
    let dev = disk(size as usize + 3 * MIB);
    let report = write(&shared, Some("qcow2"), None, None, &dev).unwrap();
    assert_eq!(report.bytes_written, size);
    let d = read_disk(dev.path());
    for (i, piece) in d[..size as usize].chunks(32 * 1024).enumerate() {
        assert!(
            piece == &first[..piece.len()],
            "guest range {i} does not repeat the shared table's data"
        );
    }
}

#[test]
fn a_compressed_stream_producing_nothing_is_cut_off() {
    // A gzip member followed by endless empty members (20 bytes each, no output): the
    // converter stops at ~device size instead of reading forever.
    let mut empty = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut empty, b"").unwrap();
    let empty = empty.finish().unwrap();
    let mut first = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut first, &image_bytes(2 * MIB, 43)).unwrap();
    let first = first.finish().unwrap();
    let endless = std::io::Read::chain(
        Cursor::new(first),
        std::io::Read::take(RepeatSlice(empty, 0), u64::MAX),
    );
    let expected = sha256(b"never");
    let opts = StreamOptions {
        content_length: None,
        expected: &expected,
        disk_format: Some("raw"),
        permitted_formats: None,
        ranges: None,
        also: None,
    };
    let dev = disk(4 * MIB);
    let err = write_stream_with(endless, &opts, dev.path(), &no_progress).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(ref m) if m.contains("larger than")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

/// Repeats a byte string forever.
struct RepeatSlice(Vec<u8>, usize);

impl std::io::Read for RepeatSlice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.0[self.1..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.1 = (self.1 + n) % self.0.len();
        Ok(n)
    }
}
