//! IPA's command semantics (STYLE.md pattern 7; IPA `extensions/base.py`):
//! `<extension>.<command>` names resolved in a static registry, synchronous and asynchronous
//! commands, one command at a time (a new one while the last is RUNNING → 409), the history
//! the conductor polls, and a forced heartbeat as soon as an async command finishes.
//!
//! # Design
//! - The HTTP layer calls [`Runner::execute`]; a tokio mutex serialises executions, so the
//!   busy check and the insertion of the new entry are atomic.
//! - Sync commands run on the blocking pool while the caller waits; async commands run on a
//!   dedicated OS thread (an image write must not starve the API's runtime).
//! - Every command body runs under `catch_unwind`: a panic becomes a FAILED result with the
//!   panic message, and the agent lives on.
//! - Completion is published through a `watch` channel per entry, which `wait=true` awaits.

mod image;
mod logs;
mod poll;
mod rescue;
mod standby;
mod steps;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::agent::Agent;
use crate::error::AgentError;

pub use logs::collect_logs_base64;
pub use standby::write_image_from_params;

/// The parameters of a command (`params` in the request body).
pub type Params = Map<String, Value>;

/// `command_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Still running.
    Running,
    /// Done, with `command_result`.
    Succeeded,
    /// Done, with `command_error`.
    Failed,
    /// The conductor computed clean steps against other hardware manager versions.
    CleanVersionMismatch,
}

/// A command result as IPA serialises it — without `command_params`, which may hold the
/// config drive and image credentials.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    /// Random UUID.
    pub id: String,
    /// The command name without its extension (`execute_deploy_step`).
    pub command_name: String,
    /// Status.
    pub command_status: Status,
    /// Error when FAILED.
    pub command_error: Option<AgentError>,
    /// Result when SUCCEEDED.
    pub command_result: Option<Value>,
    /// While RUNNING, what a long command has done so far (an image write: bytes done and
    /// total, rate). Ironic reads only status, error and result, so an extra key is safe;
    /// absent otherwise, keeping IPA's exact shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_progress: Option<Value>,
}

/// How a command ended when it did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// FAILED with this error.
    Error(AgentError),
    /// CLEAN_VERSION_MISMATCH with this error.
    VersionMismatch(AgentError),
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Failure {
        Failure::Error(e)
    }
}

/// What a command body returns.
pub type Outcome = Result<Value, Failure>;

type Body = fn(&Arc<Agent>, Params) -> Outcome;
type Validator = fn(&Arc<Agent>, &Params) -> Result<(), AgentError>;

/// How a command runs.
#[derive(Clone, Copy)]
enum Mode {
    /// In the request, result in the response.
    Sync,
    /// In the background: the response says RUNNING. `heartbeat_after` is false for the
    /// power commands (the machine is going away).
    Async { heartbeat_after: bool },
}

/// A registry entry: the body, and a validator run before an async command starts (its
/// error is the HTTP answer, as IPA's `validator=` hook).
struct Spec {
    mode: Mode,
    body: Body,
    validate: Option<Validator>,
}

/// The static registry: every command a conductor may send.
fn lookup(extension: &str, command: &str) -> Result<Spec, AgentError> {
    let sync = |body: Body| Spec {
        mode: Mode::Sync,
        body,
        validate: None,
    };
    let asynchronous = |body: Body, validate| Spec {
        mode: Mode::Async {
            heartbeat_after: true,
        },
        body,
        validate,
    };
    let power = |body: Body| Spec {
        mode: Mode::Async {
            heartbeat_after: false,
        },
        body,
        validate: None,
    };
    let known = match extension {
        "standby" => match command {
            "prepare_image" => Some(asynchronous(
                standby::prepare_image,
                Some(standby::validate_prepare_image),
            )),
            "cache_image" => Some(asynchronous(
                standby::cache_image,
                Some(standby::validate_prepare_image),
            )),
            "get_partition_uuids" => Some(sync(standby::get_partition_uuids)),
            "sync" => Some(sync(standby::sync)),
            "power_off" => Some(power(standby::power_off)),
            "run_image" => Some(power(standby::run_image)),
            _ => None,
        },
        "deploy" => match command {
            "get_deploy_steps" => Some(sync(steps::get_deploy_steps)),
            "execute_deploy_step" => Some(asynchronous(
                steps::execute_deploy_step,
                Some(steps::validate_step),
            )),
            _ => None,
        },
        "clean" => match command {
            "get_clean_steps" => Some(sync(steps::get_clean_steps)),
            "execute_clean_step" => Some(asynchronous(
                steps::execute_clean_step,
                Some(steps::validate_step),
            )),
            _ => None,
        },
        "service" => match command {
            "get_service_steps" => Some(sync(steps::get_service_steps)),
            "execute_service_step" => Some(asynchronous(
                steps::execute_service_step,
                Some(steps::validate_step),
            )),
            _ => None,
        },
        "image" => match command {
            "install_bootloader" => Some(asynchronous(image::install_bootloader, None)),
            _ => None,
        },
        "poll" => match command {
            "get_hardware_info" => Some(sync(poll::get_hardware_info)),
            "get_node_info" => Some(sync(poll::get_node_info)),
            _ => None,
        },
        "rescue" => match command {
            "finalize_rescue" => Some(sync(rescue::finalize_rescue)),
            _ => None,
        },
        "system" => match command {
            "lockdown" => Some(sync(rescue::lockdown)),
            _ => None,
        },
        "log" => match command {
            "collect_system_logs" => Some(sync(logs::collect_system_logs)),
            _ => None,
        },
        #[cfg(test)]
        "test" => match command {
            "sleep" => Some(asynchronous(tests::sleep, None)),
            "panic" => Some(asynchronous(tests::panic, None)),
            "sync_panic" => Some(sync(tests::panic)),
            _ => None,
        },
        _ => return Err(AgentError::not_found("Extension", extension)),
    };
    known.ok_or_else(|| AgentError::invalid_command(format!("Unknown command: {command}")))
}

/// One history entry.
pub struct Entry {
    state: Mutex<CommandResult>,
    done: watch::Sender<bool>,
}

impl Entry {
    fn new(command_name: &str) -> Arc<Entry> {
        Arc::new(Entry {
            state: Mutex::new(CommandResult {
                id: uuid::Uuid::new_v4().to_string(),
                command_name: command_name.to_string(),
                command_status: Status::Running,
                command_error: None,
                command_result: None,
                command_progress: None,
            }),
            done: watch::channel(false).0,
        })
    }

    /// A copy of the current result.
    pub fn snapshot(&self) -> CommandResult {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn finish(&self, outcome: Outcome) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.command_progress = None;
            match outcome {
                Ok(v) => {
                    s.command_status = Status::Succeeded;
                    s.command_result = Some(v);
                }
                Err(Failure::Error(e)) => {
                    s.command_status = Status::Failed;
                    s.command_error = Some(e);
                }
                Err(Failure::VersionMismatch(e)) => {
                    s.command_status = Status::CleanVersionMismatch;
                    s.command_error = Some(e);
                }
            }
        }
        self.done.send_replace(true);
    }

    /// Wait until the command is no longer RUNNING.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    fn is_running(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .command_status
            == Status::Running
    }
}

/// Runs commands and keeps their history.
pub struct Runner {
    history: Mutex<Vec<Arc<Entry>>>,
    exec: tokio::sync::Mutex<()>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

/// Run `body` and turn a panic into a FAILED outcome.
fn guarded(agent: &Arc<Agent>, body: Body, params: Params, name: &str) -> Outcome {
    match std::panic::catch_unwind(AssertUnwindSafe(|| body(agent, params))) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("command {name} panicked: {msg}");
            Err(Failure::Error(AgentError::execution(format!(
                "internal error in the agent while running {name}: {msg}"
            ))))
        }
    }
}

impl Runner {
    /// An empty history.
    pub fn new() -> Runner {
        Runner {
            history: Mutex::new(Vec::new()),
            exec: tokio::sync::Mutex::new(()),
        }
    }

    /// Execute `name` (`extension.command`). HTTP-level errors (malformed name, unknown
    /// extension or command, invalid parameters, busy) are returned as `Err`; everything
    /// else becomes the entry's result.
    pub async fn execute(
        &self,
        agent: &Arc<Agent>,
        name: &str,
        params: Params,
    ) -> Result<Arc<Entry>, AgentError> {
        let _serial = self.exec.lock().await;
        let (extension, command) = name.split_once('.').ok_or_else(|| {
            AgentError::invalid_command("Command name must be of the form <extension>.<name>")
        })?;
        if let Some(last) = self.last() {
            if last.is_running() {
                return Err(AgentError::busy(&last.snapshot().command_name));
            }
        }
        let spec = lookup(extension, command)?;
        if let Some(v) = spec.validate {
            v(agent, &params)?;
        }
        log::info!("executing command {name}");
        let entry = Entry::new(command);
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        match spec.mode {
            Mode::Sync => {
                let agent = agent.clone();
                let name = name.to_string();
                let outcome =
                    tokio::task::spawn_blocking(move || guarded(&agent, spec.body, params, &name))
                        .await
                        .unwrap_or_else(|e| {
                            Err(Failure::Error(AgentError::execution(format!(
                                "command thread failed: {e}"
                            ))))
                        });
                log_outcome(command, &outcome);
                entry.finish(outcome);
            }
            Mode::Async { heartbeat_after } => {
                let agent = agent.clone();
                let e = entry.clone();
                let name = name.to_string();
                let spawned = std::thread::Builder::new()
                    .name(format!("cmd-{command}"))
                    .spawn(move || {
                        let outcome = guarded(&agent, spec.body, params, &name);
                        log_outcome(&name, &outcome);
                        e.finish(outcome);
                        if heartbeat_after {
                            agent.force_heartbeat.notify_one();
                        }
                    });
                if let Err(err) = spawned {
                    entry.finish(Err(Failure::Error(AgentError::execution(format!(
                        "cannot start a thread for the command: {err}"
                    )))));
                }
            }
        }
        Ok(entry)
    }

    fn last(&self) -> Option<Arc<Entry>> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }

    /// Record progress of the RUNNING command (the last one), shown in listings.
    pub fn set_progress(&self, progress: Value) {
        if let Some(last) = self.last() {
            let mut s = last.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.command_status == Status::Running {
                s.command_progress = Some(progress);
            }
        }
    }

    /// The history, oldest first.
    pub fn list(&self) -> Vec<CommandResult> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.snapshot())
            .collect()
    }

    /// One entry by id.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|e| e.snapshot().id == id)
            .cloned()
    }
}

fn log_outcome(name: &str, o: &Outcome) {
    match o {
        Ok(_) => log::info!("command {name} succeeded"),
        Err(Failure::Error(e)) | Err(Failure::VersionMismatch(e)) => {
            log::error!("command {name} failed: {e}")
        }
    }
}

/// A boolean command parameter (`hashed`, `ignore_bootloader_failure`): JSON `true`, or a
/// string Python would call true (`"True"`, `"1"`, `"yes"`); anything else, or absent, false.
pub(crate) fn flag_param(params: &Params, key: &str) -> bool {
    match params.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        _ => false,
    }
}

/// IPA wraps a string returned by an async command as `{"result": "<command>: <text>"}`.
pub fn text_result(command: &str, text: &str) -> Value {
    serde_json::json!({ "result": format!("{command}: {text}") })
}

#[cfg(test)]
mod tests;
