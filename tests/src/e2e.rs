//! Glue for the end-to-end suites: a blocking client for the agent's REST API, install
//! targets (regular file or loop device), spawning the agent against the fake Ironic or in
//! standalone mode, and one failure report that gathers every party's view.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent_process::AgentProcess;
use crate::conductor::Conductor;
use crate::fake_ironic::FakeIronic;
use crate::image_server::ImageServer;
use crate::loopdev::LoopDevice;
use crate::util::{free_local_port, truncate};

/// The `BOOTIF` the suites put on the agent's command line (MAC 52:54:00:12:34:56).
pub const BOOTIF: &str = "BOOTIF=01-52-54-00-12-34-56";

/// A blocking client for the agent API.
pub struct AgentApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    client: reqwest::blocking::Client,
}

/// Status and body of one API answer (body as JSON, or a JSON string with the raw text).
#[derive(Clone, Debug)]
pub struct ApiReply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

impl ApiReply {
    /// `faultstring` of an error body, if present and a string.
    pub fn faultstring(&self) -> Option<&str> {
        self.body.get("faultstring").and_then(Value::as_str)
    }
}

impl AgentApi {
    /// A client for `base` with a 90 s timeout (above the conductor's 60 s).
    pub fn new(base: &str) -> AgentApi {
        Self::with_ca(base, None)
    }

    /// A client for `base` trusting `ca_pem` (the agent's `agent_verify_ca`) for HTTPS.
    pub fn with_ca(base: &str, ca_pem: Option<&str>) -> AgentApi {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(90));
        if let Some(pem) = ca_pem {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).expect("agent_verify_ca is PEM"),
            );
        }
        AgentApi {
            base: base.trim_end_matches('/').to_string(),
            client: b.build().expect("reqwest client"),
        }
    }

    fn finish(r: reqwest::Result<reqwest::blocking::Response>) -> ApiReply {
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                ApiReply {
                    status,
                    body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                }
            }
            Err(e) => panic!("agent API request failed: {e:#}"),
        }
    }

    /// `GET {base}{path}` with an optional `agent_token` query parameter.
    pub fn get(&self, path: &str, token: Option<&str>) -> ApiReply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.query(&[("agent_token", t)]);
        }
        Self::finish(req.send())
    }

    /// `POST {base}/v1/commands/?wait=…&agent_token=…` with a raw body.
    pub fn post_raw(&self, body: &[u8], wait: bool, token: Option<&str>) -> ApiReply {
        let mut q = vec![("wait", if wait { "true" } else { "false" }.to_string())];
        if let Some(t) = token {
            q.push(("agent_token", t.to_string()));
        }
        Self::finish(
            self.client
                .post(format!("{}/v1/commands/", self.base))
                .query(&q)
                .header("Content-Type", "application/json")
                .body(body.to_vec())
                .send(),
        )
    }

    /// `POST /v1/commands/` with `{"name", "params"}`.
    pub fn command(&self, name: &str, params: Value, wait: bool, token: Option<&str>) -> ApiReply {
        let body = json!({"name": name, "params": params}).to_string();
        self.post_raw(body.as_bytes(), wait, token)
    }

    /// `GET /v1/commands/` results (panics unless 200 with a `commands` list).
    pub fn commands(&self, token: &str) -> Vec<Value> {
        let r = self.get("/v1/commands/", Some(token));
        assert_eq!(r.status, 200, "GET /v1/commands/ failed: {:?}", r);
        r.body["commands"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /v1/commands/ has no commands list: {}", r.body))
            .clone()
    }

    /// Polls until the last result named `command_name` is no longer RUNNING; returns it.
    pub fn wait_done(&self, token: &str, command_name: &str, timeout: Duration) -> Option<Value> {
        crate::util::poll_until(timeout, Duration::from_millis(250), || {
            self.commands(token)
                .into_iter()
                .rev()
                .find(|c| c["command_name"] == command_name)
                .filter(|c| c["command_status"] != "RUNNING")
        })
    }
}

/// Where the agent writes: a regular temp file, or a loop device when
/// `FERRIC_TEST_INSTALL_DEVICE=loop` (for an agent that refuses regular files).
pub enum TestDisk {
    /// A sparse regular file.
    File(tempfile::TempPath, u64),
    /// A loop device.
    Loop(LoopDevice),
}

impl TestDisk {
    /// Creates a disk of `size` bytes. `None` (after the CI rule) when a loop device was asked
    /// for but cannot be had.
    pub fn create(test: &str, size: u64) -> Option<TestDisk> {
        if std::env::var("FERRIC_TEST_INSTALL_DEVICE").as_deref() == Ok("loop") {
            return LoopDevice::create_or_skip(test, size).map(TestDisk::Loop);
        }
        let f = tempfile::Builder::new()
            .prefix("ferric-disk-")
            .suffix(".img")
            .tempfile()
            .expect("temp disk file");
        f.as_file().set_len(size).expect("size temp disk");
        Some(TestDisk::File(f.into_temp_path(), size))
    }

    /// Path to hand to `--install-device`.
    pub fn path(&self) -> PathBuf {
        match self {
            TestDisk::File(p, _) => p.to_path_buf(),
            TestDisk::Loop(l) => l.path().to_path_buf(),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            TestDisk::File(_, s) => *s,
            TestDisk::Loop(l) => l.size(),
        }
    }

    /// Fills the disk with `byte`.
    pub fn fill(&self, byte: u8) {
        match self {
            TestDisk::File(p, s) => {
                std::fs::write(p, vec![byte; *s as usize]).expect("fill temp disk")
            }
            TestDisk::Loop(l) => l.fill(byte).expect("fill loop device"),
        }
    }

    /// Reads the whole disk.
    pub fn read_all(&self) -> Vec<u8> {
        std::fs::read(self.path()).expect("read test disk")
    }
}

/// An agent process plus the address its API listens on.
pub struct RunningAgent {
    /// The process.
    pub process: AgentProcess,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port.
    pub port: u16,
}

impl RunningAgent {
    /// A client for its API.
    pub fn api(&self) -> AgentApi {
        AgentApi::new(&self.url)
    }
}

/// Starts the agent against `ironic`: kernel command line with `ipa-api-url`, [`BOOTIF`], fast
/// lookup retries and `extra_cmdline`; flags `--listen/--advertise 127.0.0.1:PORT`,
/// `--install-device DEV --allow-device DEV --power-action exit` and `extra_args`.
pub fn spawn_agent_for_ironic(
    ironic: &FakeIronic,
    install_device: &Path,
    extra_cmdline: &str,
    extra_args: &[&str],
) -> RunningAgent {
    let port = free_local_port();
    let cmdline = format!(
        "console=ttyS0 ipa-api-url={} {BOOTIF} ipa-lookup-interval=1 ipa-lookup-timeout=120 \
         {extra_cmdline}",
        ironic.url()
    );
    spawn(&cmdline, port, install_device, extra_args)
}

/// Starts the agent in `--standalone --agent-token TOKEN` mode with an empty command line.
pub fn spawn_standalone(token: &str, install_device: &Path, extra_args: &[&str]) -> RunningAgent {
    let port = free_local_port();
    let mut args = vec!["--standalone", "--agent-token", token];
    args.extend_from_slice(extra_args);
    let mut a = spawn("", port, install_device, &args);
    if let Err(e) = a.process.wait_ready(&a.url, Duration::from_secs(20)) {
        panic!("standalone agent did not come up: {e}");
    }
    a.port = port;
    a
}

fn spawn(cmdline: &str, port: u16, dev: &Path, extra: &[&str]) -> RunningAgent {
    let addr = format!("127.0.0.1:{port}");
    let dev = dev.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "--listen".into(),
        addr.clone(),
        "--advertise".into(),
        addr.clone(),
        "--install-device".into(),
        dev.clone(),
        "--allow-device".into(),
        dev,
        "--power-action".into(),
        "exit".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let process = AgentProcess::spawn_with_cmdline(cmdline, &args)
        .unwrap_or_else(|e| panic!("cannot spawn ferric-agent: {e}"));
    RunningAgent {
        process,
        url: format!("http://{addr}"),
        port,
    }
}

/// Everything known about a run, for a failure message: conductor status, Ironic's recorded
/// requests, image server log, and the agent's stderr.
pub fn report(
    agent: Option<&RunningAgent>,
    ironic: Option<&FakeIronic>,
    conductor: Option<&Conductor>,
    images: Option<&ImageServer>,
) -> String {
    let mut s = String::from("\n======== ferric e2e failure report ========\n");
    if let Some(c) = conductor {
        s.push_str(&c.status().describe());
    }
    if let Some(i) = ironic {
        s.push_str("---- requests received by the fake Ironic ----\n");
        s.push_str(&i.dump_requests());
        s.push('\n');
    }
    if let Some(im) = images {
        s.push_str("---- image server log ----\n");
        s.push_str(&im.dump_requests());
        s.push('\n');
    }
    if let Some(a) = agent {
        s.push_str(&a.process.report());
        s.push('\n');
    }
    s.push_str("======== end of report ========\n");
    s
}

/// Describes where two byte slices first differ (for assertions on disk contents).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let end = (i + 16).min(a.len());
    Some(format!(
        "first difference at byte {i} (0x{i:x}): {:02x?} vs {:02x?}",
        &a[i..end],
        &b[i..end]
    ))
}

/// Shortened JSON for messages.
pub fn short(v: &Value) -> String {
    truncate(&crate::util::truncate_json(v, 100).to_string(), 2000)
}
