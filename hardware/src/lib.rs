//! Hardware discovery for the Ferric agent, read from sysfs and procfs only.
//!
//! Every reader takes a `root: &Path` ("/" in production) and reads
//! `root/sys/...`, `root/proc/...` and `root/dev/...`, so the whole crate runs
//! against fixture trees in tests. Nothing here opens a block device or links
//! a C library: the agent is a static musl binary and inventory must work
//! even when a disk cannot be opened.
//!
//! Facts (field names, filters, defaults) follow ironic-python-agent (IPA)
//! `ironic_python_agent/hardware.py` and `device_hints.py` (formerly
//! ironic-lib `utils.py`); each module cites the part it mirrors.

#![forbid(unsafe_code)]

mod ata;
pub mod block;
pub mod cpu;
pub mod dmi;
mod error;
pub mod hints;
pub mod inventory;
pub mod memory;
pub mod net;
mod sysfs;

pub use block::{
    block_device, default_root_device, device_in_use, list_block_devices, BlockDevice, DeviceKind,
    MIN_ROOT_DEVICE_SIZE,
};
pub use error::HardwareError;
pub use inventory::{inventory, Inventory, InventoryOptions};
