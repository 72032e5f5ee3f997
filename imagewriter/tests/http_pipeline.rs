//! The whole pipeline over HTTP from the scripted local server: resumed downloads, range
//! re-reads for qcow2, and what happens when the server misbehaves.

mod common;

use std::time::Duration;

use common::*;
use ferric_imagewriter::download::HttpOptions;
use ferric_imagewriter::write::{write_image, ImageSpec, Progress};
use ferric_imagewriter::ImageError;
use serde_json::json;

fn fast(retries: u32) -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(700),
        retries,
        retry_interval: Duration::from_millis(20),
        ..HttpOptions::default()
    }
}

fn spec(url: String, sha256: &str, disk_format: Option<&str>, retries: u32) -> ImageSpec {
    let info = json!({
        "id": "img", "urls": [url], "disk_format": disk_format,
        "os_hash_algo": "sha256", "os_hash_value": sha256,
    });
    ImageSpec::from_image_info(&info, false, &fast(retries)).unwrap()
}

fn no_progress(_: Progress) {}

#[test]
fn dropped_connection_is_resumed_with_if_range() {
    let image = image_bytes(9 * MIB + 123, 50);
    let etag = "\"v1\"".to_string();
    let srv = TestServer::single(
        "/disk.raw",
        vec![
            Reply::Ranged {
                body: image.clone(),
                etag: etag.clone(),
                cut: Some(3 * MIB + 17),
            },
            Reply::Ranged {
                body: image.clone(),
                etag: etag.clone(),
                cut: Some(2 * MIB),
            },
            Reply::Ranged {
                body: image.clone(),
                etag: etag.clone(),
                cut: None,
            },
        ],
    );
    let dev = disk(12 * MIB);
    let report = write_image(
        &spec(srv.url("/disk.raw"), &sha256_hex(&image), Some("raw"), 3),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(report.bytes_downloaded, image.len() as u64);
    assert_eq!(report.digest_hex, sha256_hex(&image));
    assert!(read_disk(dev.path())[..image.len()] == image[..]);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3, "one GET and two resumes");
    assert_eq!(reqs[0].headers.get("range"), None);
    let r1 = &reqs[1].headers;
    assert_eq!(
        r1.get("range").map(String::as_str),
        Some(format!("bytes={}-", 3 * MIB + 17).as_str())
    );
    assert_eq!(r1.get("if-range"), Some(&etag));
    assert_eq!(
        reqs[2].headers.get("range").map(String::as_str),
        Some(format!("bytes={}-", 5 * MIB + 17).as_str())
    );
}

#[test]
fn changed_file_is_not_resumed_and_the_disk_is_wiped() {
    let image = image_bytes(6 * MIB, 51);
    let mut changed = image.clone();
    changed[5 * MIB] ^= 0xff;
    let srv = TestServer::single(
        "/disk.raw",
        vec![
            Reply::Ranged {
                body: image.clone(),
                etag: "\"v1\"".into(),
                cut: Some(4 * MIB),
            },
            // If-Range no longer matches: the server sends the whole new file with 200.
            Reply::Ranged {
                body: changed,
                etag: "\"v2\"".into(),
                cut: None,
            },
        ],
    );
    let dev = disk(8 * MIB);
    let err = write_image(
        &spec(srv.url("/disk.raw"), &sha256_hex(&image), Some("raw"), 3),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref reason, .. } if reason.contains("200")),
        "{err:?}"
    );
    assert_eq!(srv.hits("/disk.raw"), 2, "no further attempt after a 200");
    assert_wiped(dev.path());
}

#[test]
fn without_validators_nothing_is_resumed() {
    // The plain Truncated reply has no ETag/Last-Modified: a resume could splice two files.
    let image = image_bytes(4 * MIB, 52);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::Truncated {
            body: image.clone(),
            send: 3 * MIB,
        }],
    );
    let dev = disk(6 * MIB);
    let err = write_image(
        &spec(srv.url("/disk.raw"), &sha256_hex(&image), Some("raw"), 3),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::Download { .. }), "{err:?}");
    assert_eq!(srv.hits("/disk.raw"), 1);
    assert_wiped(dev.path());
}

#[test]
fn resumes_are_bounded_by_the_retry_count() {
    let image = image_bytes(6 * MIB, 53);
    let cut = |n| Reply::Ranged {
        body: image.clone(),
        etag: "\"v1\"".into(),
        cut: Some(n),
    };
    // Every response dies after 1.5 MiB: 1 GET + 2 resumes, then give up.
    let srv = TestServer::single("/disk.raw", vec![cut(MIB + MIB / 2)]);
    let dev = disk(8 * MIB);
    let err = write_image(
        &spec(srv.url("/disk.raw"), &sha256_hex(&image), Some("raw"), 2),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref reason, .. } if reason.contains("gave up after 2")),
        "{err:?}"
    );
    assert_eq!(srv.hits("/disk.raw"), 3);
    assert_wiped(dev.path());
}

#[test]
fn qcow2_with_tables_after_data_is_completed_with_range_requests() {
    let file = fixture("v3-l2-after-data.qcow2");
    let (size, sha) = fixture_expectations()["v3-l2-after-data.qcow2"].clone();
    let srv = TestServer::single(
        "/disk.qcow2",
        vec![Reply::Ranged {
            body: file.clone(),
            etag: "\"q1\"".into(),
            cut: None,
        }],
    );
    let dev = disk(size as usize + 2 * MIB);
    let report = write_image(
        &spec(srv.url("/disk.qcow2"), &sha256_hex(&file), Some("qcow2"), 1),
        dev.path(),
        &no_progress,
    )
    .unwrap();
    assert!(report.bytes_reread > 0);
    assert_eq!(sha256_hex(&read_disk(dev.path())[..size as usize]), sha);
    let reqs = srv.requests();
    assert!(reqs.len() >= 2, "{reqs:?}");
    for r in &reqs[1..] {
        let range = r.headers.get("range").expect("a range request");
        assert!(range.starts_with("bytes="), "{range}");
        assert_eq!(
            r.headers.get("if-range").map(String::as_str),
            Some("\"q1\"")
        );
    }
}

#[test]
fn qcow2_needing_ranges_from_a_server_without_them_fails_and_wipes() {
    let file = fixture("v3-l2-after-data.qcow2");
    // Ok replies ignore Range: the re-read gets a 200 and is refused.
    let srv = TestServer::single("/disk.qcow2", vec![Reply::Ok(file.clone())]);
    let dev = disk(12 * MIB);
    let err = write_image(
        &spec(srv.url("/disk.qcow2"), &sha256_hex(&file), Some("qcow2"), 0),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref reason, .. } if reason.contains("ranges")),
        "{err:?}"
    );
    // Nothing was written before the re-read (the image is fully allocated): untouched.
    assert_untouched(dev.path());
}

#[test]
fn stalled_server_mid_qcow2_times_out_and_wipes() {
    let file = fixture("v3-2m.qcow2");
    let srv = TestServer::single(
        "/disk.qcow2",
        // 2 MiB clusters: header, refcounts, L1 at 6 MiB, first L2 table at 8 MiB; stall after
        // data was written.
        vec![Reply::StallBody {
            body: file.clone(),
            send: 11 * MIB,
        }],
    );
    let dev = disk(12 * MIB);
    let err = write_image(
        &spec(srv.url("/disk.qcow2"), &sha256_hex(&file), Some("qcow2"), 0),
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
fn garbage_instead_of_an_image_is_refused() {
    // An HTML error page served with 200 and declared raw would be written verbatim by IPA;
    // here it is a raw image too (nothing else matches), but its digest fails and the disk is
    // wiped; declared qcow2 it is refused before writing.
    let page = b"<html><body>502 Bad Gateway</body></html>".repeat(30_000);
    let srv = TestServer::single("/disk.qcow2", vec![Reply::Ok(page.clone())]);
    let dev = disk(4 * MIB);
    let err = write_image(
        &spec(
            srv.url("/disk.qcow2"),
            &sha256_hex(b"the real image"),
            Some("qcow2"),
            0,
        ),
        dev.path(),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert_untouched(dev.path());
    let err = write_image(
        &spec(
            srv.url("/disk.qcow2"),
            &sha256_hex(b"the real image"),
            Some("raw"),
            0,
        ),
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
