//! A fake Ironic API speaking the ramdisk endpoints exactly as the recordings in
//! `shared/recordings/*.jsonl` show (Ironic 39.0.0, API max 1.115).
//!
//! Served on 127.0.0.1 by hyper on its own runtime thread:
//! - `GET /` (and `/v1`, `/v1/`): the version document, with the
//!   `X-OpenStack-Ironic-API-{Minimum,Maximum}-Version` headers;
//! - `GET /v1/lookup?addresses=…[&node_uuid=…]`: 404 below microversion 1.22, for unknown MACs
//!   and for nodes in a state that does not accept lookups (Ironic does not tell them apart);
//!   the agent token is issued in clear once, then masked as `******` until wiped;
//! - `POST /v1/heartbeat/{uuid}`: 202 with an empty body, or Ironic's 400s (token, callback URL
//!   change, fields newer than the requested microversion).
//!
//! Every request is recorded (method, path, query, headers, body, time, status, response) for
//! assertions. Valid heartbeats are forwarded to one subscriber (the [`crate::conductor`]) unless
//! it is busy, in which case they are dropped, as Ironic drops heartbeats for a locked node
//! (`ironic/conductor/manager.py` heartbeat → `task.upgrade_lock` failure is only logged).
//!
//! Facts: `ironic/api/controllers/v1/ramdisk.py` (lookup/heartbeat validation, `config()`),
//! `ironic/common/exception.py` (messages), recordings 01/03/04/06.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::server::ServerThread;
use crate::util::{parse_query, truncate, truncate_json};

/// Lowest microversion this fake (like Ironic 39) accepts.
pub const API_MIN_VERSION: (u32, u32) = (1, 1);
/// Highest microversion this fake (like Ironic 39) accepts.
pub const API_MAX_VERSION: (u32, u32) = (1, 115);
/// Ramdisk endpoints exist from this microversion on (`allow_ramdisk_endpoints`).
pub const RAMDISK_MIN_VERSION: (u32, u32) = (1, 22);
/// Node UUID used by the recordings, the default here.
pub const RECORDED_NODE_UUID: &str = "deac3149-028a-46ae-9ba7-d09dcef7d201";
/// The PXE MAC used by the recordings and by the tests' `BOOTIF`.
pub const RECORDED_MAC: &str = "52:54:00:12:34:56";

/// Provision states in which Ironic answers lookups (`states.LOOKUP_ALLOWED_STATES`).
pub const LOOKUP_ALLOWED_STATES: &[&str] = &[
    "deploying",
    "wait call-back",
    "cleaning",
    "clean wait",
    "inspecting",
    "inspect wait",
    "rescuing",
    "rescue wait",
    "servicing",
    "service wait",
];

/// How the fake Ironic is set up. `Default` mirrors the recordings except `heartbeat_timeout`,
/// which is small so that agents under test heartbeat often.
#[derive(Clone, Debug)]
pub struct FakeIronicConfig {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The node's UUID.
    pub node_uuid: String,
    /// The node's name (heartbeats may use it instead of the UUID).
    pub node_name: String,
    /// UUID of the node's (first) port.
    pub port_uuid: String,
    /// The node's port MACs; a lookup matches when any address is one of them.
    pub macs: Vec<String>,
    /// `config.heartbeat_timeout` in the lookup answer (`[api]ramdisk_heartbeat_timeout`).
    pub heartbeat_timeout: u64,
    /// `config.agent_md5_checksum_enable` (`[agent]allow_md5_checksum`).
    pub agent_md5_checksum_enable: bool,
    /// `config.permitted_image_formats`.
    pub permitted_image_formats: Vec<String>,
    /// `config.disable_deep_image_inspection`.
    pub disable_deep_image_inspection: bool,
    /// `node.properties` (put `root_device` hints here).
    pub properties: Value,
    /// Initial provision state.
    pub provision_state: String,
    /// `[api]restrict_lookup`: refuse lookups outside [`LOOKUP_ALLOWED_STATES`].
    pub restrict_lookup: bool,
}

impl Default for FakeIronicConfig {
    fn default() -> Self {
        FakeIronicConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_uuid: RECORDED_NODE_UUID.to_string(),
            node_name: "harness-node".to_string(),
            port_uuid: "3520acb3-cb8e-4d20-b6f8-32c4bfe4c53e".to_string(),
            macs: vec![RECORDED_MAC.to_string()],
            heartbeat_timeout: 20,
            agent_md5_checksum_enable: true,
            permitted_image_formats: ["raw", "gpt", "qcow2", "iso"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            disable_deep_image_inspection: false,
            properties: json!({
                "cpu_arch": "x86_64", "cpus": 2, "memory_mb": 2048, "local_gb": 10,
                "capabilities": "boot_mode:uefi"
            }),
            provision_state: "wait call-back".to_string(),
            restrict_lookup: true,
        }
    }
}

/// The node as Ironic's database would hold it (secrets unmasked).
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Node UUID.
    pub uuid: String,
    /// Node name.
    pub name: String,
    /// UUID of its port.
    pub port_uuid: String,
    /// Port MACs, lower case.
    pub macs: Vec<String>,
    /// e.g. `wait call-back`, `deploying`, `active`, `deploy failed`, `clean wait`.
    pub provision_state: String,
    /// e.g. `active` during a deploy, `None` when stable.
    pub target_provision_state: Option<String>,
    /// What an operator would read in `baremetal node show`.
    pub last_error: Option<String>,
    /// `node.properties`.
    pub properties: Value,
    /// `node.instance_info`, unmasked.
    pub instance_info: Value,
    /// `node.driver_internal_info` without the agent fields kept below.
    pub driver_internal_info: Value,
    /// The agent token (`agent_secret_token`), once generated.
    pub token: Option<String>,
    /// Whether the token was already shown in clear by a lookup.
    pub token_shown: bool,
    /// `agent_url` from the last accepted heartbeat.
    pub agent_url: Option<String>,
    /// `agent_version` from the last accepted heartbeat.
    pub agent_version: Option<String>,
    /// `agent_verify_ca` from the last accepted heartbeat.
    pub agent_verify_ca: Option<String>,
    /// When the last accepted heartbeat arrived (since the fake started).
    pub last_heartbeat: Option<Duration>,
}

/// One HTTP exchange with the fake Ironic.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Order of arrival, from 1.
    pub seq: usize,
    /// Arrival time since the fake started.
    pub at: Duration,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string, if any.
    pub raw_query: Option<String>,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Request headers (names lower case), in order.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Status answered.
    pub status: u16,
    /// Response headers (names lower case).
    pub response_headers: Vec<(String, String)>,
    /// Response body.
    pub response: Vec<u8>,
}

impl RecordedRequest {
    /// First request header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// First response header named `name` (case-insensitive).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response_headers, name)
    }

    /// First query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The response body as JSON, if it is JSON.
    pub fn response_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.response).ok()
    }

    /// One line describing the exchange, long strings shortened.
    pub fn summary(&self) -> String {
        let body = match self.json() {
            Some(v) => truncate_json(&v, 80).to_string(),
            None => truncate(&String::from_utf8_lossy(&self.body), 200),
        };
        let resp = match self.response_json() {
            Some(v) => truncate_json(&v, 80).to_string(),
            None => truncate(&String::from_utf8_lossy(&self.response), 200),
        };
        let version = self.header("x-openstack-ironic-api-version").unwrap_or("-");
        format!(
            "#{} +{:.3}s {} {}{} [api {}] body={} -> {} {}",
            self.seq,
            self.at.as_secs_f64(),
            self.method,
            self.path,
            self.raw_query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default(),
            version,
            truncate(&body, 400),
            self.status,
            truncate(&resp, 400)
        )
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A valid heartbeat, as accepted by the API.
#[derive(Clone, Debug)]
pub struct HeartbeatEvent {
    /// Arrival time since the fake started.
    pub at: Duration,
    /// `callback_url` from the body.
    pub callback_url: String,
    /// `agent_version` from the body.
    pub agent_version: Option<String>,
    /// `agent_token` from the body.
    pub agent_token: String,
    /// Whether it was dropped because the conductor was busy.
    pub dropped: bool,
}

/// A scripted answer for fault injection: a delay, and optionally a raw answer replacing the
/// normal one (garbage JSON, a lookup without `config`, a 500 from an endpoint that has no
/// status script).
#[derive(Clone, Debug, Default)]
pub struct ScriptedReply {
    /// Wait this long before answering (the agent's HTTP timeout may fire first).
    pub delay: Duration,
    /// Answer this status and raw body instead of the normal answer; `None`: answer normally
    /// after the delay.
    pub replace: Option<(u16, Vec<u8>)>,
}

struct Scripted {
    method: String,
    path: String,
    reply: ScriptedReply,
}

impl Scripted {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method == method
            && (path == self.path
                || (self.path.len() > 1
                    && self.path.ends_with('/')
                    && path.starts_with(&self.path)))
    }
}

struct Inner {
    cfg: FakeIronicConfig,
    base_url: String,
    node: NodeState,
    requests: Vec<RecordedRequest>,
    lookup_script: VecDeque<u16>,
    heartbeat_script: VecDeque<u16>,
    reply_script: VecDeque<Scripted>,
    busy: bool,
    subscriber: Option<mpsc::Sender<HeartbeatEvent>>,
    heartbeats: Vec<HeartbeatEvent>,
    first_lookup: Option<Duration>,
    first_heartbeat: Option<Duration>,
}

struct Shared {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the recorded requests from the next reader.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cheap, cloneable handle on the fake's node and heartbeat state, for the conductor thread.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl NodeHandle {
    /// Runs `f` on the node under the lock.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        f(&mut self.shared.lock().node)
    }

    /// A snapshot of the node.
    pub fn node(&self) -> NodeState {
        self.shared.lock().node.clone()
    }

    /// Marks the conductor busy (heartbeats are then dropped) or idle.
    pub fn set_busy(&self, busy: bool) {
        self.shared.lock().busy = busy;
    }

    /// Time since the fake started.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Arrival time of the first lookup request.
    pub fn first_lookup(&self) -> Option<Duration> {
        self.shared.lock().first_lookup
    }

    /// Arrival time of the first valid heartbeat.
    pub fn first_heartbeat(&self) -> Option<Duration> {
        self.shared.lock().first_heartbeat
    }

    /// Wipes the agent token and URL (see [`FakeIronic::wipe_token`]).
    pub fn wipe_token(&self) {
        let mut g = self.shared.lock();
        g.node.token = None;
        g.node.token_shown = false;
        g.node.agent_url = None;
    }
}

/// The running fake Ironic API. Stops when dropped.
pub struct FakeIronic {
    shared: Arc<Shared>,
    server: ServerThread,
}

/// Biggest request body accepted (Ironic's own limit is far larger; nothing legit is close).
const MAX_BODY: usize = 4 << 20;

impl FakeIronic {
    /// Starts the fake on `cfg.listen`.
    pub fn start(cfg: FakeIronicConfig) -> io::Result<FakeIronic> {
        let node = NodeState {
            uuid: cfg.node_uuid.clone(),
            name: cfg.node_name.clone(),
            port_uuid: cfg.port_uuid.clone(),
            macs: cfg.macs.iter().map(|m| m.to_ascii_lowercase()).collect(),
            provision_state: cfg.provision_state.clone(),
            target_provision_state: None,
            last_error: None,
            properties: cfg.properties.clone(),
            instance_info: json!({}),
            driver_internal_info: json!({}),
            token: None,
            token_shown: false,
            agent_url: None,
            agent_version: None,
            agent_verify_ca: None,
            last_heartbeat: None,
        };
        let shared = Arc::new(Shared {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                cfg: cfg.clone(),
                base_url: String::new(),
                node,
                requests: Vec::new(),
                lookup_script: VecDeque::new(),
                heartbeat_script: VecDeque::new(),
                reply_script: VecDeque::new(),
                busy: false,
                subscriber: None,
                heartbeats: Vec::new(),
                first_lookup: None,
                first_heartbeat: None,
            }),
        });
        let for_server = shared.clone();
        let server = ServerThread::spawn("fake-ironic", cfg.listen, move |listener, _stop| {
            accept_loop(listener, for_server)
        })?;
        shared.lock().base_url = format!("http://{}", server.addr());
        Ok(FakeIronic { shared, server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`, the value for `ipa-api-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// When the fake started; recorded times are relative to this.
    pub fn started_at(&self) -> Instant {
        self.shared.start
    }

    /// Time since the fake started.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn requests_to(&self, method: &str, prefix: &str) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// All `GET /v1/lookup` requests.
    pub fn lookups(&self) -> Vec<RecordedRequest> {
        self.requests_to("GET", "/v1/lookup")
    }

    /// All `POST /v1/heartbeat/…` requests (valid or not).
    pub fn heartbeat_requests(&self) -> Vec<RecordedRequest> {
        self.requests_to("POST", "/v1/heartbeat/")
    }

    /// Every recorded request, one line each, long strings shortened: for failure messages.
    pub fn dump_requests(&self) -> String {
        let reqs = self.requests();
        if reqs.is_empty() {
            return "(fake Ironic received no request)".to_string();
        }
        reqs.iter()
            .map(|r| r.summary())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Makes the next `times` lookups answer `status` with Ironic's error body (409 →
    /// `NodeLocked`, 500/503 → server errors) before normal processing resumes.
    pub fn script_lookup(&self, status: u16, times: usize) {
        let mut g = self.shared.lock();
        g.lookup_script.extend(std::iter::repeat_n(status, times));
    }

    /// Makes the next `times` heartbeats answer `status` with Ironic's error body.
    pub fn script_heartbeat(&self, status: u16, times: usize) {
        let mut g = self.shared.lock();
        g.heartbeat_script
            .extend(std::iter::repeat_n(status, times));
    }

    /// Wipes the agent token and URL, as the conductor does when it powers the node off or
    /// reboots it (`wipe_token_and_url`): the next lookup issues a new token in clear and
    /// heartbeats with the old one get 400.
    pub fn wipe_token(&self) {
        self.handle().wipe_token();
    }

    /// Makes the next `times` requests with `method` and a path matching `path` get `reply` (a
    /// delay and/or a raw answer) instead of the normal processing. `path` matches itself
    /// exactly (`/`, `/v1/lookup`), or every path under it when it ends with `/` and is not
    /// `/` (`/v1/heartbeat/`). Scripted replies are used in the order they were added, before
    /// [`FakeIronic::script_lookup`] and [`FakeIronic::script_heartbeat`].
    pub fn script_reply(&self, method: &str, path: &str, reply: ScriptedReply, times: usize) {
        let mut g = self.shared.lock();
        for _ in 0..times {
            g.reply_script.push_back(Scripted {
                method: method.to_string(),
                path: path.to_string(),
                reply: reply.clone(),
            });
        }
    }

    /// A handle on the node state for another thread (the conductor).
    pub fn handle(&self) -> NodeHandle {
        NodeHandle {
            shared: self.shared.clone(),
        }
    }

    /// The current agent token, if one was generated.
    pub fn token(&self) -> Option<String> {
        self.shared.lock().node.token.clone()
    }

    /// A snapshot of the node.
    pub fn node(&self) -> NodeState {
        self.shared.lock().node.clone()
    }

    /// Runs `f` on the node under the lock (the conductor's way of changing state).
    pub fn with_node<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        f(&mut self.shared.lock().node)
    }

    /// Changes the lookup `config.heartbeat_timeout`.
    pub fn set_heartbeat_timeout(&self, secs: u64) {
        self.shared.lock().cfg.heartbeat_timeout = secs;
    }

    /// Every valid heartbeat so far (dropped ones included, flagged).
    pub fn heartbeats(&self) -> Vec<HeartbeatEvent> {
        self.shared.lock().heartbeats.clone()
    }

    /// How many valid heartbeats were dropped because the conductor was busy.
    pub fn dropped_heartbeats(&self) -> usize {
        self.shared
            .lock()
            .heartbeats
            .iter()
            .filter(|h| h.dropped)
            .count()
    }

    /// Routes valid heartbeats to the returned receiver (replacing any previous subscriber).
    pub fn subscribe(&self) -> mpsc::Receiver<HeartbeatEvent> {
        let (tx, rx) = mpsc::channel();
        self.shared.lock().subscriber = Some(tx);
        rx
    }

    /// Marks the conductor busy (heartbeats are then dropped) or idle.
    pub fn set_busy(&self, busy: bool) {
        self.shared.lock().busy = busy;
    }

    /// Arrival time of the first lookup request.
    pub fn first_lookup(&self) -> Option<Duration> {
        self.shared.lock().first_lookup
    }

    /// Arrival time of the first valid heartbeat.
    pub fn first_heartbeat(&self) -> Option<Duration> {
        self.shared.lock().first_heartbeat
    }

    /// Waits until a recorded request satisfies `pred`; returns it.
    pub fn wait_for_request(
        &self,
        timeout: Duration,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> Option<RecordedRequest> {
        crate::util::poll_until(timeout, Duration::from_millis(50), || {
            self.shared
                .lock()
                .requests
                .iter()
                .find(|r| pred(r))
                .cloned()
        })
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// What a route answers.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let at = shared.start.elapsed();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().map(str::to_string);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) => Err(e.to_string()),
    };
    let query = parse_query(raw_query.as_deref());
    let scripted = {
        let mut g = shared.lock();
        let pos = g
            .reply_script
            .iter()
            .position(|s| s.matches(&method, &path));
        pos.and_then(|i| g.reply_script.remove(i))
    };
    if let Some(s) = &scripted {
        if !s.reply.delay.is_zero() {
            tokio::time::sleep(s.reply.delay).await;
        }
    }
    let mut g = shared.lock();
    let (reply, body) = match body {
        Ok(body) => {
            let r = match scripted.and_then(|s| s.reply.replace) {
                Some((status, raw)) => {
                    let mut headers = version_headers(None);
                    headers.push(("Content-Type".into(), "application/json".into()));
                    Reply {
                        status,
                        headers,
                        body: raw,
                    }
                }
                None => route(&mut g, at, &method, &path, &query, &headers, &body),
            };
            (r, body)
        }
        Err(e) => (
            error_reply(413, &format!("Request body could not be read: {e}"), None),
            Vec::new(),
        ),
    };
    let seq = g.requests.len() + 1;
    g.requests.push(RecordedRequest {
        seq,
        at,
        method,
        path,
        raw_query,
        query,
        headers,
        body,
        status: reply.status,
        response_headers: reply
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        response: reply.body.clone(),
    });
    drop(g);
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn version_string(v: (u32, u32)) -> String {
    format!("{}.{}", v.0, v.1)
}

/// Parses `X-OpenStack-Ironic-API-Version` like Ironic: absent → minimum, `latest` → maximum,
/// out of range → 406, garbage → 400.
fn negotiate(headers: &[(String, String)]) -> Result<(u32, u32), Reply> {
    let Some(raw) = find_header(headers, "x-openstack-ironic-api-version") else {
        return Ok(API_MIN_VERSION);
    };
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(API_MAX_VERSION);
    }
    let parsed = raw
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let Some(v) = parsed else {
        return Err(error_reply(
            400,
            &format!("Invalid value for X-OpenStack-Ironic-API-Version header: {raw}"),
            None,
        ));
    };
    if v.0 != 1 || v < API_MIN_VERSION || v > API_MAX_VERSION {
        return Err(error_reply(
            406,
            &format!(
                "Version {} was requested but the minor version is not supported by this \
                 service. The supported version range is: [{}, {}].",
                raw,
                version_string(API_MIN_VERSION),
                version_string(API_MAX_VERSION)
            ),
            None,
        ));
    }
    Ok(v)
}

/// The body Ironic (WSME) sends on errors: the fault JSON as a *string* in `error_message`,
/// with Python's `json.dumps` separators.
pub fn ironic_error_body(status: u16, faultstring: &str) -> String {
    let faultcode = if status >= 500 { "Server" } else { "Client" };
    let inner = format!(
        "{{\"faultcode\": {}, \"faultstring\": {}, \"debuginfo\": null}}",
        Value::String(faultcode.into()),
        Value::String(faultstring.into())
    );
    json!({ "error_message": inner }).to_string()
}

fn version_headers(v: Option<(u32, u32)>) -> Vec<(String, String)> {
    let mut h = vec![
        (
            "X-OpenStack-Ironic-API-Minimum-Version".to_string(),
            version_string(API_MIN_VERSION),
        ),
        (
            "X-OpenStack-Ironic-API-Maximum-Version".to_string(),
            version_string(API_MAX_VERSION),
        ),
    ];
    if let Some(v) = v {
        h.push((
            "X-OpenStack-Ironic-API-Version".to_string(),
            version_string(v),
        ));
    }
    h.push((
        "x-openstack-request-id".to_string(),
        format!("req-{}", uuid::Uuid::new_v4()),
    ));
    h
}

fn error_reply(status: u16, msg: &str, v: Option<(u32, u32)>) -> Reply {
    let mut headers = version_headers(v);
    headers.push(("Content-Type".into(), "application/json".into()));
    Reply {
        status,
        headers,
        body: ironic_error_body(status, msg).into_bytes(),
    }
}

fn json_reply(status: u16, body: &Value, v: (u32, u32)) -> Reply {
    let mut headers = version_headers(Some(v));
    headers.push(("Content-Type".into(), "application/json".into()));
    Reply {
        status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn route(
    g: &mut Inner,
    at: Duration,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    body: &[u8],
) -> Reply {
    let v = match negotiate(headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match (method, path) {
        ("GET", "/") => json_reply(200, &root_document(&g.base_url), v),
        ("GET", "/v1") | ("GET", "/v1/") => json_reply(200, &v1_document(&g.base_url), v),
        ("GET", "/v1/lookup") | ("GET", "/v1/lookup/") => lookup(g, at, query, v),
        ("POST", p) if p.starts_with("/v1/heartbeat/") => {
            let ident = p.trim_start_matches("/v1/heartbeat/").trim_end_matches('/');
            heartbeat(g, at, ident, body, v)
        }
        (_, "/v1/lookup") => error_reply(405, "The method specified is not allowed.", Some(v)),
        _ => error_reply(404, "Resource could not be found.", Some(v)),
    }
}

fn version_entry(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "status": "CURRENT",
        "min_version": version_string(API_MIN_VERSION),
        "version": version_string(API_MAX_VERSION),
    })
}

fn root_document(base: &str) -> Value {
    json!({
        "name": "OpenStack Ironic API",
        "description": "Ironic is an OpenStack project which enables the provision and \
                        management of baremetal machines.",
        "default_version": version_entry(base),
        "versions": [version_entry(base)],
    })
}

fn v1_document(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "media_types": [{"base": "application/json",
                         "type": "application/vnd.openstack.ironic.v1+json"}],
        "lookup": [{"href": format!("{base}/v1/lookup/"), "rel": "self"}],
        "heartbeat": [{"href": format!("{base}/v1/heartbeat/"), "rel": "self"}],
    })
}

/// Normalizes a MAC like Ironic's `validate_and_normalize_mac` (six hex pairs, `:` or `-`).
fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

fn scripted_failure(status: u16, node_uuid: &str, v: (u32, u32)) -> Reply {
    let msg = match status {
        409 => format!(
            "Node {node_uuid} is locked by host harness-conductor, please retry after the \
             current operation is completed."
        ),
        503 => "Resource temporarily unavailable, please retry.".to_string(),
        s if s >= 500 => "Internal Server Error".to_string(),
        _ => "Scripted failure from the fake Ironic.".to_string(),
    };
    error_reply(status, &msg, Some(v))
}

/// Masks what Ironic masks in `instance_info` on the API (`configdrive`, `image_url`).
fn masked_instance_info(ii: &Value) -> Value {
    let mut ii = ii.clone();
    if let Some(o) = ii.as_object_mut() {
        for k in ["configdrive", "image_url"] {
            if o.contains_key(k) {
                o.insert(k.to_string(), json!("******"));
            }
        }
    }
    ii
}

fn lookup(g: &mut Inner, at: Duration, query: &[(String, String)], v: (u32, u32)) -> Reply {
    if g.first_lookup.is_none() {
        g.first_lookup = Some(at);
    }
    if v < RAMDISK_MIN_VERSION {
        return error_reply(404, "Resource could not be found.", Some(v));
    }
    if let Some(status) = g.lookup_script.pop_front() {
        return scripted_failure(status, &g.node.uuid.clone(), v);
    }
    let addresses: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "addresses")
        .flat_map(|(_, val)| val.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|a| normalize_mac(&a))
        .collect();
    let node_uuid = query
        .iter()
        .find(|(k, _)| k == "node_uuid")
        .map(|(_, v)| v.clone());
    if addresses.is_empty() && node_uuid.is_none() {
        return error_reply(
            400,
            "At least one of 'addresses' and 'node_uuid' parameters is required",
            Some(v),
        );
    }
    let matched = match &node_uuid {
        Some(u) => *u == g.node.uuid,
        None => addresses.iter().any(|a| g.node.macs.contains(a)),
    };
    if !matched {
        return error_reply(404, "Resource could not be found.", Some(v));
    }
    if g.cfg.restrict_lookup && !LOOKUP_ALLOWED_STATES.contains(&g.node.provision_state.as_str()) {
        return error_reply(404, "Resource could not be found.", Some(v));
    }
    // Ironic's get_node_with_token: generate when absent and show it once; mask afterwards.
    let token_out = match &g.node.token {
        None => {
            let t = new_token();
            g.node.token = Some(t.clone());
            g.node.token_shown = true;
            t
        }
        Some(t) if !g.node.token_shown => {
            g.node.token_shown = true;
            t.clone()
        }
        Some(_) => "******".to_string(),
    };
    let mut dii = g.node.driver_internal_info.clone();
    if !dii.is_object() {
        dii = json!({});
    }
    dii["agent_secret_token"] = json!("******");
    let base = g.base_url.clone();
    let uuid = g.node.uuid.clone();
    let body = json!({
        "node": {
            "uuid": uuid,
            "properties": g.node.properties,
            "instance_info": masked_instance_info(&g.node.instance_info),
            "driver_internal_info": dii,
            "links": [
                {"href": format!("{base}/v1/nodes/{uuid}"), "rel": "self"},
                {"href": format!("{base}/nodes/{uuid}"), "rel": "bookmark"},
            ],
        },
        "config": lookup_config(&g.cfg, &token_out),
    });
    json_reply(200, &body, v)
}

/// `config` as in the recordings (Ironic 39's `ramdisk.config()`).
fn lookup_config(cfg: &FakeIronicConfig, token: &str) -> Value {
    json!({
        "metrics": {"backend": "noop", "prepend_host": false, "prepend_uuid": false,
                    "prepend_host_reverse": true, "global_prefix": null},
        "metrics_statsd": {"statsd_host": "localhost", "statsd_port": 8125},
        "heartbeat_timeout": cfg.heartbeat_timeout,
        "agent_containers": {"allow_arbitrary_containers": false, "allowed_containers": [],
                             "container_steps_file": "/etc/ironic-python-agent.d/mysteps.yaml",
                             "runner": "podman", "pull_options": [],
                             "run_options": ["--rm", "--network=host"]},
        "agent_token": token,
        "agent_token_required": true,
        "agent_md5_checksum_enable": cfg.agent_md5_checksum_enable,
        "disable_deep_image_inspection": cfg.disable_deep_image_inspection,
        "permitted_image_formats": cfg.permitted_image_formats,
        "agent_skip_bmc_detect": false,
        "enable_bios_bootloader_install": false,
        "tls_min_version": "1.3",
        "tls_cipher_suites": null,
    })
}

/// 43 URL-safe characters, like Python's `secrets.token_urlsafe(32)`.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn heartbeat(g: &mut Inner, at: Duration, ident: &str, body: &[u8], v: (u32, u32)) -> Reply {
    if v < RAMDISK_MIN_VERSION {
        return error_reply(404, "Resource could not be found.", Some(v));
    }
    if ident != g.node.uuid && ident != g.node.name {
        return error_reply(404, &format!("Node {ident} could not be found."), Some(v));
    }
    if let Some(status) = g.heartbeat_script.pop_front() {
        return scripted_failure(status, &g.node.uuid.clone(), v);
    }
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
        return error_reply(400, "Invalid JSON body: expected an object.", Some(v));
    };
    let string_field = |name: &str| -> Result<Option<String>, Reply> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(error_reply(
                400,
                &format!("Expected a string for {name}: {other}"),
                Some(v),
            )),
        }
    };
    let callback_url = match string_field("callback_url") {
        Ok(Some(u)) => u,
        Ok(None) => return error_reply(400, "Missing mandatory parameter: callback_url", Some(v)),
        Err(r) => return r,
    };
    let agent_version = match string_field("agent_version") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let agent_token = match string_field("agent_token") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let agent_verify_ca = match string_field("agent_verify_ca") {
        Ok(x) => x,
        Err(r) => return r,
    };
    if agent_version.is_some() && v < (1, 36) {
        return error_reply(400, "Field \"agent_version\" not recognised", Some(v));
    }
    if agent_verify_ca.is_some() && v < (1, 68) {
        return error_reply(
            400,
            "Field \"agent_verify_ca\" not recognised in this version",
            Some(v),
        );
    }
    let scheme_ok = callback_url
        .split_once("://")
        .map(|(s, rest)| s.contains("http") && !rest.is_empty())
        .unwrap_or(false);
    if !scheme_ok {
        return error_reply(
            400,
            "An issue with the supplied \"callback_url\" has been detected.",
            Some(v),
        );
    }
    if let Some(known) = &g.node.agent_url {
        if *known != callback_url {
            return error_reply(
                400,
                "Detected change in ramdisk provided \"callback_url\"",
                Some(v),
            );
        }
    }
    let Some(agent_token) = agent_token else {
        return error_reply(
            400,
            "Agent token is required for heartbeat processing.",
            Some(v),
        );
    };
    if g.node.token.as_deref() != Some(agent_token.as_str()) {
        return error_reply(400, "Invalid or missing agent token received.", Some(v));
    }
    g.node.agent_url = Some(callback_url.clone());
    g.node.agent_version = agent_version.clone();
    g.node.agent_verify_ca = agent_verify_ca;
    g.node.last_heartbeat = Some(at);
    if g.first_heartbeat.is_none() {
        g.first_heartbeat = Some(at);
    }
    let mut ev = HeartbeatEvent {
        at,
        callback_url,
        agent_version,
        agent_token,
        dropped: g.busy,
    };
    if !g.busy {
        let delivered = g
            .subscriber
            .as_ref()
            .map(|tx| tx.send(ev.clone()).is_ok())
            .unwrap_or(false);
        if !delivered && g.subscriber.is_some() {
            g.subscriber = None;
        }
        ev.dropped = false;
    }
    g.heartbeats.push(ev);
    Reply {
        status: 202,
        headers: version_headers(Some(v)),
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_matches_ironic_wire_format() {
        assert_eq!(
            ironic_error_body(400, "Invalid or missing agent token received."),
            r#"{"error_message":"{\"faultcode\": \"Client\", \"faultstring\": \"Invalid or missing agent token received.\", \"debuginfo\": null}"}"#
        );
        let v: Value = serde_json::from_str(&ironic_error_body(500, "x")).unwrap();
        let inner: Value = serde_json::from_str(v["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["faultcode"], "Server");
    }

    #[test]
    fn scripted_paths_match_exactly_or_below_a_trailing_slash() {
        let s = |path: &str| Scripted {
            method: "GET".into(),
            path: path.into(),
            reply: ScriptedReply::default(),
        };
        assert!(s("/").matches("GET", "/"));
        assert!(!s("/").matches("GET", "/v1/lookup"));
        assert!(s("/v1/lookup").matches("GET", "/v1/lookup"));
        assert!(!s("/v1/lookup").matches("POST", "/v1/lookup"));
        assert!(!s("/v1/lookup").matches("GET", "/v1/lookup/x"));
        assert!(s("/v1/heartbeat/").matches("GET", "/v1/heartbeat/abc"));
    }

    #[test]
    fn macs_are_normalized_like_ironic() {
        assert_eq!(
            normalize_mac("52-54-00-12-34-5A").as_deref(),
            Some("52:54:00:12:34:5a")
        );
        assert_eq!(normalize_mac("52:54:00:12:34"), None);
        assert_eq!(normalize_mac("zz:54:00:12:34:56"), None);
    }

    #[test]
    fn tokens_look_like_token_urlsafe_32() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(t, new_token());
    }
}
