//! Hardware discovery, hardware managers and disk cleaning for the Ferric agent.
//!
//! Every reader takes a `root: &Path` ("/" in production) and reads
//! `root/sys/...`, `root/proc/...` and `root/dev/...`, so the whole crate runs
//! against fixture trees in tests. Inventory never opens a block device (it
//! must work even when a disk cannot be opened); only cleaning does
//! ([`clean`], through the [`manager`] registry), and every ioctl lives in
//! the private `sys` module, the one place `unsafe` is allowed.
//!
//! Facts (field names, filters, defaults) follow ironic-python-agent (IPA)
//! `ironic_python_agent/hardware.py` and `device_hints.py` (formerly
//! ironic-lib `utils.py`); each module cites the part it mirrors.

#![deny(unsafe_code)]

mod ata;
pub mod block;
pub mod clean;
pub mod cpu;
pub mod dmi;
pub mod efi;
mod error;
mod generic;
pub mod hints;
pub mod inventory;
pub mod lldp;
pub mod manager;
pub mod memory;
pub mod net;
mod path_id;
#[allow(unsafe_code)]
mod sys;
mod sysfs;

pub use block::{
    block_device, default_root_device, device_in_use, list_block_devices, BlockDevice, DeviceKind,
    MIN_ROOT_DEVICE_SIZE,
};
pub use clean::{CleanReport, EraseJob, EraseSettings, Operation, Progress};
pub use error::HardwareError;
pub use generic::{GenericHardwareManager, StepHandler};
pub use inventory::{inventory, Inventory, InventoryOptions};
pub use manager::{
    current_versions, DeviceFilter, HardwareManager, HardwareSupport, ManagerVersion, Managers,
    NoManagers, Step, StepCall, StepContext, StepError, StepKind, VersionMismatch,
};
