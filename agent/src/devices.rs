//! Which block device an image goes to, and which devices may be touched at all.
//!
//! Outside the Ferric ramdisk the agent writes, wipes or erases nothing but the devices
//! named with `--install-device` / `--allow-device`: a developer's or CI machine's own disks
//! must be impossible to touch, whatever a conductor asks. Inside the ramdisk the machine's
//! disks are what the agent is there to deploy onto.

use std::path::{Path, PathBuf};

use ferric_hardware::{self as hw, BlockDevice};
use serde_json::Value;

use crate::config::Config;
use crate::error::AgentError;

/// The marker file ramdisk-build puts into the initramfs.
pub const RAMDISK_MARKER: &str = "etc/ferric-ramdisk";

/// True when the agent runs in the Ferric ramdisk: the marker file exists AND the root
/// filesystem is the initramfs (rootfs/ramfs/tmpfs). Both are needed, so that neither a
/// stray file on a real system nor a machine that boots from an initramfs of its own
/// (as some VMs do) can turn the safety off.
pub fn in_ramdisk(root: &Path) -> bool {
    if !root.join(RAMDISK_MARKER).is_file() {
        return false;
    }
    let mounts = std::fs::read_to_string(root.join("proc/self/mounts")).unwrap_or_default();
    root_fs_is_ram(&mounts)
}

fn root_fs_is_ram(mounts: &str) -> bool {
    // The last mount of "/" is the one in force.
    let fstype = mounts
        .lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            (mnt == "/").then_some(ty)
        })
        .next();
    matches!(fstype, Some("rootfs" | "ramfs" | "tmpfs"))
}

/// Decides whether a device may be written.
#[derive(Debug, Clone)]
pub struct DeviceGuard {
    in_ramdisk: bool,
    allowed: Vec<PathBuf>,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl DeviceGuard {
    /// The guard for this configuration.
    pub fn new(in_ramdisk: bool, config: &Config) -> DeviceGuard {
        let allowed = config
            .allow_devices
            .iter()
            .chain(config.install_device.iter())
            .map(|p| canonical(p))
            .collect();
        DeviceGuard {
            in_ramdisk,
            allowed,
        }
    }

    /// Ok when `dev` may be written, wiped or erased.
    pub fn check(&self, dev: &Path) -> Result<(), AgentError> {
        if self.in_ramdisk || self.allowed.contains(&canonical(dev)) {
            return Ok(());
        }
        Err(AgentError::new(
            "ProtectedDeviceError",
            403,
            "Device is protected",
            format!(
                "refusing to touch {}: the agent is not running in its ramdisk, and outside the \
                 ramdisk only devices named with --install-device or --allow-device may be \
                 written (allowed: {})",
                dev.display(),
                if self.allowed.is_empty() {
                    "none".to_string()
                } else {
                    self.allowed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ))
    }

    /// The devices that may be touched outside the ramdisk.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }
}

/// Choose the install device: `--install-device`, else the node's root device hints, else
/// IPA's rule (the smallest non-removable disk of at least 4 GiB). Loop, ram and rom
/// devices are only ever used when named explicitly.
pub fn select_install_device(config: &Config, node: Option<&Value>) -> Result<PathBuf, AgentError> {
    if let Some(dev) = &config.install_device {
        return Ok(dev.clone());
    }
    let devices = hw::list_block_devices(&config.sys_root)
        .map_err(|e| AgentError::device_not_found(format!("cannot list block devices: {e}")))?;
    let hints = node
        .and_then(|n| n.pointer("/properties/root_device"))
        .filter(|h| !h.is_null());
    if let Some(h) = hints {
        let parsed = hw::hints::parse(h).map_err(|e| {
            AgentError::invalid_params(format!("invalid root device hints {h}: {e}"))
        })?;
        let candidates: Vec<BlockDevice> = devices
            .into_iter()
            .filter(|d| d.kind == hw::DeviceKind::Disk)
            .collect();
        let dev = hw::hints::select(&candidates, &parsed)
            .map_err(|e| AgentError::device_not_found(e.to_string()))?;
        log::info!(
            "install device {} chosen by root device hints {h} (by_path {})",
            dev.name,
            dev.by_path.as_deref().unwrap_or("none")
        );
        return Ok(PathBuf::from(&dev.name));
    }
    hw::default_root_device(&devices)
        .map(|d| PathBuf::from(&d.name))
        .ok_or_else(|| {
            AgentError::device_not_found(format!(
                "no suitable install device: no non-removable disk of at least 4 GiB among {}",
                describe(&devices)
            ))
        })
}

fn describe(devices: &[BlockDevice]) -> String {
    if devices.is_empty() {
        return "(no block devices)".into();
    }
    devices
        .iter()
        .map(|d| format!("{} ({} bytes)", d.name, d.size))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuse a device that is in use (mounted, swap, held by dm/md): writing it would corrupt a
/// running system. Regular files (test disks) are not block devices and pass.
pub fn check_not_in_use(config: &Config, dev: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(dev).map_err(|e| {
        AgentError::device_not_found(format!("install device {}: {e}", dev.display()))
    })?;
    if !meta.file_type().is_block_device() {
        if meta.is_file() {
            return Ok(());
        }
        return Err(AgentError::device_not_found(format!(
            "{} is neither a block device nor a regular file",
            dev.display()
        )));
    }
    let bd = hw::block_device(&config.sys_root, dev).map_err(|e| {
        AgentError::device_not_found(format!("install device {}: {e}", dev.display()))
    })?;
    if bd.read_only {
        return Err(AgentError::new(
            "BlockDeviceError",
            500,
            "Block device caused unknown error",
            format!("{} is read-only", dev.display()),
        ));
    }
    match hw::device_in_use(&config.sys_root, &bd) {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(AgentError::new(
            "BlockDeviceError",
            500,
            "Block device caused unknown error",
            format!("refusing to write {}: it is in use ({why})", dev.display()),
        )),
        Err(e) => Err(AgentError::new(
            "BlockDeviceError",
            500,
            "Block device caused unknown error",
            format!("cannot tell whether {} is in use: {e}", dev.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramdisk_needs_marker_and_ram_root() {
        assert!(root_fs_is_ram(
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n"
        ));
        assert!(!root_fs_is_ram("/dev/vda / ext4 rw 0 0\n"));
        assert!(!root_fs_is_ram(
            "rootfs / rootfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
        ));

        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc/self")).unwrap();
        std::fs::write(t.path().join("proc/self/mounts"), "none / tmpfs rw 0 0\n").unwrap();
        assert!(!in_ramdisk(t.path()), "no marker, no ramdisk");
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join(RAMDISK_MARKER), "").unwrap();
        assert!(in_ramdisk(t.path()));
        std::fs::write(
            t.path().join("proc/self/mounts"),
            "/dev/vda / ext4 rw 0 0\n",
        )
        .unwrap();
        assert!(
            !in_ramdisk(t.path()),
            "marker on a disk-rooted system is not a ramdisk"
        );
    }

    #[test]
    fn this_machine_is_not_a_ramdisk() {
        assert!(!in_ramdisk(Path::new("/")));
    }

    #[test]
    fn guard_allows_only_named_devices_outside_ramdisk() {
        let cli = crate::config::Cli {
            standalone: true,
            agent_token: Some("t".into()),
            install_device: Some("/dev/loop7".into()),
            allow_device: vec!["/dev/loop6".into()],
            ..Default::default()
        };
        let cfg = Config::resolve(&cli, Default::default()).unwrap();
        let g = DeviceGuard::new(false, &cfg);
        assert!(g.check(Path::new("/dev/loop7")).is_ok());
        assert!(g.check(Path::new("/dev/loop6")).is_ok());
        let e = g.check(Path::new("/dev/vda")).unwrap_err();
        assert!(e.details.contains("/dev/vda") && e.details.contains("--install-device"));
        assert!(DeviceGuard::new(true, &cfg)
            .check(Path::new("/dev/vda"))
            .is_ok());
    }
}
