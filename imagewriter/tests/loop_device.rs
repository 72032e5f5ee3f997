//! The block-device paths (O_DIRECT writes, BLKZEROOUT, partition re-read) on a real loop
//! device backed by a file on disk. Needs root and loop devices: fails in CI (`CI` set) when they
//! are missing, skips loudly elsewhere.

mod common;

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ferric_imagewriter::checksum::{ExpectedDigest, HashAlgo};
use ferric_imagewriter::write::{write_stream_with, StreamOptions};

/// A loop device we created; detached on drop.
struct Loop {
    dev: PathBuf,
    _backing: tempfile::NamedTempFile,
}

impl Loop {
    fn new(size: u64) -> Option<Loop> {
        // /var/tmp: on disk, not tmpfs (loop over tmpfs has no O_DIRECT).
        let backing = tempfile::Builder::new()
            .prefix("ferric-loop-")
            .tempfile_in("/var/tmp")
            .ok()?;
        backing.as_file().set_len(0).ok()?;
        std::fs::write(backing.path(), vec![FILL; size as usize]).ok()?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop {
            dev: PathBuf::from(dev),
            _backing: backing,
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn loop_or_skip(size: u64) -> Option<Loop> {
    match Loop::new(size) {
        Some(l) => Some(l),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI: cannot create a loop device (needs root and losetup)")
        }
        None => {
            eprintln!("SKIPPED: cannot create a loop device (needs root and losetup)");
            None
        }
    }
}

fn read_dev(dev: &Path, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(dev).unwrap();
    let mut out = vec![0u8; len];
    f.read_exact(&mut out).unwrap();
    out
}

fn write(file: &[u8], format: &str, dev: &Path) -> ferric_imagewriter::write::WriteReport {
    let expected = ExpectedDigest::new(HashAlgo::Sha256, &sha256_hex(file)).unwrap();
    let opts = StreamOptions {
        content_length: Some(file.len() as u64),
        expected: &expected,
        disk_format: Some(format),
        permitted_formats: None,
        ranges: None,
        also: None,
    };
    write_stream_with(Cursor::new(file.to_vec()), &opts, dev, &|_| {}).unwrap()
}

#[test]
fn raw_with_zero_runs_on_a_loop_device() {
    let Some(lo) = loop_or_skip(32 << 20) else {
        return;
    };
    let mut image = image_bytes(20 * MIB + 4096 + 512, 60);
    image[3 * MIB..11 * MIB].fill(0);
    // Zeros not aligned to the 64 KiB detection blocks: only the 15 whole blocks inside are
    // zeroed, the ragged edges are written.
    image[15 * MIB + 512..16 * MIB + 1024].fill(0);
    let report = write(&image, "raw", &lo.dev);
    assert!(
        report.direct_io,
        "O_DIRECT should work on a loop device over ext4/xfs"
    );
    assert_eq!(report.bytes_zeroed, 8 * MIB as u64 + 15 * 65536);
    let back = read_dev(&lo.dev, 32 << 20);
    assert!(
        back[..image.len()] == image[..],
        "device differs from the image"
    );
    assert!(all(&back[image.len()..31 * MIB], FILL));
    assert!(all(&back[31 * MIB..], 0));
}

#[test]
fn qcow2_on_a_loop_device() {
    let Some(lo) = loop_or_skip(16 << 20) else {
        return;
    };
    for name in ["v3-64k.qcow2", "v3-512.qcow2", "v3-zstd.qcow2"] {
        let file = fixture(name);
        let (size, sha) = fixture_expectations()[name].clone();
        let report = write(&file, "qcow2", &lo.dev);
        assert!(report.direct_io);
        assert!(report.bytes_zeroed > 0);
        let back = read_dev(&lo.dev, size as usize);
        assert_eq!(sha256_hex(&back), sha, "{name}");
    }
}
