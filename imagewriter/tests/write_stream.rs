//! write_stream on tempfile disks: the ordering guarantees of the raw writer, no network.

mod common;

use std::io::{self, Cursor, Read};
use std::path::PathBuf;
use std::sync::Mutex;

use common::*;
use ferric_imagewriter::checksum::{ExpectedDigest, HashAlgo};
use ferric_imagewriter::write::{wipe_partition_tables, write_stream, Progress};
use ferric_imagewriter::ImageError;

fn sha256(data: &[u8]) -> ExpectedDigest {
    ExpectedDigest::new(HashAlgo::Sha256, &sha256_hex(data)).unwrap()
}

fn no_progress(_: Progress) {}

#[test]
fn image_lands_byte_for_byte_and_rest_of_disk_is_kept() {
    let image = image_bytes(6 * MIB + 12_345, 1);
    let dev = disk(10 * MIB);
    let calls = Mutex::new(Vec::new());
    let cb = |p: Progress| calls.lock().unwrap().push(p);
    let report = write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64),
        &sha256(&image),
        dev.path(),
        &cb,
    )
    .unwrap();
    assert_eq!(report.bytes_written, image.len() as u64);
    assert_eq!(report.device_size, 10 * MIB as u64);
    assert_eq!(report.algo, HashAlgo::Sha256);
    assert_eq!(report.digest_hex, sha256_hex(&image));

    let d = read_disk(dev.path());
    assert_eq!(
        d.len(),
        10 * MIB,
        "a regular-file disk must not grow or shrink"
    );
    assert!(d[..image.len()] == image[..], "image bytes differ on disk");
    // Between the image and the last MiB the old content stays; the last MiB (stale GPT backup
    // area) was zeroed before streaming.
    assert!(all(&d[image.len()..9 * MIB], FILL));
    assert!(all(&d[9 * MIB..], 0));

    let calls = calls.into_inner().unwrap();
    let last = calls.last().expect("a final progress report");
    assert_eq!(last.bytes_done, image.len() as u64);
    assert_eq!(last.bytes_total, Some(image.len() as u64));
    assert!(last.rate_bytes_per_sec > 0);
}

#[test]
fn md5_and_sha512_and_unknown_length_work_too() {
    use md5::Digest as _;
    let image = image_bytes(MIB + 3, 2);
    let md5_hex: String = md5::Md5::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dev = disk(4 * MIB);
    let expected = ExpectedDigest::new(HashAlgo::Md5, &md5_hex).unwrap();
    write_stream(
        Cursor::new(image.clone()),
        None,
        &expected,
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert!(read_disk(dev.path())[..image.len()] == image[..]);

    let sha512_hex: String = sha2::Sha512::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dev = disk(4 * MIB);
    let expected = ExpectedDigest::new(HashAlgo::Sha512, &sha512_hex).unwrap();
    let r = write_stream(
        Cursor::new(image.clone()),
        None,
        &expected,
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(r.digest_hex, sha512_hex);
}

#[test]
fn image_smaller_than_the_held_back_mib() {
    let image = image_bytes(70_000, 3);
    let dev = disk(3 * MIB);
    write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64),
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    let d = read_disk(dev.path());
    assert!(d[..image.len()] == image[..]);
    // The rest of the first MiB was zeroed, not left as stale table bytes.
    assert!(all(&d[image.len()..MIB], 0));
    assert!(all(&d[MIB..2 * MIB], FILL));
    assert!(all(&d[2 * MIB..], 0));
}

#[test]
fn image_exactly_filling_the_disk() {
    let image = image_bytes(5 * MIB, 4);
    let dev = disk(5 * MIB);
    write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64),
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert!(read_disk(dev.path()) == image);
}

#[test]
fn checksum_mismatch_wipes_and_never_commits_the_first_mib() {
    let image = image_bytes(5 * MIB, 5);
    let wrong = sha256(b"some other image");
    let dev = disk(8 * MIB);
    let err = write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64),
        &wrong,
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    match &err {
        ImageError::ChecksumMismatch {
            algo,
            expected,
            actual,
        } => {
            assert_eq!(algo, "sha256");
            assert_eq!(expected, &wrong.hex);
            assert_eq!(actual, &sha256_hex(&image));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong.hex) && msg.contains(&sha256_hex(&image)),
        "{msg}"
    );
    assert_wiped(dev.path());
    // The image's first MiB (its partition table) never reached the disk.
    let d = read_disk(dev.path());
    assert!(d[..MIB] != image[..MIB]);
}

#[test]
fn too_large_by_content_length_leaves_the_disk_untouched() {
    let image = image_bytes(3 * MIB, 6);
    let dev = disk(2 * MIB);
    let err = write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64),
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                image_bytes,
                device_bytes
            } if image_bytes == 3 * MIB as u64 && device_bytes == 2 * MIB as u64
        ),
        "{err:?}"
    );
    assert_untouched(dev.path());
}

#[test]
fn too_large_discovered_while_streaming_wipes() {
    let image = image_bytes(7 * MIB, 7);
    let dev = disk(3 * MIB);
    let err = write_stream(
        Cursor::new(image.clone()),
        None,
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { image_bytes, device_bytes }
            if image_bytes > 3 * MIB as u64 && device_bytes == 3 * MIB as u64),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn too_large_within_the_first_mib_is_caught_before_writing() {
    let image = image_bytes(600_000, 8);
    let dev = disk(500_000);
    let err = write_stream(
        Cursor::new(image.clone()),
        None,
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert_untouched(dev.path());
}

#[test]
fn short_stream_against_content_length_is_an_error_and_wipes() {
    let image = image_bytes(4 * MIB, 9);
    let dev = disk(8 * MIB);
    let err = write_stream(
        Cursor::new(image.clone()),
        Some(image.len() as u64 + 10),
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::LengthMismatch { expected, received }
            if expected == image.len() as u64 + 10 && received == image.len() as u64),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn long_stream_against_content_length_is_an_error() {
    let image = image_bytes(3 * MIB, 10);
    let dev = disk(8 * MIB);
    let err = write_stream(
        Cursor::new(image.clone()),
        Some(2 * MIB as u64),
        &sha256(&image),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::LengthMismatch { expected, .. } if expected == 2 * MIB as u64),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

/// Yields `data`, then fails with `ConnectionReset`.
struct FailAfter {
    data: Cursor<Vec<u8>>,
}

impl Read for FailAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset")),
            n => Ok(n),
        }
    }
}

#[test]
fn read_error_after_the_first_write_wipes() {
    let dev = disk(8 * MIB);
    let src = FailAfter {
        data: Cursor::new(image_bytes(3 * MIB, 11)),
    };
    let err = write_stream(src, None, &sha256(b"x"), dev.path(), &no_progress).unwrap_err();
    match err {
        ImageError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_wiped(dev.path());
}

#[test]
fn read_error_within_the_first_mib_leaves_the_disk_untouched() {
    let dev = disk(8 * MIB);
    let src = FailAfter {
        data: Cursor::new(image_bytes(MIB / 2, 12)),
    };
    write_stream(src, None, &sha256(b"x"), dev.path(), &no_progress).unwrap_err();
    assert_untouched(dev.path());
}

#[test]
fn non_raw_bytes_are_refused_before_writing() {
    for magic in [&b"QFI\xfb\0\0\0\x03"[..], &[0x1f, 0x8b, 8, 0][..]] {
        let mut image = image_bytes(2 * MIB, 13);
        image[..magic.len()].copy_from_slice(magic);
        let dev = disk(4 * MIB);
        let err = write_stream(
            Cursor::new(image.clone()),
            Some(image.len() as u64),
            &sha256(&image),
            dev.path(),
            &no_progress,
        )
        .unwrap_err();
        // qcow2 declared raw: refused by policy; random bytes behind a gzip magic: corrupt.
        assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
        assert_untouched(dev.path());
    }
}

/// A source that, while the image is being streamed, checks what is on the disk: the first MiB
/// must already be zero and must not hold image bytes until the stream has ended. The pipeline
/// reads ahead of the converter by a few chunks, so checks start once the download is past
/// [`LOOKAHEAD`] (by then the converter has committed: zeroed both ends).
struct Inspecting {
    data: Cursor<Vec<u8>>,
    disk: PathBuf,
    checks: usize,
}

const LOOKAHEAD: usize = 8 * MIB;

impl Read for Inspecting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let pos = self.data.position() as usize;
        if pos >= LOOKAHEAD && pos < self.data.get_ref().len() {
            let f = std::fs::File::open(&self.disk).unwrap();
            let len = f.metadata().unwrap().len();
            let mut first = vec![1u8; MIB];
            f.read_exact_at(&mut first, 0).unwrap();
            assert!(all(&first, 0), "first MiB must be zeroed while streaming");
            let mut last = vec![1u8; MIB];
            f.read_exact_at(&mut last, len - MIB as u64).unwrap();
            assert!(all(&last, 0), "last MiB must be zeroed while streaming");
            self.checks += 1;
        }
        let n = buf.len().min(64 * 1024);
        self.data.read(&mut buf[..n])
    }
}

#[test]
fn first_mib_is_zero_until_the_digest_matched() {
    let image = image_bytes(16 * MIB, 14);
    let dev = disk(24 * MIB);
    let mut src = Inspecting {
        data: Cursor::new(image.clone()),
        disk: dev.path().to_path_buf(),
        checks: 0,
    };
    write_stream(&mut src, None, &sha256(&image), dev.path(), &no_progress).unwrap();
    assert!(
        src.checks > 10,
        "the inspection ran only {} times",
        src.checks
    );
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
}

#[test]
fn missing_device_is_an_error_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-disk");
    let err = write_stream(
        Cursor::new(vec![1, 2, 3]),
        Some(3),
        &sha256(&[1, 2, 3]),
        &path,
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn wipe_partition_tables_zeroes_both_ends_only() {
    let dev = disk(5 * MIB);
    wipe_partition_tables(dev.path()).unwrap();
    let d = read_disk(dev.path());
    assert!(all(&d[..MIB], 0));
    assert!(all(&d[MIB..4 * MIB], FILL));
    assert!(all(&d[4 * MIB..], 0));

    // A disk smaller than two MiB is zeroed whole, without growing.
    let small = disk(MIB + 100);
    wipe_partition_tables(small.path()).unwrap();
    let d = read_disk(small.path());
    assert_eq!(d.len(), MIB + 100);
    assert!(all(&d, 0));
}
