//! image_info → ImageSpec → write_image over HTTP onto tempfile disks, with faults.

mod common;

use std::time::Duration;

use common::*;
use ferric_imagewriter::checksum::{ExpectedDigest, HashAlgo};
use ferric_imagewriter::download::HttpOptions;
use ferric_imagewriter::write::{write_image, ImageSpec, Progress};
use ferric_imagewriter::ImageError;
use serde_json::json;

fn fast() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(700),
        retries: 1,
        retry_interval: Duration::from_millis(20),
        ..HttpOptions::default()
    }
}

fn spec(urls: Vec<String>, sha256: &str) -> ImageSpec {
    let info = json!({
        "id": "disk.raw", "urls": urls, "disk_format": "raw", "container_format": null,
        "stream_raw_images": true, "os_hash_algo": "sha256", "os_hash_value": sha256,
        "node_uuid": "deac3149-028a-46ae-9ba7-d09dcef7d201",
    });
    ImageSpec::from_image_info(&info, false, &fast()).unwrap()
}

fn no_progress(_: Progress) {}

#[test]
fn image_written_byte_for_byte() {
    let image = image_bytes(5 * MIB + 777, 1);
    let srv = TestServer::single("/disk.raw", vec![Reply::Ok(image.clone())]);
    let dev = disk(8 * MIB);
    let report = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(report.bytes_written, image.len() as u64);
    assert_eq!(report.digest_hex, sha256_hex(&image));
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
}

#[test]
fn chunked_image_without_content_length() {
    let image = image_bytes(3 * MIB + 5, 2);
    let srv = TestServer::single("/disk.raw", vec![Reply::Chunked(image.clone())]);
    let dev = disk(6 * MIB);
    write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
}

#[test]
fn first_url_404_second_ok() {
    let image = image_bytes(2 * MIB, 3);
    let srv = TestServer::start(vec![
        ("/a/disk.raw", vec![Reply::Status(404)]),
        ("/b/disk.raw", vec![Reply::Ok(image.clone())]),
    ]);
    let dev = disk(4 * MIB);
    let urls = vec![srv.url("/a/disk.raw"), srv.url("/b/disk.raw")];
    write_image(&spec(urls, &sha256_hex(&image)), dev.path(), &no_progress).unwrap();
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
}

#[test]
fn checksum_mismatch_wipes_the_disk() {
    let image = image_bytes(3 * MIB, 4);
    let srv = TestServer::single("/disk.raw", vec![Reply::Ok(image.clone())]);
    let dev = disk(6 * MIB);
    let wrong = sha256_hex(b"another image");
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &wrong),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::ChecksumMismatch { ref expected, ref actual, .. }
            if expected == &wrong && actual == &sha256_hex(&image)),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn image_larger_than_disk_leaves_it_untouched() {
    let image = image_bytes(5 * MIB, 5);
    let srv = TestServer::single("/disk.raw", vec![Reply::Ok(image.clone())]);
    let dev = disk(4 * MIB);
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { image_bytes, device_bytes }
            if image_bytes == 5 * MIB as u64 && device_bytes == 4 * MIB as u64),
        "{err:?}"
    );
    assert_untouched(dev.path());
}

#[test]
fn truncated_body_fails_and_wipes() {
    let image = image_bytes(4 * MIB, 6);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::Truncated {
            body: image.clone(),
            send: 3 * MIB,
        }],
    );
    let dev = disk(6 * MIB);
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref url, .. } if url == &srv.url("/disk.raw")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn truncated_within_the_first_mib_leaves_the_disk_untouched() {
    let image = image_bytes(4 * MIB, 7);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::Truncated {
            body: image.clone(),
            send: 100_000,
        }],
    );
    let dev = disk(6 * MIB);
    write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert_untouched(dev.path());
}

#[test]
fn content_length_smaller_than_the_image_fails_verification() {
    // The server claims fewer bytes than it sends: only the claimed bytes are read, and the
    // cut image cannot match its digest.
    let image = image_bytes(3 * MIB, 8);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::WrongLength {
            body: image.clone(),
            claimed: 2 * MIB as u64,
        }],
    );
    let dev = disk(6 * MIB);
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn content_length_larger_than_the_image_fails() {
    let image = image_bytes(3 * MIB, 9);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::WrongLength {
            body: image.clone(),
            claimed: 4 * MIB as u64,
        }],
    );
    let dev = disk(6 * MIB);
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Download { .. } | ImageError::LengthMismatch { .. }
        ),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn stall_mid_body_times_out_and_wipes() {
    let image = image_bytes(4 * MIB, 10);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::StallBody {
            body: image.clone(),
            send: 2 * MIB,
        }],
    );
    let dev = disk(6 * MIB);
    let err = write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref reason, .. } if reason.contains("read timeout")),
        "{err:?}"
    );
    assert_wiped(dev.path());
}

#[test]
fn declared_unsupported_format_is_refused_before_any_io() {
    let srv = TestServer::single("/disk.vmdk", vec![Reply::Ok(vec![0; 10])]);
    let mut s = spec(vec![srv.url("/disk.vmdk")], &sha256_hex(b""));
    s.disk_format = Some("vmdk".into());
    let dev = disk(2 * MIB);
    let err = write_image(&s, dev.path(), &no_progress).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFormat(_)), "{err:?}");
    assert_eq!(srv.hits("/disk.vmdk"), 0);
    assert_untouched(dev.path());
}

#[test]
fn checksum_url_is_resolved_from_the_checksums_file() {
    let image = image_bytes(2 * MIB, 11);
    let digest = sha256_hex(&image);
    let other = sha256_hex(b"other");
    let sums = format!("{other}  disk.raw.bak\n{digest} *disk.raw\n{other}  other.raw\n");
    let srv = TestServer::start(vec![
        ("/images/disk.raw", vec![Reply::Ok(image.clone())]),
        ("/images/SHA256SUMS", vec![Reply::Ok(sums.into_bytes())]),
        (
            "/images/bad-sums",
            vec![Reply::Ok(format!("{other}  x.raw\n").into_bytes())],
        ),
        ("/images/sums-500", vec![Reply::Status(500)]),
    ]);
    let base = fast();

    // os_hash_value as a URL.
    let info = json!({"id": "disk.raw", "urls": [srv.url("/images/disk.raw")],
        "os_hash_algo": "sha256", "os_hash_value": srv.url("/images/SHA256SUMS")});
    let s = ImageSpec::from_image_info(&info, false, &base).unwrap();
    assert_eq!(
        s.expected,
        ExpectedDigest {
            algo: HashAlgo::Sha256,
            hex: digest.clone()
        }
    );

    // Legacy checksum as a URL: algorithm from the digest's length.
    let info = json!({"id": "disk.raw", "urls": [srv.url("/images/disk.raw")],
        "checksum": srv.url("/images/SHA256SUMS")});
    let s = ImageSpec::from_image_info(&info, false, &base).unwrap();
    assert_eq!(s.expected.algo, HashAlgo::Sha256);
    assert_eq!(s.expected.hex, digest);

    // And the resolved spec writes the image.
    let dev = disk(3 * MIB);
    write_image(&s, dev.path(), &no_progress).unwrap();
    assert!(read_disk(dev.path())[..image.len()] == image[..]);

    // No line for the image's file name.
    let info = json!({"id": "disk.raw", "urls": [srv.url("/images/disk.raw")],
        "checksum": srv.url("/images/bad-sums")});
    let err = ImageSpec::from_image_info(&info, false, &base).unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidChecksum(ref m) if m.contains("disk.raw")),
        "{err:?}"
    );

    // The checksums file cannot be fetched.
    let info = json!({"id": "disk.raw", "urls": [srv.url("/images/disk.raw")],
        "checksum": srv.url("/images/sums-500")});
    let err = ImageSpec::from_image_info(&info, false, &base).unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref url, .. } if url == &srv.url("/images/sums-500")),
        "{err:?}"
    );
}

#[test]
fn progress_is_reported_with_totals() {
    let image = image_bytes(3 * MIB, 12);
    let srv = TestServer::single("/disk.raw", vec![Reply::Ok(image.clone())]);
    let dev = disk(4 * MIB);
    let seen = std::sync::Mutex::new(Vec::new());
    let cb = |p: Progress| seen.lock().unwrap().push(p);
    write_image(
        &spec(vec![srv.url("/disk.raw")], &sha256_hex(&image)),
        dev.path(),
        &cb,
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    let last = seen.last().unwrap();
    assert_eq!(last.bytes_done, image.len() as u64);
    assert_eq!(last.bytes_total, Some(image.len() as u64));
    assert!(last.rate_bytes_per_sec > 0);
}
