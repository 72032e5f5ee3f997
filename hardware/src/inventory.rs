//! The hardware inventory sent on lookup, inspection and `poll.get_hardware_info`.
//!
//! Shape and keys: PROTOCOL.md §5 and IPA `hardware.py`
//! `HardwareManager.list_hardware_info`. Each part degrades on its own (a
//! missing file gives empty/`None` values and a warning), as IPA catches
//! failures per part rather than failing the whole inventory.

use std::path::Path;

use serde::Serialize;

use crate::block::{list_block_devices, BlockDevice};
use crate::cpu::{cpu, Cpu};
use crate::dmi::{system_vendor, SystemVendor};
use crate::memory::{memory, Memory};
use crate::net::{apply_addresses, list_interfaces, AddressSource, NetInterface};
use crate::sysfs::{attr, under};

/// How to build an inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryOptions {
    /// The `BOOTIF` kernel parameter, reported verbatim as `boot.pxe_interface`
    /// (IPA `get_boot_info`; Ironic strips the `01-` itself).
    pub bootif: Option<String>,
    /// Where interface addresses come from.
    pub addresses: AddressSource,
    /// Listen this long for LLDP on the interfaces (`ipa-collect-lldp`, `ipa-lldp-timeout`);
    /// `None`: no LLDP, `lldp` stays null as in IPA's default.
    pub lldp_timeout: Option<std::time::Duration>,
}

/// The inventory's `boot` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootInfo {
    /// `uefi` when `sys/firmware/efi` exists, else `bios`.
    pub current_boot_mode: String,
    /// The raw `BOOTIF` value, if any.
    pub pxe_interface: Option<String>,
}

/// IPA's inventory, serialized with its exact keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    /// Physical NICs (and VLAN interfaces `name.N`), sorted by name.
    pub interfaces: Vec<NetInterface>,
    /// CPU facts.
    pub cpu: Cpu,
    /// Disks as IPA lists them: no loop, RAM, ROM or zero-size devices.
    pub disks: Vec<BlockDevice>,
    /// Memory totals.
    pub memory: Memory,
    /// DMI identity and firmware.
    pub system_vendor: SystemVendor,
    /// Boot mode and PXE interface.
    pub boot: BootInfo,
    /// Kernel host name (`proc/sys/kernel/hostname`), as IPA's `socket.gethostname()`.
    pub hostname: Option<String>,
    /// BMC IPv4 address; Ferric has no IPMI access yet, so `None`.
    pub bmc_address: Option<String>,
    /// BMC IPv6 address; `None` for the same reason.
    pub bmc_v6address: Option<String>,
    /// BMC MAC address; `None` for the same reason.
    pub bmc_mac: Option<String>,
}

/// Collects the inventory under `root`.
pub fn inventory(root: &Path, opts: &InventoryOptions) -> Inventory {
    let mut interfaces: Vec<NetInterface> = list_interfaces(root)
        .unwrap_or_else(|e| {
            log::warn!("inventory: {e}");
            Vec::new()
        })
        .into_iter()
        // IPA keeps interfaces with a device link, plus VLANs (`_is_vlan`: "eth0.100").
        .filter(|i| i.physical || is_vlan(&i.name))
        .collect();
    apply_addresses(&mut interfaces, &opts.addresses.addresses());
    if let Some(timeout) = opts.lldp_timeout {
        let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
        let mut lldp = crate::lldp::collect(root, &names, timeout);
        for i in &mut interfaces {
            // IPA: an interface that heard nothing stays null.
            i.lldp = lldp.remove(&i.name);
        }
    }

    let disks = list_block_devices(root)
        .unwrap_or_else(|e| {
            log::warn!("inventory: {e}");
            Vec::new()
        })
        .into_iter()
        .filter(BlockDevice::is_inventory_disk)
        .collect();

    let efi = under(root, "sys/firmware/efi").is_dir();
    Inventory {
        interfaces,
        cpu: cpu(root),
        disks,
        memory: memory(root),
        system_vendor: system_vendor(root),
        boot: BootInfo {
            current_boot_mode: if efi { "uefi" } else { "bios" }.to_string(),
            pxe_interface: opts.bootif.clone(),
        },
        hostname: attr(&under(root, "proc/sys/kernel/hostname")),
        bmc_address: None,
        bmc_v6address: None,
        bmc_mac: None,
    }
}

fn is_vlan(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(_, vid)| !vid.is_empty() && vid.bytes().all(|b| b.is_ascii_digit()))
}
