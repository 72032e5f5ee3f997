//! Support for the hostile-input suites (`tests/tests/hostile_*.rs`, issue 6 item 3).
//!
//! - [`Table`]: rows of (input, expected outcome) run one after the other, each under a
//!   [`Deadline`]; every observed outcome is recorded (a panicking row too), printed as a table
//!   at the end and written to a file, and the test fails listing every row that broke its
//!   expectation.
//! - Raw HTTP ([`raw_exchange`], [`send_large_body`]): what a well-behaved client library will not
//!   send (broken request lines, pipelined requests, bodies that never end, bytes one at a time).
//! - Process memory ([`mem_kib`], [`reset_peak_rss`]) from `/proc/PID/status`.
//! - The disk verdict ([`disk_verdict`]): untouched, wiped at both ends, or exactly the image:
//!   never a half image behind a valid partition table.
//! - qcow2 files built from the spec (qemu `docs/interop/qcow2.txt`) with [`build_qcow2`], valid
//!   or hostile after editing, and an independent reader ([`qcow2_guest`]) that reads a file
//!   the way qemu does, to say what a successful conversion must have written.
//! - Gzip bombs ([`gzip_bomb`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent_process::AgentProcess;
use crate::e2e::RunningAgent;
use crate::util::{free_local_port, truncate};

/// A point in time a row must finish by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    /// Time left (at least 1 ms, so it can be used as a socket timeout).
    pub fn remaining(&self) -> Duration {
        self.end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The whole budget.
    pub fn total(&self) -> Duration {
        self.total
    }
}

/// One row of a hostile-input table, as observed.
#[derive(Clone, Debug)]
pub struct Row {
    /// Short name of the input.
    pub name: String,
    /// The outcome the row asserts.
    pub expected: String,
    /// What happened (the observation, or why the expectation failed).
    pub outcome: String,
    /// Whether the expectation held.
    pub passed: bool,
    /// How long the row took.
    pub elapsed: Duration,
}

/// A table of hostile inputs and their outcomes. Rows may be recorded from several threads.
#[derive(Clone)]
pub struct Table {
    name: String,
    rows: Arc<Mutex<Vec<Row>>>,
}

impl Table {
    /// An empty table called `name` (the file written at the end is named after it).
    pub fn new(name: &str) -> Table {
        Table {
            name: name.to_string(),
            rows: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs one row: `f` gets the row's deadline and returns the observed outcome (`Ok`) or the
    /// broken expectation (`Err`). A panic in `f` is recorded as a failure, and so is finishing
    /// after the deadline. Returns whether the row passed.
    pub fn row(
        &self,
        name: &str,
        expected: &str,
        budget: Duration,
        f: impl FnOnce(&Deadline) -> Result<String, String>,
    ) -> bool {
        let deadline = Deadline::after(budget);
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&deadline)));
        let elapsed = start.elapsed();
        let (passed, outcome) = match result {
            Ok(Ok(o)) if elapsed <= budget + Duration::from_secs(1) => (true, o),
            Ok(Ok(o)) => (
                false,
                format!("exceeded its {budget:?} deadline ({elapsed:.1?}): {o}"),
            ),
            Ok(Err(e)) => (false, e),
            Err(p) => (false, format!("panicked: {}", panic_text(&p))),
        };
        self.record(Row {
            name: name.to_string(),
            expected: expected.to_string(),
            outcome,
            passed,
            elapsed,
        });
        passed
    }

    /// Adds a row observed elsewhere.
    pub fn record(&self, row: Row) {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(row);
    }

    /// The rows so far.
    pub fn rows(&self) -> Vec<Row> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The table as Markdown: row, expected, observed outcome, time.
    pub fn render(&self) -> String {
        let mut s = format!(
            "### {}\n\n| # | input | expected | observed | ok | time |\n|---|---|---|---|---|---|\n",
            self.name
        );
        for (i, r) in self.rows().iter().enumerate() {
            let cell = |t: &str| truncate(&t.replace('|', "\\|").replace('\n', " "), 400);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1}s |\n",
                i + 1,
                cell(&r.name),
                cell(&r.expected),
                cell(&r.outcome),
                if r.passed { "yes" } else { "**NO**" },
                r.elapsed.as_secs_f64()
            ));
        }
        s
    }

    /// Prints the table (stderr, and `dir/hostile-<name>.md`), then panics listing every
    /// row whose expectation failed.
    pub fn finish(self, dir: &str) {
        let text = self.render();
        eprintln!("\n{text}");
        let path = Path::new(dir).join(format!("hostile-{}.md", self.name));
        match std::fs::write(&path, &text) {
            Ok(()) => eprintln!("(table written to {})", path.display()),
            Err(e) => eprintln!("(cannot write {}: {e})", path.display()),
        }
        let failed: Vec<String> = self
            .rows()
            .iter()
            .filter(|r| !r.passed)
            .map(|r| {
                format!(
                    "- {}: expected {}; observed {}",
                    r.name, r.expected, r.outcome
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} rows of table {} failed:\n{}",
            failed.len(),
            self.rows().len(),
            self.name,
            failed.join("\n")
        );
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Turns a failed check into the row's `Err`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP response read off a raw connection.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `faultstring` when the body is JSON with a string one.
    pub fn faultstring(&self) -> Option<String> {
        self.json()?
            .get("faultstring")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `status` plus a shortened body, for outcomes.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            truncate(&String::from_utf8_lossy(&self.body), 160)
        )
    }
}

/// What a raw exchange produced.
#[derive(Clone, Debug, Default)]
pub struct RawExchange {
    /// Complete responses, in order.
    pub responses: Vec<RawResponse>,
    /// The peer closed the connection (EOF or reset) before we stopped reading.
    pub closed_by_peer: bool,
    /// Reading stopped because the timeout passed.
    pub timed_out: bool,
    /// A write or read error, if any.
    pub error: Option<String>,
}

impl RawExchange {
    /// One line for an outcome column.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.responses.iter().map(|r| r.describe()).collect();
        if parts.is_empty() {
            parts.push("no response".into());
        }
        if self.closed_by_peer {
            parts.push("then closed by the agent".into());
        }
        if self.timed_out {
            parts.push("then timed out waiting".into());
        }
        if let Some(e) = &self.error {
            parts.push(format!("({e})"));
        }
        parts.join("; ")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response from the start of `buf`: `Some((response, bytes used))` when complete.
fn parse_response(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut at = head_end + 4;
    let body = if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let end = at + find(&buf[at..], b"\r\n")?;
                at = end + 2;
                break body;
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else {
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if buf.len() < at + len {
            return None;
        }
        let b = buf[at..at + len].to_vec();
        at += len;
        b
    };
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        at,
    ))
}

/// Reads responses from `stream` until `expect` are complete, the peer closes, or `timeout`.
fn read_responses(stream: &mut TcpStream, expect: usize, timeout: Duration) -> RawExchange {
    let end = Instant::now() + timeout;
    let mut out = RawExchange::default();
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        while let Some((r, used)) = parse_response(&buf) {
            out.responses.push(r);
            buf.drain(..used);
        }
        if out.responses.len() >= expect {
            return out;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.timed_out = true;
            return out;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut tmp) {
            Ok(0) => {
                out.closed_by_peer = true;
                while let Some((r, used)) = parse_response(&buf) {
                    out.responses.push(r);
                    buf.drain(..used);
                }
                return out;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                out.timed_out = true;
                return out;
            }
            Err(e) => {
                out.closed_by_peer = true;
                out.error = Some(format!("read: {e}"));
                return out;
            }
        }
    }
}

/// Opens a new connection to `addr`, writes `request` as is, and reads until `expect`
/// responses are complete, the agent closes the connection, or `timeout` passes.
pub fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    expect: usize,
    timeout: Duration,
) -> RawExchange {
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return RawExchange {
                error: Some(format!("connect: {e}")),
                ..Default::default()
            }
        }
    };
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(e) = stream.write_all(request) {
        // The agent may answer and close before reading everything (e.g. 431): read anyway.
        let mut r = read_responses(&mut stream, expect, Duration::from_secs(2));
        r.error = Some(format!("write: {e}"));
        return r;
    }
    read_responses(&mut stream, expect, timeout)
}

/// `GET /v1/status` on a new connection: `Ok` with the status document, or what went wrong
/// (including whether the process has exited).
pub fn check_alive(agent: &mut RunningAgent, timeout: Duration) -> Result<Value, String> {
    if let Some(st) = agent.process.try_exit() {
        return Err(format!("the agent process exited ({st})"));
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], agent.port));
    let ex = raw_exchange(
        addr,
        b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        1,
        timeout,
    );
    match ex.responses.first() {
        Some(r) if r.status == 200 => r
            .json()
            .filter(|v| v["started_at"].is_number())
            .ok_or_else(|| format!("GET /v1/status answered {}", r.describe())),
        _ => Err(format!(
            "GET /v1/status did not answer within {timeout:?}: {}{}",
            ex.describe(),
            match agent.process.try_exit() {
                Some(st) => format!("; the agent process exited ({st})"),
                None => String::new(),
            }
        )),
    }
}

/// What happened to a large request body.
#[derive(Clone, Debug)]
pub struct LargeBody {
    /// Body bytes the kernel accepted before the agent closed the connection or we stopped.
    pub bytes_sent: u64,
    /// The response, if one came.
    pub response: Option<RawResponse>,
    /// Why writing stopped early, if it did.
    pub write_error: Option<String>,
}

/// Sends `head` (request line and headers, ending with the blank line) then `body_len` bytes
/// of `fill` (chunked encoding when `chunked`), while reading the answer on the same
/// connection. Stops writing as soon as a response arrives or the agent closes.
pub fn send_large_body(
    addr: SocketAddr,
    head: &[u8],
    body_len: u64,
    chunked: bool,
    fill: u8,
    timeout: Duration,
) -> std::io::Result<LargeBody> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = stream;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let head = head.to_vec();
    let w = std::thread::spawn(move || -> (u64, Option<String>) {
        if let Err(e) = writer.write_all(&head) {
            return (0, Some(e.to_string()));
        }
        let chunk = vec![fill; 1 << 20];
        let mut sent = 0u64;
        while sent < body_len {
            if stop_w.load(std::sync::atomic::Ordering::SeqCst) {
                return (sent, Some("stopped after the response".into()));
            }
            let n = (body_len - sent).min(chunk.len() as u64) as usize;
            let r = if chunked {
                writer
                    .write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|_| writer.write_all(&chunk[..n]))
                    .and_then(|_| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&chunk[..n])
            };
            if let Err(e) = r {
                return (sent, Some(e.to_string()));
            }
            sent += n as u64;
        }
        if chunked {
            if let Err(e) = writer.write_all(b"0\r\n\r\n") {
                return (sent, Some(e.to_string()));
            }
        }
        (sent, None)
    });
    let ex = read_responses(&mut reader, 1, timeout);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // Unblock a writer stuck on a full socket buffer.
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let (bytes_sent, write_error) = w.join().unwrap_or((0, Some("writer panicked".into())));
    Ok(LargeBody {
        bytes_sent,
        response: ex.responses.into_iter().next(),
        write_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …).
pub fn mem_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (`echo 5 > clear_refs`,
/// Linux ≥ 4.0; needs to own the process). Returns whether it worked.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Starts the agent in `--standalone --agent-token TOKEN` mode with kernel parameters
/// `cmdline` (e.g. short download retries), installing to `install`; waits for its API.
pub fn spawn_standalone_with(cmdline: &str, token: &str, install: &Path) -> RunningAgent {
    let port = free_local_port();
    let addr = format!("127.0.0.1:{port}");
    let dev = install.to_string_lossy().into_owned();
    let args = [
        "--standalone",
        "--agent-token",
        token,
        "--listen",
        &addr,
        "--advertise",
        &addr,
        "--install-device",
        &dev,
        "--allow-device",
        &dev,
        "--power-action",
        "exit",
    ];
    let process = AgentProcess::spawn_with_cmdline(cmdline, args)
        .unwrap_or_else(|e| panic!("cannot spawn ferric-agent: {e}"));
    let mut agent = RunningAgent {
        process,
        url: format!("http://{addr}"),
        port,
    };
    let url = agent.url.clone();
    if let Err(e) = agent.process.wait_ready(&url, Duration::from_secs(20)) {
        panic!("standalone agent did not come up: {e}");
    }
    agent
}

// ---------------------------------------------------------------------------------------------
// Disks
// ---------------------------------------------------------------------------------------------

/// What a failed write left on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskVerdict {
    /// Every byte still holds the fill pattern.
    Untouched,
    /// The first and last MiB are zero (partition tables gone), whatever lies between.
    Wiped,
    /// The disk starts with exactly the expected image.
    Image,
    /// Anything else, described.
    Other(String),
}

const MIB: usize = 1 << 20;

/// Describes a partition table found in `disk` (MBR signature with a used entry, a GPT header
/// at LBA 1 or in the last sector), if any.
pub fn partition_table(disk: &[u8]) -> Option<String> {
    if disk.len() >= 512
        && disk[510] == 0x55
        && disk[511] == 0xaa
        && disk[446..510].chunks(16).any(|e| e[4] != 0)
    {
        return Some("an MBR with partition entries".into());
    }
    if disk.len() >= 1024 && &disk[512..520] == b"EFI PART" {
        return Some("a primary GPT header at LBA 1".into());
    }
    if disk.len() >= 1024 && &disk[disk.len() - 512..disk.len() - 504] == b"EFI PART" {
        return Some("a backup GPT header in the last sector".into());
    }
    None
}

/// Classifies `disk` after a row: untouched (all `fill`), wiped at both ends, exactly `image`
/// at its start, or something else (described, naming any partition table found).
pub fn disk_verdict(disk: &[u8], fill: u8, image: Option<&[u8]>) -> DiskVerdict {
    if disk.iter().all(|&b| b == fill) {
        return DiskVerdict::Untouched;
    }
    if let Some(img) = image {
        if disk.len() >= img.len() && &disk[..img.len()] == img {
            return DiskVerdict::Image;
        }
    }
    let edge = MIB.min(disk.len());
    let head_zero = disk[..edge].iter().all(|&b| b == 0);
    let tail_zero = disk[disk.len() - edge..].iter().all(|&b| b == 0);
    if head_zero && tail_zero {
        return DiskVerdict::Wiped;
    }
    let first_changed = disk.iter().position(|&b| b != fill).unwrap_or(0);
    DiskVerdict::Other(format!(
        "first MiB zero: {head_zero}, last MiB zero: {tail_zero}, first changed byte at \
         {first_changed}, partition table: {}",
        partition_table(disk).unwrap_or_else(|| "none".into())
    ))
}

// ---------------------------------------------------------------------------------------------
// qcow2
// ---------------------------------------------------------------------------------------------

/// Bits 9–55 of L1/L2 entries: the host offset (qcow2.txt).
pub const QCOW2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 entry flag "refcount is exactly one" (set by qemu on every entry it writes).
pub const QCOW2_COPIED: u64 = 1 << 63;
/// Incompatible feature bit 2: external data file.
pub const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Header extension: external data file name.
pub const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: full disk encryption header pointer.
pub const QCOW2_EXT_ENCRYPTION: u32 = 0x0537_be77;
/// Header extension: backing file format name.
pub const QCOW2_EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// What to put in a qcow2 file (version 3, 16-bit refcounts, no snapshots).
#[derive(Clone, Debug)]
pub struct Qcow2Spec {
    /// log2 of the cluster size (qemu's default is 16).
    pub cluster_bits: u32,
    /// Guest content; its length (rounded up to 512) is the virtual size.
    pub guest: Vec<u8>,
    /// Backing file name to record (a hostile image).
    pub backing_file: Option<String>,
    /// `crypt_method` (0 none, 1 AES, 2 LUKS).
    pub crypt_method: u32,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Header extensions (type, data), written in order before the end marker.
    pub extensions: Vec<(u32, Vec<u8>)>,
}

impl Qcow2Spec {
    /// A plain image of `guest` with 64 KiB clusters.
    pub fn plain(guest: Vec<u8>) -> Qcow2Spec {
        Qcow2Spec {
            cluster_bits: 16,
            guest,
            backing_file: None,
            crypt_method: 0,
            incompatible: 0,
            extensions: Vec::new(),
        }
    }
}

/// A built qcow2 file and where its structures are, for hostile edits.
#[derive(Clone, Debug)]
pub struct Qcow2File {
    /// The file.
    pub bytes: Vec<u8>,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
    /// L1 entries.
    pub l1_size: u64,
    /// Host offset of each L2 table, by L1 index (0 = unallocated).
    pub l2_offsets: Vec<u64>,
    /// (guest offset, host offset) of every allocated data cluster, in guest order.
    pub data: Vec<(u64, u64)>,
}

/// Big-endian u32 at `at`.
pub fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Big-endian u64 at `at`.
pub fn set_be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Qcow2File {
    /// Header field offsets (qcow2.txt "Header").
    pub const BACKING_FILE_OFFSET: usize = 8;
    /// `backing_file_size` (u32).
    pub const BACKING_FILE_SIZE: usize = 16;
    /// `cluster_bits` (u32).
    pub const CLUSTER_BITS: usize = 20;
    /// `size` (u64).
    pub const SIZE: usize = 24;
    /// `crypt_method` (u32).
    pub const CRYPT_METHOD: usize = 32;
    /// `l1_size` (u32).
    pub const L1_SIZE: usize = 36;
    /// `l1_table_offset` (u64).
    pub const L1_TABLE_OFFSET: usize = 40;
    /// `incompatible_features` (u64).
    pub const INCOMPATIBLE: usize = 72;
    /// `header_length` (u32).
    pub const HEADER_LENGTH: usize = 100;

    /// Sets L1 entry `i` to `host_offset | COPIED` (0 stays 0).
    pub fn set_l1(&mut self, i: u64, host_offset: u64) {
        let v = if host_offset == 0 {
            0
        } else {
            host_offset | QCOW2_COPIED
        };
        set_be64(&mut self.bytes, (self.l1_offset + i * 8) as usize, v);
    }

    /// Sets entry `j` of the L2 table at `l2_offset` to a raw value.
    pub fn set_l2_raw(&mut self, l2_offset: u64, j: u64, value: u64) {
        set_be64(&mut self.bytes, (l2_offset + j * 8) as usize, value);
    }

    /// Sets entry `j` of the L2 table at `l2_offset` to `host_offset | COPIED`.
    pub fn set_l2(&mut self, l2_offset: u64, j: u64, host_offset: u64) {
        self.set_l2_raw(l2_offset, j, host_offset | QCOW2_COPIED);
    }
}

/// Builds a valid qcow2 v3 file holding `spec.guest` (then recording the hostile header fields
/// of `spec`). Layout, cluster by cluster: header (with extensions and backing file name),
/// refcount table, refcount blocks, L1 table, L2 tables, data clusters for every guest cluster
/// that is not all zero (zero clusters stay unallocated). Refcounts are exact, so
/// `qemu-img check` accepts the plain image.
pub fn build_qcow2(spec: &Qcow2Spec) -> Qcow2File {
    let cs = 1u64 << spec.cluster_bits;
    let size = (spec.guest.len() as u64).div_ceil(512) * 512;
    let l2_entries = cs / 8;
    let coverage = l2_entries * cs;
    let l1_size = size.div_ceil(coverage).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let guest_clusters = size.div_ceil(cs);
    let allocated: Vec<u64> = (0..guest_clusters)
        .filter(|&g| {
            let a = (g * cs) as usize;
            let b = ((g + 1) * cs).min(spec.guest.len() as u64) as usize;
            a < b && spec.guest[a..b].iter().any(|&x| x != 0)
        })
        .collect();
    let mut l2_used: Vec<u64> = allocated.iter().map(|g| g / l2_entries).collect();
    l2_used.dedup();
    let fixed = 1 + l1_clusters + l2_used.len() as u64 + allocated.len() as u64;
    let per_block = cs / 2; // 16-bit refcounts
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = fixed + rt + rb;
        let need_rb = total.div_ceil(per_block);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb == rb && need_rt == rt {
            break;
        }
        rb = need_rb;
        rt = need_rt;
    }
    let rt_off = cs;
    let rb_off = rt_off + rt * cs;
    let l1_off = rb_off + rb * cs;
    let mut next = l1_off + l1_clusters * cs;
    let mut l2_offsets = vec![0u64; l1_size as usize];
    for &i in &l2_used {
        l2_offsets[i as usize] = next;
        next += cs;
    }
    let mut data = Vec::new();
    for &g in &allocated {
        data.push((g * cs, next));
        next += cs;
    }
    let total_clusters = next / cs;
    let mut b = vec![0u8; next as usize];
    // Header.
    b[..4].copy_from_slice(b"QFI\xfb");
    set_be32(&mut b, 4, 3);
    set_be32(&mut b, Qcow2File::CLUSTER_BITS, spec.cluster_bits);
    set_be64(&mut b, Qcow2File::SIZE, size);
    set_be32(&mut b, Qcow2File::CRYPT_METHOD, spec.crypt_method);
    set_be32(&mut b, Qcow2File::L1_SIZE, l1_size as u32);
    set_be64(&mut b, Qcow2File::L1_TABLE_OFFSET, l1_off);
    set_be64(&mut b, 48, rt_off);
    set_be32(&mut b, 56, rt as u32);
    set_be64(&mut b, Qcow2File::INCOMPATIBLE, spec.incompatible);
    set_be32(&mut b, 96, 4); // refcount_order: 16-bit
    set_be32(&mut b, Qcow2File::HEADER_LENGTH, 104);
    let mut at = 104usize;
    for (ty, d) in &spec.extensions {
        set_be32(&mut b, at, *ty);
        set_be32(&mut b, at + 4, d.len() as u32);
        b[at + 8..at + 8 + d.len()].copy_from_slice(d);
        at += 8 + d.len().div_ceil(8) * 8;
    }
    at += 8; // end-of-extensions marker (zeros)
    if let Some(name) = &spec.backing_file {
        b[at..at + name.len()].copy_from_slice(name.as_bytes());
        set_be64(&mut b, Qcow2File::BACKING_FILE_OFFSET, at as u64);
        set_be32(&mut b, Qcow2File::BACKING_FILE_SIZE, name.len() as u32);
        at += name.len();
    }
    assert!(
        at as u64 <= cs,
        "qcow2 header does not fit the first cluster"
    );
    // Refcount table and blocks: every cluster of the file is used once.
    for k in 0..rb {
        set_be64(&mut b, (rt_off + k * 8) as usize, rb_off + k * cs);
    }
    for c in 0..total_clusters {
        let at = (rb_off + c * 2) as usize;
        b[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    let mut f = Qcow2File {
        bytes: b,
        cluster_size: cs,
        l1_offset: l1_off,
        l1_size,
        l2_offsets: l2_offsets.clone(),
        data: data.clone(),
    };
    for (i, &off) in l2_offsets.iter().enumerate() {
        f.set_l1(i as u64, off);
    }
    for &(g, h) in &data {
        let l2 = l2_offsets[(g / cs / l2_entries) as usize];
        f.set_l2(l2, (g / cs) % l2_entries, h);
        let a = g as usize;
        let e = (g + cs).min(spec.guest.len() as u64) as usize;
        f.bytes[h as usize..h as usize + (e - a)].copy_from_slice(&spec.guest[a..e]);
    }
    f
}

/// Reads a qcow2 file the way qemu does (no backing file, no encryption, no compressed
/// clusters): the guest image, or why it cannot be read. Guests above 256 MiB are refused.
/// This is the oracle for rows where a converter may legitimately succeed.
pub fn qcow2_guest(file: &[u8]) -> Result<Vec<u8>, String> {
    if file.len() < 104 || &file[..4] != b"QFI\xfb" {
        return Err("not a qcow2 file".into());
    }
    if be64(file, 8) != 0 {
        return Err("has a backing file".into());
    }
    if be32(file, 32) != 0 {
        return Err("encrypted".into());
    }
    let bits = be32(file, 20);
    if !(9..=21).contains(&bits) {
        return Err(format!("cluster_bits {bits}"));
    }
    let version = be32(file, 4);
    if version == 3 && be64(file, 72) & !1 != 0 {
        return Err(format!("incompatible features {:#x}", be64(file, 72)));
    }
    let cs = 1u64 << bits;
    let size = be64(file, 24);
    if size > 256 << 20 {
        return Err(format!("virtual size {size} too large for the oracle"));
    }
    let l1_size = u64::from(be32(file, 36));
    let l1_off = be64(file, 40);
    let l2_entries = cs / 8;
    let mut out = vec![0u8; size as usize];
    let clusters = size.div_ceil(cs);
    let read = |off: u64, len: u64| -> Result<&[u8], String> {
        let end = off.checked_add(len).ok_or("offset overflow")?;
        if end > file.len() as u64 {
            return Err(format!("offset {off} + {len} beyond the file"));
        }
        Ok(&file[off as usize..end as usize])
    };
    for g in 0..clusters {
        let i = g / l2_entries;
        if i >= l1_size {
            return Err(format!("L1 of {l1_size} entries cannot map cluster {g}"));
        }
        let l1e = be64(read(l1_off + i * 8, 8)?, 0);
        let l2 = l1e & QCOW2_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        if !l2.is_multiple_of(cs) {
            return Err(format!("L2 table offset {l2} unaligned"));
        }
        let e = be64(read(l2 + (g % l2_entries) * 8, 8)?, 0);
        if e & (1 << 62) != 0 {
            return Err("compressed clusters are not handled by the oracle".into());
        }
        let host = e & QCOW2_OFFSET_MASK;
        if e & 1 != 0 || host == 0 {
            continue;
        }
        if !host.is_multiple_of(cs) {
            return Err(format!("data cluster offset {host} unaligned"));
        }
        let a = g * cs;
        let n = cs.min(size - a);
        out[a as usize..(a + n) as usize].copy_from_slice(read(host, n)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// gzip (best compression) of `prefix` followed by `zeros` zero bytes: a bomb of roughly
/// 1000:1 (deflate's limit is 1032:1).
pub fn gzip_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(prefix).expect("gzip to memory");
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        enc.write_all(&block[..n]).expect("gzip to memory");
        left -= n as u64;
    }
    enc.finish().expect("gzip to memory")
}

/// gzip (fast) of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip to memory");
    enc.finish().expect("gzip to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Vec<u8> {
        crate::fixtures::test_image(crate::fixtures::TableKind::Mbr, 4 << 20, 77).bytes
    }

    #[test]
    fn built_qcow2_reads_back_through_the_oracle() {
        let g = guest();
        for bits in [9, 12, 16] {
            let f = build_qcow2(&Qcow2Spec {
                cluster_bits: bits,
                ..Qcow2Spec::plain(g.clone())
            });
            assert_eq!(qcow2_guest(&f.bytes).unwrap(), g, "cluster_bits {bits}");
            assert!(
                f.data.len() < g.len() / (1 << bits),
                "zero clusters allocated"
            );
        }
        let mut f = build_qcow2(&Qcow2Spec::plain(g.clone()));
        // Point guest cluster 0 at another data cluster: the oracle follows the pointer.
        let (gg, h) = f.data[f.data.len() / 2];
        let l2 = f.l2_offsets[0];
        f.set_l2(l2, 0, h);
        let out = qcow2_guest(&f.bytes).unwrap();
        let gg = gg as usize;
        assert_eq!(&out[..1 << 16], &g[gg..gg + (1 << 16)]);
    }

    #[test]
    fn verdicts() {
        let mut d = vec![0xaa; 4 * MIB];
        assert_eq!(disk_verdict(&d, 0xaa, None), DiskVerdict::Untouched);
        d[..MIB].fill(0);
        let n = d.len();
        d[n - MIB..].fill(0);
        assert_eq!(disk_verdict(&d, 0xaa, None), DiskVerdict::Wiped);
        let img = guest();
        let mut d2 = vec![0xaa; 8 * MIB];
        d2[..img.len()].copy_from_slice(&img);
        assert_eq!(disk_verdict(&d2, 0xaa, Some(&img)), DiskVerdict::Image);
        d2[100] ^= 1;
        match disk_verdict(&d2, 0xaa, Some(&img)) {
            DiskVerdict::Other(s) => assert!(s.contains("an MBR"), "{s}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn responses_parse_with_length_and_chunks() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\n\
                    Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (a, used) = parse_response(two).unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hi"[..]));
        let (b, _) = parse_response(&two[used..]).unwrap();
        assert_eq!((b.status, b.body.as_slice()), (404, &b"abc"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").is_none());
    }

    #[test]
    fn gzip_bomb_inflates_to_what_it_says() {
        let bomb = gzip_bomb(b"head", 8 << 20);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bomb[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 4 + (8 << 20));
        assert_eq!(&out[..4], b"head");
    }

    /// Cross-checks the builder and the oracle with qemu-img when it is installed.
    #[test]
    fn qemu_img_agrees_with_the_builder() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "\n!!!!!!!! SKIPPING qemu_img_agrees_with_the_builder: no qemu-img !!!!!!!!\n"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let g = guest();
        let q = dir.path().join("plain.qcow2");
        std::fs::write(&q, build_qcow2(&Qcow2Spec::plain(g.clone())).bytes).unwrap();
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&q)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "qemu-img check: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let raw = dir.path().join("plain.raw");
        let conv = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&q)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(conv.status.success(), "{conv:?}");
        assert_eq!(std::fs::read(&raw).unwrap(), g);
        let b = dir.path().join("backed.qcow2");
        std::fs::write(
            &b,
            build_qcow2(&Qcow2Spec {
                backing_file: Some("/etc/hostname".into()),
                ..Qcow2Spec::plain(g)
            })
            .bytes,
        )
        .unwrap();
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json", "-f", "qcow2"])
            .arg(&b)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&info.stdout).unwrap_or(Value::Null);
        assert_eq!(v["backing-filename"], "/etc/hostname", "{v}");
    }
}
