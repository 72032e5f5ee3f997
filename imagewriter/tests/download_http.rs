//! open_image / fetch_bytes against the scripted local server: URL fallback, IPA's retry
//! policy, timeouts, limits and credentials.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use ferric_imagewriter::download::{fetch_bytes, open_image, HttpOptions};
use ferric_imagewriter::ImageError;

/// Short timeouts and pauses so fault tests stay fast; bounds, not timed assertions.
fn fast(retries: u32) -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(700),
        retries,
        retry_interval: Duration::from_millis(20),
        ..HttpOptions::default()
    }
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn first_url_404_second_ok() {
    let body = image_bytes(300_000, 1);
    let srv = TestServer::start(vec![
        ("/missing.raw", vec![Reply::Status(404)]),
        ("/disk.raw", vec![Reply::Ok(body.clone())]),
    ]);
    let urls = vec![srv.url("/missing.raw"), srv.url("/disk.raw")];
    let stream = open_image(&urls, &fast(3)).unwrap();
    assert_eq!(stream.url(), srv.url("/disk.raw"));
    assert_eq!(stream.content_length(), Some(body.len() as u64));
    assert!(read_all(stream) == body);
    // 4xx is not retried (IPA: "do not retry 4xx status codes").
    assert_eq!(srv.hits("/missing.raw"), 1);
}

#[test]
fn server_error_then_ok_is_retried() {
    let body = image_bytes(10_000, 2);
    let srv = TestServer::single(
        "/disk.raw",
        vec![
            Reply::Status(500),
            Reply::Status(503),
            Reply::Ok(body.clone()),
        ],
    );
    let stream = open_image(&[srv.url("/disk.raw")], &fast(2)).unwrap();
    assert!(read_all(stream) == body);
    assert_eq!(srv.hits("/disk.raw"), 3);
}

#[test]
fn every_url_failing_names_each_url_and_reason() {
    let srv = TestServer::start(vec![
        ("/a", vec![Reply::Status(500)]),
        ("/b", vec![Reply::Status(403)]),
        ("/c", vec![Reply::Close]),
    ]);
    let urls = vec![srv.url("/a"), srv.url("/b"), srv.url("/c")];
    let err = open_image(&urls, &fast(2)).unwrap_err();
    let ImageError::DownloadAll { attempts } = &err else {
        panic!("expected DownloadAll, got {err:?}");
    };
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts[0].starts_with(&srv.url("/a")), "{}", attempts[0]);
    assert!(attempts[0].contains("500"), "{}", attempts[0]);
    assert!(attempts[0].contains("after 3 attempts"), "{}", attempts[0]);
    assert!(attempts[1].starts_with(&srv.url("/b")) && attempts[1].contains("403"));
    assert!(attempts[2].starts_with(&srv.url("/c")));
    // 1 + 2 retries for 5xx and a dropped connection, none for 403.
    assert_eq!(srv.hits("/a"), 3);
    assert_eq!(srv.hits("/b"), 1);
    assert_eq!(srv.hits("/c"), 3);
    let msg = err.to_string();
    assert!(msg.contains(&srv.url("/b")), "{msg}");
}

#[test]
fn connection_refused_is_reported() {
    // Bind then drop to get a port with (almost certainly) nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/disk.raw");
    let err = open_image(std::slice::from_ref(&url), &fast(1)).unwrap_err();
    let ImageError::DownloadAll { attempts } = err else {
        panic!("expected DownloadAll");
    };
    assert!(attempts[0].starts_with(&url), "{attempts:?}");
}

#[test]
fn stalled_server_times_out_within_bounds() {
    let srv = TestServer::single("/disk.raw", vec![Reply::Stall]);
    let started = Instant::now();
    let err = open_image(&[srv.url("/disk.raw")], &fast(1)).unwrap_err();
    let elapsed = started.elapsed();
    let ImageError::DownloadAll { attempts } = err else {
        panic!("expected DownloadAll");
    };
    assert!(attempts[0].contains("timed out"), "{attempts:?}");
    assert_eq!(srv.hits("/disk.raw"), 2, "timeouts are retried");
    // Two attempts of a 0.7 s read timeout: generous bound, only to prove it does not hang.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}

#[test]
fn body_that_goes_silent_fails_the_read() {
    let body = image_bytes(200_000, 3);
    let srv = TestServer::single(
        "/disk.raw",
        vec![Reply::StallBody {
            body: body.clone(),
            send: 50_000,
        }],
    );
    let mut stream = open_image(&[srv.url("/disk.raw")], &fast(0)).unwrap();
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).unwrap_err();
    assert!(got.len() <= 50_000);
    let inner = err.get_ref().expect("typed payload").to_string();
    assert!(inner.contains("read timeout"), "{inner}");
    assert!(inner.contains(&srv.url("/disk.raw")), "{inner}");
}

#[test]
fn fetch_bytes_enforces_the_limit() {
    let small = b"0123456789".to_vec();
    let big = image_bytes(5000, 4);
    let srv = TestServer::start(vec![
        ("/small", vec![Reply::Ok(small.clone())]),
        ("/big", vec![Reply::Ok(big.clone())]),
        ("/big-chunked", vec![Reply::Chunked(big.clone())]),
        ("/gone", vec![Reply::Status(404)]),
    ]);
    assert_eq!(
        fetch_bytes(&srv.url("/small"), &fast(0), 10).unwrap(),
        small
    );
    for path in ["/big", "/big-chunked"] {
        let err = fetch_bytes(&srv.url(path), &fast(0), 4096).unwrap_err();
        assert!(
            matches!(err, ImageError::ResponseTooLarge { ref url, limit: 4096 } if url == &srv.url(path)),
            "{path}: {err:?}"
        );
    }
    assert_eq!(
        fetch_bytes(&srv.url("/big-chunked"), &fast(0), 5000).unwrap(),
        big
    );
    let err = fetch_bytes(&srv.url("/gone"), &fast(3), 100).unwrap_err();
    assert!(
        matches!(err, ImageError::Download { ref reason, .. } if reason.contains("404")),
        "{err:?}"
    );
    assert_eq!(srv.hits("/gone"), 1);
}

#[test]
fn credentials_are_sent() {
    let srv = TestServer::single("/disk.raw", vec![Reply::Ok(b"data".to_vec())]);
    let opts = HttpOptions {
        basic_auth: Some(("SpongeBob".into(), "SquarePants".into())),
        ..fast(0)
    };
    fetch_bytes(&srv.url("/disk.raw"), &opts, 100).unwrap();
    let opts = HttpOptions {
        authorization: Some("Bearer f00".into()),
        ..fast(0)
    };
    open_image(&[srv.url("/disk.raw")], &opts).unwrap();
    let reqs = srv.requests();
    assert_eq!(
        reqs[0].headers.get("authorization").map(String::as_str),
        // base64("SpongeBob:SquarePants")
        Some("Basic U3BvbmdlQm9iOlNxdWFyZVBhbnRz")
    );
    assert_eq!(
        reqs[1].headers.get("authorization").map(String::as_str),
        Some("Bearer f00")
    );
}

#[test]
fn explicit_proxy_is_used() {
    // The "proxy" is our test server: a proxied request carries the absolute URL as target, so
    // no name is ever resolved.
    let srv = TestServer::single(
        "http://image.invalid/disk.raw",
        vec![Reply::Ok(b"via proxy".to_vec())],
    );
    let mut opts = fast(0);
    opts.proxies
        .insert("http".into(), format!("http://{}", &srv.url("")[7..]));
    let body = fetch_bytes("http://image.invalid/disk.raw", &opts, 100).unwrap();
    assert_eq!(body, b"via proxy");

    // no_proxy bypasses it: a direct connection to 127.0.0.2:9 (nobody listens) fails, and
    // the proxy sees no second request.
    opts.no_proxy = Some("127.0.0.2".into());
    fetch_bytes("http://127.0.0.2:9/disk.raw", &opts, 100).unwrap_err();
    assert_eq!(srv.hits("http://127.0.0.2:9/disk.raw"), 0);
    assert_eq!(srv.hits("http://image.invalid/disk.raw"), 1);
}
