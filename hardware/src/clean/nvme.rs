//! NVMe secure erase with Format NVM, sent through `NVME_IOCTL_ADMIN_CMD`
//! (IPA `_nvme_erase`, which runs `nvme id-ctrl` and `nvme format -s N`).
//!
//! Facts (NVM Express Base Specification 2.0):
//! - Identify (opcode 06h) with CNS 01h returns the controller data
//!   structure: OACS (bytes 257:256) bit 1 = Format NVM supported; FNA (byte
//!   524) bit 0 = a format applies to all namespaces, bit 1 = a secure erase
//!   applies to all namespaces, bit 2 = cryptographic erase supported.
//! - Identify with CNS 00h returns the namespace: FLBAS (byte 26) bits 3:0
//!   and 6:5 select the LBA format in use, bit 4 = metadata at the end of
//!   each LBA; DPS (byte 29) bits 2:0 = protection type, bit 3 = PI first.
//! - Format NVM (opcode 80h) CDW10: bits 3:0 LBAF low, bit 4 MSET, bits 7:5
//!   PI, bit 8 PIL, bits 11:9 SES (1 = user data erase, 2 = cryptographic
//!   erase), bits 13:12 LBAF high.
//!
//! IPA's choice is kept: crypto erase when FNA says it is supported, user
//! data erase otherwise, and a controller without Format NVM is an error.
//! The namespace keeps its current LBA format and protection settings
//! (nvme-cli does the same when no `--lbaf` is given). When the controller
//! says a format or secure erase reaches every namespace, Ferric only
//! formats if every sibling namespace is erased by the same run; otherwise
//! it falls back to overwriting, so a device the operator excluded is never
//! erased by its neighbour's format.

use std::fs::File;
use std::path::Path;

use crate::block::BlockDevice;
use crate::clean::{dev_path, EraseJob, Operation, Progress};
use crate::manager::StepContext;
use crate::sys::{self, NvmePassthruCmd};
use crate::sysfs::{dir_names, under};

const OPC_IDENTIFY: u8 = 0x06;
const OPC_FORMAT_NVM: u8 = 0x80;
const CNS_NAMESPACE: u32 = 0x00;
const CNS_CONTROLLER: u32 = 0x01;
const IDENTIFY_LEN: usize = 4096;

/// Controller capabilities relevant to erasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Controller {
    pub oacs: u16,
    pub fna: u8,
}

impl Controller {
    pub(crate) fn parse(id: &[u8]) -> Option<Controller> {
        (id.len() >= IDENTIFY_LEN).then(|| Controller {
            oacs: u16::from_le_bytes([id[256], id[257]]),
            fna: id[524],
        })
    }

    pub(crate) fn format_supported(&self) -> bool {
        self.oacs & 0b10 != 0
    }

    pub(crate) fn crypto_erase_supported(&self) -> bool {
        self.fna & 0b100 != 0
    }

    /// Whether a format with `ses` also erases the other namespaces.
    pub(crate) fn affects_all_namespaces(&self, ses: u8) -> bool {
        self.fna & 0b1 != 0 || (ses != 0 && self.fna & 0b10 != 0)
    }
}

/// The namespace's current format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Namespace {
    pub flbas: u8,
    pub dps: u8,
    /// Size in logical blocks.
    pub nsze: u64,
}

impl Namespace {
    pub(crate) fn parse(id: &[u8]) -> Option<Namespace> {
        (id.len() >= IDENTIFY_LEN).then(|| Namespace {
            nsze: u64::from_le_bytes(id[0..8].try_into().expect("8 bytes")),
            flbas: id[26],
            dps: id[29],
        })
    }

    /// Index of the LBA format in use (FLBAS bits 3:0, and 6:5 as bits 5:4).
    pub(crate) fn lbaf(&self) -> u8 {
        (self.flbas & 0x0f) | ((self.flbas >> 5) & 0x03) << 4
    }
}

/// IPA's choice of SES: 2 (crypto) when supported, else 1 (user data).
pub(crate) fn choose_ses(ctrl: &Controller) -> Result<u8, String> {
    if !ctrl.format_supported() {
        return Err("the controller does not support Format NVM (OACS bit 1 clear)".into());
    }
    Ok(if ctrl.crypto_erase_supported() { 2 } else { 1 })
}

/// CDW10 of Format NVM keeping the namespace's format, with secure erase `ses`.
pub(crate) fn format_cdw10(ns: &Namespace, ses: u8) -> u32 {
    let lbaf = ns.lbaf() as u32;
    let mset = ((ns.flbas >> 4) & 1) as u32;
    let pi = (ns.dps & 0x07) as u32;
    let pil = ((ns.dps >> 3) & 1) as u32;
    (lbaf & 0x0f) | mset << 4 | pi << 5 | pil << 8 | ((ses as u32) & 0x07) << 9 | (lbaf >> 4) << 12
}

pub(crate) fn identify_cmd(cns: u32, nsid: u32) -> NvmePassthruCmd {
    NvmePassthruCmd {
        opcode: OPC_IDENTIFY,
        nsid,
        cdw10: cns,
        timeout_ms: 10_000,
        ..Default::default()
    }
}

pub(crate) fn format_cmd(nsid: u32, cdw10: u32, timeout_ms: u32) -> NvmePassthruCmd {
    NvmePassthruCmd {
        opcode: OPC_FORMAT_NVM,
        nsid,
        cdw10,
        timeout_ms,
        ..Default::default()
    }
}

/// How long to let a format run before the kernel aborts it: 10 minutes for
/// a crypto erase (nvme-cli's default), else 10 minutes plus the time to
/// write the namespace at 100 MB/s, at most 12 hours.
pub(crate) fn format_timeout_ms(ses: u8, bytes: u64) -> u32 {
    let base = 600_000u64;
    let ms = if ses == 2 {
        base
    } else {
        base + bytes / 100_000
    };
    ms.min(12 * 3600 * 1000) as u32
}

/// Human reading of an NVMe completion status (SCT/SC, NVMe 2.0 §4.6.1.2).
pub(crate) fn describe_status(status: u32) -> String {
    let sc = status & 0xff;
    let sct = (status >> 8) & 0x7;
    let what = match (sct, sc) {
        (0, 0x01) => " (Invalid Command Opcode)",
        (0, 0x02) => " (Invalid Field in Command)",
        (0, 0x0b) => " (Invalid Namespace or Format)",
        (0, 0x1d) => " (Sanitize In Progress)",
        (1, 0x0a) => " (Invalid Format)",
        (1, 0x15) => " (Namespace is Write Protected)",
        (1, 0x20) => " (Namespace Not Ready)",
        _ => "",
    };
    format!("NVMe status 0x{status:x}, SCT {sct} SC 0x{sc:02x}{what}")
}

/// Other namespaces of the same controller or subsystem: `nvme<X>n<M>`
/// block devices sharing the `nvme<X>n` prefix.
pub(crate) fn sibling_namespaces(root: &Path, dev: &BlockDevice) -> Vec<String> {
    let k = dev.kernel_name();
    let Some(npos) = k[4.min(k.len())..].find('n').map(|p| p + 4) else {
        return Vec::new();
    };
    let prefix = &k[..=npos];
    dir_names(&under(root, "sys/block"))
        .into_iter()
        .filter(|n| {
            n != k
                && n.starts_with(prefix)
                && n[prefix.len()..].chars().all(|c| c.is_ascii_digit())
                && n.len() > prefix.len()
        })
        .map(|n| format!("/dev/{n}"))
        .collect()
}

/// Result of trying a hardware erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hw {
    /// Done; description.
    Erased(String),
    /// Not possible here (fall back without calling it a failure).
    NotApplicable(String),
}

fn admin(f: &File, cmd: NvmePassthruCmd, buf: Option<&mut [u8]>, what: &str) -> Result<(), String> {
    match sys::nvme_admin(f, cmd, buf) {
        Ok((0, _)) => Ok(()),
        Ok((status, _)) => Err(format!("{what} failed: {}", describe_status(status))),
        Err(e) => Err(format!("{what} failed: {e}")),
    }
}

/// Formats the namespace behind `dev` with secure erase. `Err` is a failed
/// hardware erase (IPA `BlockDeviceEraseError`).
pub(crate) fn secure_erase(
    ctx: &StepContext<'_>,
    dev: &BlockDevice,
    job: &EraseJob,
) -> Result<Hw, String> {
    let path = dev_path(ctx.root, dev);
    let f = crate::clean::metadata::open_exclusive(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let nsid = sys::nvme_namespace_id(&f).map_err(|e| format!("NVME_IOCTL_ID failed: {e}"))?;
    let mut id = vec![0u8; IDENTIFY_LEN];
    admin(
        &f,
        identify_cmd(CNS_CONTROLLER, 0),
        Some(&mut id),
        "Identify Controller",
    )?;
    let ctrl = Controller::parse(&id).ok_or("short Identify Controller data")?;
    let mut nsid_data = vec![0u8; IDENTIFY_LEN];
    admin(
        &f,
        identify_cmd(CNS_NAMESPACE, nsid),
        Some(&mut nsid_data),
        "Identify Namespace",
    )?;
    let ns = Namespace::parse(&nsid_data).ok_or("short Identify Namespace data")?;
    let ses = choose_ses(&ctrl)?;
    if ctrl.affects_all_namespaces(ses) {
        let outside: Vec<String> = sibling_namespaces(ctx.root, dev)
            .into_iter()
            .filter(|s| !job.devices.contains(s))
            .collect();
        if !outside.is_empty() {
            return Ok(Hw::NotApplicable(format!(
                "a format of {} would also erase {} (FNA 0x{:02x}), which this run does not erase",
                dev.name,
                outside.join(", "),
                ctrl.fna
            )));
        }
    }
    let report = |done: u64| {
        (ctx.progress)(&Progress {
            device: &dev.name,
            operation: Operation::NvmeFormat,
            pass: 1,
            passes: 1,
            bytes_done: done,
            bytes_total: dev.size,
        })
    };
    report(0);
    let cdw10 = format_cdw10(&ns, ses);
    log::info!(
        "formatting {} (nsid {nsid}) with SES={ses}, CDW10=0x{cdw10:08x}",
        dev.name
    );
    admin(
        &f,
        format_cmd(nsid, cdw10, format_timeout_ms(ses, dev.size)),
        None,
        "Format NVM",
    )?;
    report(dev.size);
    if let Err(e) = sys::reread_partitions(&f) {
        log::debug!("BLKRRPART after format of {}: {e}", dev.name);
    }
    let kind = if ses == 2 {
        "cryptographic erase"
    } else {
        "user data erase"
    };
    Ok(Hw::Erased(format!(
        "NVMe Format NVM with {kind} (SES={ses})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrl_bytes(oacs: u16, fna: u8) -> Vec<u8> {
        let mut id = vec![0u8; IDENTIFY_LEN];
        id[256..258].copy_from_slice(&oacs.to_le_bytes());
        id[524] = fna;
        id
    }

    #[test]
    fn identify_commands_encode_cns_and_nsid() {
        let c = identify_cmd(CNS_CONTROLLER, 0);
        assert_eq!((c.opcode, c.nsid, c.cdw10), (0x06, 0, 1));
        let n = identify_cmd(CNS_NAMESPACE, 3);
        assert_eq!((n.opcode, n.nsid, n.cdw10), (0x06, 3, 0));
    }

    #[test]
    fn ses_follows_ipa() {
        // OACS without Format NVM: error (IPA raises BlockDeviceEraseError).
        assert!(choose_ses(&Controller::parse(&ctrl_bytes(0x0001, 0x04)).unwrap()).is_err());
        // Format, no crypto: user data erase.
        assert_eq!(
            choose_ses(&Controller::parse(&ctrl_bytes(0x0017, 0x00)).unwrap()),
            Ok(1)
        );
        // Format and crypto erase (FNA bit 2): crypto.
        assert_eq!(
            choose_ses(&Controller::parse(&ctrl_bytes(0x0002, 0x04)).unwrap()),
            Ok(2)
        );
        assert!(Controller::parse(&[0u8; 100]).is_none());
    }

    #[test]
    fn format_cdw10_keeps_the_lba_format_and_pi() {
        // FLBAS: LBAF 1, metadata extended; DPS: PI type 1, PI first.
        let ns = Namespace {
            flbas: 0x11,
            dps: 0x09,
            nsze: 0,
        };
        // 1 | MSET<<4 | PI 1<<5 | PIL<<8 | SES 2<<9
        assert_eq!(format_cdw10(&ns, 2), 0x0000_0531);
        // Plain 4K format (LBAF 0), user data erase: SES 1 only.
        let plain = Namespace {
            flbas: 0,
            dps: 0,
            nsze: 0,
        };
        assert_eq!(format_cdw10(&plain, 1), 0x0000_0200);
        // NVMe 2.0 upper LBAF bits: FLBAS 0x23 = LBAF 0x13.
        let wide = Namespace {
            flbas: 0x23,
            dps: 0,
            nsze: 0,
        };
        assert_eq!(wide.lbaf(), 0x13);
        assert_eq!(format_cdw10(&wide, 1), 0x3 | 1 << 9 | 1 << 12);
        let cmd = format_cmd(1, 0x200, 600_000);
        assert_eq!(
            (cmd.opcode, cmd.nsid, cmd.cdw10, cmd.cdw11),
            (0x80, 1, 0x200, 0)
        );
    }

    #[test]
    fn namespace_identify_fields() {
        let mut id = vec![0u8; IDENTIFY_LEN];
        id[0..8].copy_from_slice(&1_000_215_216u64.to_le_bytes());
        id[26] = 0x02;
        id[29] = 0x03;
        let ns = Namespace::parse(&id).unwrap();
        assert_eq!(
            ns,
            Namespace {
                flbas: 2,
                dps: 3,
                nsze: 1_000_215_216
            }
        );
    }

    #[test]
    fn all_namespace_effects() {
        let c = |fna| Controller { oacs: 2, fna };
        assert!(c(0b001).affects_all_namespaces(1));
        assert!(c(0b010).affects_all_namespaces(2));
        assert!(!c(0b010).affects_all_namespaces(0));
        assert!(!c(0b100).affects_all_namespaces(2));
    }

    #[test]
    fn status_and_timeouts() {
        assert_eq!(
            describe_status(0x10a),
            "NVMe status 0x10a, SCT 1 SC 0x0a (Invalid Format)"
        );
        assert_eq!(format_timeout_ms(2, 4 << 40), 600_000);
        assert_eq!(
            format_timeout_ms(1, 1_000_000_000_000),
            600_000 + 10_000_000
        );
        assert_eq!(format_timeout_ms(1, u64::MAX), 12 * 3600 * 1000);
    }

    #[test]
    fn siblings_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "nvme0n1",
            "nvme0n2",
            "nvme0n10",
            "nvme1n1",
            "nvme0c0n1",
            "sda",
        ] {
            std::fs::create_dir_all(dir.path().join("sys/block").join(n)).unwrap();
        }
        let mut d = crate::clean::tests_support::disk("/dev/nvme0n1");
        let s = sibling_namespaces(dir.path(), &d);
        assert_eq!(
            s,
            vec!["/dev/nvme0n10".to_string(), "/dev/nvme0n2".to_string()]
        );
        d.name = "/dev/sda".into();
        assert!(sibling_namespaces(dir.path(), &d).is_empty());
    }
}
