//! The `image` extension: bootloader installation.

use std::sync::Arc;

use super::{text_result, Outcome, Params};
use crate::agent::Agent;
use crate::error::AgentError;

/// `image.install_bootloader(root_uuid, efi_system_part_uuid, prep_boot_part_uuid,
/// target_boot_mode)`. Ironic sends it for UEFI whole-disk deploys too. A whole-disk image
/// carries its own bootloader: succeed without touching the disk, and say so. Partition
/// images (which need GRUB installed) are not written by Ferric yet.
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
        .and_then(|v| v.as_str())
        .unwrap_or("unspecified");
    let dev = state
        .device
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "the install device".into());
    Ok(text_result(
        "install_bootloader",
        &format!(
            "whole-disk image on {dev} carries its own bootloader (boot mode {mode}); \
             the disk was left untouched"
        ),
    ))
}
