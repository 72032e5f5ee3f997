//! The generic hardware manager (IPA `GenericHardwareManager`): the
//! cleaning steps Ferric implements, plus steps the agent registers for
//! work that lives outside this crate (`write_image`).
//!
//! Steps offered (IPA 11 names, priorities and flags; only what is
//! implemented — IPA's `erase_pstore`, `clean_uefi_nvram`, RAID and burn-in
//! steps are not offered):
//! - clean: `erase_devices` (10), `erase_devices_metadata` (99),
//!   `erase_devices_express` (0), all on the `deploy` interface, abortable,
//!   no reboot;
//! - deploy: `erase_devices_metadata` (0, no `abortable` key, as IPA);
//! - service: none of IPA's generic service steps (burn-in, RAID) exist here.
//!
//! Version: `generic_hardware_manager` `1.2`, IPA's value since
//! `erase_devices_express` was added. Ironic only compares the version for
//! equality (it stores `hardware_manager_version` from `get_*_steps` and
//! sends it back); the steps Ferric offers behave as IPA 1.2's of the same
//! name, so a conductor that cached steps from either agent may run them on
//! the other. Change [`GenericHardwareManager::VERSION`] when a step's
//! meaning or arguments change.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::block::BlockDevice;
use crate::clean::{erase, EraseJob};
use crate::manager::{
    HardwareManager, HardwareSupport, ManagerVersion, Step, StepCall, StepError, StepKind,
};

/// A step implementation registered by the agent.
pub type StepHandler = Arc<dyn Fn(&StepCall<'_>) -> Result<Value, StepError> + Send + Sync>;

/// The generic manager.
#[derive(Clone, Default)]
pub struct GenericHardwareManager {
    extra: Vec<(StepKind, Step, StepHandler)>,
}

impl std::fmt::Debug for GenericHardwareManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericHardwareManager")
            .field(
                "extra_steps",
                &self
                    .extra
                    .iter()
                    .map(|(k, s, _)| (k, &s.step))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl GenericHardwareManager {
    /// The key of its steps in `get_*_steps` answers (IPA's class name).
    pub const NAME: &'static str = "GenericHardwareManager";
    /// The key in `hardware_manager_version`.
    pub const VERSION_NAME: &'static str = "generic_hardware_manager";
    /// The version (see the module docs).
    pub const VERSION: &'static str = "1.2";

    /// The manager with the built-in steps only.
    pub fn new() -> GenericHardwareManager {
        GenericHardwareManager { extra: Vec::new() }
    }

    /// Adds a step implemented by the caller, listed under this manager for
    /// `kind` and run when a step of that name is dispatched (before the
    /// built-in steps, so it can also replace one).
    pub fn with_step(
        mut self,
        kind: StepKind,
        step: Step,
        handler: impl Fn(&StepCall<'_>) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> GenericHardwareManager {
        self.extra.push((kind, step, Arc::new(handler)));
        self
    }

    fn builtin_steps(kind: StepKind) -> Vec<Step> {
        match kind {
            StepKind::Clean => vec![
                Step::deploy("erase_devices", 10, Some(true)),
                Step::deploy("erase_devices_metadata", 99, Some(true)),
                Step::deploy("erase_devices_express", 0, Some(true)),
            ],
            StepKind::Deploy => vec![Step::deploy("erase_devices_metadata", 0, None)],
            StepKind::Service => Vec::new(),
        }
    }
}

impl HardwareManager for GenericHardwareManager {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn version(&self) -> ManagerVersion {
        ManagerVersion {
            name: Self::VERSION_NAME.to_string(),
            version: Self::VERSION.to_string(),
        }
    }

    fn evaluate_hardware_support(&self, _root: &Path) -> HardwareSupport {
        HardwareSupport::GENERIC
    }

    fn get_steps(&self, kind: StepKind, _ctx: &crate::manager::StepContext<'_>) -> Vec<Step> {
        let mut steps = Self::builtin_steps(kind);
        for (k, step, _) in &self.extra {
            if *k != kind {
                continue;
            }
            match steps.iter_mut().find(|s| s.step == step.step) {
                Some(s) => *s = step.clone(),
                None => steps.push(step.clone()),
            }
        }
        steps
    }

    fn execute(&self, method: &str, call: &StepCall<'_>) -> Result<Value, StepError> {
        if let Some((_, _, handler)) = self.extra.iter().find(|(_, s, _)| s.step == method) {
            return handler(call);
        }
        match method {
            "erase_devices" => erase::erase_devices(call),
            "erase_devices_metadata" => erase::erase_devices_metadata(call),
            "erase_devices_express" => erase::erase_devices_express(call),
            other => Err(StepError::incompatible(format!(
                "{} does not implement {other}",
                Self::NAME
            ))),
        }
    }

    fn erase_block_device(
        &self,
        dev: &BlockDevice,
        job: &EraseJob,
        call: &StepCall<'_>,
    ) -> Result<String, StepError> {
        erase::generic_erase_block_device(dev, job, call)
    }
}
