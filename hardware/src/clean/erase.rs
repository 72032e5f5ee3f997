//! The three cleaning steps of the generic manager and the per-device erase
//! policy (IPA `GenericHardwareManager.erase_devices`,
//! `erase_block_device`, `erase_devices_metadata`, `erase_devices_express`).

use serde_json::Value;

use crate::block::BlockDevice;
use crate::clean::metadata::{self, MetadataWipe};
use crate::clean::nvme::Hw;
use crate::clean::{ata_security, dev_path, nvme, overwrite, run_concurrently, select_devices};
use crate::clean::{CleanReport, EraseJob, EraseSettings, Selection};
use crate::manager::{StepCall, StepError};

fn is_nvme(dev: &BlockDevice) -> bool {
    dev.kernel_name().starts_with("nvme")
}

/// Joins per-device failures into one error, keeping the first error's kind
/// when all failures are of one kind.
fn combine(step: &str, failures: Vec<(String, StepError)>) -> StepError {
    if failures
        .iter()
        .any(|(_, e)| matches!(e, StepError::Cancelled))
    {
        return StepError::Cancelled;
    }
    let text: Vec<String> = failures.iter().map(|(d, e)| format!("{d}: {e}")).collect();
    StepError::BlockDeviceErase(format!(
        "{step} failed on {} device(s): {}",
        failures.len(),
        text.join("; ")
    ))
}

/// `erase_devices_metadata` (clean step priority 99, deploy step priority 0).
pub(crate) fn erase_devices_metadata(call: &StepCall<'_>) -> Result<Value, StepError> {
    let ctx = call.ctx;
    let sel = select_devices(ctx)?;
    let mut report = CleanReport::default();
    let mut failures = Vec::new();
    for dev in &sel.devices {
        if dev.read_only {
            // IPA skips read-only devices in the metadata wipe.
            report
                .devices
                .push((dev.name.clone(), "skipped: read-only device".into()));
            continue;
        }
        match metadata::wipe_device(ctx, dev) {
            Ok(w) => report.devices.push((dev.name.clone(), w.summary())),
            Err(e) => failures.push((dev.name.clone(), e)),
        }
    }
    if !failures.is_empty() {
        return Err(combine("erase_devices_metadata", failures));
    }
    report.add_skipped(&sel.skipped);
    Ok(report.to_json())
}

/// Wipes the metadata of one device; public for callers that need it
/// outside a step (e.g. before writing an image).
pub fn wipe_device_metadata(
    ctx: &crate::manager::StepContext<'_>,
    dev: &BlockDevice,
) -> Result<MetadataWipe, StepError> {
    if !ctx.devices.allows(std::path::Path::new(&dev.name)) {
        return Err(StepError::ProtectedDevice {
            devices: vec![dev.name.clone()],
            reason: "the agent's device guard does not allow this device".into(),
        });
    }
    metadata::wipe_device(ctx, dev)
}

/// `erase_devices` (clean step priority 10): every device through the
/// managers' `erase_block_device`, `disk_erasure_concurrency` at a time.
pub(crate) fn erase_devices(call: &StepCall<'_>) -> Result<Value, StepError> {
    let ctx = call.ctx;
    let settings = EraseSettings::from_node(ctx.node)?;
    let sel = select_devices(ctx)?;
    let job = EraseJob {
        devices: sel.devices.iter().map(|d| d.name.clone()).collect(),
        settings,
    };
    log::info!(
        "erase_devices: {} device(s), concurrency {}, {} random pass(es){}",
        job.devices.len(),
        job.settings.concurrency,
        job.settings.iterations,
        if job.settings.zeroize {
            " + zeroes"
        } else {
            ""
        }
    );
    let results = run_concurrently(&sel.devices, job.settings.concurrency, |dev| {
        call.managers.dispatch_erase_block_device(dev, &job, call)
    });
    report_results("erase_devices", &sel, results)
}

/// The generic manager's `erase_block_device` (IPA semantics):
/// read-only devices are skipped or refused; NVMe devices get a secure
/// format, others an ATA security erase, when enabled and supported; a
/// failed hardware erase fails the device unless
/// `agent_continue_if_secure_erase_failed`; otherwise overwrite passes.
pub(crate) fn generic_erase_block_device(
    dev: &BlockDevice,
    job: &EraseJob,
    call: &StepCall<'_>,
) -> Result<String, StepError> {
    let ctx = call.ctx;
    let s = &job.settings;
    if dev.read_only {
        if s.skip_read_only {
            log::info!("Skipping erase of read-only device {}", dev.name);
            return Ok("skipped: read-only device".into());
        }
        return Err(StepError::BlockDeviceErase(format!(
            "Failed to invoke erase of device {} as the device is flagged read-only, and the \
             conductor has not signaled this is a permitted case (agent_erase_skip_read_only)",
            dev.name
        )));
    }
    let hw = if is_nvme(dev) {
        s.enable_nvme_secure_erase
            .then(|| nvme::secure_erase(ctx, dev, job))
    } else if ata_security::applicable(dev) {
        s.enable_ata_secure_erase
            .then(|| ata_security::secure_erase(ctx, dev, None))
    } else {
        None
    };
    let mut fallback_note = String::new();
    match hw {
        Some(Ok(Hw::Erased(what))) => return Ok(what),
        Some(Ok(Hw::NotApplicable(why))) => {
            log::info!("no hardware erase for {}: {why}", dev.name);
        }
        Some(Err(e)) => {
            if s.continue_if_secure_erase_failed {
                log::warn!(
                    "Failed to invoke secure erase on {}, falling back to overwriting: {e}",
                    dev.name
                );
                fallback_note = format!(" after a failed secure erase ({e})");
            } else {
                // IPA raises IncompatibleHardwareMethodError here, so that
                // another manager may still handle the device.
                return Err(StepError::incompatible(format!(
                    "Failed to invoke secure erase on {}, fallback to overwriting is not enabled \
                     (agent_continue_if_secure_erase_failed): {e}",
                    dev.name
                )));
            }
        }
        None => {}
    }
    if ctx.cancelled() {
        return Err(StepError::Cancelled);
    }
    let passes = overwrite::passes(s.iterations, s.zeroize);
    if passes.is_empty() {
        // shred with 0 iterations and no --zero writes nothing; IPA would
        // report success with the data intact. Refuse instead.
        return Err(StepError::BlockDeviceErase(format!(
            "Cannot erase {}: agent_erase_devices_iterations is 0 and \
             agent_erase_devices_zeroize is false, so no overwrite pass would run",
            dev.name
        )));
    }
    // Discard is not used to erase: the kernel no longer reports whether
    // discarded blocks read back as zeroes, so nothing guarantees it; only a
    // device that still says so (old kernels) has its zero pass checked
    // against it, and even then the zero pass is written.
    let size = overwrite::overwrite(ctx, &dev.name, &dev_path(ctx.root, dev), &passes)?;
    let mut what = format!(
        "overwritten: {} random pass(es){} over {size} bytes",
        s.iterations,
        if s.zeroize { " and a zero pass" } else { "" }
    );
    what.push_str(&fallback_note);
    if metadata::discard_zeroes_data(ctx.root, dev) {
        what.push_str(" (device reports discard_zeroes_data; not relied on)");
    }
    Ok(what)
}

/// Estimated ATA erase time under which express erase uses it: the
/// smallest value a drive can report (one unit of 2 minutes), which SSDs
/// doing a crypto erase report.
const EXPRESS_ATA_MAX_MINUTES: u32 = 2;

/// `erase_devices_express` (clean step priority 0): hardware erase where it
/// is fast (NVMe format, or an ATA erase the drive estimates at 2 minutes),
/// else metadata wipe plus a best-effort discard of the whole device.
pub(crate) fn erase_devices_express(call: &StepCall<'_>) -> Result<Value, StepError> {
    let ctx = call.ctx;
    let settings = EraseSettings::from_node(ctx.node)?;
    let sel = select_devices(ctx)?;
    let job = EraseJob {
        devices: sel.devices.iter().map(|d| d.name.clone()).collect(),
        settings,
    };
    let results = run_concurrently(&sel.devices, job.settings.concurrency, |dev| {
        express_one(dev, &job, call)
    });
    report_results("erase_devices_express", &sel, results)
}

/// The step's answer from one result per selected device (in `sel.devices` order): every
/// device's outcome and the skipped ones, or one error naming every failed device.
fn report_results(
    step: &str,
    sel: &Selection,
    results: Vec<Result<String, StepError>>,
) -> Result<Value, StepError> {
    let mut report = CleanReport::default();
    let mut failures = Vec::new();
    for (dev, r) in sel.devices.iter().zip(results) {
        match r {
            Ok(what) => report.devices.push((dev.name.clone(), what)),
            Err(e) => failures.push((dev.name.clone(), e)),
        }
    }
    if !failures.is_empty() {
        return Err(combine(step, failures));
    }
    report.add_skipped(&sel.skipped);
    Ok(report.to_json())
}

fn express_one(
    dev: &BlockDevice,
    job: &EraseJob,
    call: &StepCall<'_>,
) -> Result<String, StepError> {
    let ctx = call.ctx;
    if dev.read_only {
        return Ok("skipped: read-only device".into());
    }
    let s = &job.settings;
    let hw = if is_nvme(dev) && s.enable_nvme_secure_erase {
        Some(nvme::secure_erase(ctx, dev, job))
    } else if !is_nvme(dev) && s.enable_ata_secure_erase && ata_security::applicable(dev) {
        Some(ata_security::secure_erase(
            ctx,
            dev,
            Some(EXPRESS_ATA_MAX_MINUTES),
        ))
    } else {
        None
    };
    let note = match hw {
        Some(Ok(Hw::Erased(what))) => return Ok(what),
        Some(Ok(Hw::NotApplicable(why))) => format!(" (no fast hardware erase: {why})"),
        // IPA: a failed secure erase falls back to the metadata wipe.
        Some(Err(e)) => {
            log::warn!(
                "secure erase of {} failed, falling back to metadata erase: {e}",
                dev.name
            );
            format!(" (secure erase failed: {e})")
        }
        None => String::new(),
    };
    let wipe = metadata::wipe_device(ctx, dev)?;
    let discard = if metadata::supports_discard(ctx.root, dev) {
        match metadata::discard_all(ctx, dev) {
            Ok(n) => format!("; {n} bytes discarded"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err(StepError::Cancelled)
            }
            Err(e) => {
                log::warn!("discard of {} failed: {e}", dev.name);
                format!("; discard failed: {e}")
            }
        }
    } else {
        "; no discard support".to_string()
    };
    Ok(format!("{}{discard}{note}", wipe.summary()))
}
