//! Block devices: listing, identity, the default install device and "in use" checks.
//!
//! Mirrors IPA `hardware.py` `list_all_block_devices` (lsblk + udev) from sysfs
//! alone: `sys/block/<name>` for whole devices, `queue/*` for geometry,
//! `device/*` for identity (see the `ata` module for udev-compatible spellings),
//! `device/scsi_device/<H:C:T:L>` for the HCTL, and the `dev/disk/by-path`
//! links when udev created them.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::ata;
use crate::error::HardwareError;
use crate::sysfs::{self, attr, attr_u64, dir_names, under};

/// IPA's minimum size for a guessed root device: 4 GiB
/// (IPA `utils.py` `guess_root_disk(min_size_required=4 * units.Gi)`).
pub const MIN_ROOT_DEVICE_SIZE: u64 = 4 << 30;

/// What sort of block device a sysfs entry is, decided from its name and major.
///
/// IPA lists only lsblk `TYPE` `disk` (and md `raid*`) devices and skips
/// `ram*`/`zram*` and floppies (`fd*`) explicitly; loop, rom and device-mapper
/// (`lvm`, `crypt`, `mpath`) entries have other lsblk types and are skipped
/// too. Ferric keeps them in the list with a kind so callers can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A disk IPA would list: SCSI/SATA/SAS, NVMe namespace, virtio, MMC, md RAID.
    Disk,
    /// A loop device (`loop*`, major 7).
    Loop,
    /// A RAM disk (`ram*`, major 1) or compressed RAM disk (`zram*`).
    Ram,
    /// An optical drive (`sr*`, major 11).
    Rom,
    /// Anything else IPA skips: floppies, device-mapper nodes, hidden NVMe paths.
    Other,
}

/// One whole block device, serialized exactly as an IPA inventory disk
/// (PROTOCOL.md §5; IPA `hardware.py` `BlockDevice.serializable_fields`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockDevice {
    /// Device node, e.g. `/dev/sda`.
    pub name: String,
    /// Model string (full ATA model for SATA disks); empty when unknown, as lsblk.
    pub model: String,
    /// Size in bytes (`sys/block/X/size` × 512).
    pub size: u64,
    /// True for spinning disks (`queue/rotational`).
    pub rotational: bool,
    /// World wide name as udev's `ID_WWN` spells it (`0x…` or NVMe `eui.…`).
    pub wwn: Option<String>,
    /// Serial as udev's `ID_SERIAL_SHORT`.
    pub serial: Option<String>,
    /// Vendor (`device/vendor`), e.g. `ATA`, `0x1af4` for virtio.
    pub vendor: Option<String>,
    /// udev's `ID_WWN_WITH_EXTENSION`.
    pub wwn_with_extension: Option<String>,
    /// udev's `ID_WWN_VENDOR_EXTENSION`.
    pub wwn_vendor_extension: Option<String>,
    /// SCSI address `host:channel:target:lun`.
    pub hctl: Option<String>,
    /// `/dev/disk/by-path/…` link pointing at the device, when udev made one; without udev,
    /// the name udev would have made (see `path_id`).
    pub by_path: Option<String>,
    /// Logical sector size in bytes (lsblk `LOG-SEC`).
    pub logical_sectors: Option<u32>,
    /// Physical sector size in bytes (lsblk `PHY-SEC`).
    pub physical_sectors: Option<u32>,
    /// Transport as lsblk `TRAN` reports it: `sata`, `sas`, `nvme`, `virtio`, `usb`, ...
    pub tran: Option<String>,
    /// Kind of device, from its name and major number.
    #[serde(skip)]
    pub kind: DeviceKind,
    /// `sys/block/X/removable` is 1 (USB sticks, optical media, some virtual media).
    #[serde(skip)]
    pub removable: bool,
    /// `sys/block/X/ro` is 1.
    #[serde(skip)]
    pub read_only: bool,
    /// Device number from `sys/block/X/dev`.
    #[serde(skip)]
    pub major_minor: (u32, u32),
}

impl BlockDevice {
    /// Kernel name, e.g. `sda` for `/dev/sda`.
    pub fn kernel_name(&self) -> &str {
        self.name.strip_prefix("/dev/").unwrap_or(&self.name)
    }

    /// Whether IPA's inventory would list this device: a [`DeviceKind::Disk`]
    /// with a non-zero size (IPA skips zero-size devices, which some BMCs use
    /// for empty virtual floppies).
    pub fn is_inventory_disk(&self) -> bool {
        self.kind == DeviceKind::Disk && self.size > 0
    }
}

/// Lists whole block devices (no partitions) from `root/sys/block`, sorted by name.
///
/// Loop, RAM and ROM devices are included with their [`DeviceKind`]; filter
/// with [`BlockDevice::is_inventory_disk`] for IPA's inventory view.
pub fn list_block_devices(root: &Path) -> Result<Vec<BlockDevice>, HardwareError> {
    let dir = under(root, "sys/block");
    std::fs::read_dir(&dir).map_err(|e| HardwareError::read(&dir, e))?;
    let by_path = by_path_links(root);
    let mut devs = Vec::new();
    for kname in dir_names(&dir) {
        let sysdir = dir.join(&kname);
        match read_device(root, &kname, &sysdir, by_path.as_ref()) {
            Ok(dev) => devs.push(dev),
            // A device unplugged (or a loop detached) while we list is not an error.
            Err(HardwareError::Read { ref source, .. })
                if source.kind() == io::ErrorKind::NotFound && !sysdir.exists() =>
            {
                log::debug!("{kname} disappeared while listing block devices");
            }
            Err(e) => return Err(e),
        }
    }
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devs)
}

/// Reads one whole device, e.g. `/dev/loop3` → `root/sys/class/block/loop3`.
///
/// `dev` may be a `/dev/disk/by-*` or `/dev/mapper` link under `root`; it is
/// resolved first. Fails when the device is unknown or is a partition.
pub fn block_device(root: &Path, dev: &Path) -> Result<BlockDevice, HardwareError> {
    let resolved = resolve_dev_link(root, dev);
    let kname = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shown = dev.display().to_string();
    let sysdir = block_sysdir(root, &kname);
    if kname.is_empty() || !sysdir.join("dev").exists() {
        return Err(HardwareError::DeviceNotFound {
            device: shown,
            sysfs_path: sysdir,
        });
    }
    if sysdir.join("partition").exists() {
        return Err(HardwareError::IsPartition { device: shown });
    }
    read_device(root, &kname, &sysdir, by_path_links(root).as_ref())
}

/// IPA's install device when no root device hints are given: the smallest
/// device of at least [`MIN_ROOT_DEVICE_SIZE`], ties broken by name
/// (IPA `utils.py` `guess_root_disk`). Only non-removable, writable
/// [`DeviceKind::Disk`]s qualify: loop/RAM/ROM never, removable media never
/// (PROTOCOL.md §3), and a read-only device could only fail the deploy.
pub fn default_root_device(devs: &[BlockDevice]) -> Option<&BlockDevice> {
    devs.iter()
        .filter(|d| {
            d.kind == DeviceKind::Disk
                && !d.removable
                && !d.read_only
                && d.size >= MIN_ROOT_DEVICE_SIZE
        })
        .min_by(|a, b| (a.size, &a.name).cmp(&(b.size, &b.name)))
}

/// Says why `dev` must not be written to, or `None` when it is free.
///
/// The device counts as in use when it or any of its partitions is mounted
/// (`proc/self/mountinfo`, by device number or by source path — btrfs reports
/// an anonymous device number), is active swap (`proc/swaps`), or has holders
/// (`sys/block/X/holders`, `sys/block/X/X1/holders`: md, LVM, dm-crypt, multipath).
/// All reasons found are joined with "; ".
pub fn device_in_use(root: &Path, dev: &BlockDevice) -> Result<Option<String>, HardwareError> {
    let kname = dev.kernel_name();
    let sysdir = block_sysdir(root, kname);
    // (kernel name, sysfs dir, device number) for the device and its partitions.
    let mut members = vec![(kname.to_string(), sysdir.clone(), dev.major_minor)];
    for child in dir_names(&sysdir) {
        let cdir = sysdir.join(&child);
        if cdir.join("partition").exists() {
            if let Some(num) = attr(&cdir.join("dev")).and_then(|s| sysfs::parse_dev(&s)) {
                members.push((child, cdir, num));
            }
        }
    }
    let what = |name: &str| {
        if name == kname {
            format!("/dev/{name}")
        } else {
            format!("partition /dev/{name}")
        }
    };
    let mut reasons = Vec::new();

    let mountinfo_path = under(root, "proc/self/mountinfo");
    let mountinfo =
        sysfs::read_string(&mountinfo_path).map_err(|e| HardwareError::read(&mountinfo_path, e))?;
    for line in mountinfo.lines() {
        let Some(m) = parse_mountinfo_line(line) else {
            continue;
        };
        for (name, _, num) in &members {
            let by_number = m.dev == *num && num.0 != 0;
            let by_source = m.source == format!("/dev/{name}");
            if by_number || by_source {
                reasons.push(format!("{} is mounted at {}", what(name), m.mount_point));
            }
        }
    }

    let swaps_path = under(root, "proc/swaps");
    match sysfs::read_string(&swaps_path) {
        Ok(swaps) => {
            for line in swaps.lines().skip(1) {
                let Some(file) = line.split_whitespace().next() else {
                    continue;
                };
                let file = unescape_octal(file);
                for (name, _, _) in &members {
                    if file == format!("/dev/{name}") {
                        reasons.push(format!("{} is active swap", what(name)));
                    }
                }
            }
        }
        // Kernels built without swap support have no proc/swaps.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(HardwareError::read(&swaps_path, e)),
    }

    for (name, dir, _) in &members {
        let holders = dir_names(&dir.join("holders"));
        if !holders.is_empty() {
            reasons.push(format!("{} is held by {}", what(name), holders.join(", ")));
        }
    }

    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// The sysfs directory of a block device or partition: `sys/class/block/X`
/// (links on a live system), else `sys/block/X`, else `sys/block/*/X` for a
/// partition. The fallbacks let fixture trees hold plain copies instead of links.
fn block_sysdir(root: &Path, kname: &str) -> PathBuf {
    let class = under(root, "sys/class/block").join(kname);
    if class.exists() || kname.is_empty() || kname.contains('/') {
        return class;
    }
    let block = under(root, "sys/block");
    if block.join(kname).exists() {
        return block.join(kname);
    }
    for parent in dir_names(&block) {
        let candidate = block.join(parent).join(kname);
        if candidate.join("partition").exists() {
            return candidate;
        }
    }
    class
}

struct MountEntry {
    dev: (u32, u32),
    mount_point: String,
    source: String,
}

/// Parses one `proc/self/mountinfo` line (proc(5)): field 3 is `major:minor`,
/// field 5 the mount point, and the source follows the `-` separator and the fs type.
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dev = sysfs::parse_dev(fields.get(2)?)?;
    let mount_point = unescape_octal(fields.get(4)?);
    let sep = fields.iter().position(|f| *f == "-")?;
    let source = unescape_octal(fields.get(sep + 2).copied().unwrap_or(""));
    Some(MountEntry {
        dev,
        mount_point,
        source,
    })
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn classify(kname: &str, major: u32, sysdir: &Path) -> DeviceKind {
    if major == 7 || kname.starts_with("loop") {
        DeviceKind::Loop
    } else if major == 1 || kname.starts_with("ram") || kname.starts_with("zram") {
        DeviceKind::Ram
    } else if major == 11 || kname.starts_with("sr") {
        DeviceKind::Rom
    } else if kname.starts_with("fd")
        || kname.starts_with("dm-")
        // Hidden NVMe multipath paths (nvme0c0n1) have no /dev node.
        || attr(&sysdir.join("hidden")).as_deref() == Some("1")
    {
        DeviceKind::Other
    } else {
        DeviceKind::Disk
    }
}

fn read_device(
    root: &Path,
    kname: &str,
    sysdir: &Path,
    by_path: Option<&HashMap<String, String>>,
) -> Result<BlockDevice, HardwareError> {
    let dev_path = sysdir.join("dev");
    let dev_text = sysfs::read_string(&dev_path).map_err(|e| HardwareError::read(&dev_path, e))?;
    let major_minor =
        sysfs::parse_dev(&dev_text).ok_or_else(|| HardwareError::parse(&dev_path, &dev_text))?;
    let size_path = sysdir.join("size");
    let size_text =
        sysfs::read_string(&size_path).map_err(|e| HardwareError::read(&size_path, e))?;
    let sectors: u64 = size_text
        .trim()
        .parse()
        .map_err(|_| HardwareError::parse(&size_path, &size_text))?;
    // sys/block/X/size is always in 512-byte units, whatever the sector size.
    let size = sectors.saturating_mul(512);

    let flag = |rel: &str| attr(&sysdir.join(rel)).as_deref() == Some("1");
    let sector_size = |rel: &str| attr_u64(&sysdir.join(rel)).and_then(|v| u32::try_from(v).ok());
    let device_dir = sysdir.join("device");
    let nvme = kname.starts_with("nvme");

    let ata_id = sysfs::read_bytes(&device_dir.join("vpd_pg89"))
        .ok()
        .and_then(|page| ata::parse_vpd_pg89(&page));
    let ata_id = ata_id.unwrap_or_default();

    let model = ata_id
        .model
        .clone()
        .or_else(|| attr(&device_dir.join("model")))
        .unwrap_or_default();

    let serial = ata_id
        .serial
        .clone()
        .or_else(|| {
            if nvme {
                attr(&device_dir.join("serial"))
            } else {
                None
            }
        })
        .or_else(|| {
            sysfs::read_bytes(&device_dir.join("vpd_pg80"))
                .ok()
                .and_then(|p| ata::parse_vpd_pg80(&p))
        })
        // virtio-blk exposes its serial on the disk itself.
        .or_else(|| attr(&sysdir.join("serial")))
        .or_else(|| attr(&device_dir.join("serial")))
        .map(|s| ata::udev_serial(&s))
        .filter(|s| !s.is_empty());

    let wwid = attr(&sysdir.join("wwid")).or_else(|| attr(&device_dir.join("wwid")));
    let (mut wwn, mut wwn_with_extension, wwn_vendor_extension) = wwid
        .as_deref()
        .map(|w| ata::wwn_from_wwid(w, nvme))
        .unwrap_or((None, None, None));
    if let Some(w) = ata_id.wwn {
        // ata_id sets ID_WWN and ID_WWN_WITH_EXTENSION to the IDENTIFY WWN.
        wwn = Some(w.clone());
        wwn_with_extension = Some(w);
    }

    let hctl = dir_names(&device_dir.join("scsi_device"))
        .into_iter()
        .next();
    let tran = transport(root, kname, &device_dir, hctl.as_deref());
    let name = format!("/dev/{kname}");
    Ok(BlockDevice {
        by_path: match by_path {
            Some(links) => links.get(&name).cloned(),
            // Without udev (the Ferric ramdisk): the name udev would have linked.
            None => {
                crate::path_id::by_path_name(root, kname).map(|p| format!("/dev/disk/by-path/{p}"))
            }
        },
        name,
        model,
        size,
        rotational: flag("queue/rotational"),
        wwn,
        serial,
        vendor: attr(&device_dir.join("vendor")),
        wwn_with_extension,
        wwn_vendor_extension,
        hctl,
        logical_sectors: sector_size("queue/logical_block_size"),
        physical_sectors: sector_size("queue/physical_block_size"),
        tran,
        kind: classify(kname, major_minor.0, sysdir),
        removable: flag("removable"),
        read_only: flag("ro"),
        major_minor,
    })
}

/// The transport, following util-linux lsblk's `get_transport` order: SCSI
/// host classes (spi, fc/fcoe, sas, sbp, iscsi), USB, libata (`sata`/`ata`
/// from the host's `proc_name`), then NVMe, virtio and MMC by name.
fn transport(root: &Path, kname: &str, device_dir: &Path, hctl: Option<&str>) -> Option<String> {
    if let Some(hctl) = hctl {
        let host = format!("host{}", hctl.split(':').next()?);
        let host_is = |class: &str| {
            under(root, &format!("sys/class/{class}_host"))
                .join(&host)
                .exists()
        };
        let proc_name = attr(
            &under(root, "sys/class/scsi_host")
                .join(&host)
                .join("proc_name"),
        );
        let t = if host_is("spi") {
            "spi"
        } else if host_is("fc") {
            let sym = attr(
                &under(root, "sys/class/fc_host")
                    .join(&host)
                    .join("symbolic_name"),
            )?;
            if sym.contains(" over ") {
                "fcoe"
            } else {
                "fc"
            }
        } else if host_is("sas") || device_dir.join("sas_device").exists() {
            "sas"
        } else if device_dir.join("ieee1394_id").exists() {
            "sbp"
        } else if host_is("iscsi") {
            "iscsi"
        } else if is_usb(device_dir, proc_name.as_deref()) {
            "usb"
        } else if let Some(p) = proc_name.as_deref() {
            if p.starts_with("ahci") || p.starts_with("sata") {
                "sata"
            } else if p.contains("ata") {
                "ata"
            } else {
                return None;
            }
        } else {
            return None;
        };
        return Some(t.to_string());
    }
    let t = if kname.starts_with("nvme") {
        "nvme"
    } else if kname.starts_with("vd") {
        "virtio"
    } else if kname.starts_with("mmcblk") {
        "mmc"
    } else {
        return None;
    };
    Some(t.to_string())
}

/// lsblk checks whether the device's sysfs path runs through a USB device;
/// fixture trees hold copies, not links, so the USB storage drivers' host
/// names count as well.
fn is_usb(device_dir: &Path, proc_name: Option<&str>) -> bool {
    let via_path = std::fs::canonicalize(device_dir)
        .map(|p| p.to_string_lossy().contains("/usb"))
        .unwrap_or(false);
    via_path || matches!(proc_name, Some("usb-storage") | Some("uas"))
}

/// Maps `/dev/<kname>` to the first (sorted) `/dev/disk/by-path` link that points at it;
/// `None` when there is no such directory (no udev).
///
/// IPA builds the same map from `os.listdir`, where the last entry wins in
/// directory order; sorted-first is deterministic.
fn by_path_links(root: &Path) -> Option<HashMap<String, String>> {
    let dir = under(root, "dev/disk/by-path");
    if !dir.is_dir() {
        return None;
    }
    let mut map = HashMap::new();
    for entry in dir_names(&dir) {
        let Ok(target) = std::fs::read_link(dir.join(&entry)) else {
            continue;
        };
        let abs = lexical_resolve(Path::new("/dev/disk/by-path"), &target);
        map.entry(abs.to_string_lossy().into_owned())
            .or_insert_with(|| format!("/dev/disk/by-path/{entry}"));
    }
    Some(map)
}

/// Joins `target` onto `base` and folds `.`/`..` without touching the filesystem
/// (the links are relative to the target system, not to this process's root).
fn lexical_resolve(base: &Path, target: &Path) -> PathBuf {
    let joined = if target.is_absolute() {
        target.to_path_buf()
    } else {
        base.join(target)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Follows `/dev/...` symlinks under `root` (at most 8 hops), lexically.
fn resolve_dev_link(root: &Path, dev: &Path) -> PathBuf {
    let mut cur = lexical_resolve(Path::new("/dev"), dev);
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(under(root, &cur.to_string_lossy())) else {
            break;
        };
        cur = lexical_resolve(cur.parent().unwrap_or(Path::new("/")), &target);
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_line_fields() {
        let m = parse_mountinfo_line(
            "27 1 254:0 / /mnt/my\\040disk rw,relatime - ext4 /dev/vda rw,discard",
        )
        .unwrap();
        assert_eq!(m.dev, (254, 0));
        assert_eq!(m.mount_point, "/mnt/my disk");
        assert_eq!(m.source, "/dev/vda");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn octal_unescape_edges() {
        assert_eq!(unescape_octal("a\\134b"), "a\\b");
        assert_eq!(unescape_octal("tail\\04"), "tail\\04");
        assert_eq!(unescape_octal("\\"), "\\");
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(
            lexical_resolve(Path::new("/dev/disk/by-path"), Path::new("../../sda")),
            PathBuf::from("/dev/sda")
        );
        assert_eq!(
            lexical_resolve(Path::new("/dev"), Path::new("/dev/mapper/../dm-0")),
            PathBuf::from("/dev/dm-0")
        );
    }

    #[test]
    fn classification() {
        let p = Path::new("/nonexistent");
        assert_eq!(classify("loop3", 7, p), DeviceKind::Loop);
        assert_eq!(classify("zram0", 252, p), DeviceKind::Ram);
        assert_eq!(classify("ram0", 1, p), DeviceKind::Ram);
        assert_eq!(classify("sr0", 11, p), DeviceKind::Rom);
        assert_eq!(classify("dm-0", 253, p), DeviceKind::Other);
        assert_eq!(classify("fd0", 2, p), DeviceKind::Other);
        assert_eq!(classify("md127", 9, p), DeviceKind::Disk);
        assert_eq!(classify("nvme0n1", 259, p), DeviceKind::Disk);
    }
}
