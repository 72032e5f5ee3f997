//! The image pipeline on hostile image files: `write::write_stream_with` reads the fuzz input
//! as the downloaded image (qcow2 above all, and the gzip/zstd/xz containers and raw images
//! format detection lets through) and writes it to an 8 MiB scratch file standing in for the
//! disk. The digest is the input's own sha256, so a well-formed input goes all the way to
//! the commit of the first MiB.
//!
//! Checked beyond "no panic": an uncompressed raw image reads back byte for byte, a report never claims
//! more than the device holds, and after any failure the first MiB of the device is zero
//! (never a bootable half image, STYLE.md pattern 2).
//!
//! Input: one flag byte, then the image file. Bit 0: declare `disk_format: qcow2` (else no
//! declaration, any writable format); bit 1: offer the file for range re-reads (qcow2 tables
//! after their data); bit 2: announce the length as Content-Length; bit 3: verify an md5 as
//! well (the second digest).
#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use ferric_imagewriter::checksum::{ExpectedDigest, HashAlgo, StreamHasher};
use ferric_imagewriter::io::RangeSource;
use ferric_imagewriter::write::{write_stream_with, StreamOptions};
use libfuzzer_sys::fuzz_target;

const DEVICE_BYTES: u64 = 8 << 20;
const HEAD: usize = 1 << 20;

/// The scratch "disk": on tmpfs when there is one, so fsync costs nothing.
fn device_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("ferric-fuzz-qcow2-{}.img", std::process::id()))
    })
}

fn fresh_device() -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(device_path())
        .expect("create the scratch device");
    f.set_len(DEVICE_BYTES).expect("size the scratch device");
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    let image = image.to_vec();
    let device = fresh_device();
    let mut h = StreamHasher::new(HashAlgo::Sha256);
    h.update(&image);
    let expected = ExpectedDigest::new(HashAlgo::Sha256, &h.finalize_hex()).expect("digest");
    let mut h = StreamHasher::new(HashAlgo::Md5);
    h.update(&image);
    let md5 = ExpectedDigest::new(HashAlgo::Md5, &h.finalize_hex()).expect("digest");
    let ranges: Option<&dyn RangeSource> = (flags & 2 != 0).then_some(&image as &dyn RangeSource);
    let opts = StreamOptions {
        content_length: (flags & 4 != 0).then_some(image.len() as u64),
        expected: &expected,
        disk_format: (flags & 1 != 0).then_some("qcow2"),
        permitted_formats: None,
        ranges,
        also: (flags & 8 != 0).then_some(&md5),
    };
    let result = write_stream_with(&image[..], &opts, device_path(), &|_| {});
    let mut head = vec![0u8; HEAD];
    device.read_exact_at(&mut head, 0).expect("read the device");
    match result {
        Ok(report) => {
            assert!(report.bytes_written <= DEVICE_BYTES, "{report:?}");
            assert_eq!(report.digest_hex, expected.hex);
            // `raw`, `gpt`, `mbr`…: bytes written as they came (containers and qcow2 are not).
            if !report.format.contains('+') && !report.format.contains("qcow2") {
                let mut back = vec![0u8; image.len()];
                device.read_exact_at(&mut back, 0).expect("read back");
                assert!(back == image, "the raw image does not read back");
            }
        }
        Err(e) => assert!(
            head.iter().all(|&b| b == 0),
            "the write failed ({e}) but left data in the first MiB of the device"
        ),
    }
    let _ = std::fs::remove_file(device_path());
});
