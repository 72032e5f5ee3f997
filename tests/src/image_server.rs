//! An HTTP/1.1 image server on 127.0.0.1 serving named in-memory blobs, with `Content-Length`,
//! `Range` (single range) and `HEAD` support, plus fault injection per blob.
//!
//! HTTP is written by hand (not hyper) so that faults a real server or proxy produces can be
//! reproduced exactly: a body shorter than its `Content-Length`, a lying `Content-Length`, a TCP
//! reset mid-body, a stall, transient 5xx answers, redirects. Every connection answers one
//! request and closes (`Connection: close`), which keeps the code small and the behaviour
//! deterministic. Bounded: heads are capped at 16 KiB and 10 s, stalls end at shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::server::ServerThread;
use crate::util::percent_decode;

/// A fault applied to every GET of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    None,
    /// Announce the full length, send only this many body bytes, then close cleanly.
    TruncateAfter(u64),
    /// Announce this `Content-Length`, but send the real body.
    WrongContentLength(u64),
    /// Send this many body bytes, then reset the connection (RST).
    ResetAfter(u64),
    /// Send this many body bytes, then stop sending (until the server is dropped).
    StallAfter(u64),
    /// Answer the first `times` requests with `status` (e.g. 500), then serve normally.
    ErrorFirst {
        /// How many requests fail.
        times: u32,
        /// The status they get.
        status: u16,
    },
    /// Answer `302 Found` with this `Location` (absolute URL or path).
    Redirect(String),
    /// Serve at most this many bytes per second (keeps a download running for a while).
    Throttle(u64),
}

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct ServedRequest {
    /// HTTP method.
    pub method: String,
    /// Decoded path.
    pub path: String,
    /// `Range` header, if any.
    pub range: Option<String>,
    /// All request headers (names lower case).
    pub headers: Vec<(String, String)>,
    /// Status sent.
    pub status: u16,
    /// Body bytes written to the socket.
    pub bytes_sent: u64,
    /// Fault applied, if any.
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct Blob {
    data: Bytes,
    fault: Option<Fault>,
    hits: u32,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Blob>,
    log: Vec<ServedRequest>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running image server. Stops when dropped (stalled connections end too).
pub struct ImageServer {
    shared: Arc<Shared>,
    server: ServerThread,
}

const MAX_HEAD: usize = 16 * 1024;
const CHUNK: usize = 64 * 1024;

impl ImageServer {
    /// Starts on 127.0.0.1 with a free port.
    pub fn start() -> io::Result<ImageServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts on `addr`.
    pub fn start_on(addr: SocketAddr) -> io::Result<ImageServer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let s = shared.clone();
        let server = ServerThread::spawn("image-server", addr, move |listener, stop| async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let s = s.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let _ = serve_one(stream, s, stop).await;
                });
            }
        })?;
        Ok(ImageServer { shared, server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The URL of blob `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{}", self.base_url(), name.trim_start_matches('/'))
    }

    /// Adds (or replaces) blob `name`, served at `/name`.
    pub fn add(&self, name: &str, data: impl Into<Bytes>) {
        let mut g = self.shared.lock();
        let b = g
            .blobs
            .entry(name.trim_start_matches('/').to_string())
            .or_default();
        b.data = data.into();
        b.hits = 0;
    }

    /// Sets the fault for blob `name` (creating an empty blob if needed, e.g. for redirects).
    pub fn set_fault(&self, name: &str, fault: Fault) {
        let mut g = self.shared.lock();
        let b = g
            .blobs
            .entry(name.trim_start_matches('/').to_string())
            .or_default();
        b.fault = if fault == Fault::None {
            None
        } else {
            Some(fault)
        };
        b.hits = 0;
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<ServedRequest> {
        self.shared.lock().log.clone()
    }

    /// One line per request, for failure messages.
    pub fn dump_requests(&self) -> String {
        let log = self.requests();
        if log.is_empty() {
            return "(image server received no request)".into();
        }
        log.iter()
            .map(|r| {
                format!(
                    "{} {} range={:?} -> {} ({} body bytes) fault={:?}",
                    r.method, r.path, r.range, r.status, r.bytes_sent, r.fault
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 2048];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut tmp))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let path = target.split('?').next().unwrap_or("/");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        method,
        path: percent_decode(path),
        headers,
    })
}

/// Parses a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range against `len`.
/// `Ok(None)`: no usable range header (serve whole); `Err(())`: unsatisfiable (416).
fn parse_range(h: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = h else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // multi-range: serve the whole body, as many servers do
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_one(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let Some(head) = read_head(&mut stream).await else {
        return Ok(());
    };
    let range_hdr = head
        .headers
        .iter()
        .find(|(k, _)| k == "range")
        .map(|(_, v)| v.clone());
    let name = head.path.trim_start_matches('/').to_string();
    let (data, fault) = {
        let mut g = shared.lock();
        match g.blobs.get_mut(&name) {
            Some(b) => {
                b.hits += 1;
                let fault = match &b.fault {
                    Some(Fault::ErrorFirst { times, status }) if b.hits <= *times => {
                        Some(Fault::ErrorFirst {
                            times: *times,
                            status: *status,
                        })
                    }
                    Some(Fault::ErrorFirst { .. }) => None,
                    other => other.clone(),
                };
                (Some(b.data.clone()), fault)
            }
            None => (None, None),
        }
    };
    let mut log = ServedRequest {
        method: head.method.clone(),
        path: head.path.clone(),
        range: range_hdr.clone(),
        headers: head.headers.clone(),
        status: 0,
        bytes_sent: 0,
        fault: fault.clone(),
    };
    let idx = {
        let mut g = shared.lock();
        g.log.push(log.clone());
        g.log.len() - 1
    };
    // Keeps the log entry current, so a stalled connection is visible while it hangs.
    let update = |l: &ServedRequest| shared.lock().log[idx] = l.clone();
    let result = respond(
        &mut stream,
        &head,
        (data, fault),
        range_hdr,
        &mut log,
        &update,
        &mut stop,
    )
    .await;
    update(&log);
    result
}

async fn simple(stream: &mut TcpStream, status: u16, reason: &str, extra: &str) -> io::Result<()> {
    let body = format!("{status} {reason}\n");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await
}

async fn respond(
    stream: &mut TcpStream,
    head: &Head,
    (data, fault): (Option<Bytes>, Option<Fault>),
    range_hdr: Option<String>,
    log: &mut ServedRequest,
    update: &(dyn Fn(&ServedRequest) + Sync),
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    if head.method != "GET" && head.method != "HEAD" {
        log.status = 405;
        return simple(stream, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n").await;
    }
    match &fault {
        Some(Fault::ErrorFirst { status, .. }) => {
            log.status = *status;
            return simple(stream, *status, "Injected Failure", "").await;
        }
        Some(Fault::Redirect(to)) => {
            log.status = 302;
            return simple(stream, 302, "Found", &format!("Location: {to}\r\n")).await;
        }
        _ => {}
    }
    let Some(data) = data else {
        log.status = 404;
        return simple(stream, 404, "Not Found", "").await;
    };
    let len = data.len() as u64;
    let (status, start, end) = match parse_range(range_hdr.as_deref(), len) {
        Err(()) => {
            log.status = 416;
            return simple(
                stream,
                416,
                "Range Not Satisfiable",
                &format!("Content-Range: bytes */{len}\r\n"),
            )
            .await;
        }
        Ok(Some((s, e))) => (206u16, s, e + 1),
        Ok(None) => (200u16, 0, len),
    };
    let body_len = end - start;
    let announced = match &fault {
        Some(Fault::WrongContentLength(n)) => *n,
        _ => body_len,
    };
    let mut head_out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {announced}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 {
            "Partial Content"
        } else {
            "OK"
        }
    );
    if status == 206 {
        head_out.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    head_out.push_str("\r\n");
    log.status = status;
    stream.write_all(head_out.as_bytes()).await?;
    if head.method == "HEAD" {
        return stream.shutdown().await;
    }
    let limit = match &fault {
        Some(Fault::TruncateAfter(n)) | Some(Fault::ResetAfter(n)) | Some(Fault::StallAfter(n)) => {
            (*n).min(body_len)
        }
        _ => body_len,
    };
    let chunk = match &fault {
        Some(Fault::Throttle(bps)) => ((*bps / 10).max(1) as usize).min(CHUNK),
        _ => CHUNK,
    };
    let mut pos = start;
    while pos < start + limit {
        let n = chunk.min((start + limit - pos) as usize);
        stream
            .write_all(&data[pos as usize..pos as usize + n])
            .await?;
        pos += n as u64;
        log.bytes_sent += n as u64;
        if let Some(Fault::Throttle(bps)) = &fault {
            let secs = n as f64 / (*bps).max(1) as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
    }
    match &fault {
        Some(Fault::ResetAfter(_)) => {
            stream.flush().await?;
            // SO_LINGER 0 then close: the kernel sends RST instead of FIN.
            stream.set_zero_linger()?;
            Ok(())
        }
        Some(Fault::StallAfter(_)) => {
            stream.flush().await?;
            update(log);
            // Hold the connection open, sending nothing, until the server shuts down.
            let _ = tokio::time::timeout(Duration::from_secs(600), stop.wait_for(|s| *s)).await;
            Ok(())
        }
        _ => stream.shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Ok(Some((2, 4))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }
}
