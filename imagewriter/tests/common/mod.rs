//! Shared helpers for the download/write integration tests: a tiny scripted HTTP/1.1 server on
//! 127.0.0.1 with fault injection, tempfile "disks", and deterministic image bytes.
//!
//! The server is deliberately dumb (one request per connection, `Connection: close`) so each
//! fault is exactly what the test asked for.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with a correct Content-Length.
    Ok(Vec<u8>),
    /// 200 with chunked transfer encoding (no Content-Length).
    Chunked(Vec<u8>),
    /// This status with a short text body.
    Status(u16),
    /// 200 announcing `body.len()` bytes, sending only the first `send`, then closing.
    Truncated { body: Vec<u8>, send: usize },
    /// 200 announcing `claimed` bytes, sending all of `body`, then closing.
    WrongLength { body: Vec<u8>, claimed: u64 },
    /// Read the request and never answer (until the server is dropped, at most 30 s).
    Stall,
    /// 200 with a correct Content-Length, send the first `send` bytes, then go silent.
    StallBody { body: Vec<u8>, send: usize },
    /// Close the connection without answering.
    Close,
    /// A file with an ETag and Last-Modified that honours `Range: bytes=a-[b]` (206 with
    /// Content-Range) when `If-Range` is absent or equals `etag`, else 200 with the whole file.
    /// With `cut: Some(n)`, the connection closes after `n` body bytes of this response.
    Ranged {
        body: Vec<u8>,
        etag: String,
        cut: Option<usize>,
    },
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Request target (path and query).
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
}

/// A scripted server. The n-th request to a path gets the n-th reply of its script (the last
/// one repeats); unknown paths get 404.
pub struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Start serving `routes` (path → replies in order).
    pub fn start(routes: Vec<(&str, Vec<Reply>)>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes: HashMap<String, Vec<Reply>> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let routes = Arc::new(routes);
        let accept = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (stop, seen, routes, counts) =
                        (stop.clone(), seen.clone(), routes.clone(), counts.clone());
                    std::thread::spawn(move || {
                        serve_one(conn, &stop, &seen, &routes, &counts);
                    });
                }
            })
        };
        TestServer {
            addr,
            stop,
            seen,
            accept: Some(accept),
        }
    }

    /// Shorthand: one path, one script.
    pub fn single(path: &str, replies: Vec<Reply>) -> TestServer {
        TestServer::start(vec![(path, replies)])
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<SeenRequest> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 * 1024 || conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(SeenRequest { path, headers })
}

fn serve_one(
    mut conn: TcpStream,
    stop: &AtomicBool,
    seen: &Mutex<Vec<SeenRequest>>,
    routes: &HashMap<String, Vec<Reply>>,
    counts: &Mutex<HashMap<String, usize>>,
) {
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let path = req.path.clone();
    let req_headers = req.headers.clone();
    seen.lock().unwrap().push(req);
    let reply = match routes.get(&path) {
        Some(script) => {
            let mut counts = counts.lock().unwrap();
            let n = counts.entry(path).or_insert(0);
            let r = script[(*n).min(script.len() - 1)].clone();
            *n += 1;
            r
        }
        None => Reply::Status(404),
    };
    let head = |status: &str, len: Option<u64>| {
        let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        match len {
            Some(n) => h.push_str(&format!("Content-Length: {n}\r\n")),
            None => h.push_str("Transfer-Encoding: chunked\r\n"),
        }
        h.push_str("Content-Type: application/octet-stream\r\n\r\n");
        h.into_bytes()
    };
    let stall = || {
        let until = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Write errors just mean the client went away.
    let _ = (|| -> std::io::Result<()> {
        match reply {
            Reply::Ok(body) => {
                conn.write_all(&head("200 OK", Some(body.len() as u64)))?;
                conn.write_all(&body)?;
            }
            Reply::Chunked(body) => {
                conn.write_all(&head("200 OK", None))?;
                for chunk in body.chunks(100_000) {
                    conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    conn.write_all(chunk)?;
                    conn.write_all(b"\r\n")?;
                }
                conn.write_all(b"0\r\n\r\n")?;
            }
            Reply::Status(code) => {
                let body = format!("status {code} from the test server");
                let status = format!("{code} Test");
                conn.write_all(&head(&status, Some(body.len() as u64)))?;
                conn.write_all(body.as_bytes())?;
            }
            Reply::Truncated { body, send } => {
                conn.write_all(&head("200 OK", Some(body.len() as u64)))?;
                conn.write_all(&body[..send])?;
            }
            Reply::WrongLength { body, claimed } => {
                conn.write_all(&head("200 OK", Some(claimed)))?;
                conn.write_all(&body)?;
            }
            Reply::Stall => stall(),
            Reply::StallBody { body, send } => {
                conn.write_all(&head("200 OK", Some(body.len() as u64)))?;
                conn.write_all(&body[..send])?;
                conn.flush()?;
                stall();
            }
            Reply::Close => {}
            Reply::Ranged { body, etag, cut } => {
                let range = req_headers
                    .get("range")
                    .and_then(|r| parse_range(r, body.len()));
                let if_range_ok = req_headers.get("if-range").is_none_or(|v| v == &etag);
                let (status, start, end) = match range {
                    Some((a, b)) if if_range_ok => ("206 Partial Content", a, b),
                    _ => ("200 OK", 0, body.len()),
                };
                let mut h = format!(
                    "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\
                     ETag: {etag}\r\nLast-Modified: Sun, 22 Nov 2026 05:00:00 GMT\r\n\
                     Accept-Ranges: bytes\r\n",
                    end - start
                );
                if status.starts_with("206") {
                    h.push_str(&format!(
                        "Content-Range: bytes {start}-{}/{}\r\n",
                        end - 1,
                        body.len()
                    ));
                }
                h.push_str("\r\n");
                conn.write_all(h.as_bytes())?;
                let send = cut.map_or(end, |n| (start + n).min(end));
                conn.write_all(&body[start..send])?;
            }
        }
        conn.flush()
    })();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// `bytes=a-` or `bytes=a-b` within `len` → `(a, b + 1)`.
fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len
    } else {
        b.trim().parse::<usize>().ok()?.checked_add(1)?.min(len)
    };
    (a < end).then_some((a, end))
}

/// Deterministic, incompressible-looking bytes (xorshift64*), never starting with a known
/// image-format magic.
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    if let Some(first) = out.first_mut() {
        *first = 0xeb; // an x86 short jump, as an MBR boot sector starts
    }
    out
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub const MIB: usize = 1024 * 1024;
/// The fill byte of a fresh test disk: anything the writer zeroes or writes shows up.
pub const FILL: u8 = 0xAA;

/// A regular file of `size` bytes filled with [`FILL`], standing in for a disk.
pub fn disk(size: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![FILL; size]).unwrap();
    f.flush().unwrap();
    f
}

/// The disk's current bytes.
pub fn read_disk(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// True when every byte of `range` is `byte`.
pub fn all(data: &[u8], byte: u8) -> bool {
    data.iter().all(|&b| b == byte)
}

/// Assert the first and the last MiB are zero (what a wipe leaves).
pub fn assert_wiped(path: &Path) {
    let d = read_disk(path);
    let n = d.len();
    assert!(all(&d[..MIB.min(n)], 0), "first MiB not zeroed");
    assert!(all(&d[n.saturating_sub(MIB)..], 0), "last MiB not zeroed");
}

/// A committed image fixture (`tests/fixtures/images/<name>.fx.gz`, see make-images.sh),
/// decompressed.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/images/{name}.fx.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let gz = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `expected.txt` of the fixtures: name → (virtual size, sha256 of the raw conversion).
pub fn fixture_expectations() -> HashMap<String, (u64, String)> {
    let path = format!(
        "{}/tests/fixtures/images/expected.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                (f.next()?.parse().ok()?, f.next()?.to_string()),
            ))
        })
        .collect()
}

/// Assert nothing was written: the disk is still all [`FILL`].
pub fn assert_untouched(path: &Path) {
    let d = read_disk(path);
    assert!(all(&d, FILL), "disk was modified");
}
