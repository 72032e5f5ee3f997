//! Memory totals.
//!
//! IPA `get_memory`: `total` is psutil's `virtual_memory().total`, i.e.
//! `MemTotal` in bytes; `physical_mb` is the sum of lshw's memory banks in
//! MiB (IPA defines `MB = 1048576 bytes`), which Ferric reads from SMBIOS.
//! Without SMBIOS (many VMs, some ARM boards) it falls back to the memory
//! blocks the kernel knows (`sys/devices/system/memory`), which count
//! installed RAM rounded to the block size instead of what the kernel keeps.

use std::path::Path;

use serde::Serialize;

use crate::sysfs::{attr, dir_names, read_string, under};

/// The inventory's `memory` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Usable RAM in bytes (`MemTotal`).
    pub total: Option<u64>,
    /// Installed RAM in MiB.
    pub physical_mb: Option<u64>,
}

/// Reads memory facts under `root`.
pub fn memory(root: &Path) -> Memory {
    let total = read_string(&under(root, "proc/meminfo"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        });
    Memory {
        total,
        physical_mb: crate::dmi::dimm_total_mib(root).or_else(|| memory_blocks_mib(root)),
    }
}

fn memory_blocks_mib(root: &Path) -> Option<u64> {
    let dir = under(root, "sys/devices/system/memory");
    let block = u64::from_str_radix(
        attr(&dir.join("block_size_bytes"))?.trim_start_matches("0x"),
        16,
    )
    .ok()?;
    let blocks = dir_names(&dir)
        .iter()
        .filter(|n| {
            n.strip_prefix("memory")
                .is_some_and(|r| r.parse::<u32>().is_ok())
        })
        .count() as u64;
    let mib = blocks.checked_mul(block)? >> 20;
    (mib > 0).then_some(mib)
}
