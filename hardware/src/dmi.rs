//! System identity from `sys/class/dmi/id` and DIMM sizes from the raw SMBIOS table.
//!
//! IPA takes `system_vendor` from lshw (`product`, `serial`, `vendor`, and the
//! `firmware` node's `vendor`, `version`, `date`) and `physical_mb` from the
//! sizes of lshw's memory banks; lshw reads both from SMBIOS, which the kernel
//! exposes as `sys/class/dmi/id/*` and `sys/firmware/dmi/tables/DMI`.

use std::path::Path;

use serde::Serialize;

use crate::sysfs::{attr, read_bytes, under};

/// The inventory's `system_vendor` object. Missing values are `""`, as IPA's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SystemVendor {
    /// Product name; lshw appends the SKU in parentheses when there is one.
    pub product_name: String,
    /// System serial number.
    pub serial_number: String,
    /// System manufacturer.
    pub manufacturer: String,
    /// BIOS/UEFI firmware.
    pub firmware: Firmware,
}

/// `system_vendor.firmware`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Firmware {
    /// e.g. `Dell Inc.`.
    pub vendor: String,
    /// e.g. `2.19.1`.
    pub version: String,
    /// e.g. `06/07/2023`.
    pub build_date: String,
}

/// Reads `sys/class/dmi/id` under `root`.
pub fn system_vendor(root: &Path) -> SystemVendor {
    let dir = under(root, "sys/class/dmi/id");
    let get = |name: &str| attr(&dir.join(name)).unwrap_or_default();
    let mut product_name = get("product_name");
    let sku = get("product_sku");
    // lshw (dmi.cc) reports "<product> (<SKU>)"; IPA passes that on.
    if !sku.is_empty() {
        product_name = format!("{product_name} ({sku})");
    }
    SystemVendor {
        product_name,
        serial_number: get("product_serial"),
        manufacturer: get("sys_vendor"),
        firmware: Firmware {
            vendor: get("bios_vendor"),
            version: get("bios_version"),
            build_date: get("bios_date"),
        },
    }
}

/// Sum of installed DIMM sizes in MiB from SMBIOS type 17 records; `None`
/// when the table is missing or lists no installed module.
pub(crate) fn dimm_total_mib(root: &Path) -> Option<u64> {
    let table = read_bytes(&under(root, "sys/firmware/dmi/tables/DMI")).ok()?;
    let mut total_mib = 0u64;
    let mut found = false;
    let mut pos = 0usize;
    while pos + 4 <= table.len() {
        let typ = table[pos];
        let len = table[pos + 1] as usize;
        if len < 4 || pos + len > table.len() {
            break;
        }
        let rec = &table[pos..pos + len];
        if typ == 17 && len >= 0x0e {
            let size = u16::from_le_bytes([rec[0x0c], rec[0x0d]]);
            // SMBIOS 3.x §7.18.5: 0 = empty slot, 0xFFFF = unknown, bit 15 set =
            // KiB units, 0x7FFF = see Extended Size (MiB) at 0x1C.
            let mib = match size {
                0 | 0xffff => None,
                0x7fff if len >= 0x20 => Some(
                    u64::from(u32::from_le_bytes([
                        rec[0x1c], rec[0x1d], rec[0x1e], rec[0x1f],
                    ])) & 0x7fff_ffff,
                ),
                0x7fff => None,
                s if s & 0x8000 != 0 => Some(u64::from(s & 0x7fff) / 1024),
                s => Some(u64::from(s)),
            };
            if let Some(m) = mib {
                total_mib += m;
                found = true;
            }
        }
        if typ == 127 {
            break; // end-of-table
        }
        // Skip the formatted area, then the string set (ends with two NULs).
        let mut p = pos + len;
        while p + 1 < table.len() && !(table[p] == 0 && table[p + 1] == 0) {
            p += 1;
        }
        pos = p + 2;
    }
    (found && total_mib > 0).then_some(total_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![typ, (body.len() + 4) as u8, 0, 0];
        r.extend_from_slice(body);
        r.extend_from_slice(b"DIMM A1\0\0");
        r
    }

    fn type17(size: u16, ext: u32) -> Vec<u8> {
        let mut body = vec![0u8; 0x28 - 4];
        body[0x0c - 4..0x0e - 4].copy_from_slice(&size.to_le_bytes());
        body[0x1c - 4..0x20 - 4].copy_from_slice(&ext.to_le_bytes());
        record(17, &body)
    }

    #[test]
    fn sums_installed_dimms() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sys/firmware/dmi/tables");
        std::fs::create_dir_all(&dir).unwrap();
        let mut table = record(0, &[1, 2, 3, 4]);
        table.extend(type17(16384, 0)); // 16 GiB
        table.extend(type17(0, 0)); // empty slot
        table.extend(type17(0xffff, 0)); // unknown
        table.extend(type17(0x7fff, 65536)); // 64 GiB via extended size
        table.extend(type17(0x8000 | (1024 * 8), 0)); // 8 MiB in KiB units
        table.extend(record(127, &[]));
        std::fs::write(dir.join("DMI"), &table).unwrap();
        assert_eq!(dimm_total_mib(tmp.path()), Some(16384 + 65536 + 8));

        // Truncated tables stop cleanly.
        std::fs::write(dir.join("DMI"), &table[..table.len() / 2]).unwrap();
        assert!(dimm_total_mib(tmp.path()).is_some());
        std::fs::write(dir.join("DMI"), [17u8, 2, 0]).unwrap();
        assert_eq!(dimm_total_mib(tmp.path()), None);
    }
}
