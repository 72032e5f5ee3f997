//! Hardware managers: IPA's plug-in model for steps, as a trait and a registry.
//!
//! Facts from IPA `ironic_python_agent/hardware.py`:
//! - a manager rates itself with `evaluate_hardware_support()`
//!   ([`HardwareSupport`]: NONE=0, GENERIC=1, MAINLINE=2, SERVICE_PROVIDER=3
//!   and up); managers rating NONE are dropped and the rest are tried most
//!   specific first (`get_managers`);
//! - `dispatch_to_managers(method)` calls the first manager that has the
//!   method; a manager raising `IncompatibleHardwareMethodError`
//!   ([`StepError::Incompatible`]) passes the call on to the next one; when
//!   none is left the call fails with `HardwareManagerMethodNotFound`;
//! - `dispatch_to_all_managers(method)` collects `{ManagerClassName: result}`;
//! - steps (`get_clean_steps`, `get_deploy_steps`, `get_service_steps`) are
//!   gathered from all managers and de-duplicated by name: the step of the
//!   manager with the highest support wins, then the higher step priority,
//!   then the manager name earlier in the alphabet (`deduplicate_steps`);
//! - `get_current_versions()` is `{manager.name: manager.version}` for every
//!   manager; Ironic stores it as `hardware_manager_version` and sends it back
//!   as `clean_version`/`deploy_version`/`service_version`; a difference means
//!   the steps the conductor holds came from other code (`check_versions`,
//!   IPA's `VersionMismatch` → `CLEAN_VERSION_MISMATCH`).
//!
//! Differences from IPA, on purpose: managers are registered explicitly (no
//! stevedore entry points), support is evaluated once when the registry is
//! built, ties in support are ordered by name so the order is deterministic,
//! and a call that no manager could serve reports every manager's reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::block::BlockDevice;
use crate::clean::{EraseJob, Progress};

/// How well a manager supports this machine; larger is more specific
/// (IPA `HardwareSupport`). Third-party managers may use values above
/// [`HardwareSupport::SERVICE_PROVIDER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HardwareSupport(pub u32);

impl HardwareSupport {
    /// The manager does not apply to this machine; it is not registered.
    pub const NONE: HardwareSupport = HardwareSupport(0);
    /// The generic manager.
    pub const GENERIC: HardwareSupport = HardwareSupport(1);
    /// A manager shipped with the agent for specific hardware.
    pub const MAINLINE: HardwareSupport = HardwareSupport(2);
    /// An operator's or vendor's manager.
    pub const SERVICE_PROVIDER: HardwareSupport = HardwareSupport(3);
}

/// Which family of steps: the three step APIs of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// `clean.get_clean_steps` / `clean.execute_clean_step`.
    Clean,
    /// `deploy.get_deploy_steps` / `deploy.execute_deploy_step`.
    Deploy,
    /// `service.get_service_steps` / `service.execute_service_step`.
    Service,
}

impl StepKind {
    /// The key of the steps map in the `get_*_steps` answer, e.g. `clean_steps`.
    pub fn steps_key(self) -> &'static str {
        match self {
            StepKind::Clean => "clean_steps",
            StepKind::Deploy => "deploy_steps",
            StepKind::Service => "service_steps",
        }
    }

    /// The parameter in which the conductor echoes the manager versions,
    /// e.g. `clean_version`.
    pub fn version_param(self) -> &'static str {
        match self {
            StepKind::Clean => "clean_version",
            StepKind::Deploy => "deploy_version",
            StepKind::Service => "service_version",
        }
    }

    /// The key of the result in the `execute_*_step` answer, e.g. `clean_result`.
    pub fn result_key(self) -> &'static str {
        match self {
            StepKind::Clean => "clean_result",
            StepKind::Deploy => "deploy_result",
            StepKind::Service => "service_result",
        }
    }

    /// The key under which the executed step is echoed, e.g. `clean_step`.
    pub fn step_key(self) -> &'static str {
        match self {
            StepKind::Clean => "clean_step",
            StepKind::Deploy => "deploy_step",
            StepKind::Service => "service_step",
        }
    }
}

/// A step as the agent advertises it (PROTOCOL.md §2, recording
/// `03-provide-clean.jsonl`): `{"step", "priority", "interface",
/// "reboot_requested", "abortable"?, "argsinfo"?}`. IPA's deploy steps carry
/// no `abortable`, hence the option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The method name, dispatched to the managers when the step runs.
    pub step: String,
    /// Order in automated cleaning/deploying (larger first); 0 = only on request.
    pub priority: i64,
    /// The Ironic driver interface the step belongs to (`deploy`, `raid`, ...).
    pub interface: String,
    /// Whether Ironic should reboot the node after the step.
    pub reboot_requested: bool,
    /// Whether an operator may abort the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abortable: Option<bool>,
    /// Description of the step's arguments, `{name: {description, required}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argsinfo: Option<Value>,
}

impl Step {
    /// A step on the `deploy` interface that does not request a reboot.
    pub fn deploy(step: &str, priority: i64, abortable: Option<bool>) -> Step {
        Step {
            step: step.to_string(),
            priority,
            interface: "deploy".to_string(),
            reboot_requested: false,
            abortable,
            argsinfo: None,
        }
    }
}

/// A manager's name and version as reported in `hardware_manager_version`
/// (IPA `HardwareManager.get_version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerVersion {
    /// e.g. `generic_hardware_manager`.
    pub name: String,
    /// e.g. `1.2`.
    pub version: String,
}

/// Says which block devices a step may touch. Built by the agent from its
/// device guard; there is deliberately no default.
#[derive(Clone, Copy)]
pub struct DeviceFilter<'a> {
    only: Option<&'a [PathBuf]>,
    allow: &'a (dyn Fn(&Path) -> bool + Sync),
}

impl std::fmt::Debug for DeviceFilter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFilter")
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

fn allow_all(_: &Path) -> bool {
    true
}

impl<'a> DeviceFilter<'a> {
    /// In the ramdisk: steps consider every disk IPA would list (no loop,
    /// RAM, ROM or empty devices) and may touch all of them.
    pub fn all_disks() -> DeviceFilter<'static> {
        DeviceFilter {
            only: None,
            allow: &allow_all,
        }
    }

    /// Outside the ramdisk: steps consider exactly these devices (loop
    /// devices included) and touch nothing else.
    pub fn only(devices: &'a [PathBuf]) -> DeviceFilter<'a> {
        DeviceFilter {
            only: Some(devices),
            allow: &allow_all,
        }
    }

    /// Adds a guard: a device (named `/dev/<kernel name>`) for which it returns
    /// false makes a step that would touch it fail with
    /// [`StepError::ProtectedDevice`] before anything is written.
    pub fn with_guard(self, allow: &'a (dyn Fn(&Path) -> bool + Sync)) -> DeviceFilter<'a> {
        DeviceFilter { allow, ..self }
    }

    /// The explicit device list, if any.
    pub fn explicit(&self) -> Option<&'a [PathBuf]> {
        self.only
    }

    /// Whether the guard allows touching `dev`. Devices outside an explicit
    /// list are never allowed.
    pub fn allows(&self, dev: &Path) -> bool {
        let listed = match self.only {
            None => true,
            Some(list) => list.iter().any(|p| same_device(p, dev)),
        };
        listed && (self.allow)(dev)
    }
}

/// Compares device paths by the node they resolve to (`/dev/disk/by-id/x`
/// and `/dev/sda` are the same device).
fn same_device(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn no_progress(_: &Progress<'_>) {}

static NEVER_CANCELLED: AtomicBool = AtomicBool::new(false);

/// Everything a step gets besides its own arguments.
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    /// The node as the conductor sent it (`params.node`).
    pub node: &'a Value,
    /// The node's ports (`params.ports`).
    pub ports: &'a Value,
    /// Root of sysfs/procfs/dev ("/" in production).
    pub root: &'a Path,
    /// Which devices may be touched.
    pub devices: DeviceFilter<'a>,
    /// Called while long operations run (at most every 500 ms per device and
    /// at the start and end of each pass).
    pub progress: &'a (dyn Fn(&Progress<'_>) + Sync),
    /// Set to stop long operations between chunks ([`StepError::Cancelled`]).
    pub cancel: &'a AtomicBool,
}

impl std::fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("root", &self.root)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl<'a> StepContext<'a> {
    /// A context without progress reporting or cancellation.
    pub fn new(
        root: &'a Path,
        node: &'a Value,
        ports: &'a Value,
        devices: DeviceFilter<'a>,
    ) -> StepContext<'a> {
        StepContext {
            node,
            ports,
            root,
            devices,
            progress: &no_progress,
            cancel: &NEVER_CANCELLED,
        }
    }

    /// Sets the progress callback.
    pub fn with_progress(self, progress: &'a (dyn Fn(&Progress<'_>) + Sync)) -> StepContext<'a> {
        StepContext { progress, ..self }
    }

    /// Sets the cancellation flag.
    pub fn with_cancel(self, cancel: &'a AtomicBool) -> StepContext<'a> {
        StepContext { cancel, ..self }
    }

    /// True once cancellation was requested.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `node.driver_internal_info`, or an empty object.
    pub fn driver_internal_info(&self) -> &'a Value {
        static EMPTY: Value = Value::Null;
        self.node.get("driver_internal_info").unwrap_or(&EMPTY)
    }
}

/// One call of a step method: the context, the step's `args` and the
/// registry (so a step can dispatch per-device work, as IPA's
/// `erase_devices` dispatches `erase_block_device`).
#[derive(Clone, Copy)]
pub struct StepCall<'a> {
    /// The context.
    pub ctx: &'a StepContext<'a>,
    /// The step's `args` object (`{}` when absent).
    pub args: &'a Value,
    /// The registry the call came through.
    pub managers: &'a Managers,
}

/// Why a step method failed. The agent maps each variant once to IPA's error
/// `type` ([`StepError::ipa_type`]) and puts the message in `details`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// This manager cannot do it here; the next manager is tried (IPA
    /// `IncompatibleHardwareMethodError`).
    #[error("{0}")]
    Incompatible(String),
    /// No manager could serve the call (IPA `HardwareManagerMethodNotFound`).
    #[error("No HardwareManager found to handle method: {method}{}", reasons_text(.reasons))]
    MethodNotFound {
        /// The method (step name) asked for.
        method: String,
        /// `(manager, reason)` for every manager that declined.
        reasons: Vec<(String, String)>,
    },
    /// The step's arguments or the node's settings are invalid (IPA
    /// `InvalidCommandParamsError`).
    #[error("invalid parameters for {step}: {message}")]
    InvalidArgs {
        /// The step or setting concerned.
        step: String,
        /// What is wrong.
        message: String,
    },
    /// The step would touch devices the agent may not touch (IPA
    /// `ProtectedDeviceError`). Nothing was written.
    #[error("refusing to touch {}: {reason}. Nothing was written to any device.", .devices.join(", "))]
    ProtectedDevice {
        /// The refused devices.
        devices: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Erasing failed (IPA `BlockDeviceEraseError`).
    #[error("{0}")]
    BlockDeviceErase(String),
    /// Devices could not be listed or read.
    #[error("{0}")]
    Hardware(#[from] crate::HardwareError),
    /// The step was cancelled through [`StepContext::cancel`].
    #[error("the step was cancelled")]
    Cancelled,
    /// A step handler added by the agent failed with its own error type.
    #[error("{details}")]
    Failed {
        /// IPA error type to report, e.g. `ImageWriteError`.
        error_type: String,
        /// Sentence for the operator.
        details: String,
    },
}

fn reasons_text(reasons: &[(String, String)]) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = reasons.iter().map(|(m, r)| format!("{m}: {r}")).collect();
    format!(" ({})", parts.join("; "))
}

impl StepError {
    /// Shorthand for [`StepError::Incompatible`].
    pub fn incompatible(msg: impl Into<String>) -> StepError {
        StepError::Incompatible(msg.into())
    }

    /// IPA's exception class name for this error (the result's `command_error.type`).
    pub fn ipa_type(&self) -> &str {
        match self {
            StepError::Incompatible(_) => "IncompatibleHardwareMethodError",
            StepError::MethodNotFound { .. } => "HardwareManagerMethodNotFound",
            StepError::InvalidArgs { .. } => "InvalidCommandParamsError",
            StepError::ProtectedDevice { .. } => "ProtectedDeviceError",
            StepError::BlockDeviceErase(_) => "BlockDeviceEraseError",
            StepError::Hardware(_) => "BlockDeviceError",
            StepError::Cancelled => "CommandExecutionError",
            StepError::Failed { error_type, .. } => error_type,
        }
    }

    /// The HTTP-style code IPA attaches (400 for bad parameters, 500 otherwise).
    pub fn code(&self) -> u16 {
        match self {
            StepError::InvalidArgs { .. } => 400,
            _ => 500,
        }
    }
}

/// The conductor's manager versions differ from this agent's (IPA
/// `VersionMismatch`; the command status becomes `CLEAN_VERSION_MISMATCH`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Hardware managers version mismatch, reload agent with correct version. Agent: {agent}, node: {node}")]
pub struct VersionMismatch {
    /// This agent's `{name: version}`.
    pub agent: Value,
    /// What the conductor sent.
    pub node: Value,
}

/// A hardware manager (IPA `HardwareManager`).
///
/// Step methods are looked up by name through [`HardwareManager::execute`];
/// a manager that does not implement a method returns
/// [`StepError::Incompatible`] (the default), so the next manager is tried.
pub trait HardwareManager: Send + Sync {
    /// The name used as the key of the steps map, e.g. `GenericHardwareManager`
    /// (IPA uses the class name).
    fn name(&self) -> &str;

    /// Name and version for `hardware_manager_version`.
    fn version(&self) -> ManagerVersion;

    /// How well this manager supports the machine under `root`.
    fn evaluate_hardware_support(&self, root: &Path) -> HardwareSupport;

    /// The steps of `kind` this manager offers.
    fn get_steps(&self, _kind: StepKind, _ctx: &StepContext<'_>) -> Vec<Step> {
        Vec::new()
    }

    /// Runs `method` (a step name). Return [`StepError::Incompatible`] to
    /// pass the call on to the next manager.
    fn execute(&self, method: &str, _call: &StepCall<'_>) -> Result<Value, StepError> {
        Err(StepError::incompatible(format!(
            "{} does not implement {method}",
            self.name()
        )))
    }

    /// Erases one block device for `erase_devices` (IPA `erase_block_device`);
    /// returns a short description of what was done. Vendors override this
    /// for devices they know and return [`StepError::Incompatible`] otherwise.
    fn erase_block_device(
        &self,
        _dev: &BlockDevice,
        _job: &EraseJob,
        _call: &StepCall<'_>,
    ) -> Result<String, StepError> {
        Err(StepError::incompatible(format!(
            "{} does not implement erase_block_device",
            self.name()
        )))
    }
}

/// The managers that support this machine, most specific first (IPA
/// `get_managers`).
pub struct Managers {
    managers: Vec<(Box<dyn HardwareManager>, HardwareSupport)>,
}

impl std::fmt::Debug for Managers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.managers
                    .iter()
                    .map(|(m, s)| (m.name().to_string(), s.0)),
            )
            .finish()
    }
}

/// No registered manager supports this machine (IPA `HardwareManagerNotFound`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("No valid HardwareManager found")]
pub struct NoManagers;

impl Managers {
    /// Evaluates each candidate's support once, drops those with
    /// [`HardwareSupport::NONE`] and orders the rest by support (highest
    /// first), then by name.
    pub fn new(
        root: &Path,
        candidates: Vec<Box<dyn HardwareManager>>,
    ) -> Result<Managers, NoManagers> {
        let mut managers: Vec<(Box<dyn HardwareManager>, HardwareSupport)> = candidates
            .into_iter()
            .map(|m| {
                let s = m.evaluate_hardware_support(root);
                (m, s)
            })
            .filter(|(m, s)| {
                if *s == HardwareSupport::NONE {
                    log::info!(
                        "hardware manager {} does not support this machine",
                        m.name()
                    );
                }
                *s > HardwareSupport::NONE
            })
            .collect();
        if managers.is_empty() {
            return Err(NoManagers);
        }
        managers.sort_by(|(a, sa), (b, sb)| sb.cmp(sa).then_with(|| a.name().cmp(b.name())));
        for (m, s) in &managers {
            log::info!("hardware manager found: {} (support {})", m.name(), s.0);
        }
        Ok(Managers { managers })
    }

    /// Only the [`crate::GenericHardwareManager`].
    pub fn generic(root: &Path) -> Managers {
        Managers::new(root, vec![Box::new(crate::GenericHardwareManager::new())])
            .expect("the generic manager always supports the machine")
    }

    /// The managers with their support, in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = (&dyn HardwareManager, HardwareSupport)> {
        self.managers.iter().map(|(m, s)| (m.as_ref(), *s))
    }

    /// `{name: version}` of every manager (IPA `get_current_versions`): the
    /// agent's `hardware_manager_version`.
    pub fn current_versions(&self) -> Value {
        let mut map = Map::new();
        for (m, _) in &self.managers {
            let v = m.version();
            map.insert(v.name, Value::String(v.version));
        }
        Value::Object(map)
    }

    /// IPA `check_versions`: `None`/null means "first run" and passes;
    /// anything else must equal [`Managers::current_versions`].
    pub fn check_versions(&self, provided: Option<&Value>) -> Result<(), VersionMismatch> {
        let Some(provided) = provided.filter(|v| !v.is_null()) else {
            return Ok(());
        };
        let agent = self.current_versions();
        if *provided != agent {
            return Err(VersionMismatch {
                agent,
                node: provided.clone(),
            });
        }
        Ok(())
    }

    /// The de-duplicated steps of `kind`, keyed by manager name
    /// (IPA `deduplicate_steps` over `dispatch_to_all_managers('get_*_steps')`).
    pub fn get_steps(&self, kind: StepKind, ctx: &StepContext<'_>) -> BTreeMap<String, Vec<Step>> {
        // (step name) -> candidates (support, priority, manager name, step), in
        // first-seen order so each manager's list keeps its own order.
        let mut order: Vec<String> = Vec::new();
        let mut candidates: BTreeMap<String, Vec<(HardwareSupport, String, Step)>> =
            BTreeMap::new();
        for (m, support) in &self.managers {
            for step in m.get_steps(kind, ctx) {
                let entry = candidates.entry(step.step.clone()).or_default();
                if entry.is_empty() {
                    order.push(step.step.clone());
                }
                entry.push((*support, m.name().to_string(), step));
            }
        }
        let mut out: BTreeMap<String, Vec<Step>> = BTreeMap::new();
        for name in order {
            let Some(mut list) = candidates.remove(&name) else {
                continue;
            };
            list.sort_by(|(sa, na, a), (sb, nb, b)| {
                sb.cmp(sa)
                    .then_with(|| b.priority.cmp(&a.priority))
                    .then_with(|| na.cmp(nb))
            });
            let (_, manager, step) = list.swap_remove(0);
            out.entry(manager).or_default().push(step);
        }
        out
    }

    /// The whole `get_*_steps` answer: `{"<kind>_steps": {manager: [steps]},
    /// "hardware_manager_version": {...}}`.
    pub fn steps_response(&self, kind: StepKind, ctx: &StepContext<'_>) -> Value {
        let steps = self.get_steps(kind, ctx);
        json!({
            kind.steps_key(): steps,
            "hardware_manager_version": self.current_versions(),
        })
    }

    /// Runs a step as sent by the conductor (`{"step": name, "args": {...}, ...}`)
    /// through [`Managers::dispatch`]. The caller echoes the step unchanged.
    pub fn execute_step(&self, step: &Value, ctx: &StepContext<'_>) -> Result<Value, StepError> {
        let name =
            step.get("step")
                .and_then(Value::as_str)
                .ok_or_else(|| StepError::InvalidArgs {
                    step: "step".into(),
                    message: "the step must be an object with a string 'step'".into(),
                })?;
        let empty = json!({});
        let args = match step.get("args") {
            None | Some(Value::Null) => &empty,
            Some(a @ Value::Object(_)) => a,
            Some(other) => {
                return Err(StepError::InvalidArgs {
                    step: name.to_string(),
                    message: format!("args must be an object, got {other}"),
                })
            }
        };
        self.dispatch(name, ctx, args)
    }

    /// IPA `dispatch_to_managers`: the first manager whose method does not
    /// return [`StepError::Incompatible`] answers.
    pub fn dispatch(
        &self,
        method: &str,
        ctx: &StepContext<'_>,
        args: &Value,
    ) -> Result<Value, StepError> {
        let call = StepCall {
            ctx,
            args,
            managers: self,
        };
        let mut reasons = Vec::new();
        for (m, _) in &self.managers {
            match m.execute(method, &call) {
                Err(StepError::Incompatible(why)) => {
                    log::debug!("{} does not support {method}: {why}", m.name());
                    reasons.push((m.name().to_string(), why));
                }
                other => return other,
            }
        }
        Err(StepError::MethodNotFound {
            method: method.to_string(),
            reasons,
        })
    }

    /// IPA `dispatch_to_all_managers`: `{manager: result}` of every manager
    /// that did not decline; fails when all declined or one failed.
    pub fn dispatch_to_all(
        &self,
        method: &str,
        ctx: &StepContext<'_>,
        args: &Value,
    ) -> Result<BTreeMap<String, Value>, StepError> {
        let call = StepCall {
            ctx,
            args,
            managers: self,
        };
        let mut out = BTreeMap::new();
        let mut reasons = Vec::new();
        for (m, _) in &self.managers {
            match m.execute(method, &call) {
                Ok(v) => {
                    out.insert(m.name().to_string(), v);
                }
                Err(StepError::Incompatible(why)) => reasons.push((m.name().to_string(), why)),
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Err(StepError::MethodNotFound {
                method: method.to_string(),
                reasons,
            });
        }
        Ok(out)
    }

    /// Dispatches `erase_block_device` for one device, most specific manager first.
    pub fn dispatch_erase_block_device(
        &self,
        dev: &BlockDevice,
        job: &EraseJob,
        call: &StepCall<'_>,
    ) -> Result<String, StepError> {
        let mut reasons = Vec::new();
        for (m, _) in &self.managers {
            match m.erase_block_device(dev, job, call) {
                Err(StepError::Incompatible(why)) => reasons.push((m.name().to_string(), why)),
                other => return other,
            }
        }
        Err(StepError::MethodNotFound {
            method: "erase_block_device".to_string(),
            reasons,
        })
    }
}

/// `hardware_manager_version` for these managers: the one source of truth
/// for the versions the agent reports and checks.
pub fn current_versions(managers: &Managers) -> Value {
    managers.current_versions()
}
