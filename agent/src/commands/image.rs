//! The `image` extension: bootloader installation (IPA `extensions/image.py`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferric_hardware::efi::{self, EfiVars, HardDrive, PartitionSignature};
use ferric_imagewriter::partition::{self, PartitionEntry, PartitionTable};
use serde_json::Value;

use super::{flag_param, text_result, Outcome, Params};
use crate::agent::Agent;
use crate::devices;
use crate::error::AgentError;

/// `image.install_bootloader(root_uuid, efi_system_part_uuid, prep_boot_part_uuid,
/// target_boot_mode, ignore_bootloader_failure)`. Ironic sends it for UEFI whole-disk deploys.
/// A whole-disk image carries its own bootloader; what the agent adds, like IPA's
/// `efi_utils.manage_uefi`, is the firmware's boot entry: when the ramdisk booted in UEFI mode,
/// the loaders on the image's EFI system partition get `Boot####` entries at the front of
/// `BootOrder`. In BIOS mode nothing is touched. Partition images (which need GRUB installed)
/// are not written by Ferric yet.
pub fn install_bootloader(agent: &Arc<Agent>, params: Params) -> Outcome {
    let state = agent
        .deploy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if state.device.is_some() && !state.whole_disk {
        return Err(AgentError::execution(
            "installing a bootloader for a partition image is not implemented in Ferric yet",
        )
        .into());
    }
    let mode = params
        .get("target_boot_mode")
        .and_then(Value::as_str)
        .unwrap_or("unspecified");
    let dev = match state.device {
        Some(d) => d,
        None => devices::select_install_device(&agent.config, agent.node().as_ref())?,
    };
    let Some(vars_dir) = efivars_dir(agent) else {
        return Ok(text_result(
            "install_bootloader",
            &format!(
                "whole-disk image on {} carries its own bootloader (boot mode {mode}); not \
                 booted in UEFI mode, so no boot entry was needed and the disk was left untouched",
                dev.display()
            ),
        ));
    };
    let esp_uuid = params.get("efi_system_part_uuid").and_then(Value::as_str);
    match manage_uefi(&dev, esp_uuid, &vars_dir) {
        Ok(text) => Ok(text_result("install_bootloader", &text)),
        Err(e) if flag_param(&params, "ignore_bootloader_failure") => {
            log::error!("setting up UEFI boot failed, ignored as the conductor asked: {e}");
            Ok(text_result(
                "install_bootloader",
                &format!("UEFI boot entry not set (failure ignored): {}", e.details),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the firmware's variables are, when the agent may change them: `--efivars-dir`, or
/// in the ramdisk booted in UEFI mode, efivarfs. Outside the ramdisk the NVRAM belongs to the
/// machine the agent happens to run on, which it must not change.
fn efivars_dir(agent: &Agent) -> Option<PathBuf> {
    if let Some(d) = &agent.config.efivars_dir {
        return Some(d.clone());
    }
    let dir = agent.config.sys_root.join("sys/firmware/efi/efivars");
    if !agent.in_ramdisk {
        if dir.is_dir() {
            log::info!("not in the ramdisk: this machine's UEFI boot entries are left alone");
        }
        return None;
    }
    dir.is_dir().then_some(dir)
}

/// IPA's `manage_uefi` for a whole-disk image on `dev`: find the ESP (by type, else by the
/// UUID Ironic recorded), its loaders, and add a boot entry for each.
fn manage_uefi(dev: &Path, esp_uuid: Option<&str>, vars_dir: &Path) -> Result<String, AgentError> {
    let file = File::open(dev)
        .map_err(|e| AgentError::device_not_found(format!("cannot open {}: {e}", dev.display())))?;
    let table = partition::read_table(&file)
        .map_err(|e| AgentError::execution(format!("reading {}: {e}", dev.display())))?;
    let Some(table) = table else {
        return Err(no_esp(dev));
    };
    let (entry, hd) = find_esp(&table, esp_uuid).ok_or_else(|| no_esp(dev))?;
    let loaders = efi::find_loaders(&file, entry.start, entry.size).map_err(|e| {
        AgentError::execution(format!(
            "partition {} of {}: {e}",
            entry.number,
            dev.display()
        ))
    })?;
    if loaders.is_empty() {
        // IPA: an empty ESP is not an error for a whole-disk image; the firmware's fallback
        // path may still boot it.
        log::warn!(
            "no EFI boot loader on partition {} of {}",
            entry.number,
            dev.display()
        );
        return Ok(format!(
            "no EFI boot loader found on partition {} of {}; no boot entry added",
            entry.number,
            dev.display()
        ));
    }
    let vars = EfiVars::new(vars_dir).map_err(|e| {
        AgentError::execution(format!("UEFI variables at {}: {e}", vars_dir.display()))
    })?;
    let mut added = Vec::new();
    for l in &loaders {
        let option = efi::load_option(&l.label, &hd, &l.path);
        let num = vars.add_boot_entry(&l.label, &option).map_err(|e| {
            AgentError::execution(format!(
                "Could not configure UEFI boot on device {}: {e}",
                dev.display()
            ))
        })?;
        log::info!(
            "added boot entry Boot{num:04X} \"{}\": {} on partition {} of {}",
            l.label,
            l.path,
            entry.number,
            dev.display()
        );
        added.push(format!("Boot{num:04X} \"{}\" {}", l.label, l.path));
    }
    Ok(format!(
        "UEFI boot entries for partition {} of {}: {}",
        entry.number,
        dev.display(),
        added.join(", ")
    ))
}

fn no_esp(dev: &Path) -> AgentError {
    AgentError::device_not_found(format!(
        "No EFI partition could be detected on device {} and EFI partition UUID has not been \
         recorded during deployment (which is often the case for whole disk images). Are you \
         using a UEFI-compatible image?",
        dev.display()
    ))
}

/// The ESP of `table` (partition type first, as IPA trusts the disk's contents, then the
/// recorded UUID) with its device path node.
fn find_esp<'a>(
    table: &'a PartitionTable,
    esp_uuid: Option<&str>,
) -> Option<(&'a PartitionEntry, HardDrive)> {
    let entries = table.entries();
    let entry = entries
        .iter()
        .find(|e| e.type_guid_or_id == efi::ESP_TYPE_GUID || e.type_guid_or_id == efi::ESP_MBR_TYPE)
        .or_else(|| {
            let want = esp_uuid?.to_ascii_lowercase();
            entries
                .iter()
                .find(|e| e.unique_guid.as_deref() == Some(want.as_str()))
        })?;
    let (block, signature) = match table {
        PartitionTable::Gpt { sector_size, .. } => (
            u64::from(*sector_size),
            PartitionSignature::Gpt(efi::guid_bytes(entry.unique_guid.as_deref()?)?),
        ),
        PartitionTable::Mbr { signature, .. } => (512, PartitionSignature::Mbr(*signature)),
    };
    Some((
        entry,
        HardDrive {
            number: entry.number,
            start_lba: entry.start / block,
            size_lba: entry.size / block,
            signature,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: u32, kind: &str, uuid: &str) -> PartitionEntry {
        PartitionEntry {
            number,
            start: u64::from(number) << 20,
            size: 1 << 20,
            name: None,
            type_guid_or_id: kind.into(),
            unique_guid: Some(uuid.into()),
        }
    }

    #[test]
    fn the_esp_is_found_by_type_then_by_uuid() {
        let linux = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        let gpt = |entries| PartitionTable::Gpt {
            disk_guid: "x".into(),
            entries,
            sector_size: 512,
            first_usable_lba: 34,
            last_usable_lba: 100_000,
            alternate_lba: 100_033,
            from_backup: false,
        };
        let u1 = "11111111-2222-3333-4444-555555555555";
        let u2 = "66666666-7777-8888-9999-aaaaaaaaaaaa";
        let t = gpt(vec![entry(1, linux, u1), entry(2, efi::ESP_TYPE_GUID, u2)]);
        let (e, hd) = find_esp(&t, Some(u1)).unwrap();
        assert_eq!(e.number, 2, "the ESP type wins over the recorded UUID");
        assert_eq!((hd.number, hd.start_lba, hd.size_lba), (2, 4096, 2048));
        assert_eq!(
            hd.signature,
            PartitionSignature::Gpt(efi::guid_bytes(u2).unwrap())
        );
        let t = gpt(vec![entry(1, linux, u1)]);
        assert_eq!(find_esp(&t, Some(&u1.to_uppercase())).unwrap().0.number, 1);
        assert!(find_esp(&t, None).is_none());
        let mbr = PartitionTable::Mbr {
            signature: 0xdead_beef,
            entries: vec![
                entry(1, "0x83", "deadbeef-01"),
                entry(2, "0xef", "deadbeef-02"),
            ],
        };
        let (e, hd) = find_esp(&mbr, None).unwrap();
        assert_eq!(e.number, 2);
        assert_eq!(hd.signature, PartitionSignature::Mbr(0xdead_beef));
    }
}
