//! Disk cleaning: IPA's `erase_devices_metadata`, `erase_devices` and
//! `erase_devices_express`, done in-process (no wipefs/sgdisk/shred/hdparm/
//! nvme-cli in the ramdisk).
//!
//! # Design
//! - [`select_devices`] decides which devices a step works on: every disk IPA
//!   would list (ramdisk) or exactly the caller's list (outside), minus devices
//!   that must be skipped (in use, IPA's virtual media, `skip_block_devices`
//!   hints, empty). Any device the caller's guard refuses fails the whole step
//!   with [`StepError::ProtectedDevice`] **before** anything is written.
//! - Every write opens the device with `O_EXCL`, so the kernel itself refuses
//!   a device that is mounted or held by md/dm.
//! - `erase_devices` runs one thread per device, at most
//!   `disk_erasure_concurrency` at a time (std scoped threads pulling from a
//!   shared index); each thread dispatches `erase_block_device` to the
//!   managers. All devices are attempted; failures are reported together.
//! - Progress goes to the caller's callback ([`Progress`]) from the worker
//!   threads, rate-limited per device.
//!
//! Modules: `metadata` (signature wipe), `ptable` (GPT/MBR parsing to find
//! partitions the kernel does not show), `overwrite` (random/zero passes),
//! `nvme` and `ata_security` (hardware erase commands), `erase` (per-device
//! policy of `erase_devices` and `erase_devices_express`).

pub(crate) mod ata_security;
pub(crate) mod erase;
pub(crate) mod metadata;
pub(crate) mod nvme;
pub(crate) mod overwrite;
pub(crate) mod ptable;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::block::{block_device, device_in_use, list_block_devices, BlockDevice, DeviceKind};
use crate::manager::{StepContext, StepError};
use crate::sysfs::under;

pub use erase::wipe_device_metadata;
pub use metadata::MetadataWipe;

/// The byte ranges `erase_devices_metadata` would zero on a device of `size` bytes and logical
/// sector size `lbs` that holds `head` at its start and `tail` at its end (zeros between), as
/// sorted, disjoint `(start, len)` pairs. The tables and signatures it reads are a previous
/// tenant's, so the `wipe_plan` fuzz target drives this; nothing is opened or written.
#[doc(hidden)]
pub fn metadata_wipe_plan(head: &[u8], tail: &[u8], size: u64, lbs: u64) -> Vec<(u64, u64)> {
    struct Sparse<'a> {
        head: &'a [u8],
        tail: &'a [u8],
        size: u64,
    }
    impl ptable::ReadAt for Sparse<'_> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let end = offset
                .checked_add(buf.len() as u64)
                .filter(|&e| e <= self.size)
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.fill(0);
            // Copies the part of `bytes` (which sit at `at` on the device) that the read covers.
            let mut copy = |bytes: &[u8], at: u64| {
                let from = offset.max(at);
                let to = end.min(at.saturating_add(bytes.len() as u64));
                if from < to {
                    let (n, src, dst) = (
                        (to - from) as usize,
                        (from - at) as usize,
                        (from - offset) as usize,
                    );
                    buf[dst..dst + n].copy_from_slice(&bytes[src..src + n]);
                }
            };
            copy(self.head, 0);
            copy(self.tail, self.size.saturating_sub(self.tail.len() as u64));
            Ok(())
        }
    }
    let dev = Sparse { head, tail, size };
    let tables = ptable::read_tables(&dev, size, lbs);
    metadata::plan(&dev, size, &tables.partitions, &tables.ebrs)
        .into_iter()
        .map(|e| (e.start, e.len))
        .collect()
}

/// What a long operation is doing, for [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Zeroing metadata regions (`erase_devices_metadata`).
    MetadataWipe,
    /// Writing pseudo-random data over the whole device.
    RandomPass,
    /// Writing zeroes over the whole device.
    ZeroPass,
    /// NVMe Format NVM with secure erase, running in the controller.
    NvmeFormat,
    /// ATA SECURITY ERASE UNIT, running in the drive.
    AtaSecureErase,
    /// Discarding the whole device.
    Discard,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::MetadataWipe => "metadata wipe",
            Operation::RandomPass => "random overwrite",
            Operation::ZeroPass => "zero overwrite",
            Operation::NvmeFormat => "NVMe secure format",
            Operation::AtaSecureErase => "ATA security erase",
            Operation::Discard => "discard",
        })
    }
}

/// A progress report: `bytes_done` of `bytes_total` in pass `pass` of
/// `passes` on `device`. Hardware erases report 0 at start and the total at
/// the end (the drive does not say more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress<'a> {
    /// e.g. `/dev/sda`.
    pub device: &'a str,
    /// What is running.
    pub operation: Operation,
    /// 1-based pass number.
    pub pass: u32,
    /// Number of passes of the whole erase of this device.
    pub passes: u32,
    /// Bytes done in this pass.
    pub bytes_done: u64,
    /// Bytes of this pass.
    pub bytes_total: u64,
}

/// Rate limiter for progress callbacks of one device.
pub(crate) struct Ticker {
    last: Option<Instant>,
}

impl Ticker {
    pub(crate) fn new() -> Ticker {
        Ticker { last: None }
    }

    /// True when a report is due (first call, or 500 ms since the last).
    pub(crate) fn due(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_millis(500) => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The erase settings Ironic puts into `node.driver_internal_info`
/// (PROTOCOL.md §4; Ironic `agent_base.agent_add_clean_params`), with IPA's
/// defaults when a key is missing (IPA `hardware.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseSettings {
    /// `agent_erase_devices_iterations` (default 1): random passes.
    pub iterations: u32,
    /// `agent_erase_devices_zeroize` (default true): a final zero pass.
    pub zeroize: bool,
    /// `agent_enable_nvme_secure_erase` (default true).
    pub enable_nvme_secure_erase: bool,
    /// `agent_enable_ata_secure_erase` (default true).
    pub enable_ata_secure_erase: bool,
    /// `agent_continue_if_secure_erase_failed`, falling back to the older
    /// `agent_continue_if_ata_erase_failed` (default false): overwrite when a
    /// hardware erase fails instead of failing the step.
    pub continue_if_secure_erase_failed: bool,
    /// `disk_erasure_concurrency` (default 1): devices erased at once.
    pub concurrency: usize,
    /// `agent_erase_skip_read_only` (default false): skip read-only devices
    /// instead of failing.
    pub skip_read_only: bool,
}

impl Default for EraseSettings {
    fn default() -> Self {
        EraseSettings {
            iterations: 1,
            zeroize: true,
            enable_nvme_secure_erase: true,
            enable_ata_secure_erase: true,
            continue_if_secure_erase_failed: false,
            concurrency: 1,
            skip_read_only: false,
        }
    }
}

/// Upper bounds that keep a mistyped setting from turning cleaning into a
/// months-long job or a thread bomb.
const MAX_ITERATIONS: u64 = 100;
const MAX_CONCURRENCY: u64 = 64;

fn invalid(key: &str, message: String) -> StepError {
    StepError::InvalidArgs {
        step: format!("driver_internal_info.{key}"),
        message,
    }
}

fn get_bool(info: &Value, key: &str) -> Result<Option<bool>, StepError> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(invalid(key, format!("expected a boolean, got {s:?}"))),
        },
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= 1) => {
            Ok(Some(n.as_u64() == Some(1)))
        }
        Some(other) => Err(invalid(key, format!("expected a boolean, got {other}"))),
    }
}

fn get_uint(info: &Value, key: &str, max: u64) -> Result<Option<u64>, StepError> {
    let v = match info.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match v {
        Some(v) if v <= max => Ok(Some(v)),
        Some(v) => Err(invalid(
            key,
            format!("{v} is larger than the supported maximum {max}"),
        )),
        None => Err(invalid(
            key,
            format!("expected a non-negative integer, got {}", info[key]),
        )),
    }
}

impl EraseSettings {
    /// Reads the settings from `node.driver_internal_info`; wrong types and
    /// absurd values are [`StepError::InvalidArgs`].
    pub fn from_node(node: &Value) -> Result<EraseSettings, StepError> {
        let info = node.get("driver_internal_info").unwrap_or(&Value::Null);
        let d = EraseSettings::default();
        let continue_new = get_bool(info, "agent_continue_if_secure_erase_failed")?;
        let continue_old = get_bool(info, "agent_continue_if_ata_erase_failed")?;
        let concurrency = get_uint(info, "disk_erasure_concurrency", MAX_CONCURRENCY)?
            .map(|c| c.max(1) as usize)
            .unwrap_or(d.concurrency);
        Ok(EraseSettings {
            iterations: get_uint(info, "agent_erase_devices_iterations", MAX_ITERATIONS)?
                .map(|v| v as u32)
                .unwrap_or(d.iterations),
            zeroize: get_bool(info, "agent_erase_devices_zeroize")?.unwrap_or(d.zeroize),
            enable_nvme_secure_erase: get_bool(info, "agent_enable_nvme_secure_erase")?
                .unwrap_or(d.enable_nvme_secure_erase),
            enable_ata_secure_erase: get_bool(info, "agent_enable_ata_secure_erase")?
                .unwrap_or(d.enable_ata_secure_erase),
            // IPA reads the new key and only falls back to the deprecated one
            // when the new one is absent (older conductors).
            continue_if_secure_erase_failed: continue_new.or(continue_old).unwrap_or(false),
            concurrency,
            skip_read_only: get_bool(info, "agent_erase_skip_read_only")?
                .unwrap_or(d.skip_read_only),
        })
    }
}

/// One `erase_devices` run: its settings and the devices it erases (a
/// hardware erase that would also hit other devices is only allowed when
/// those are part of the run).
#[derive(Debug, Clone)]
pub struct EraseJob {
    /// The settings.
    pub settings: EraseSettings,
    /// Names (`/dev/x`) of every device erased by this run.
    pub devices: Vec<String>,
}

/// The devices a step works on and those it leaves alone.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Devices to work on, sorted by name.
    pub devices: Vec<BlockDevice>,
    /// `(device, reason)` for devices deliberately left alone.
    pub skipped: Vec<(String, String)>,
}

/// IPA's virtual media (the `ir-vfd-dev` labelled device carrying the
/// agent's parameters) is never cleaned (IPA `_is_virtual_media_device`).
fn virtual_media_device(root: &Path) -> Option<String> {
    let link = under(root, "dev/disk/by-label/ir-vfd-dev");
    let target = std::fs::read_link(&link).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(format!("/dev/{name}"))
}

/// Whether the whole device `kname` is the parent of virtual media partition `vm`.
fn holds(root: &Path, dev: &BlockDevice, vm: &str) -> bool {
    let vm_name = vm.trim_start_matches("/dev/");
    vm == dev.name
        || under(root, "sys/block")
            .join(dev.kernel_name())
            .join(vm_name)
            .exists()
}

/// `node.properties.skip_block_devices`: a list of root-device-hint objects
/// naming devices cleaning must not touch (IPA `_list_erasable_devices`).
fn skip_hints(node: &Value) -> Result<Vec<crate::hints::RootDeviceHints>, StepError> {
    let Some(list) = node.pointer("/properties/skip_block_devices") else {
        return Ok(Vec::new());
    };
    let Some(items) = list.as_array() else {
        if list.is_null() {
            return Ok(Vec::new());
        }
        return Err(StepError::InvalidArgs {
            step: "properties.skip_block_devices".into(),
            message: format!("expected a list, got {list}"),
        });
    };
    let mut out = Vec::new();
    for item in items {
        // IPA also accepts {"volume_name": ...} for software RAID volumes,
        // which Ferric does not create; such entries match nothing here.
        if item.get("volume_name").is_some() && item.as_object().is_some_and(|o| o.len() == 1) {
            continue;
        }
        let hints = crate::hints::parse(item).map_err(|e| StepError::InvalidArgs {
            step: "properties.skip_block_devices".into(),
            message: format!("{item}: {e}"),
        })?;
        // An empty hint would match every device and silently leave all
        // data in place; it is ignored instead.
        if !hints.is_empty() {
            out.push(hints);
        }
    }
    Ok(out)
}

/// Chooses the devices a cleaning step works on (see the module docs).
pub fn select_devices(ctx: &StepContext<'_>) -> Result<Selection, StepError> {
    let root = ctx.root;
    let mut candidates: Vec<BlockDevice> = match ctx.devices.explicit() {
        None => list_block_devices(root)?
            .into_iter()
            .filter(|d| d.kind == DeviceKind::Disk)
            .collect(),
        Some(list) => {
            let mut v = Vec::new();
            for p in list {
                let dev = block_device(root, p)?;
                if !v.iter().any(|d: &BlockDevice| d.name == dev.name) {
                    v.push(dev);
                }
            }
            v
        }
    };
    candidates.sort_by(|a, b| a.name.cmp(&b.name));

    let refused: Vec<String> = candidates
        .iter()
        .filter(|d| !ctx.devices.allows(Path::new(&d.name)))
        .map(|d| d.name.clone())
        .collect();
    if !refused.is_empty() {
        return Err(StepError::ProtectedDevice {
            devices: refused,
            reason: "the agent's device guard does not allow these devices (outside its ramdisk \
                     the agent only touches devices named with --install-device/--allow-device)"
                .into(),
        });
    }

    let vm = virtual_media_device(root);
    let hints = skip_hints(ctx.node)?;
    let mut sel = Selection {
        devices: Vec::new(),
        skipped: Vec::new(),
    };
    let mut held = Vec::new();
    for dev in candidates {
        let skip = if matches!(
            dev.kind,
            DeviceKind::Ram | DeviceKind::Rom | DeviceKind::Other
        ) {
            Some(format!("{:?} devices are never cleaned", dev.kind))
        } else if dev.size == 0 {
            Some("empty device".to_string())
        } else if vm.as_deref().is_some_and(|vm| holds(root, &dev, vm)) {
            Some("holds the virtual media (ir-vfd-dev) the agent was booted with".to_string())
        } else if hints.iter().any(|h| h.matches(&dev)) {
            Some("matches node.properties.skip_block_devices".to_string())
        } else {
            match device_in_use(root, &dev)? {
                None => None,
                Some(why) => {
                    let foreign: Vec<String> = holders(root, &dev)
                        .into_iter()
                        .filter(|h| !h.starts_with("md"))
                        .collect();
                    if !foreign.is_empty() {
                        held.push(format!("{} ({why})", dev.name));
                        continue;
                    }
                    // Mounted or swap (the ramdisk's own media) or an md
                    // member (the array itself is cleaned, as IPA skips
                    // RAID members).
                    Some(format!("in use: {why}"))
                }
            }
        };
        match skip {
            Some(reason) => {
                log::info!("cleaning skips {}: {reason}", dev.name);
                sel.skipped.push((dev.name.clone(), reason));
            }
            None => sel.devices.push(dev),
        }
    }
    if !held.is_empty() {
        // Skipping these would report success while the data stays: the
        // device-mapper device on top (LVM, dm-crypt, multipath) is not
        // cleaned either.
        return Err(StepError::BlockDeviceErase(format!(
            "cannot clean {}: held by device-mapper or another stacked driver; deactivate it \
             (vgchange -an, cryptsetup close, multipath -F) so its data can be erased",
            held.join("; ")
        )));
    }
    Ok(sel)
}

/// Kernel names holding `dev` or one of its partitions (`holders/` in sysfs).
fn holders(root: &Path, dev: &BlockDevice) -> Vec<String> {
    let dir = under(root, "sys/block").join(dev.kernel_name());
    let mut out = crate::sysfs::dir_names(&dir.join("holders"));
    for child in crate::sysfs::dir_names(&dir) {
        if dir.join(&child).join("partition").exists() {
            out.extend(crate::sysfs::dir_names(&dir.join(&child).join("holders")));
        }
    }
    out
}

/// Per-device outcome of a cleaning step, serialised as the step result
/// `{"/dev/sda": "what was done", ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// `(device, description)` in device order.
    pub devices: Vec<(String, String)>,
}

impl CleanReport {
    /// The step result as JSON.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (d, what) in &self.devices {
            map.insert(d.clone(), Value::String(what.clone()));
        }
        Value::Object(map)
    }

    pub(crate) fn add_skipped(&mut self, skipped: &[(String, String)]) {
        for (d, why) in skipped {
            self.devices.push((d.clone(), format!("skipped: {why}")));
        }
        self.devices.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

/// Runs `work` for each device on at most `concurrency` threads; returns the
/// results in device order. Every device is attempted even when some fail
/// (IPA collects all results before raising).
pub(crate) fn run_concurrently<T, F>(devices: &[BlockDevice], concurrency: usize, work: F) -> Vec<T>
where
    T: Send,
    F: Fn(&BlockDevice) -> T + Sync,
{
    let workers = concurrency.clamp(1, devices.len().max(1));
    if workers == 1 {
        return devices.iter().map(&work).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..devices.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(dev) = devices.get(i) else { break };
                let r = work(dev);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every device was processed"))
        .collect()
}

/// The device node of `dev` under `root`.
pub(crate) fn dev_path(root: &Path, dev: &BlockDevice) -> PathBuf {
    under(root, &format!("dev/{}", dev.kernel_name()))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A whole-disk BlockDevice named `name` for unit tests.
    pub(crate) fn disk(name: &str) -> BlockDevice {
        BlockDevice {
            name: name.to_string(),
            model: String::new(),
            size: 1,
            rotational: false,
            wwn: None,
            serial: None,
            vendor: None,
            wwn_with_extension: None,
            wwn_vendor_extension: None,
            hctl: None,
            by_path: None,
            logical_sectors: None,
            physical_sectors: None,
            tran: None,
            kind: DeviceKind::Disk,
            removable: false,
            read_only: false,
            major_minor: (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wipe_plan_reads_the_tail_where_the_device_ends() {
        // A DDF anchor in the last sector of a 1 GiB device naming headers 512 MB and
        // 768 MB in: the plan zeroes both ends and exactly those two sectors.
        let mut anchor = vec![0u8; 512];
        anchor[0..4].copy_from_slice(&[0xDE, 0x11, 0xDE, 0x11]);
        anchor[96..104].copy_from_slice(&1_000_000u64.to_be_bytes());
        anchor[104..112].copy_from_slice(&1_500_000u64.to_be_bytes());
        let size = 1u64 << 30;
        let mib = 1u64 << 20;
        assert_eq!(
            metadata_wipe_plan(&[], &anchor, size, 512),
            vec![
                (0, mib),
                (512_000_000, 512),
                (768_000_000, 512),
                (size - mib, mib)
            ]
        );
        // Without the anchor only the ends.
        assert_eq!(
            metadata_wipe_plan(&[], &[0u8; 512], size, 512),
            vec![(0, mib), (size - mib, mib)]
        );
    }
    use crate::manager::DeviceFilter;
    use serde_json::json;

    #[test]
    fn settings_defaults_are_ipas() {
        let s = EraseSettings::from_node(&json!({})).unwrap();
        assert_eq!(s, EraseSettings::default());
        assert_eq!(s.iterations, 1);
        assert!(s.zeroize && s.enable_ata_secure_erase && s.enable_nvme_secure_erase);
        assert!(!s.continue_if_secure_erase_failed && !s.skip_read_only);
        assert_eq!(s.concurrency, 1);
    }

    #[test]
    fn settings_from_the_recorded_node() {
        // driver_internal_info of recordings/03-provide-clean.jsonl.
        let node = json!({"driver_internal_info": {
            "agent_erase_devices_iterations": 1,
            "agent_erase_devices_zeroize": true,
            "agent_continue_if_secure_erase_failed": false,
            "agent_continue_if_ata_erase_failed": false,
            "agent_enable_nvme_secure_erase": true,
            "agent_enable_ata_secure_erase": true,
            "disk_erasure_concurrency": 4,
            "agent_erase_skip_read_only": false}});
        let s = EraseSettings::from_node(&node).unwrap();
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.iterations, 1);
    }

    #[test]
    fn continue_flag_falls_back_to_the_deprecated_key() {
        let old = json!({"driver_internal_info": {"agent_continue_if_ata_erase_failed": true}});
        assert!(
            EraseSettings::from_node(&old)
                .unwrap()
                .continue_if_secure_erase_failed
        );
        let both = json!({"driver_internal_info": {
            "agent_continue_if_ata_erase_failed": true,
            "agent_continue_if_secure_erase_failed": false}});
        assert!(
            !EraseSettings::from_node(&both)
                .unwrap()
                .continue_if_secure_erase_failed
        );
    }

    #[test]
    fn hostile_settings_are_rejected_not_obeyed() {
        for (k, v) in [
            ("agent_erase_devices_iterations", json!(-1)),
            ("agent_erase_devices_iterations", json!(1_000_000)),
            ("agent_erase_devices_iterations", json!("many")),
            ("disk_erasure_concurrency", json!(100_000)),
            ("agent_erase_devices_zeroize", json!("maybe")),
            ("agent_erase_skip_read_only", json!([true])),
        ] {
            let node = json!({"driver_internal_info": {k: v}});
            let err = EraseSettings::from_node(&node).unwrap_err();
            assert!(
                matches!(err, StepError::InvalidArgs { .. }),
                "{k}={v}: {err}"
            );
            assert!(err.to_string().contains(k), "{err}");
        }
        let strings = json!({"driver_internal_info": {
            "agent_erase_devices_iterations": "3", "agent_erase_devices_zeroize": "False",
            "disk_erasure_concurrency": 0}});
        let s = EraseSettings::from_node(&strings).unwrap();
        assert_eq!((s.iterations, s.zeroize, s.concurrency), (3, false, 1));
    }

    /// A sysfs/procfs fixture: `(kernel name, partitions, holders of the
    /// disk, holders of its first partition)`; nothing here opens a device.
    fn fixture(disks: &[(&str, bool, &[&str], &[&str])], mounts: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for (i, (name, part, holders, part_holders)) in disks.iter().enumerate() {
            let d = r.join("sys/block").join(name);
            std::fs::create_dir_all(d.join("holders")).unwrap();
            std::fs::write(d.join("dev"), format!("8:{}\n", i * 16)).unwrap();
            std::fs::write(d.join("size"), "2048\n").unwrap();
            for h in *holders {
                std::fs::create_dir_all(d.join("holders").join(h)).unwrap();
            }
            if *part {
                let p = d.join(format!("{name}1"));
                std::fs::create_dir_all(p.join("holders")).unwrap();
                std::fs::write(p.join("partition"), "1\n").unwrap();
                std::fs::write(p.join("dev"), format!("8:{}\n", i * 16 + 1)).unwrap();
                for h in *part_holders {
                    std::fs::create_dir_all(p.join("holders").join(h)).unwrap();
                }
            }
        }
        std::fs::create_dir_all(r.join("proc/self")).unwrap();
        std::fs::write(r.join("proc/self/mountinfo"), mounts).unwrap();
        dir
    }

    #[test]
    fn selection_skips_media_and_md_members_but_refuses_dm_held_disks() {
        let mounts = "30 1 8:17 / /run/media rw - vfat /dev/sdb1 rw\n";
        let dir = fixture(
            &[
                ("sda", true, &[], &["md127"]),
                ("sdb", true, &[], &[]),
                ("sdc", false, &[], &[]),
                ("md127", false, &[], &[]),
                ("loop0", false, &[], &[]),
            ],
            mounts,
        );
        let (node, ports) = (json!({}), json!([]));
        let ctx = StepContext::new(dir.path(), &node, &ports, DeviceFilter::all_disks());
        let sel = select_devices(&ctx).unwrap();
        let names: Vec<&str> = sel.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/md127", "/dev/sdc"]);
        assert_eq!(sel.skipped.len(), 2);
        assert!(sel.skipped[0].0 == "/dev/sda" && sel.skipped[0].1.contains("held by md127"));
        assert!(
            sel.skipped[1].0 == "/dev/sdb" && sel.skipped[1].1.contains("mounted at /run/media")
        );

        let dir = fixture(
            &[("sda", true, &[], &["dm-0"]), ("sdc", false, &[], &[])],
            "",
        );
        let ctx = StepContext::new(dir.path(), &node, &ports, DeviceFilter::all_disks());
        let err = select_devices(&ctx).unwrap_err();
        assert_eq!(err.ipa_type(), "BlockDeviceEraseError");
        assert!(
            err.to_string()
                .contains("/dev/sda (partition /dev/sda1 is held by dm-0)"),
            "{err}"
        );
    }

    #[test]
    fn skip_hints_and_virtual_media() {
        let dir = fixture(
            &[
                ("sda", false, &[], &[]),
                ("sdb", false, &[], &[]),
                ("sdc", false, &[], &[]),
            ],
            "",
        );
        std::fs::create_dir_all(dir.path().join("dev/disk/by-label")).unwrap();
        std::os::unix::fs::symlink("../../sdc", dir.path().join("dev/disk/by-label/ir-vfd-dev"))
            .unwrap();
        let node = json!({"properties": {"skip_block_devices": [{"name": "/dev/sda"}, {"volume_name": "r"}, {}]}});
        let ports = json!([]);
        let ctx = StepContext::new(dir.path(), &node, &ports, DeviceFilter::all_disks());
        let sel = select_devices(&ctx).unwrap();
        let names: Vec<&str> = sel.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/sdb"]);
        assert!(sel
            .skipped
            .iter()
            .any(|(d, r)| d == "/dev/sda" && r.contains("skip_block_devices")));
        assert!(sel
            .skipped
            .iter()
            .any(|(d, r)| d == "/dev/sdc" && r.contains("virtual media")));
    }

    #[test]
    fn concurrency_runs_every_device_once_in_order() {
        let devs: Vec<BlockDevice> = (0..7)
            .map(|i| tests_support::disk(&format!("/dev/x{i}")))
            .collect();
        let calls = AtomicUsize::new(0);
        for c in [1, 3, 64] {
            calls.store(0, Ordering::SeqCst);
            let out = run_concurrently(&devs, c, |d| {
                calls.fetch_add(1, Ordering::SeqCst);
                d.name.clone()
            });
            assert_eq!(calls.load(Ordering::SeqCst), 7);
            let names: Vec<String> = devs.iter().map(|d| d.name.clone()).collect();
            assert_eq!(out, names);
        }
    }
}
