//! The conductor half of the fake Ironic: reacts to heartbeats the way Ironic's
//! `agent_base.HeartbeatMixin` / `agent.AgentDeploy` do, and drives the agent's REST API with
//! the same requests, in the same order, as recordings 01 (deploy), 04 (deploy failure) and
//! 03 (cleaning) show.
//!
//! # Design
//! One thread (`fake-conductor`) owns a blocking HTTP client and a state machine ([`Plan`]).
//! It receives valid heartbeats from [`FakeIronic::subscribe`]; while it handles one it marks
//! the node busy, so the API drops heartbeats arriving meanwhile, as Ironic drops heartbeats
//! for a locked node. Nothing is retried inside a heartbeat except the 6-second polling of
//! `image.install_bootloader`, which Ironic also does while holding the lock. A `409 Agent is
//! busy` answer ends the heartbeat; the same step is tried again on the next one
//! (`agent_client.AgentInProgress`).
//!
//! Deploy: `deploy.get_deploy_steps` (wait) → `GET /v1/commands/` →
//! `deploy.execute_deploy_step` write_image (async) … later heartbeats poll
//! `GET /v1/commands/` until the last `execute_deploy_step` is done. SUCCEEDED counts only
//! when `command_result.deploy_step` equals the step sent (otherwise Ironic waits forever, and
//! so does this fake: [`ConductorStatus::notes`] says why). Then `standby.get_partition_uuids`
//! (wait) → `image.install_bootloader` (async, polled every 6 s; UEFI only) →
//! `standby.power_off` (async) → `active`. FAILED → `log.collect_system_logs` (wait) →
//! `deploy failed` with `last_error`.
//!
//! Cleaning: `clean.get_clean_steps` (wait) → `clean.execute_clean_step` for each step with
//! priority > 0, highest first, each with `clean_version` → `available`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::fake_ironic::{FakeIronic, HeartbeatEvent, NodeHandle, NodeState};
use crate::util::truncate_json;

/// What to deploy, as Ironic's `instance_info` would describe it.
#[derive(Clone, Debug)]
pub struct DeployPlan {
    /// URL the agent downloads the image from.
    pub image_url: String,
    /// `image_info.id` (Ironic: the last path segment of `image_source`).
    pub image_id: String,
    /// `image_info.disk_format` (`raw`, `qcow2`, or `None`).
    pub disk_format: Option<String>,
    /// `image_info.os_hash_algo`.
    pub os_hash_algo: Option<String>,
    /// `image_info.os_hash_value`.
    pub os_hash_value: Option<String>,
    /// `image_info.checksum` (legacy md5 hex, or a URL of a checksums file).
    pub checksum: Option<String>,
    /// `args.configdrive` and `image_info.configdrive`: base64 gzip ISO or a URL.
    pub configdrive: Option<String>,
    /// `uefi` (install_bootloader is sent) or `bios` (it is not, as in Ironic by default).
    pub boot_mode: String,
    /// Extra keys merged into `image_info` (e.g. `image_type`, `proxies`).
    pub extra_image_info: Map<String, Value>,
}

impl DeployPlan {
    /// A whole-disk raw image verified by sha256, as in recording 01.
    pub fn whole_disk_raw(image_url: &str, sha256_hex: &str, configdrive: Option<String>) -> Self {
        let image_id = image_url
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("image")
            .to_string();
        DeployPlan {
            image_url: image_url.to_string(),
            image_id,
            disk_format: Some("raw".to_string()),
            os_hash_algo: Some("sha256".to_string()),
            os_hash_value: Some(sha256_hex.to_string()),
            checksum: None,
            configdrive,
            boot_mode: "uefi".to_string(),
            extra_image_info: Map::new(),
        }
    }

    /// `image_info` exactly as Ironic's `AgentDeploy.write_image` sends it.
    pub fn image_info(&self, node_uuid: &str) -> Value {
        let mut ii = Map::new();
        ii.insert("id".into(), json!(self.image_id));
        ii.insert("urls".into(), json!([self.image_url]));
        ii.insert("disk_format".into(), json!(self.disk_format));
        ii.insert("container_format".into(), Value::Null);
        ii.insert("stream_raw_images".into(), json!(true));
        if let Some(a) = &self.os_hash_algo {
            ii.insert("os_hash_algo".into(), json!(a));
        }
        if let Some(v) = &self.os_hash_value {
            ii.insert("os_hash_value".into(), json!(v));
        }
        if let Some(c) = &self.checksum {
            ii.insert("checksum".into(), json!(c));
        }
        ii.insert("node_uuid".into(), json!(node_uuid));
        ii.insert("configdrive".into(), json!(self.configdrive));
        for (k, v) in &self.extra_image_info {
            ii.insert(k.clone(), v.clone());
        }
        Value::Object(ii)
    }

    /// The write_image step sent in `deploy.execute_deploy_step`.
    pub fn write_image_step(&self, node_uuid: &str) -> Value {
        json!({
            "interface": "deploy",
            "step": "write_image",
            "args": {
                "image_info": self.image_info(node_uuid),
                "configdrive": self.configdrive,
            },
        })
    }
}

/// A cleaning run.
#[derive(Clone, Debug, Default)]
pub struct CleanPlan {
    /// Run exactly these steps (manual cleaning), in this order; `None` = automated cleaning
    /// (every step the agent reports with priority > 0, highest priority first).
    pub steps: Option<Vec<String>>,
    /// Merged into `driver_internal_info` (erase settings such as
    /// `agent_erase_devices_iterations`); recording 03's values are used when empty.
    pub driver_internal_info: Map<String, Value>,
}

/// What the conductor drives.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Deploy an image (`wait call-back` → `active`).
    Deploy(DeployPlan),
    /// Clean the node (`clean wait` → `available`).
    Clean(CleanPlan),
}

/// Knobs that are Ironic configuration options.
#[derive(Clone, Debug)]
pub struct ConductorOptions {
    /// `[agent]command_wait_interval`: polling period for install_bootloader (6 s).
    pub poll_interval: Duration,
    /// `[agent]command_wait_attempts` (Ironic: 100; smaller here to bound tests).
    pub poll_attempts: u32,
    /// HTTP timeout for calls to the agent (`[agent]command_timeout`, 60 s).
    pub command_timeout: Duration,
}

impl Default for ConductorOptions {
    fn default() -> Self {
        ConductorOptions {
            poll_interval: Duration::from_secs(6),
            poll_attempts: 20,
            command_timeout: Duration::from_secs(60),
        }
    }
}

/// One request from the conductor to the agent.
#[derive(Clone, Debug)]
pub struct SentCommand {
    /// When it was sent (since the fake Ironic started).
    pub at: Duration,
    /// `POST` (a command) or `GET` (`/v1/commands/`).
    pub method: String,
    /// Full command name (`deploy.get_deploy_steps`), or `list` for `GET /v1/commands/`.
    pub name: String,
    /// `wait` query value for POSTs.
    pub wait: bool,
    /// `params` sent (POST only).
    pub params: Value,
    /// HTTP status, if an answer came.
    pub http_status: Option<u16>,
    /// Answer body as JSON (or a JSON string holding the raw text).
    pub response: Option<Value>,
    /// Transport error, if no answer came.
    pub error: Option<String>,
}

/// When things happened, relative to the fake Ironic's start.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// First lookup request.
    pub first_lookup: Option<Duration>,
    /// First valid heartbeat.
    pub first_heartbeat: Option<Duration>,
    /// First command sent to the agent.
    pub started: Option<Duration>,
    /// write_image / first clean step sent.
    pub main_step_sent: Option<Duration>,
    /// write_image / last clean step seen finished.
    pub main_step_done: Option<Duration>,
    /// Terminal state reached (`active`, `deploy failed`, `available`, `clean failed`).
    pub done: Option<Duration>,
}

/// A snapshot of what the conductor did and where the node is.
#[derive(Clone, Debug)]
pub struct ConductorStatus {
    /// Node provision state.
    pub provision_state: String,
    /// Node target provision state.
    pub target_provision_state: Option<String>,
    /// Node `last_error`.
    pub last_error: Option<String>,
    /// `command_error` of the command that failed, as the agent returned it.
    pub failed_command_error: Option<Value>,
    /// `system_logs` returned by `log.collect_system_logs` after a failure.
    pub system_logs: Option<String>,
    /// Where the state machine is.
    pub phase: String,
    /// Every request to the agent, in order.
    pub commands: Vec<SentCommand>,
    /// Things an engineer reading a failure should know (busy answers, step-echo mismatch).
    pub notes: Vec<String>,
    /// Timings.
    pub timings: Timings,
    /// Heartbeats handled (not dropped).
    pub heartbeats_handled: usize,
}

impl ConductorStatus {
    /// POSTed commands with this full name.
    pub fn sent(&self, name: &str) -> Vec<&SentCommand> {
        self.commands
            .iter()
            .filter(|c| c.method == "POST" && c.name == name)
            .collect()
    }

    /// Names of the POSTed commands, in order.
    pub fn command_names(&self) -> Vec<String> {
        self.commands
            .iter()
            .filter(|c| c.method == "POST")
            .map(|c| c.name.clone())
            .collect()
    }

    /// Multi-line description for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "conductor: provision_state={:?} target={:?} phase={:?} heartbeats_handled={}\n  \
             last_error={:?}\n  timings={:?}\n",
            self.provision_state,
            self.target_provision_state,
            self.phase,
            self.heartbeats_handled,
            self.last_error,
            self.timings
        );
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        for c in &self.commands {
            let resp = c
                .response
                .as_ref()
                .map(|r| truncate_json(r, 100).to_string())
                .unwrap_or_default();
            s.push_str(&format!(
                "  +{:.3}s {} {} wait={} -> {:?} {} {}\n",
                c.at.as_secs_f64(),
                c.method,
                c.name,
                c.wait,
                c.http_status,
                crate::util::truncate(&resp, 600),
                c.error.as_deref().unwrap_or("")
            ));
        }
        s
    }
}

/// Provision states after which the conductor does nothing more.
pub const TERMINAL_STATES: &[&str] = &["active", "deploy failed", "available", "clean failed"];

struct CondShared {
    status: Mutex<ConductorStatus>,
    stop: AtomicBool,
}

/// The running fake conductor. Stops (after the current request) when dropped.
pub struct Conductor {
    shared: Arc<CondShared>,
    node: NodeHandle,
    thread: Option<JoinHandle<()>>,
}

impl Conductor {
    /// Puts the node in the plan's waiting state (`wait call-back` / `clean wait`), fills
    /// `instance_info`, subscribes to heartbeats and starts the conductor thread.
    pub fn start(ironic: &FakeIronic, plan: Plan) -> Conductor {
        Self::start_with(ironic, plan, ConductorOptions::default())
    }

    /// [`Conductor::start`] with explicit options.
    pub fn start_with(ironic: &FakeIronic, plan: Plan, opts: ConductorOptions) -> Conductor {
        let node = ironic.handle();
        node.with_node(|n| match &plan {
            Plan::Deploy(p) => {
                n.provision_state = "wait call-back".into();
                n.target_provision_state = Some("active".into());
                n.instance_info = deploy_instance_info(p);
                n.driver_internal_info = json!({
                    "is_whole_disk_image": true,
                    "deploy_steps": conductor_deploy_steps(),
                    "last_power_state_change": "2026-11-22T03:05:12.815977",
                    "deploy_step_index": 0,
                });
            }
            Plan::Clean(c) => {
                n.provision_state = "clean wait".into();
                n.target_provision_state = Some("available".into());
                n.instance_info = json!({});
                let mut dii = json!({
                    "clean_steps": null,
                    "agent_erase_devices_iterations": 1,
                    "agent_erase_devices_zeroize": true,
                    "agent_continue_if_secure_erase_failed": false,
                    "agent_continue_if_ata_erase_failed": false,
                    "agent_enable_nvme_secure_erase": true,
                    "agent_enable_ata_secure_erase": true,
                    "disk_erasure_concurrency": 4,
                    "agent_erase_skip_read_only": false,
                    "last_power_state_change": "2026-11-22T03:05:40.530174",
                });
                for (k, v) in &c.driver_internal_info {
                    dii[k] = v.clone();
                }
                n.driver_internal_info = dii;
            }
        });
        let snapshot = node.node();
        let shared = Arc::new(CondShared {
            status: Mutex::new(ConductorStatus {
                provision_state: snapshot.provision_state.clone(),
                target_provision_state: snapshot.target_provision_state.clone(),
                last_error: None,
                failed_command_error: None,
                system_logs: None,
                phase: "waiting for the first heartbeat".into(),
                commands: Vec::new(),
                notes: Vec::new(),
                timings: Timings::default(),
                heartbeats_handled: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let rx = ironic.subscribe();
        let ctx = Ctx {
            node: node.clone(),
            shared: shared.clone(),
            client: Mutex::new((
                None,
                agent_client(opts.command_timeout, None).expect("reqwest blocking client"),
            )),
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("fake-conductor".into())
            .spawn(move || run(ctx, rx, plan))
            .expect("spawn conductor thread");
        Conductor {
            shared,
            node,
            thread: Some(thread),
        }
    }

    /// A snapshot of the conductor's view (node state refreshed from the fake Ironic).
    pub fn status(&self) -> ConductorStatus {
        let mut s = lock(&self.shared.status).clone();
        let n = self.node.node();
        s.provision_state = n.provision_state;
        s.target_provision_state = n.target_provision_state;
        s.last_error = n.last_error;
        s.timings.first_lookup = self.node.first_lookup();
        s.timings.first_heartbeat = self.node.first_heartbeat();
        s
    }

    /// Waits until the node is in one of `states`; `Err` carries the last status on timeout.
    pub fn wait_for_state(
        &self,
        states: &[&str],
        timeout: Duration,
    ) -> Result<ConductorStatus, Box<ConductorStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.node.node().provision_state;
            if states.contains(&st.as_str()) {
                // Let the thread finish bookkeeping for this transition.
                std::thread::sleep(Duration::from_millis(50));
                return Ok(self.status());
            }
            if Instant::now() >= deadline {
                return Err(Box::new(self.status()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for any of [`TERMINAL_STATES`].
    pub fn wait_until_settled(
        &self,
        timeout: Duration,
    ) -> Result<ConductorStatus, Box<ConductorStatus>> {
        self.wait_for_state(TERMINAL_STATES, timeout)
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn deploy_instance_info(p: &DeployPlan) -> Value {
    let mut ii = json!({
        "image_source": p.image_url,
        "image_disk_format": p.disk_format,
        "image_type": "whole-disk",
        "image_url": p.image_url,
        "configdrive": p.configdrive,
    });
    if let Some(a) = &p.os_hash_algo {
        ii["image_os_hash_algo"] = json!(a);
    }
    if let Some(v) = &p.os_hash_value {
        ii["image_os_hash_value"] = json!(v);
    }
    if let Some(c) = &p.checksum {
        ii["image_checksum"] = json!(c);
    }
    ii
}

/// Ironic's own deploy steps for the `direct` deploy interface (recording 01).
fn conductor_deploy_steps() -> Value {
    let step = |name: &str, prio: u32| {
        json!({"step": name, "priority": prio, "abortable": true, "argsinfo": null,
               "interface": "deploy"})
    };
    json!([
        step("deploy", 100),
        step("write_image", 80),
        step("prepare_instance_boot", 60),
        step("tear_down_agent", 40),
        step("switch_to_tenant_network", 30),
        step("boot_instance", 20),
    ])
}

/// The node dict sent in `params.node`, with the same 65 keys as the recordings.
pub fn node_dict(n: &NodeState, deploy_step: &Value, clean_step: &Value, hmv: &Value) -> Value {
    let mut dii = n.driver_internal_info.clone();
    if !dii.is_object() {
        dii = json!({});
    }
    dii["agent_secret_token"] = json!("******");
    if let Some(u) = &n.agent_url {
        dii["agent_url"] = json!(u);
    }
    if let Some(v) = &n.agent_version {
        dii["agent_version"] = json!(v);
    }
    dii["agent_last_heartbeat"] = json!("2026-11-22T03:05:13.738694");
    if hmv.as_object().is_some_and(|o| !o.is_empty()) {
        dii["hardware_manager_version"] = hmv.clone();
    }
    json!({
        "id": 1, "uuid": n.uuid, "name": n.name, "chassis_id": null, "instance_uuid": null,
        "driver": "fake-hardware", "driver_info": {}, "driver_internal_info": dii,
        "clean_step": clean_step, "deploy_step": deploy_step, "service_step": {},
        "raid_config": {}, "target_raid_config": {}, "properties": n.properties,
        "reservation": "harness-conductor", "conductor_affinity": 1, "conductor_group": "",
        "power_state": "power on", "target_power_state": null,
        "provision_state": n.provision_state,
        "provision_updated_at": "2026-11-22T03:05:12.836987",
        "target_provision_state": n.target_provision_state,
        "maintenance": false, "maintenance_reason": null, "fault": null,
        "console_enabled": false, "last_error": n.last_error, "resource_class": null,
        "inspection_finished_at": null, "inspection_started_at": null, "extra": {},
        "automated_clean": null, "protected": false, "protected_reason": null,
        "allocation_id": null, "bios_interface": "fake", "boot_interface": "fake",
        "console_interface": "fake", "deploy_interface": "direct",
        "firmware_interface": "fake", "inspect_interface": "fake",
        "management_interface": "fake", "network_interface": "noop",
        "power_interface": "fake", "raid_interface": "fake", "rescue_interface": "fake",
        "storage_interface": "noop", "vendor_interface": "fake", "traits": {"objects": []},
        "owner": null, "lessee": null, "description": null, "retired": false,
        "retired_reason": null, "network_data": {}, "boot_mode": null, "secure_boot": null,
        "shard": null, "parent_node": null, "disable_power_off": false, "instance_name": null,
        "health": null, "created_at": "2026-11-22T03:05:09.958042",
        "updated_at": "2026-11-22T03:05:13.741286", "instance_info": n.instance_info,
    })
}

/// The `params.ports` list (one port per MAC), as in the recordings.
pub fn ports_list(n: &NodeState) -> Value {
    Value::Array(
        n.macs
            .iter()
            .enumerate()
            .map(|(i, mac)| {
                let uuid = if i == 0 {
                    n.port_uuid.clone()
                } else {
                    uuid::Uuid::new_v4().to_string()
                };
                json!({
                    "id": i + 1, "uuid": uuid, "node_id": 1, "node_uuid": n.uuid,
                    "address": mac, "extra": {}, "local_link_connection": {},
                    "portgroup_id": null, "pxe_enabled": i == 0, "internal_info": {},
                    "physical_network": null, "is_smartnic": false, "name": null,
                    "description": null, "vendor": null, "category": null,
                    "available_for_dynamic_portgroup": true,
                    "created_at": "2026-11-22T03:05:09.999058", "updated_at": null,
                })
            })
            .collect(),
    )
}

/// Outcome of one POST to the agent.
enum Outcome {
    /// 2xx with a JSON command result.
    Ok(Value),
    /// 409: the agent is busy; retry on the next heartbeat.
    Busy,
    /// Anything else: an error message.
    Failed(String),
}

struct Ctx {
    node: NodeHandle,
    shared: Arc<CondShared>,
    /// HTTP client and the `agent_verify_ca` it trusts (rebuilt when the CA changes).
    client: Mutex<(Option<String>, reqwest::blocking::Client)>,
    opts: ConductorOptions,
}

/// A client for the agent: like Ironic, trust exactly the certificate the agent sent as
/// `agent_verify_ca` (IPA's auto TLS) when there is one.
fn agent_client(timeout: Duration, ca: Option<&str>) -> Result<reqwest::blocking::Client, String> {
    let mut b = reqwest::blocking::Client::builder().timeout(timeout);
    if let Some(pem) = ca {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("agent_verify_ca is not a PEM certificate: {e}"))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

impl Ctx {
    fn client(&self) -> Result<reqwest::blocking::Client, String> {
        let ca = self.node.node().agent_verify_ca;
        let mut g = lock(&self.client);
        if g.0 != ca {
            *g = (
                ca.clone(),
                agent_client(self.opts.command_timeout, ca.as_deref())?,
            );
        }
        Ok(g.1.clone())
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn phase(&self, p: &str) {
        lock(&self.shared.status).phase = p.to_string();
    }

    fn note(&self, n: String) {
        let mut s = lock(&self.shared.status);
        if s.notes.last() != Some(&n) {
            s.notes.push(n);
        }
    }

    fn set_state(&self, state: &str, target: Option<&str>) {
        self.node.with_node(|n| {
            n.provision_state = state.to_string();
            n.target_provision_state = target.map(str::to_string);
        });
        if TERMINAL_STATES.contains(&state) {
            lock(&self.shared.status).timings.done = Some(self.node.elapsed());
        }
    }

    fn agent_base(&self) -> Option<(String, String)> {
        let n = self.node.node();
        Some((n.agent_url?.trim_end_matches('/').to_string(), n.token?))
    }

    fn record(&self, c: SentCommand) {
        let mut s = lock(&self.shared.status);
        if s.timings.started.is_none() {
            s.timings.started = Some(c.at);
        }
        s.commands.push(c);
    }

    /// `POST /v1/commands/?wait=…&agent_token=…` like Ironic's `agent_client._command`.
    fn post(&self, name: &str, params: Value, wait: bool) -> Outcome {
        let Some((base, token)) = self.agent_base() else {
            return Outcome::Failed("no agent URL or token known".into());
        };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        let at = self.node.elapsed();
        let body = json!({"name": name, "params": params});
        let resp = client
            .post(format!("{base}/v1/commands/"))
            .query(&[
                ("wait", if wait { "true" } else { "false" }),
                ("agent_token", token.as_str()),
            ])
            .header("User-Agent", "python-requests/2.34.2")
            .header("Accept", "*/*")
            .json(&body)
            .send();
        let mut rec = SentCommand {
            at,
            method: "POST".into(),
            name: name.into(),
            wait,
            params,
            http_status: None,
            response: None,
            error: None,
        };
        let outcome = match resp {
            Err(e) => {
                rec.error = Some(format!("{e:#}"));
                Outcome::Failed(format!("Error invoking agent command {name}: {e}"))
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                let json = serde_json::from_str::<Value>(&text).ok();
                rec.http_status = Some(status);
                rec.response = Some(json.clone().unwrap_or(Value::String(text.clone())));
                match (status, json) {
                    (409, _) => Outcome::Busy,
                    (200..=299, Some(v)) if v.is_object() => Outcome::Ok(v),
                    (s, _) => Outcome::Failed(format!(
                        "Agent returned HTTP {s} for {name}: {}",
                        crate::util::truncate(&text, 500)
                    )),
                }
            }
        };
        self.record(rec);
        outcome
    }

    /// `GET /v1/commands/?agent_token=…`; the list of results.
    fn list(&self) -> Result<Vec<Value>, String> {
        let Some((base, token)) = self.agent_base() else {
            return Err("no agent URL or token known".into());
        };
        let client = self.client()?;
        let at = self.node.elapsed();
        let resp = client
            .get(format!("{base}/v1/commands/"))
            .query(&[("agent_token", token.as_str())])
            .header("User-Agent", "python-requests/2.34.2")
            .header("Accept", "*/*")
            .header("Content-Type", "application/json")
            .send();
        let mut rec = SentCommand {
            at,
            method: "GET".into(),
            name: "list".into(),
            wait: false,
            params: Value::Null,
            http_status: None,
            response: None,
            error: None,
        };
        let out = match resp {
            Err(e) => {
                rec.error = Some(format!("{e:#}"));
                Err(format!("Error listing agent commands: {e}"))
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                rec.http_status = Some(status);
                let json = serde_json::from_str::<Value>(&text).ok();
                rec.response = Some(json.clone().unwrap_or(Value::String(text.clone())));
                match json
                    .as_ref()
                    .and_then(|j| j.get("commands"))
                    .and_then(Value::as_array)
                {
                    Some(list) if status == 200 => Ok(list.clone()),
                    _ => Err(format!(
                        "GET /v1/commands/ answered HTTP {status}: {}",
                        crate::util::truncate(&text, 500)
                    )),
                }
            }
        };
        self.record(rec);
        out
    }

    /// Interruptible sleep.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stopping() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ironic's `set_failed_state(collect_logs=True)`: collect the ramdisk logs, then fail the
    /// node and power it off (which wipes the token).
    fn fail(&self, failed_state: &str, msg: String, command_error: Option<Value>) {
        self.phase("collecting logs after failure");
        if let Outcome::Ok(v) = self.post("log.collect_system_logs", json!({}), true) {
            let logs = v["command_result"]["system_logs"]
                .as_str()
                .map(str::to_string);
            lock(&self.shared.status).system_logs = logs;
        }
        {
            let mut s = lock(&self.shared.status);
            s.failed_command_error = command_error;
        }
        self.node.with_node(|n| n.last_error = Some(msg));
        self.set_state(failed_state, None);
        self.node.wipe_token();
        self.phase("failed");
    }
}

/// Ironic's `agent_client.get_command_error`: details, else message, else type.
fn command_error_text(err: &Value) -> String {
    for k in ["details", "message", "type"] {
        if let Some(s) = err.get(k).and_then(Value::as_str) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    err.to_string()
}

/// The last result with this `command_name` (Ironic's `_get_completed_command` looks at the
/// last command only; we pick the last of the right name, which is the same in practice).
fn last_named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter()
        .rev()
        .find(|c| c.get("command_name").and_then(Value::as_str) == Some(name))
}

fn status_of(c: &Value) -> &str {
    c.get("command_status")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

enum Machine {
    Deploy {
        plan: DeployPlan,
        phase: DeployPhase,
        hmv: Value,
    },
    Clean {
        plan: CleanPlan,
        phase: CleanPhase,
        hmv: Value,
    },
}

enum DeployPhase {
    Start,
    WaitWrite { step: Value },
    Finish,
    Done,
}

enum CleanPhase {
    Start,
    WaitStep {
        steps: Vec<Value>,
        index: usize,
        sent: bool,
    },
    Done,
}

fn run(ctx: Ctx, rx: Receiver<HeartbeatEvent>, plan: Plan) {
    let mut machine = match plan {
        Plan::Deploy(plan) => Machine::Deploy {
            plan,
            phase: DeployPhase::Start,
            hmv: json!({}),
        },
        Plan::Clean(plan) => Machine::Clean {
            plan,
            phase: CleanPhase::Start,
            hmv: json!({}),
        },
    };
    while !ctx.stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(_hb) => {
                ctx.node.set_busy(true);
                lock(&ctx.shared.status).heartbeats_handled += 1;
                match &mut machine {
                    Machine::Deploy { plan, phase, hmv } => {
                        deploy_heartbeat(&ctx, plan, phase, hmv)
                    }
                    Machine::Clean { plan, phase, hmv } => clean_heartbeat(&ctx, plan, phase, hmv),
                }
                // Heartbeats that raced in before the node was marked busy: a locked node
                // drops them too.
                while rx.try_recv().is_ok() {}
                ctx.node.set_busy(false);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn deploy_heartbeat(ctx: &Ctx, plan: &DeployPlan, phase: &mut DeployPhase, hmv: &mut Value) {
    let node_uuid = ctx.node.node().uuid;
    match phase {
        DeployPhase::Done => {}
        DeployPhase::Start => {
            ctx.set_state("deploying", Some("active"));
            ctx.phase("get_deploy_steps");
            let deploy_step = json!({"step": "deploy", "priority": 100, "abortable": true,
                                     "argsinfo": null, "interface": "deploy"});
            let params = {
                let n = ctx.node.node();
                json!({"node": node_dict(&n, &deploy_step, &json!({}), hmv),
                       "ports": ports_list(&n)})
            };
            match ctx.post("deploy.get_deploy_steps", params, true) {
                Outcome::Busy => {
                    ctx.note(
                        "get_deploy_steps: agent busy (409), retrying on next heartbeat".into(),
                    );
                    ctx.set_state("wait call-back", Some("active"));
                    return;
                }
                Outcome::Failed(e) => {
                    *phase = DeployPhase::Done;
                    return ctx.fail("deploy failed", e, None);
                }
                Outcome::Ok(v) => {
                    if status_of(&v) != "SUCCEEDED" {
                        *phase = DeployPhase::Done;
                        let err = v.get("command_error").cloned();
                        let msg = format!(
                            "Agent failed get_deploy_steps on node {node_uuid}: {}",
                            err.as_ref().map(command_error_text).unwrap_or_default()
                        );
                        return ctx.fail("deploy failed", msg, err);
                    }
                    if let Some(h) = v["command_result"].get("hardware_manager_version") {
                        *hmv = h.clone();
                    }
                    let steps = &v["command_result"]["deploy_steps"];
                    let has_write = steps.as_object().is_some_and(|m| {
                        m.values()
                            .filter_map(Value::as_array)
                            .flatten()
                            .any(|s| s["step"] == "write_image" && s["interface"] == "deploy")
                    });
                    if !has_write {
                        ctx.note(format!(
                            "get_deploy_steps did not list deploy.write_image: {}",
                            truncate_json(steps, 60)
                        ));
                    }
                }
            }
            // Ironic refreshes its view of the agent's commands before the next step.
            let _ = ctx.list();
            ctx.phase("execute_deploy_step write_image");
            let step = plan.write_image_step(&node_uuid);
            let conductor_step = json!({"step": "write_image", "priority": 80, "abortable": true,
                                        "argsinfo": null, "interface": "deploy"});
            let params = {
                let n = ctx.node.node();
                json!({"step": step, "node": node_dict(&n, &conductor_step, &json!({}), hmv),
                       "ports": ports_list(&n), "deploy_version": hmv})
            };
            match ctx.post("deploy.execute_deploy_step", params, false) {
                Outcome::Busy => {
                    ctx.note(
                        "execute_deploy_step: agent busy (409), retrying on next heartbeat".into(),
                    );
                    ctx.set_state("wait call-back", Some("active"));
                }
                Outcome::Failed(e) => {
                    *phase = DeployPhase::Done;
                    ctx.fail("deploy failed", e, None);
                }
                Outcome::Ok(_) => {
                    lock(&ctx.shared.status).timings.main_step_sent = Some(ctx.node.elapsed());
                    ctx.set_state("wait call-back", Some("active"));
                    ctx.phase("waiting for write_image");
                    *phase = DeployPhase::WaitWrite { step };
                }
            }
        }
        DeployPhase::WaitWrite { step } => {
            let list = match ctx.list() {
                Ok(l) => l,
                Err(e) => {
                    ctx.note(e);
                    return;
                }
            };
            let Some(cmd) = last_named(&list, "execute_deploy_step") else {
                ctx.note("no execute_deploy_step in the agent's command list yet".into());
                return;
            };
            match status_of(cmd) {
                "RUNNING" => {}
                "SUCCEEDED" => {
                    let echoed = &cmd["command_result"]["deploy_step"];
                    if echoed != step {
                        ctx.note(format!(
                            "execute_deploy_step SUCCEEDED but command_result.deploy_step differs \
                             from the step sent, so Ironic would wait forever. sent={} got={}",
                            truncate_json(step, 40),
                            truncate_json(echoed, 40)
                        ));
                        ctx.phase("stuck: deploy_step echo mismatch");
                        return;
                    }
                    lock(&ctx.shared.status).timings.main_step_done = Some(ctx.node.elapsed());
                    *phase = DeployPhase::Finish;
                    deploy_finish(ctx, plan, phase);
                }
                "FAILED" => {
                    *phase = DeployPhase::Done;
                    let err = cmd.get("command_error").cloned();
                    lock(&ctx.shared.status).timings.main_step_done = Some(ctx.node.elapsed());
                    let msg = format!(
                        "Agent returned error for deploy step {{'step': 'write_image', \
                         'priority': 80, 'argsinfo': None, 'interface': 'deploy'}} on node \
                         {node_uuid} : {}.",
                        err.as_ref().map(command_error_text).unwrap_or_default()
                    );
                    ctx.fail("deploy failed", msg, err);
                }
                other => {
                    *phase = DeployPhase::Done;
                    let err = cmd.get("command_error").cloned();
                    ctx.fail(
                        "deploy failed",
                        format!("execute_deploy_step ended with status {other}"),
                        err,
                    );
                }
            }
        }
        DeployPhase::Finish => deploy_finish(ctx, plan, phase),
    }
}

/// `prepare_instance_boot` + `tear_down_agent` for a whole-disk image.
fn deploy_finish(ctx: &Ctx, plan: &DeployPlan, phase: &mut DeployPhase) {
    let node_uuid = ctx.node.node().uuid;
    ctx.set_state("deploying", Some("active"));
    ctx.phase("get_partition_uuids");
    let uuids = match ctx.post("standby.get_partition_uuids", json!({}), true) {
        Outcome::Busy => {
            ctx.note("get_partition_uuids: agent busy (409), retrying on next heartbeat".into());
            return ctx.set_state("wait call-back", Some("active"));
        }
        Outcome::Failed(e) => {
            *phase = DeployPhase::Done;
            return ctx.fail("deploy failed", e, None);
        }
        Outcome::Ok(v) => v,
    };
    if status_of(&uuids) != "SUCCEEDED" {
        *phase = DeployPhase::Done;
        let err = uuids.get("command_error").cloned();
        let msg = format!(
            "Failed to get partition UUIDs on node {node_uuid}: {}",
            err.as_ref().map(command_error_text).unwrap_or_default()
        );
        return ctx.fail("deploy failed", msg, err);
    }
    let res = &uuids["command_result"];
    if plan.boot_mode == "uefi" {
        ctx.phase("install_bootloader");
        let params = json!({
            "root_uuid": res.get("root uuid").cloned().unwrap_or(Value::Null),
            "efi_system_part_uuid": res.get("efi system partition uuid").cloned()
                .unwrap_or(Value::Null),
            "prep_boot_part_uuid": res.get("PReP Boot partition uuid").cloned()
                .unwrap_or(Value::Null),
            "target_boot_mode": plan.boot_mode,
        });
        match ctx.post("image.install_bootloader", params, false) {
            Outcome::Busy => {
                ctx.note("install_bootloader: agent busy (409), retrying on next heartbeat".into());
                return ctx.set_state("wait call-back", Some("active"));
            }
            Outcome::Failed(e) => {
                *phase = DeployPhase::Done;
                return ctx.fail("deploy failed", e, None);
            }
            Outcome::Ok(_) => {}
        }
        // Ironic polls every command_wait_interval while holding the node lock.
        let mut attempts = 0;
        loop {
            if ctx.stopping() {
                return;
            }
            match ctx.list() {
                Ok(list) => match last_named(&list, "install_bootloader").map(status_of) {
                    Some("SUCCEEDED") => break,
                    Some("FAILED") => {
                        *phase = DeployPhase::Done;
                        let err = last_named(&list, "install_bootloader")
                            .and_then(|c| c.get("command_error").cloned());
                        let msg = format!(
                            "Failed to install a bootloader when deploying node {node_uuid}. \
                             Error: {}",
                            err.as_ref().map(command_error_text).unwrap_or_default()
                        );
                        return ctx.fail("deploy failed", msg, err);
                    }
                    _ => {}
                },
                Err(e) => ctx.note(e),
            }
            attempts += 1;
            if attempts >= ctx.opts.poll_attempts {
                *phase = DeployPhase::Done;
                return ctx.fail(
                    "deploy failed",
                    format!("install_bootloader did not finish after {attempts} polls"),
                    None,
                );
            }
            ctx.sleep(ctx.opts.poll_interval);
        }
    }
    ctx.phase("power_off");
    // Whatever the agent answers, Ironic then powers off out of band: the result is ignored.
    let _ = ctx.post("standby.power_off", json!({}), false);
    *phase = DeployPhase::Done;
    ctx.node.wipe_token();
    ctx.set_state("active", None);
    ctx.phase("done");
}

/// The clean steps Ironic would run, from the agent's `get_clean_steps` answer.
fn pick_clean_steps(plan: &CleanPlan, result: &Value) -> Vec<Value> {
    let mut all: Vec<Value> = result["clean_steps"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(Value::as_array)
                .flatten()
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let prio = |s: &Value| s["priority"].as_i64().unwrap_or(0);
    let finish = |mut s: Value| {
        if let Some(o) = s.as_object_mut() {
            o.remove("argsinfo");
            o.insert("requires_ramdisk".into(), json!(true));
        }
        s
    };
    match &plan.steps {
        Some(names) => names
            .iter()
            .filter_map(|n| all.iter().find(|s| s["step"] == n.as_str()).cloned())
            .map(finish)
            .collect(),
        None => {
            all.retain(|s| prio(s) > 0);
            all.sort_by_key(|s| std::cmp::Reverse(prio(s)));
            all.into_iter().map(finish).collect()
        }
    }
}

fn clean_heartbeat(ctx: &Ctx, plan: &CleanPlan, phase: &mut CleanPhase, hmv: &mut Value) {
    let node_uuid = ctx.node.node().uuid;
    match phase {
        CleanPhase::Done => {}
        CleanPhase::Start => {
            ctx.set_state("cleaning", Some("available"));
            ctx.phase("get_clean_steps");
            let params = {
                let n = ctx.node.node();
                json!({"node": node_dict(&n, &json!({}), &json!({}), hmv), "ports": ports_list(&n)})
            };
            let steps = match ctx.post("clean.get_clean_steps", params, true) {
                Outcome::Busy => {
                    ctx.note(
                        "get_clean_steps: agent busy (409), retrying on next heartbeat".into(),
                    );
                    return ctx.set_state("clean wait", Some("available"));
                }
                Outcome::Failed(e) => {
                    *phase = CleanPhase::Done;
                    return ctx.fail("clean failed", e, None);
                }
                Outcome::Ok(v) => {
                    if status_of(&v) != "SUCCEEDED" {
                        *phase = CleanPhase::Done;
                        let err = v.get("command_error").cloned();
                        let msg = format!(
                            "Agent failed get_clean_steps on node {node_uuid}: {}",
                            err.as_ref().map(command_error_text).unwrap_or_default()
                        );
                        return ctx.fail("clean failed", msg, err);
                    }
                    if let Some(h) = v["command_result"].get("hardware_manager_version") {
                        *hmv = h.clone();
                    }
                    pick_clean_steps(plan, &v["command_result"])
                }
            };
            if steps.is_empty() {
                *phase = CleanPhase::Done;
                ctx.set_state("available", None);
                return ctx.phase("done (no clean steps)");
            }
            *phase = CleanPhase::WaitStep {
                steps,
                index: 0,
                sent: false,
            };
            lock(&ctx.shared.status).timings.main_step_sent = Some(ctx.node.elapsed());
            send_clean_step(ctx, phase, hmv);
        }
        CleanPhase::WaitStep { sent: false, .. } => send_clean_step(ctx, phase, hmv),
        CleanPhase::WaitStep { steps, index, .. } => {
            let list = match ctx.list() {
                Ok(l) => l,
                Err(e) => return ctx.note(e),
            };
            let Some(cmd) = last_named(&list, "execute_clean_step") else {
                return ctx.note("no execute_clean_step in the agent's command list yet".into());
            };
            let sent = steps[*index].clone();
            match status_of(cmd) {
                "RUNNING" => {}
                "SUCCEEDED" => {
                    let echoed = &cmd["command_result"]["clean_step"];
                    if *echoed != sent {
                        ctx.note(format!(
                            "execute_clean_step SUCCEEDED but command_result.clean_step differs \
                             from the step sent, so Ironic would wait forever. sent={} got={}",
                            sent,
                            truncate_json(echoed, 40)
                        ));
                        return ctx.phase("stuck: clean_step echo mismatch");
                    }
                    if *index + 1 >= steps.len() {
                        *phase = CleanPhase::Done;
                        lock(&ctx.shared.status).timings.main_step_done = Some(ctx.node.elapsed());
                        ctx.set_state("available", None);
                        return ctx.phase("done");
                    }
                    *index += 1;
                    ctx.set_state("cleaning", Some("available"));
                    if let CleanPhase::WaitStep { sent, .. } = phase {
                        *sent = false;
                    }
                    send_clean_step(ctx, phase, hmv);
                }
                "CLEAN_VERSION_MISMATCH" => {
                    ctx.note(
                        "CLEAN_VERSION_MISMATCH: restarting cleaning from get_clean_steps".into(),
                    );
                    *phase = CleanPhase::Start;
                }
                other => {
                    *phase = CleanPhase::Done;
                    let err = cmd.get("command_error").cloned();
                    let msg = format!(
                        "Agent returned error for clean step {} on node {node_uuid} : {} \
                         (status {other}).",
                        sent["step"],
                        err.as_ref().map(command_error_text).unwrap_or_default()
                    );
                    ctx.fail("clean failed", msg, err);
                }
            }
        }
    }
}

fn send_clean_step(ctx: &Ctx, phase: &mut CleanPhase, hmv: &Value) {
    let CleanPhase::WaitStep { steps, index, sent } = phase else {
        return;
    };
    let step = steps[*index].clone();
    ctx.phase(&format!("execute_clean_step {}", step["step"]));
    let params = {
        let n = ctx.node.node();
        json!({"step": step, "node": node_dict(&n, &json!({}), &step, hmv),
               "ports": ports_list(&n), "clean_version": hmv})
    };
    match ctx.post("clean.execute_clean_step", params, false) {
        Outcome::Busy => {
            // `sent` stays false: the next heartbeat sends this step again.
            ctx.note(format!(
                "execute_clean_step {}: agent busy (409), retrying on next heartbeat",
                step["step"]
            ));
        }
        Outcome::Failed(e) => {
            *phase = CleanPhase::Done;
            ctx.fail("clean failed", e, None);
        }
        Outcome::Ok(_) => {
            *sent = true;
            ctx.set_state("clean wait", Some("available"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_steps_are_ordered_by_priority_like_recording_03() {
        let result = json!({"clean_steps": {"GenericHardwareManager": [
            {"step": "erase_devices", "priority": 10, "interface": "deploy",
             "reboot_requested": false, "abortable": true},
            {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
             "reboot_requested": false, "abortable": true},
            {"step": "burnin_cpu", "priority": 0, "interface": "deploy",
             "reboot_requested": false, "abortable": true},
        ]}});
        let steps = pick_clean_steps(&CleanPlan::default(), &result);
        assert_eq!(
            steps,
            vec![
                json!({"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
                       "reboot_requested": false, "abortable": true, "requires_ramdisk": true}),
                json!({"step": "erase_devices", "priority": 10, "interface": "deploy",
                       "reboot_requested": false, "abortable": true, "requires_ramdisk": true}),
            ]
        );
        let manual = CleanPlan {
            steps: Some(vec!["burnin_cpu".into()]),
            ..Default::default()
        };
        assert_eq!(pick_clean_steps(&manual, &result)[0]["step"], "burnin_cpu");
    }

    #[test]
    fn image_info_has_the_recorded_keys() {
        let p =
            DeployPlan::whole_disk_raw("http://127.0.0.1:8089/disk.raw", "ab", Some("cd".into()));
        let ii = p.image_info("u");
        let mut keys: Vec<&str> = ii.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "configdrive",
                "container_format",
                "disk_format",
                "id",
                "node_uuid",
                "os_hash_algo",
                "os_hash_value",
                "stream_raw_images",
                "urls"
            ]
        );
        assert_eq!(ii["id"], "disk.raw");
        assert_eq!(p.write_image_step("u")["args"]["configdrive"], "cd");
    }
}
