//! A disk's `/dev/disk/by-path` name computed from sysfs, for a ramdisk without udev.
//!
//! IPA reports `by_path` (and matches the `by_path` root device hint) from the links udev
//! makes in `/dev/disk/by-path`; the Ferric ramdisk runs no udev, so the agent composes the
//! same name the way udev's `path_id` builtin does (systemd ≥ 251): walk from the block
//! device up its sysfs parents and prepend one element per bus it crosses.
//!
//! - SCSI disks behind libata: `ata-<port_no>.<target>` (`ata-<port_no>.<bus>.0` behind a
//!   port multiplier); SAS: `sas-phy<N>-lun-<L>`, `sas-exp<address>-phy<N>-lun-<L>` behind
//!   an expander, `sas-<address>-lun-<L>` on a wide port; other SCSI:
//!   `scsi-<host relative to its siblings>:<bus>:<target>:<lun>`.
//! - NVMe namespaces: `nvme-<nsid>`, also with native multipath (the namespace then lives
//!   under `nvme-subsystem`, and the path continues from its controller `nvmeN`).
//! - USB: `usb-0:<port path>`; virtio is crossed without an element.
//! - PCI: `pci-<address>` of the device nearest the disk; platform and ACPI parents too.
//!
//! Like udev, no name is given when the chain has no known parent bus or (for a block
//! device) no known transport; Fibre Channel, iSCSI and Hyper-V disks get none here (udev
//! would name them). udev links some devices under a second name as well (`ata-<port_no>`
//! for ATA disks, `virtio-pci-…` for virtio disks); the first name is the one reported.

use std::path::{Path, PathBuf};

use crate::sysfs::{attr, uevent_value, under};

/// The by-path name of block device `kname` (`sda`, `nvme0n1`, `vda`), without the
/// `/dev/disk/by-path/` prefix; `None` when udev would not name it either (or sysfs lacks it).
pub(crate) fn by_path_name(root: &Path, kname: &str) -> Option<String> {
    let dev = std::fs::canonicalize(under(root, &format!("sys/class/block/{kname}"))).ok()?;
    let devices = std::fs::canonicalize(under(root, "sys/devices")).ok()?;
    let mut walk = Walk {
        root,
        devices,
        elements: Vec::new(),
        supported_parent: false,
        supported_transport: false,
    };
    let mut cur = Some(dev.clone());
    while let Some(d) = cur {
        let next = walk.visit(&dev, &d, kname)?;
        cur = walk.parent(&next);
    }
    if walk.elements.is_empty() || !walk.supported_parent || !walk.supported_transport {
        return None;
    }
    walk.elements.reverse();
    Some(walk.elements.join("-"))
}

struct Walk<'a> {
    root: &'a Path,
    /// The canonical `sys/devices`: the walk never leaves it.
    devices: PathBuf,
    /// Path elements, innermost first.
    elements: Vec<String>,
    supported_parent: bool,
    supported_transport: bool,
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn subsystem(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("subsystem"))
        .ok()
        .map(|l| name_of(&l).to_string())
}

fn devtype(dir: &Path) -> Option<String> {
    uevent_value(&dir.join("uevent"), "DEVTYPE")
}

/// `H:C:T:L` of a SCSI device's sysfs name.
fn hctl(name: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = name
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// udev's `lun-N` (address method 0 for LUNs below 256, else the 64-bit form).
fn lun_element(lun: u32) -> String {
    if lun < 256 {
        format!("lun-{lun}")
    } else {
        format!("lun-0x{:04x}{:04x}00000000", lun & 0xffff, lun >> 16)
    }
}

impl Walk<'_> {
    /// The nearest ancestor of `dir` that is a device (has a `uevent`), inside sys/devices.
    fn parent(&self, dir: &Path) -> Option<PathBuf> {
        let mut p = dir.parent()?;
        loop {
            if !p.starts_with(&self.devices) || p == self.devices {
                return None;
            }
            if p.join("uevent").exists() {
                return Some(p.to_path_buf());
            }
            p = p.parent()?;
        }
    }

    /// Moves up from `dir` while the parent is in subsystem `subsys`.
    fn skip_subsystem(&self, dir: &Path, subsys: &str) -> PathBuf {
        let mut d = dir.to_path_buf();
        while let Some(p) = self.parent(&d) {
            if subsystem(&p).as_deref() != Some(subsys) {
                break;
            }
            d = p;
        }
        d
    }

    /// The nearest ancestor (or `dir` itself) in subsystem `scsi` with devtype `devtype`.
    fn scsi_ancestor(&self, dir: &Path, want: &str) -> Option<PathBuf> {
        let mut d = Some(dir.to_path_buf());
        while let Some(p) = d {
            if subsystem(&p).as_deref() == Some("scsi") && devtype(&p).as_deref() == Some(want) {
                return Some(p);
            }
            d = self.parent(&p);
        }
        None
    }

    /// Handles one device of the chain; returns the device the walk continues above, or
    /// `None` to give up (a bus udev names but this module does not).
    fn visit(&mut self, dev: &Path, d: &Path, kname: &str) -> Option<PathBuf> {
        let sysname = name_of(d).to_string();
        match subsystem(d).as_deref() {
            Some("scsi") => {
                self.supported_transport = true;
                self.scsi(d)
            }
            Some("usb") => {
                self.supported_transport = true;
                let dt = devtype(d).unwrap_or_default();
                if dt != "usb_interface" && dt != "usb_device" {
                    return Some(d.to_path_buf());
                }
                let Some((_, port)) = sysname.split_once('-') else {
                    return Some(d.to_path_buf());
                };
                self.elements.push(format!("usb-0:{port}"));
                Some(self.skip_subsystem(d, "usb"))
            }
            Some("pci") => {
                self.elements.push(format!("pci-{sysname}"));
                self.supported_parent = true;
                Some(self.skip_subsystem(d, "pci"))
            }
            Some(s @ ("platform" | "acpi" | "xen")) => {
                self.elements.push(format!("{s}-{sysname}"));
                self.supported_parent = true;
                if s == "platform" {
                    self.supported_transport = true;
                }
                Some(self.skip_subsystem(d, s))
            }
            Some("virtio") => {
                self.supported_transport = true;
                Some(self.skip_subsystem(d, "virtio"))
            }
            Some(s @ ("nvme" | "nvme-subsystem")) => {
                let Some(nsid) = attr(&dev.join("nsid")) else {
                    return Some(d.to_path_buf());
                };
                self.elements.push(format!("nvme-{nsid}"));
                self.supported_parent = true;
                self.supported_transport = true;
                let from = if s == "nvme-subsystem" {
                    // Native multipath: continue from the controller, `nvme0` for `nvme0n1`.
                    let digits = kname
                        .strip_prefix("nvme")?
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .count();
                    let ctrl = &kname[..4 + digits];
                    std::fs::canonicalize(under(self.root, &format!("sys/class/nvme/{ctrl}")))
                        .ok()?
                } else {
                    d.to_path_buf()
                };
                Some(self.skip_subsystem(&from, "nvme"))
            }
            _ => Some(d.to_path_buf()),
        }
    }

    /// A device in subsystem `scsi`: only a `scsi_device` adds an element.
    fn scsi(&mut self, d: &Path) -> Option<PathBuf> {
        if devtype(d).as_deref() != Some("scsi_device") {
            return Some(d.to_path_buf());
        }
        // The transport shows in the device's path below sys/devices.
        let rel = d.strip_prefix(&self.devices).unwrap_or(d);
        let path = format!("/{}", rel.to_string_lossy());
        if path.contains("/rport-") || path.contains("/session") || path.contains("/vmbus_") {
            // Fibre Channel, iSCSI, Hyper-V: names from transport classes not read here.
            return None;
        }
        let [host, bus, target, lun] = hctl(name_of(d))?;
        if path.contains("/end_device-") {
            self.sas(d, lun)?;
            self.supported_parent = true;
            return Some(d.to_path_buf());
        }
        if path.contains("/ata") {
            let host_dir = self.scsi_ancestor(d, "scsi_host")?;
            let ata = self.parent(&host_dir)?;
            let port_no = attr(&under(
                self.root,
                &format!("sys/class/ata_port/{}/port_no", name_of(&ata)),
            ))?;
            self.elements.push(if bus != 0 {
                format!("ata-{port_no}.{bus}.0")
            } else {
                format!("ata-{port_no}.{target}")
            });
            return Some(d.to_path_buf());
        }
        // Default: the host number relative to the lowest host on the same parent.
        let host_dir = self.scsi_ancestor(d, "scsi_host")?;
        let base = std::fs::read_dir(host_dir.parent()?)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("host")?
                    .parse::<u32>()
                    .ok()
            })
            .min();
        let Some(base) = base else {
            return Some(host_dir);
        };
        self.elements.push(format!(
            "scsi-{}:{bus}:{target}:{lun}",
            host.wrapping_sub(base)
        ));
        Some(host_dir)
    }

    /// `sas-…` for a SCSI device under `end_device-…` (udev's handle_scsi_sas).
    fn sas(&mut self, d: &Path, lun: u32) -> Option<()> {
        let class = |class: &str, name: &str, a: &str| {
            attr(&under(self.root, &format!("sys/class/{class}/{name}/{a}")))
        };
        let target = self.scsi_ancestor(d, "scsi_target")?;
        let end_device = self.parent(&target)?;
        let end_name = name_of(&end_device).to_string();
        let sas_address = class("sas_device", &end_name, "sas_address")?;
        let port = self.parent(&end_device)?;
        let num_phys = class("sas_port", name_of(&port), "num_phys")?;
        let lun = lun_element(lun);
        if num_phys != "1" {
            self.elements.push(format!("sas-{sas_address}-{lun}"));
            return Some(());
        }
        let phy = class("sas_device", &end_name, "phy_identifier")?;
        let expander = self.parent(&port)?;
        self.elements.push(
            match class("sas_device", name_of(&expander), "sas_address") {
                Some(exp) => format!("sas-exp{exp}-phy{phy}-{lun}"),
                None => format!("sas-phy{phy}-{lun}"),
            },
        );
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: `devices` are paths under sys/devices with their subsystem and
    /// DEVTYPE; `links` are (link under root, target under root).
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Tree {
            let t = Tree(tempfile::tempdir().unwrap());
            for s in [
                "scsi",
                "pci",
                "block",
                "nvme",
                "nvme-subsystem",
                "virtio",
                "usb",
                "ata_port",
                "sas_device",
                "sas_port",
                "platform",
            ] {
                std::fs::create_dir_all(t.0.path().join(format!("sys/bus/{s}"))).unwrap();
            }
            std::fs::create_dir_all(t.0.path().join("sys/devices")).unwrap();
            t
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
        /// A device directory (with uevent and subsystem link).
        fn device(&self, rel: &str, subsys: &str, devtype: Option<&str>) -> &Self {
            let d = self.root().join("sys/devices").join(rel);
            std::fs::create_dir_all(&d).unwrap();
            let uevent = devtype
                .map(|t| format!("DEVTYPE={t}\n"))
                .unwrap_or_default();
            std::fs::write(d.join("uevent"), uevent).unwrap();
            if !subsys.is_empty() {
                symlink(
                    self.root().join("sys/bus").join(subsys),
                    d.join("subsystem"),
                )
                .unwrap();
            }
            self
        }
        fn attr(&self, rel: &str, value: &str) -> &Self {
            let p = self.root().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{value}\n")).unwrap();
            self
        }
        /// A SCSI disk `kname` at `hctl` under `parent`: its target, its scsi_device, the
        /// block device and the sys/class/block link.
        fn scsi_disk(&self, parent: &str, hctl: &str, kname: &str) -> &Self {
            let target = format!("{parent}/target{}", &hctl[..hctl.rfind(':').unwrap()]);
            let sdev = format!("{target}/{hctl}");
            let block = format!("{sdev}/block/{kname}");
            self.device(&target, "scsi", Some("scsi_target"))
                .device(&sdev, "scsi", Some("scsi_device"))
                .device(&block, "block", Some("disk"))
                .class("block", kname, &block)
        }
        /// `sys/class/<class>/<name>` → a device directory under sys/devices.
        fn class(&self, class: &str, name: &str, target_rel: &str) -> &Self {
            let dir = self.root().join("sys/class").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            symlink(
                self.root().join("sys/devices").join(target_rel),
                dir.join(name),
            )
            .unwrap();
            self
        }
    }

    #[test]
    fn ahci_sata_disk() {
        let t = Tree::new();
        let pci = "pci0000:00/0000:00:1f.2";
        let host = format!("{pci}/ata3/host2");
        t.device(pci, "pci", None)
            .device(&format!("{pci}/ata3"), "", None)
            .device(&format!("{pci}/ata3/ata_port/ata3"), "ata_port", None)
            .device(&host, "scsi", Some("scsi_host"))
            .scsi_disk(&host, "2:0:0:0", "sda")
            .attr(
                &format!("sys/devices/{pci}/ata3/ata_port/ata3/port_no"),
                "3",
            )
            .class("ata_port", "ata3", &format!("{pci}/ata3/ata_port/ata3"));
        assert_eq!(
            by_path_name(t.root(), "sda").as_deref(),
            Some("pci-0000:00:1f.2-ata-3.0")
        );
    }

    #[test]
    fn nvme_with_and_without_native_multipath() {
        let t = Tree::new();
        let pci = "pci0000:00/0000:00:1c.4/0000:3c:00.0";
        t.device("pci0000:00/0000:00:1c.4", "pci", None)
            .device(pci, "pci", None)
            .device(&format!("{pci}/nvme/nvme0"), "nvme", None)
            .device(&format!("{pci}/nvme/nvme0/nvme0n1"), "block", Some("disk"))
            .attr(&format!("sys/devices/{pci}/nvme/nvme0/nvme0n1/nsid"), "1")
            .class("block", "nvme0n1", &format!("{pci}/nvme/nvme0/nvme0n1"))
            .class("nvme", "nvme0", &format!("{pci}/nvme/nvme0"));
        assert_eq!(
            by_path_name(t.root(), "nvme0n1").as_deref(),
            Some("pci-0000:3c:00.0-nvme-1")
        );
        // Debian's kernel: the namespace under the subsystem, the controller under PCI.
        t.device(
            "virtual/nvme-subsystem/nvme-subsys0",
            "nvme-subsystem",
            None,
        )
        .device(
            "virtual/nvme-subsystem/nvme-subsys0/nvme0n2",
            "block",
            Some("disk"),
        )
        .attr(
            "sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n2/nsid",
            "2",
        )
        .class(
            "block",
            "nvme0n2",
            "virtual/nvme-subsystem/nvme-subsys0/nvme0n2",
        );
        assert_eq!(
            by_path_name(t.root(), "nvme0n2").as_deref(),
            Some("pci-0000:3c:00.0-nvme-2")
        );
    }

    #[test]
    fn virtio_disk_and_loop_device() {
        let t = Tree::new();
        let pci = "pci0000:00/0000:00:04.0";
        t.device(pci, "pci", None)
            .device(&format!("{pci}/virtio1"), "virtio", None)
            .device(&format!("{pci}/virtio1/block/vda"), "block", Some("disk"))
            .class("block", "vda", &format!("{pci}/virtio1/block/vda"))
            .device("virtual/block/loop0", "block", Some("disk"))
            .class("block", "loop0", "virtual/block/loop0");
        assert_eq!(
            by_path_name(t.root(), "vda").as_deref(),
            Some("pci-0000:00:04.0")
        );
        assert_eq!(by_path_name(t.root(), "loop0"), None);
        assert_eq!(by_path_name(t.root(), "nonexistent"), None);
    }

    #[test]
    fn sas_disks_direct_behind_an_expander_and_on_a_wide_port() {
        let t = Tree::new();
        let hba = "pci0000:00/0000:00:03.0/0000:02:00.0";
        let host = format!("{hba}/host0");
        t.device("pci0000:00/0000:00:03.0", "pci", None)
            .device(hba, "pci", None)
            .device(&host, "scsi", Some("scsi_host"));
        // Direct: host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0
        let port = format!("{host}/port-0:0");
        let end = format!("{port}/end_device-0:0");
        t.device(&port, "", None)
            .device(&end, "", None)
            .scsi_disk(&end, "0:0:0:0", "sdb")
            .attr(
                "sys/class/sas_device/end_device-0:0/sas_address",
                "0x5000c500a1b2c3d4",
            )
            .attr("sys/class/sas_device/end_device-0:0/phy_identifier", "4")
            .attr("sys/class/sas_port/port-0:0/num_phys", "1");
        assert_eq!(
            by_path_name(t.root(), "sdb").as_deref(),
            Some("pci-0000:02:00.0-sas-phy4-lun-0")
        );
        // Behind an expander: host0/port-0:1/expander-0:0/port-0:0:2/end_device-0:0:2/...
        let exp = format!("{host}/port-0:1/expander-0:0");
        let port = format!("{exp}/port-0:0:2");
        let end = format!("{port}/end_device-0:0:2");
        t.device(&format!("{host}/port-0:1"), "", None)
            .device(&exp, "", None)
            .device(&port, "", None)
            .device(&end, "", None)
            .scsi_disk(&end, "0:0:2:0", "sdc")
            .attr(
                "sys/class/sas_device/end_device-0:0:2/sas_address",
                "0x5000c500deadbeef",
            )
            .attr("sys/class/sas_device/end_device-0:0:2/phy_identifier", "2")
            .attr("sys/class/sas_port/port-0:0:2/num_phys", "1")
            .attr(
                "sys/class/sas_device/expander-0:0/sas_address",
                "0x500304801234567f",
            );
        assert_eq!(
            by_path_name(t.root(), "sdc").as_deref(),
            Some("pci-0000:02:00.0-sas-exp0x500304801234567f-phy2-lun-0")
        );
        // A wide port (4 phys): the end device's address.
        t.attr("sys/class/sas_port/port-0:0:2/num_phys", "4");
        assert_eq!(
            by_path_name(t.root(), "sdc").as_deref(),
            Some("pci-0000:02:00.0-sas-0x5000c500deadbeef-lun-0")
        );
    }

    #[test]
    fn other_scsi_hosts_are_numbered_from_their_first_sibling_and_usb_has_ports() {
        let t = Tree::new();
        let hba = "pci0000:00/0000:00:05.0";
        let host = format!("{hba}/host3");
        t.device(hba, "pci", None)
            .device(&format!("{hba}/host2"), "scsi", Some("scsi_host"))
            .device(&host, "scsi", Some("scsi_host"))
            .scsi_disk(&host, "3:0:1:2", "sdd");
        assert_eq!(
            by_path_name(t.root(), "sdd").as_deref(),
            Some("pci-0000:00:05.0-scsi-1:0:1:2")
        );

        let xhci = "pci0000:00/0000:00:14.0";
        let intf = format!("{xhci}/usb2/2-1/2-1:1.0");
        let host = format!("{intf}/host6");
        t.device(xhci, "pci", None)
            .device(&format!("{xhci}/usb2"), "usb", Some("usb_device"))
            .device(&format!("{xhci}/usb2/2-1"), "usb", Some("usb_device"))
            .device(&intf, "usb", Some("usb_interface"))
            .device(&host, "scsi", Some("scsi_host"))
            .scsi_disk(&host, "6:0:0:0", "sde");
        assert_eq!(
            by_path_name(t.root(), "sde").as_deref(),
            Some("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0")
        );
    }
}
