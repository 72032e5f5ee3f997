//! Hostile input on the agent's REST API (issue 6 item 3): one standalone agent per table,
//! a row per bad input, and after every row a `GET /v1/status` on a new connection, a check
//! that rejected requests left no command result, and (where a row could write) that the
//! install device still holds its 0xAA fill.
//!
//! Slow and idle clients have their own tests (and agents) because they take the agent's
//! 30 s header timeout to play out; they run in parallel with the table.
//! The tables are printed at the end and written to `$CARGO_TARGET_TMPDIR/hostile-*.md`.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ferric_tests::conductor::DeployPlan;
use ferric_tests::e2e::{RunningAgent, TestDisk};
use ferric_tests::fixtures::{test_image, TableKind};
use ferric_tests::hostile::{
    check_alive, disk_verdict, ensure, mem_kib, raw_exchange, reset_peak_rss, send_large_body,
    spawn_standalone_with, Deadline, DiskVerdict, RawExchange, Row, Table,
};
use ferric_tests::image_server::{Fault, ImageServer};
use ferric_tests::util::truncate;
use serde_json::{json, Value};

const TOKEN: &str = "hostile-api-token-0123456789abcdefghijklmnopqrst";
/// The agent's body limit (`agent/src/api.rs` MAX_BODY).
const MAX_BODY: u64 = 96 << 20;
const MIB: u64 = 1 << 20;
const ROW: Duration = Duration::from_secs(20);
const FILL: u8 = 0xaa;
const WSME_401: &str = r#"{"faultcode":"Client","faultstring":"401 Unauthorized: Token invalid."}"#;

fn addr(agent: &RunningAgent) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], agent.port))
}

fn post_req(query: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/commands/?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get_req(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(addr: SocketAddr, body: &[u8], d: &Deadline) -> RawExchange {
    raw_exchange(
        addr,
        &post_req(&format!("wait=true&agent_token={TOKEN}"), body),
        1,
        d.remaining(),
    )
}

/// Exactly one response, its status in `want`, with a JSON body holding a string faultstring.
fn fault(ex: &RawExchange, want: &[u16]) -> Result<String, String> {
    let r = ex
        .responses
        .first()
        .ok_or_else(|| format!("no response: {}", ex.describe()))?;
    ensure(want.contains(&r.status), || {
        format!("status {} (want {want:?}): {}", r.status, r.describe())
    })?;
    let f = r
        .faultstring()
        .ok_or_else(|| format!("no JSON faultstring: {}", r.describe()))?;
    Ok(format!("{} \"{}\"", r.status, truncate(&f, 110)))
}

/// A status in `want`, or the connection closed without an answer (hyper's answer to bytes
/// that are not HTTP).
fn status_or_closed(ex: &RawExchange, want: &[u16]) -> Result<String, String> {
    match ex.responses.first() {
        Some(r) if want.contains(&r.status) => Ok(r.describe()),
        Some(r) => Err(format!(
            "status {} (want {want:?} or a close)",
            r.describe()
        )),
        None if ex.closed_by_peer => Ok("connection closed without an answer".into()),
        None => Err(format!("neither an answer nor a close: {}", ex.describe())),
    }
}

fn commands_count(addr: SocketAddr) -> Result<usize, String> {
    let ex = raw_exchange(
        addr,
        &get_req(&format!("/v1/commands/?agent_token={TOKEN}")),
        1,
        Duration::from_secs(5),
    );
    ex.responses
        .first()
        .and_then(|r| r.json())
        .and_then(|v| v["commands"].as_array().map(Vec::len))
        .ok_or_else(|| format!("GET /v1/commands/ failed: {}", ex.describe()))
}

struct ApiTable {
    table: Table,
    agent: RunningAgent,
    disk: TestDisk,
}

impl ApiTable {
    /// Runs a row, then: the API answers from a new connection, the command history grew by
    /// exactly `adds` entries, and (unless the row may write) the disk is untouched.
    fn row(
        &mut self,
        name: &str,
        expected: &str,
        adds: usize,
        f: impl FnOnce(&Deadline, SocketAddr) -> Result<String, String>,
    ) {
        self.row_with(name, expected, adds, true, f)
    }

    fn row_with(
        &mut self,
        name: &str,
        expected: &str,
        adds: usize,
        check_disk: bool,
        f: impl FnOnce(&Deadline, SocketAddr) -> Result<String, String>,
    ) {
        let a = addr(&self.agent);
        let before = commands_count(a);
        let agent = &mut self.agent;
        let disk = &self.disk;
        self.table.row(name, expected, ROW, |d| {
            let before = before?;
            let out = f(d, a)?;
            check_alive(agent, Duration::from_secs(5))
                .map_err(|e| format!("{out}; but afterwards {e}"))?;
            let after = commands_count(a)?;
            ensure(after == before + adds, || {
                format!("{out}; but the command history went from {before} to {after} entries")
            })?;
            if check_disk {
                let v = disk_verdict(&disk.read_all(), FILL, None);
                ensure(v == DiskVerdict::Untouched, || {
                    format!("{out}; but the disk is {v:?}")
                })?;
            }
            Ok(out)
        });
    }
}

fn nested(open: &str, close: &str, depth: usize) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

#[test]
fn api_table() {
    let Some(disk) = TestDisk::create("hostile_api::api_table", 16 << 20) else {
        return;
    };
    disk.fill(FILL);
    let agent = spawn_standalone_with("", TOKEN, &disk.path());
    let images = ImageServer::start().expect("image server");
    let img = test_image(TableKind::Mbr, 4 << 20, 0x4a1);
    images.add("disk.raw", img.bytes.clone());
    // Slow enough that sixteen simultaneous POSTs all arrive while it runs.
    images.set_fault("disk.raw", Fault::Throttle(2 * MIB));
    let plan = DeployPlan::whole_disk_raw(&images.url("disk.raw"), &img.sha256, None);
    let good_info = plan.image_info("hostile");
    let mut t = ApiTable {
        table: Table::new("api"),
        agent,
        disk,
    };

    // --- Malformed bodies -------------------------------------------------------------------
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON `{not json`", b"{not json".to_vec()),
        ("empty body", Vec::new()),
        ("body `null`", b"null".to_vec()),
        ("body `[1, 2]`", b"[1, 2]".to_vec()),
        ("body `\"standby.sync\"`", b"\"standby.sync\"".to_vec()),
        (
            "truncated JSON",
            br#"{"name": "standby.sync", "params": {"#.to_vec(),
        ),
        (
            "valid command followed by garbage",
            br#"{"name": "standby.sync", "params": {}} trailing"#.to_vec(),
        ),
        (
            "invalid UTF-8 in the body",
            b"{\"name\": \"\xff\xfe\", \"params\": {}}".to_vec(),
        ),
        ("NUL bytes", vec![0u8; 64]),
        (
            "10 000-deep nested arrays",
            nested("[", "]", 10_000).into_bytes(),
        ),
        (
            "10 000-deep nested objects",
            nested("{\"a\":", "}", 10_000)
                .replace("{\"a\":}", "{\"a\":1}")
                .into_bytes(),
        ),
        (
            "10 000-deep nesting inside params",
            format!(
                r#"{{"name": "standby.sync", "params": {{"x": {}}}}}"#,
                nested("[", "]", 10_000)
            )
            .into_bytes(),
        ),
    ];
    for (name, body) in bodies {
        t.row(name, "400 with a JSON faultstring", 0, |d, a| {
            fault(&post(a, &body, d), &[400])
        });
    }

    // --- Wrong types for name / params ------------------------------------------------------
    let wrong: Vec<(&str, Value, &[u16])> = vec![
        ("name 123", json!({"name": 123, "params": {}}), &[400]),
        ("name null", json!({"name": null, "params": {}}), &[400]),
        (
            "name a list",
            json!({"name": ["standby.sync"], "params": {}}),
            &[400],
        ),
        (
            "name an object",
            json!({"name": {"a": 1}, "params": {}}),
            &[400],
        ),
        (
            "params a string",
            json!({"name": "standby.sync", "params": "x"}),
            &[400],
        ),
        (
            "params a list",
            json!({"name": "standby.sync", "params": []}),
            &[400],
        ),
        (
            "params null",
            json!({"name": "standby.sync", "params": null}),
            &[400],
        ),
        (
            "params a number",
            json!({"name": "standby.sync", "params": 5}),
            &[400],
        ),
        (
            "name without a dot `standby`",
            json!({"name": "standby", "params": {}}),
            &[400],
        ),
        (
            "name `standby.` (empty command)",
            json!({"name": "standby.", "params": {}}),
            &[400, 404],
        ),
        (
            "name `.sync` (empty extension)",
            json!({"name": ".sync", "params": {}}),
            &[404],
        ),
        ("name empty", json!({"name": "", "params": {}}), &[400]),
        (
            "unknown extension `nosuch.command`",
            json!({"name": "nosuch.command", "params": {}}),
            &[404],
        ),
        (
            "unknown command `standby.nosuch`",
            json!({"name": "standby.nosuch", "params": {}}),
            &[400, 404],
        ),
        (
            "name `standby.sync.extra`",
            json!({"name": "standby.sync.extra", "params": {}}),
            &[400, 404],
        ),
        (
            "name `../standby.sync`",
            json!({"name": "../standby.sync", "params": {}}),
            &[404],
        ),
        (
            "1 MiB extension name",
            json!({"name": format!("{}.sync", "x".repeat(1 << 20)), "params": {}}),
            &[404],
        ),
        // execute_deploy_step's validator (IPA: a step is a dict with a name).
        (
            "step missing",
            json!({"name": "deploy.execute_deploy_step", "params": {}}),
            &[400],
        ),
        (
            "step a string",
            json!({"name": "deploy.execute_deploy_step", "params": {"step": "write_image"}}),
            &[400],
        ),
        (
            "step without its name",
            json!({"name": "deploy.execute_deploy_step", "params": {"step": {}}}),
            &[400],
        ),
        (
            "step name 5",
            json!({"name": "deploy.execute_deploy_step", "params": {"step": {"step": 5}}}),
            &[400],
        ),
        // prepare_image's validator (IPA `_validate_image_info`).
        (
            "image_info missing",
            json!({"name": "standby.prepare_image", "params": {}}),
            &[400],
        ),
        (
            "image_info a string",
            json!({"name": "standby.prepare_image", "params": {"image_info": "x"}}),
            &[400],
        ),
        (
            "image_info a list",
            json!({"name": "standby.prepare_image", "params": {"image_info": []}}),
            &[400],
        ),
        (
            "image_info without urls",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a"}}}),
            &[400],
        ),
        (
            "image_info urls a string",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": "http://127.0.0.1:1/x"}}}),
            &[400],
        ),
        (
            "image_info urls [5]",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": [5]}}}),
            &[400],
        ),
        (
            "image_info urls []",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": []}}}),
            &[400],
        ),
        (
            "image_info id 5",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": 5, "urls": ["http://127.0.0.1:1/x"]}}}),
            &[400],
        ),
    ];
    for (name, body, want) in wrong {
        t.row(
            name,
            &format!("{want:?} with a JSON faultstring"),
            0,
            |d, a| {
                let ex = post(a, body.to_string().as_bytes(), d);
                let out = fault(&ex, want)?;
                Ok(format!("{out} ({} bytes)", ex.responses[0].body.len()))
            },
        );
    }

    // Rows the validators let through: the command runs and must FAIL cleanly, disk untouched.
    let failing: Vec<(&str, Value)> = vec![
        (
            "image URL file:///etc/passwd",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": ["file:///etc/passwd"], "os_hash_algo": "sha256", "os_hash_value": img.sha256}}}),
        ),
        (
            "os_hash_algo 5",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": [images.url("disk.raw")], "os_hash_algo": 5, "os_hash_value": img.sha256}}}),
        ),
        (
            "no checksum at all",
            json!({"name": "standby.prepare_image", "params": {"image_info": {"id": "a", "urls": [images.url("disk.raw")]}}}),
        ),
        (
            "configdrive a number",
            json!({"name": "standby.prepare_image", "params": {"image_info": good_info, "configdrive": 5}}),
        ),
        (
            "write_image step with args a string",
            json!({"name": "deploy.execute_deploy_step", "params": {"step": {"step": "write_image", "interface": "deploy", "args": "x"}}}),
        ),
        (
            "unknown deploy step `nosuch`",
            json!({"name": "deploy.execute_deploy_step", "params": {"step": {"step": "nosuch", "interface": "deploy", "args": {}}}}),
        ),
    ];
    for (name, body) in failing {
        t.row(
            name,
            "400, or a FAILED result with a clear error; disk untouched",
            1,
            |d, a| {
                let ex = post(a, body.to_string().as_bytes(), d);
                let r = ex
                    .responses
                    .first()
                    .ok_or_else(|| format!("no response: {}", ex.describe()))?;
                let v = r.json().unwrap_or(Value::Null);
                ensure(r.status == 200, || format!("HTTP {}", r.describe()))?;
                ensure(v["command_status"] == "FAILED", || {
                    format!("not FAILED: {}", r.describe())
                })?;
                let details = v["command_error"]["details"].as_str().unwrap_or_default();
                ensure(!details.is_empty(), || {
                    format!("no details: {}", r.describe())
                })?;
                Ok(format!(
                    "FAILED {}: {}",
                    v["command_error"]["type"].as_str().unwrap_or("?"),
                    truncate(details, 120)
                ))
            },
        );
    }

    // --- Tokens -----------------------------------------------------------------------------
    let long = "a".repeat(64 << 10);
    let upper = TOKEN.to_uppercase();
    let tokens: Vec<(&str, String)> = vec![
        ("token missing", String::new()),
        ("token empty", "agent_token=".into()),
        ("token wrong", "agent_token=wrong".into()),
        (
            "token 8 KiB long",
            format!("agent_token={}", &long[..8 << 10]),
        ),
        ("token 64 KiB long", format!("agent_token={long}")),
        ("token in upper case", format!("agent_token={upper}")),
        (
            "token with a trailing space",
            format!("agent_token={TOKEN}%20"),
        ),
        (
            "token prefix (all but the last char)",
            format!("agent_token={}", &TOKEN[..TOKEN.len() - 1]),
        ),
        ("token plus one char", format!("agent_token={TOKEN}x")),
        ("token as invalid UTF-8 %FF%FE", "agent_token=%FF%FE".into()),
        (
            "token under another name (?token=)",
            format!("token={TOKEN}"),
        ),
    ];
    // A URI over 64 KiB is refused by the HTTP layer (414) before the token is looked at.
    let refused = |r: &ferric_tests::hostile::RawResponse, uri_too_long_ok: bool| {
        let want: Value = serde_json::from_str(WSME_401).expect("literal");
        (r.status == 401 && r.json() == Some(want)) || (uri_too_long_ok && r.status == 414)
    };
    for (name, q) in &tokens {
        let long_ok = q.len() > 60_000;
        let expected = if long_ok {
            "401 with IPA's WSME body, or 414 URI Too Long"
        } else {
            "401 with IPA's WSME body"
        };
        t.row(
            &format!("GET /v1/commands/, {name}"),
            expected,
            0,
            |d, a| {
                let ex = raw_exchange(a, &get_req(&format!("/v1/commands/?{q}")), 1, d.remaining());
                let r = ex.responses.first().ok_or_else(|| ex.describe())?;
                ensure(refused(r, long_ok), || r.describe())?;
                Ok(r.describe())
            },
        );
        t.row(
            &format!("POST standby.sync, {name}"),
            &format!("{expected}; nothing run"),
            0,
            |d, a| {
                let body = br#"{"name": "standby.sync", "params": {}}"#;
                let req = post_req(&format!("wait=true&{q}"), body);
                let ex = raw_exchange(a, &req, 1, d.remaining());
                let r = ex.responses.first().ok_or_else(|| ex.describe())?;
                ensure(refused(r, long_ok), || r.describe())?;
                Ok(r.describe())
            },
        );
    }
    t.row(
        "GET /v1/commands/, token percent-encoded char by char (control)",
        "200: the token is compared after decoding",
        0,
        |d, a| {
            let enc: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
            let ex = raw_exchange(
                a,
                &get_req(&format!("/v1/commands/?agent_token={enc}")),
                1,
                d.remaining(),
            );
            let r = ex.responses.first().ok_or_else(|| ex.describe())?;
            ensure(r.status == 200, || r.describe())?;
            Ok(r.describe())
        },
    );

    // --- Odd HTTP -------------------------------------------------------------------------
    type Raw = (&'static str, Vec<u8>, &'static [u16]);
    let huge_header = |n: usize| -> Vec<u8> {
        format!(
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(n)
        )
        .into_bytes()
    };
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raws: Vec<Raw> = vec![
        ("raw 0xFF 0xFE bytes in the path", b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), &[400, 404]),
        ("percent-encoded invalid UTF-8 in the path", get_req("/v1/status%FF%FE"), &[404]),
        ("raw 0xFF bytes in the query", b"GET /v1/status?x=\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), &[200, 400]),
        ("100 KiB header", huge_header(100 << 10), &[200, 431]),
        ("1 MiB header", huge_header(1 << 20), &[431, 400]),
        ("200 headers", format!("GET /v1/status HTTP/1.1\r\nHost: x\r\n{many_headers}Connection: close\r\n\r\n").into_bytes(), &[431, 400]),
        ("garbage request line `HELLO`", b"HELLO\r\n\r\n".to_vec(), &[400]),
        ("TLS ClientHello on the plain-HTTP port", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03], &[400]),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505]),
        ("unknown method BREW", b"BREW /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), &[405]),
        ("DELETE /v1/commands/", format!("DELETE /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(), &[405]),
        ("Content-Length and chunked together (smuggling)", format!("POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n").into_bytes(), &[400]),
        ("two different Content-Lengths", format!("POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{}}").into_bytes(), &[400]),
        ("Content-Length `abc`", format!("POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n").into_bytes(), &[400]),
        ("Content-Length -1", format!("POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n").into_bytes(), &[400]),
        ("Content-Length larger than the body, then EOF", format!("POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{{\"name\"").into_bytes(), &[400]),
        ("32 KiB command id", get_req(&format!("/v1/commands/{}?agent_token={TOKEN}", "0".repeat(32 << 10))), &[404]),
        ("100 KiB command id (URI over 64 KiB)", get_req(&format!("/v1/commands/{}?agent_token={TOKEN}", "0".repeat(100 << 10))), &[404, 414]),
        ("path traversal /v1/commands/../../etc/passwd", get_req(&format!("/v1/commands/../../etc/passwd?agent_token={TOKEN}")), &[404]),
        ("absolute-form target http://evil/v1/status", get_req("http://evil.example/v1/status"), &[200]),
        ("HTTP/1.0 without Host", b"GET /v1/status HTTP/1.0\r\n\r\n".to_vec(), &[200]),
    ];
    for (name, req, want) in raws {
        let eof_row = name.starts_with("Content-Length larger");
        t.row(
            name,
            &format!("{want:?} or the connection closed; agent unaffected"),
            0,
            |d, a| {
                if eof_row {
                    // Send part of the body, then half-close: the agent sees EOF mid-body.
                    let mut s = TcpStream::connect(a).map_err(|e| e.to_string())?;
                    std::io::Write::write_all(&mut s, &req).map_err(|e| e.to_string())?;
                    s.shutdown(std::net::Shutdown::Write)
                        .map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(d.remaining()))
                        .map_err(|e| e.to_string())?;
                    let mut out = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut s, &mut out);
                    let text = String::from_utf8_lossy(&out);
                    return match text.split_whitespace().nth(1) {
                        Some(code) if want.iter().any(|w| w.to_string() == code) => {
                            Ok(truncate(&text, 160))
                        }
                        None => Ok("connection closed without an answer".into()),
                        Some(_) => Err(truncate(&text, 300)),
                    };
                }
                status_or_closed(&raw_exchange(a, &req, 1, d.remaining()), want)
            },
        );
    }

    // --- Pipelining -------------------------------------------------------------------------
    t.row(
        "3 pipelined GETs in one write (status, commands, unknown path)",
        "200, 200, 404 in request order",
        0,
        |d, a| {
            let mut req = Vec::new();
            req.extend_from_slice(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
            req.extend_from_slice(
                format!("GET /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n")
                    .as_bytes(),
            );
            req.extend_from_slice(b"GET /nosuch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let ex = raw_exchange(a, &req, 3, d.remaining());
            let st: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
            ensure(st == [200, 200, 404], || ex.describe())?;
            ensure(
                ex.responses[0]
                    .json()
                    .is_some_and(|v| v["started_at"].is_number()),
                || ex.describe(),
            )?;
            ensure(
                ex.responses[1]
                    .json()
                    .is_some_and(|v| v["commands"].is_array()),
                || ex.describe(),
            )?;
            Ok(format!("{st:?}"))
        },
    );
    t.row(
        "pipelined: bad JSON POST, then GET /v1/status",
        "400 then 200, in order",
        0,
        |d, a| {
            let mut req = format!(
                "POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{{bad}}"
            )
            .into_bytes();
            req.extend_from_slice(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let ex = raw_exchange(a, &req, 2, d.remaining());
            let st: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
            ensure(st == [400, 200], || ex.describe())?;
            Ok(format!("{st:?}"))
        },
    );

    // --- Bodies over the limit, memory measured -------------------------------------------
    let pid = t.agent.process.pid();
    for chunked in [false, true] {
        let name = if chunked {
            "100 MiB body, chunked (no Content-Length)"
        } else {
            "100 MiB body with Content-Length"
        };
        let expected = if chunked {
            "413 once 96 MiB are in; peak RSS grows by at most the body limit (+8 MiB)"
        } else {
            "413 before reading the body; peak RSS grows by < 16 MiB"
        };
        t.row(name, expected, 0, |d, a| {
            let can_reset = reset_peak_rss(pid);
            let rss0 = mem_kib(pid, "VmRSS").ok_or("no VmRSS")?;
            let hwm0 = mem_kib(pid, "VmHWM").ok_or("no VmHWM")?;
            let te = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {}", 100 * MIB)
            };
            let head = format!(
                "POST /v1/commands/?wait=true&agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\n{te}\r\n\r\n"
            );
            let lb = send_large_body(a, head.as_bytes(), 100 * MIB, chunked, b' ', d.remaining())
                .map_err(|e| e.to_string())?;
            let rss1 = mem_kib(pid, "VmRSS").ok_or("no VmRSS")?;
            let hwm1 = mem_kib(pid, "VmHWM").ok_or("no VmHWM")?;
            let r = lb
                .response
                .as_ref()
                .ok_or_else(|| format!("no response ({lb:?})"))?;
            let growth = hwm1.saturating_sub(if can_reset { rss0 } else { hwm0 }) * 1024;
            let obs = format!(
                "{}; {} MiB sent; RSS {} → {} MiB, peak {} → {} MiB (growth {} MiB{})",
                r.describe(),
                lb.bytes_sent >> 20,
                rss0 >> 10,
                rss1 >> 10,
                hwm0 >> 10,
                hwm1 >> 10,
                growth >> 20,
                if can_reset {
                    ""
                } else {
                    ", peak not resettable"
                }
            );
            ensure(r.status == 413, || obs.clone())?;
            // Chunked: the agent must buffer up to the limit; 8 MiB on top covers the HTTP
            // stack's read buffers and allocator rounding.
            let limit = if chunked {
                MAX_BODY + 8 * MIB
            } else {
                16 * MIB
            };
            ensure(growth <= limit, || format!("peak RSS grew too much: {obs}"))?;
            Ok(obs)
        });
    }

    // --- Concurrent commands (last: it writes the disk) -----------------------------------
    let body = json!({"name": "standby.prepare_image",
                      "params": {"image_info": good_info}})
    .to_string();
    t.row_with(
        "16 simultaneous POSTs of standby.prepare_image",
        "exactly one 200 RUNNING, fifteen 409 `Agent is busy`; it then SUCCEEDS",
        1,
        false,
        |d, a| {
            let barrier = Arc::new(Barrier::new(16));
            let req = post_req(&format!("agent_token={TOKEN}"), body.as_bytes());
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let barrier = barrier.clone();
                    let req = req.clone();
                    let left = d.remaining();
                    std::thread::spawn(move || {
                        barrier.wait();
                        raw_exchange(a, &req, 1, left)
                    })
                })
                .collect();
            let results: Vec<RawExchange> = handles
                .into_iter()
                .map(|h| h.join().expect("POST thread"))
                .collect();
            let ok: Vec<&RawExchange> = results
                .iter()
                .filter(|e| e.responses.first().is_some_and(|r| r.status == 200))
                .collect();
            let busy = results
                .iter()
                .filter(|e| {
                    e.responses.first().is_some_and(|r| {
                        r.status == 409
                            && r.faultstring().is_some_and(|f| {
                                f.starts_with("Agent is busy") && f.contains("prepare_image")
                            })
                    })
                })
                .count();
            let all: Vec<String> = results.iter().map(|e| e.describe()).collect();
            ensure(ok.len() == 1 && busy == 15, || {
                format!("{} accepted, {busy} busy: {}", ok.len(), all.join(" | "))
            })?;
            let started = ok[0].responses[0].json().unwrap_or(Value::Null);
            ensure(started["command_status"] == "RUNNING", || ok[0].describe())?;
            // Let it finish, so the agent is idle again.
            let done =
                ferric_tests::util::poll_until(d.remaining(), Duration::from_millis(200), || {
                    let ex = raw_exchange(
                        a,
                        &get_req(&format!("/v1/commands/?agent_token={TOKEN}")),
                        1,
                        Duration::from_secs(5),
                    );
                    let v = ex.responses.first()?.json()?;
                    let last = v["commands"].as_array()?.last()?.clone();
                    (last["command_status"] != "RUNNING").then_some(last)
                })
                .ok_or("prepare_image still RUNNING at the deadline")?;
            ensure(done["command_status"] == "SUCCEEDED", || done.to_string())?;
            Ok("1 × 200 RUNNING, 15 × 409 Agent is busy; the accepted one SUCCEEDED".into())
        },
    );
    let ApiTable { table, .. } = t;
    table.finish(env!("CARGO_TARGET_TMPDIR"));
}

/// Sends `head` at once, then one byte per second (`fill`, or the bytes of a request line
/// that never ends when `head` is empty) until the agent closes the connection or `limit`
/// passes. `Ok(time to close)`; `Err` when the connection stayed open or the agent answered
/// a request it never fully received (a 408 counts as a close).
fn trickle(a: SocketAddr, head: &[u8], fill: u8, limit: Duration) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(a).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(1)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let line = b"GET /v1/status HTTP/1.1";
    s.write_all(head).map_err(|e| e.to_string())?;
    let mut i = 0usize;
    while t0.elapsed() < limit {
        let b = if head.is_empty() {
            line[i % line.len()]
        } else {
            fill
        };
        i += 1;
        if s.write_all(&[b]).is_err() {
            return Ok(t0.elapsed());
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return Ok(t0.elapsed()),
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 408") => return Ok(t0.elapsed()),
            Ok(n) => {
                return Err(format!(
                    "the agent answered a request it never fully received: {}",
                    String::from_utf8_lossy(&buf[..n])
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(t0.elapsed()),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!(
        "still open after {limit:?} of trickling ({i} bytes sent)"
    ))
}

/// Runs `clients` (name, head, fill) in parallel against a fresh agent, checking that the API
/// answers others meanwhile and afterwards; each client must be closed by the agent.
fn slow_table(name: &str, expected: &str, clients: Vec<(&'static str, Vec<u8>, u8)>) {
    let Some(disk) = TestDisk::create(&format!("hostile_api::{name}"), 8 << 20) else {
        return;
    };
    let mut agent = spawn_standalone_with("", TOKEN, &disk.path());
    let a = addr(&agent);
    let table = Table::new(name);
    // 15 s beyond the agent's 30 s header timeout.
    const TRICKLE_LIMIT: Duration = Duration::from_secs(45);
    let start = Instant::now();
    let n = clients.len();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|(name, head, fill)| {
            std::thread::spawn(move || (name, trickle(a, &head, fill, TRICKLE_LIMIT)))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    table.row(
        &format!("GET /v1/status while {n} slow clients hold connections"),
        "200 within 5 s",
        Duration::from_secs(6),
        |_| check_alive(&mut agent, Duration::from_secs(5)).map(|_| "200".to_string()),
    );
    for h in handles {
        let (name, res) = h.join().expect("slow client thread");
        let (passed, outcome) = match res {
            Ok(t) => (
                true,
                format!("closed by the agent after {:.1}s", t.as_secs_f64()),
            ),
            Err(e) => (false, e),
        };
        table.record(Row {
            name: name.to_string(),
            expected: expected.to_string(),
            outcome,
            passed,
            elapsed: start.elapsed(),
        });
    }
    table.row(
        "GET /v1/status after the slow clients",
        "200 within 5 s",
        Duration::from_secs(6),
        |_| check_alive(&mut agent, Duration::from_secs(5)).map(|_| "200".to_string()),
    );
    table.finish(env!("CARGO_TARGET_TMPDIR"));
}

/// Slowloris: request heads sent one byte per second must be cut by the agent's 30 s header
/// timeout (`agent/src/api.rs` HEADER_TIMEOUT); the API keeps answering others meanwhile.
#[test]
fn slowloris_heads_are_cut_by_the_header_timeout() {
    let header = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
    slow_table(
        "api-slowloris",
        "connection closed by the agent (header timeout 30 s), no answer",
        vec![
            ("slowloris: request line one byte per second", Vec::new(), 0),
            (
                "slowloris: header value one byte per second",
                header.clone(),
                b'a',
            ),
            ("slowloris: a second one on the same agent", header, b'b'),
        ],
    );
}

/// A client that sends complete headers, then its body one byte per second, must not hold one
/// of the agent's 64 connection slots for ever (64 such clients would make the API
/// unreachable): the header timeout does not cover bodies, the body deadline
/// (`agent/src/api.rs` BODY_GRACE + size at MIN_BODY_RATE) does.
#[test]
fn slow_bodies_are_cut() {
    let head = format!(
        "POST /v1/commands/?agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 1000\r\n\r\n"
    );
    slow_table(
        "api-slow-body",
        "connection closed by the agent within 45 s (a body timeout), no answer",
        vec![(
            "slow body: headers sent, body one byte per second",
            head.into_bytes(),
            b' ',
        )],
    );
}

/// 200 connections that send nothing. The agent serves 64 connections at once (the rest wait
/// in the kernel's listen queue) and closes an idle one after its 30 s header timeout.
/// Observed and documented here: a new client queued behind idle connections waits until
/// enough of them close; once the idle clients go away it is answered within seconds.
#[test]
fn idle_connections_beyond_the_cap() {
    let Some(disk) = TestDisk::create("hostile_api::idle", 8 << 20) else {
        return;
    };
    let mut agent = spawn_standalone_with("", TOKEN, &disk.path());
    let a = addr(&agent);
    let table = Table::new("api-idle-connections");
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|i| TcpStream::connect(a).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // A status request queued behind the 200 idle connections.
    let queued = std::thread::spawn(move || {
        let t0 = Instant::now();
        let ex = raw_exchange(a, &get_req("/v1/status"), 1, Duration::from_secs(75));
        (t0.elapsed(), ex)
    });
    std::thread::sleep(Duration::from_secs(3));
    table.row(
        "200 idle connections, then GET /v1/status on a new one",
        "documented: queued behind the idle ones (64 served at once); process alive",
        Duration::from_secs(2),
        |_| {
            ensure(agent.process.is_running(), || "the agent exited".into())?;
            Ok(if queued.is_finished() {
                "answered within 3 s (not queued)".into()
            } else {
                "not answered after 3 s: queued behind the idle connections".into()
            })
        },
    );
    // Close the first 100 (the 64 the agent holds and 36 queued): 64 more idle connections
    // are then ahead of the status request, and hold their slots until the header timeout.
    idle.drain(..100);
    let closed_at = Instant::now();
    table.row(
        "close 100 of the 200 idle connections",
        "the queued GET /v1/status is answered within 2 header timeouts (documents the wait)",
        Duration::from_secs(75),
        |_| {
            let (t, ex) = queued.join().expect("status thread");
            let r = ex.responses.first().ok_or_else(|| ex.describe())?;
            ensure(r.status == 200, || r.describe())?;
            Ok(format!(
                "answered {:.1}s after the close ({:.1}s after it was sent): the 64 idle \
                 connections accepted next kept their slots until the 30 s header timeout",
                closed_at.elapsed().as_secs_f64().min(t.as_secs_f64()),
                t.as_secs_f64()
            ))
        },
    );
    // Fill the slots again, then let every idle client go: a new request must be answered fast.
    idle.extend((0..100).map(|_| TcpStream::connect(a).expect("idle connection")));
    std::thread::sleep(Duration::from_secs(1));
    drop(idle);
    table.row(
        "all idle clients close, then GET /v1/status on a new connection",
        "200 within 5 s",
        Duration::from_secs(6),
        |_| check_alive(&mut agent, Duration::from_secs(5)).map(|_| "200".into()),
    );
    table.finish(env!("CARGO_TARGET_TMPDIR"));
}

/// The token is in the query string, known before a byte of the body is read. Were the body
/// read first (up to 96 MiB), anyone who can reach the port could make the agent buffer 96 MiB
/// per connection, 64 connections at once (~6 GiB): a ramdisk is OOM-killed long before.
/// Eight concurrent 90 MiB bodies with a wrong token must get 401 without being buffered.
#[test]
fn unauthenticated_bodies_are_not_buffered() {
    let Some(disk) = TestDisk::create("hostile_api::unauth_bodies", 8 << 20) else {
        return;
    };
    let mut agent = spawn_standalone_with("", TOKEN, &disk.path());
    let a = addr(&agent);
    let pid = agent.process.pid();
    let table = Table::new("api-unauthenticated-bodies");
    table.row(
        "8 concurrent 90 MiB bodies (Content-Length) with a wrong token",
        "401 each; peak RSS grows by at most one body limit (+8 MiB)",
        Duration::from_secs(60),
        |d| {
            let can_reset = reset_peak_rss(pid);
            let rss0 = mem_kib(pid, "VmRSS").ok_or("no VmRSS")? * 1024;
            let len = 90 * MIB;
            let head = format!(
                "POST /v1/commands/?agent_token=wrong HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
            );
            let barrier = Arc::new(Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (head, barrier, left) = (head.clone(), barrier.clone(), d.remaining());
                    std::thread::spawn(move || {
                        barrier.wait();
                        send_large_body(a, head.as_bytes(), len, false, b' ', left)
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for h in handles {
                let lb = h.join().expect("sender").map_err(|e| e.to_string())?;
                statuses.push(lb.response.map(|r| r.status).unwrap_or(0));
            }
            let peak = mem_kib(pid, "VmHWM").ok_or("no VmHWM")? * 1024;
            let growth = peak.saturating_sub(rss0);
            let obs = format!(
                "statuses {statuses:?}; peak RSS +{} MiB{}",
                growth >> 20,
                if can_reset {
                    ""
                } else {
                    " (peak not resettable)"
                }
            );
            ensure(statuses.iter().all(|&s| s == 401), || obs.clone())?;
            ensure(growth <= MAX_BODY + 8 * MIB, || obs.clone())?;
            check_alive(&mut agent, Duration::from_secs(5))?;
            Ok(obs)
        },
    );
    table.finish(env!("CARGO_TARGET_TMPDIR"));
}
