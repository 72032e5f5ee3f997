//! UEFI boot entries, as IPA's `efi_utils.manage_uefi` makes them with efibootmgr, without
//! efibootmgr: the boot loaders an EFI system partition offers ([`find_loaders`], read with a
//! FAT reader, nothing mounted), encoded as `EFI_LOAD_OPTION`s ([`load_option`]) and written
//! as `Boot####` variables at the front of `BootOrder` through efivarfs ([`EfiVars`]).
//!
//! The rules are IPA's: a `BOOTX64.CSV`/`BOOT.CSV` (shim's fallback list) names the loader and
//! its label and wins over everything else; without one, every file with a well-known loader
//! name (`bootx64.efi`, `grubaa64.efi`, …) becomes an entry labelled `ironic1`, `ironic2`, ….
//! Entries whose label contains the new label are removed first, so a redeploy does not pile
//! up entries; the new entry goes first in `BootOrder`, as `efibootmgr -c` puts it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The EFI global variable vendor GUID (`Boot####`, `BootOrder`).
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// GPT partition type of an EFI system partition.
pub const ESP_TYPE_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// MBR partition type of an EFI system partition.
pub const ESP_MBR_TYPE: &str = "0xef";

/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS: what boot variables carry.
const VAR_ATTRIBUTES: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE`.
const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// efivarfs' superblock magic.
const EFIVARFS_MAGIC: i64 = 0xde5e_81e4;

/// Loader file names IPA accepts (`efi_utils.BOOTLOADERS_EFI`), lower case.
const LOADER_NAMES: &[&str] = &[
    "bootx64.csv",
    "boot.csv",
    "bootia32.efi",
    "bootx64.efi",
    "bootia64.efi",
    "bootarm.efi",
    "bootaa64.efi",
    "bootriscv32.efi",
    "bootriscv64.efi",
    "bootriscv128.efi",
    "grubaa64.efi",
    "winload.efi",
];

/// Directory levels and entries walked on an ESP: a real one has a handful; a hostile image
/// must not keep the agent walking.
const MAX_DEPTH: usize = 6;
const MAX_ENTRIES: usize = 4096;
/// Largest CSV read (real ones are a few dozen bytes).
const MAX_CSV: u64 = 64 * 1024;

/// What went wrong reading an ESP or writing variables.
#[derive(Debug, thiserror::Error)]
pub enum EfiError {
    /// The ESP is not a FAT filesystem the reader understands.
    #[error("the EFI system partition is not a readable FAT filesystem: {0}")]
    NotFat(String),
    /// A variable could not be read, written or removed.
    #[error("EFI variable {name}: {source}")]
    Var {
        /// The variable's file name in efivarfs.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// All 65536 boot entry numbers are taken.
    #[error("no free Boot#### number")]
    NoFreeEntry,
}

/// How the firmware finds the partition: GPT unique GUID or MBR disk signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSignature {
    /// The partition's unique GUID, as a string is parsed by [`guid_bytes`].
    Gpt([u8; 16]),
    /// The MBR disk signature (offset 440).
    Mbr(u32),
}

/// The media device path node `HD(number, start, size, signature)`, in logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// Partition number (1-based, as Linux numbers it).
    pub number: u32,
    /// First logical block.
    pub start_lba: u64,
    /// Size in logical blocks.
    pub size_lba: u64,
    /// GUID or MBR signature.
    pub signature: PartitionSignature,
}

/// One boot loader found on an ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// Path as UEFI writes it: `\EFI\debian\shimx64.efi`.
    pub path: String,
    /// The boot entry's description.
    pub label: String,
}

/// The 16 bytes of a GUID as UEFI stores it (first three fields little endian), from
/// `aabbccdd-eeff-0011-2233-445566778899`.
pub fn guid_bytes(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The device path `HD(...)/File(path)/End`.
fn device_path(hd: &HardDrive, path: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    // Media (4) / Hard Drive (1), 42 bytes.
    p.extend_from_slice(&[4, 1, 42, 0]);
    p.extend_from_slice(&hd.number.to_le_bytes());
    p.extend_from_slice(&hd.start_lba.to_le_bytes());
    p.extend_from_slice(&hd.size_lba.to_le_bytes());
    match hd.signature {
        PartitionSignature::Gpt(g) => {
            p.extend_from_slice(&g);
            p.extend_from_slice(&[2, 2]); // GPT, GUID signature.
        }
        PartitionSignature::Mbr(sig) => {
            p.extend_from_slice(&sig.to_le_bytes());
            p.extend_from_slice(&[0; 12]);
            p.extend_from_slice(&[1, 1]); // MBR, 32-bit signature.
        }
    }
    // Media (4) / File Path (4).
    let name = utf16z(path);
    p.extend_from_slice(&[4, 4]);
    p.extend_from_slice(&((4 + name.len()) as u16).to_le_bytes());
    p.extend_from_slice(&name);
    // End of the whole device path.
    p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    p
}

/// An active `EFI_LOAD_OPTION` booting `path` on the partition `hd`, described `label`.
pub fn load_option(label: &str, hd: &HardDrive, path: &str) -> Vec<u8> {
    let dp = device_path(hd, path);
    let mut o = Vec::with_capacity(8 + 2 * label.len() + dp.len());
    o.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    o.extend_from_slice(&(dp.len() as u16).to_le_bytes());
    o.extend_from_slice(&utf16z(label));
    o.extend_from_slice(&dp);
    o
}

/// The description of an `EFI_LOAD_OPTION` (variable data without the attribute word).
pub fn load_option_label(data: &[u8]) -> Option<String> {
    let units: Vec<u16> = data
        .get(6..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// A read-only window of a file (the ESP inside a disk) for the FAT reader.
struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the EFI system partition is read only here",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the EFI system partition",
            )),
        }
    }
}

/// The boot loaders of the FAT filesystem at `start..start + len` of `disk`, by IPA's rules:
/// the first CSV found (walking the tree top-down) alone, else every well-known loader file.
pub fn find_loaders(disk: &File, start: u64, len: u64) -> Result<Vec<Loader>, EfiError> {
    let window = Window {
        file: disk,
        start,
        len,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new())
        .map_err(|e| EfiError::NotFat(e.to_string()))?;
    let mut found = Vec::new();
    let mut seen = 0usize;
    let mut dirs = vec![(fs.root_dir(), Vec::<String>::new())];
    // Breadth-first, like os.walk's top-down order level by level.
    while !dirs.is_empty() {
        let mut next = Vec::new();
        for (dir, path) in dirs {
            for entry in dir.iter() {
                let entry = entry.map_err(|e| EfiError::NotFat(e.to_string()))?;
                seen += 1;
                if seen > MAX_ENTRIES {
                    return Err(EfiError::NotFat(format!(
                        "more than {MAX_ENTRIES} directory entries"
                    )));
                }
                let name = entry.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                if entry.is_dir() {
                    if path.len() + 1 < MAX_DEPTH {
                        let mut p = path.clone();
                        p.push(name);
                        next.push((entry.to_dir(), p));
                    }
                    continue;
                }
                let lower = name.to_ascii_lowercase();
                if !LOADER_NAMES.contains(&lower.as_str()) {
                    continue;
                }
                if lower.ends_with(".csv") {
                    let mut text = Vec::new();
                    entry
                        .to_file()
                        .take(MAX_CSV)
                        .read_to_end(&mut text)
                        .map_err(|e| EfiError::NotFat(format!("reading {name}: {e}")))?;
                    if let Some(l) = csv_loader(&path, &text) {
                        return Ok(vec![l]);
                    }
                    log::warn!("{} names no loader; ignored", join(&path, &name));
                    continue;
                }
                found.push(join(&path, &name));
            }
        }
        dirs = next;
    }
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(i, path)| Loader {
            path,
            label: format!("ironic{}", i + 1),
        })
        .collect())
}

/// `\EFI\debian\name` from the directory path and a file name.
fn join(dir: &[String], name: &str) -> String {
    let mut s = String::new();
    for d in dir {
        s.push('\\');
        s.push_str(d);
    }
    s.push('\\');
    s.push_str(name);
    s
}

/// The loader a shim CSV names: UTF-16 (with or without a byte order mark), first line
/// `loader.efi,Label,options,comment`.
fn csv_loader(dir: &[String], raw: &[u8]) -> Option<Loader> {
    let (body, big_endian) = match raw {
        [0xff, 0xfe, rest @ ..] => (rest, false),
        [0xfe, 0xff, rest @ ..] => (rest, true),
        rest => (rest, false),
    };
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| {
            if big_endian {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .collect();
    let text = String::from_utf16_lossy(&units);
    let line = text.lines().next()?;
    let mut fields = line.splitn(4, ',');
    let file = fields.next()?.trim();
    let label = fields.next()?.trim();
    if file.is_empty() || label.is_empty() || file.contains(['/', '\\']) {
        return None;
    }
    Some(Loader {
        path: join(dir, file),
        label: label.to_owned(),
    })
}

/// The boot variables of a firmware, through efivarfs (or a plain directory in tests).
pub struct EfiVars {
    dir: PathBuf,
    efivarfs: bool,
}

impl EfiVars {
    /// The variables under `dir` (`/sys/firmware/efi/efivars`).
    pub fn new(dir: &Path) -> io::Result<EfiVars> {
        let st = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
        Ok(EfiVars {
            dir: dir.to_owned(),
            efivarfs: st.filesystem_type().0 as i64 == EFIVARFS_MAGIC,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL_GUID}"))
    }

    fn var_err(name: &str, source: io::Error) -> EfiError {
        EfiError::Var {
            name: name.to_owned(),
            source,
        }
    }

    /// A variable's data (without the attribute word), `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, EfiError> {
        match std::fs::read(self.file(name)) {
            Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
            Ok(_) => Ok(Some(Vec::new())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::var_err(name, e)),
        }
    }

    /// Set a variable (created or replaced) in one write, as efivarfs wants it.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), EfiError> {
        let path = self.file(name);
        let mut buf = VAR_ATTRIBUTES.to_le_bytes().to_vec();
        buf.extend_from_slice(data);
        if path.exists() {
            clear_immutable(&path);
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            // efivarfs replaces the variable on write; a plain file must be truncated.
            .truncate(!self.efivarfs)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Self::var_err(name, e))?;
        let n = f.write(&buf).map_err(|e| Self::var_err(name, e))?;
        if n != buf.len() {
            return Err(Self::var_err(
                name,
                io::Error::new(io::ErrorKind::WriteZero, "short write"),
            ));
        }
        Ok(())
    }

    /// Delete a variable.
    pub fn remove(&self, name: &str) -> Result<(), EfiError> {
        let path = self.file(name);
        clear_immutable(&path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Self::var_err(name, e)),
            _ => Ok(()),
        }
    }

    /// `(number, label)` of every `Boot####` variable, by number.
    pub fn boot_entries(&self) -> Result<Vec<(u16, String)>, EfiError> {
        let dir = std::fs::read_dir(&self.dir).map_err(|e| Self::var_err("(list)", e))?;
        let suffix = format!("-{GLOBAL_GUID}");
        let mut out = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(var) = name.strip_suffix(&suffix) else {
                continue;
            };
            let Some(num) = boot_number(var) else {
                continue;
            };
            if let Some(data) = self.read(var)? {
                out.push((num, load_option_label(&data).unwrap_or_default()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// `BootOrder` as numbers (empty when unset).
    pub fn boot_order(&self) -> Result<Vec<u16>, EfiError> {
        Ok(self
            .read("BootOrder")?
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// Add a boot entry as IPA does with efibootmgr: entries whose label contains `label` are
    /// removed, the option is written as the lowest free `Boot####`, which goes first in
    /// `BootOrder`. Returns its number.
    pub fn add_boot_entry(&self, label: &str, option: &[u8]) -> Result<u16, EfiError> {
        let mut order = self.boot_order()?;
        let mut taken = Vec::new();
        for (num, existing) in self.boot_entries()? {
            if existing.contains(label) {
                log::info!("removing boot entry Boot{num:04X} ({existing}): same label");
                self.remove(&format!("Boot{num:04X}"))?;
                order.retain(|&n| n != num);
            } else {
                taken.push(num);
            }
        }
        let num = (0..=u16::MAX)
            .find(|n| !taken.contains(n))
            .ok_or(EfiError::NoFreeEntry)?;
        self.write(&format!("Boot{num:04X}"), option)?;
        order.retain(|&n| n != num);
        order.insert(0, num);
        let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        self.write("BootOrder", &bytes)?;
        Ok(num)
    }
}

/// `Boot0001` → 1 (exactly four hex digits, as UEFI names them).
fn boot_number(var: &str) -> Option<u16> {
    let hex = var.strip_prefix("Boot")?;
    if hex.len() != 4 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// efivarfs makes variables immutable (`chattr +i`) so that `rm -rf` cannot brick a machine;
/// clear the flag before replacing or removing one. Best effort: elsewhere it does not apply.
fn clear_immutable(path: &Path) {
    let Ok(f) = File::open(path) else {
        return;
    };
    if let Err(e) = crate::sys::clear_immutable(&f) {
        log::debug!("cannot clear the immutable flag of {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_mixed_endian() {
        let b = guid_bytes("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        assert_eq!(
            b,
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(guid_bytes("not-a-guid"), None);
        assert_eq!(guid_bytes("c12a7328f81f11d2ba4b00a0c93ec93b0000"), None);
    }

    #[test]
    fn load_option_layout_follows_the_uefi_spec() {
        let hd = HardDrive {
            number: 1,
            start_lba: 2048,
            size_lba: 204_800,
            signature: PartitionSignature::Gpt([0xab; 16]),
        };
        let o = load_option("debian", &hd, "\\EFI\\debian\\shimx64.efi");
        // Attributes: active.
        assert_eq!(&o[0..4], &[1, 0, 0, 0]);
        let dp_len = u16::from_le_bytes([o[4], o[5]]) as usize;
        // Description: UTF-16LE "debian" + NUL.
        let desc_end = 6 + 2 * 7;
        assert_eq!(load_option_label(&o).unwrap(), "debian");
        assert_eq!(&o[desc_end - 2..desc_end], &[0, 0]);
        let dp = &o[desc_end..];
        assert_eq!(dp.len(), dp_len);
        // HD node: type 4, subtype 1, length 42.
        assert_eq!(&dp[0..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(dp[4..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(dp[8..16].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(dp[16..24].try_into().unwrap()), 204_800);
        assert_eq!(&dp[24..40], &[0xab; 16]);
        assert_eq!(&dp[40..42], &[2, 2]);
        // File path node: type 4, subtype 4, length 4 + UTF-16 path with NUL.
        let path_units = "\\EFI\\debian\\shimx64.efi".len() + 1;
        assert_eq!(&dp[42..44], &[4, 4]);
        assert_eq!(
            u16::from_le_bytes([dp[44], dp[45]]) as usize,
            4 + 2 * path_units
        );
        assert_eq!(&dp[46..48], &[b'\\', 0]);
        // End node.
        assert_eq!(&dp[dp.len() - 4..], &[0x7f, 0xff, 4, 0]);
        assert_eq!(dp_len, 42 + 4 + 2 * path_units + 4);
    }

    #[test]
    fn mbr_signature_node() {
        let hd = HardDrive {
            number: 2,
            start_lba: 63,
            size_lba: 1000,
            signature: PartitionSignature::Mbr(0x1bad_b002),
        };
        let o = load_option("x", &hd, "\\a.efi");
        let dp = &o[6 + 4..];
        assert_eq!(&dp[24..28], &0x1bad_b002u32.to_le_bytes());
        assert_eq!(&dp[28..40], &[0; 12]);
        assert_eq!(&dp[40..42], &[1, 1]);
    }

    #[test]
    fn csv_files_name_the_loader_and_label() {
        let dir = vec!["EFI".to_string(), "ubuntu".to_string()];
        let mut raw = vec![0xff, 0xfe];
        raw.extend(
            "shimx64.efi,ubuntu,,This is the boot entry for Ubuntu\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        );
        assert_eq!(
            csv_loader(&dir, &raw),
            Some(Loader {
                path: "\\EFI\\ubuntu\\shimx64.efi".into(),
                label: "ubuntu".into()
            })
        );
        // Without a byte order mark (little endian), and big endian with one.
        let le: Vec<u8> = "grubx64.efi,centos"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(csv_loader(&dir, &le).unwrap().label, "centos");
        let mut be = vec![0xfe, 0xff];
        be.extend("grubx64.efi,rhel".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(csv_loader(&dir, &be).unwrap().label, "rhel");
        // Garbage, a path escaping the directory, a missing label.
        assert_eq!(csv_loader(&dir, b"\x00"), None);
        let esc: Vec<u8> = "..\\x.efi,evil"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(csv_loader(&dir, &esc), None);
        let nolabel: Vec<u8> = "x.efi".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(csv_loader(&dir, &nolabel), None);
    }

    #[test]
    fn boot_numbers_are_four_hex_digits() {
        assert_eq!(boot_number("Boot0001"), Some(1));
        assert_eq!(boot_number("Boot00AF"), Some(0xaf));
        assert_eq!(boot_number("BootOrder"), None);
        assert_eq!(boot_number("BootCurrent"), None);
        assert_eq!(boot_number("Boot001"), None);
    }

    #[test]
    fn entries_replace_same_label_and_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let vars = EfiVars::new(dir.path()).unwrap();
        let hd = HardDrive {
            number: 1,
            start_lba: 2048,
            size_lba: 2048,
            signature: PartitionSignature::Gpt([1; 16]),
        };
        // A PXE entry and an old "debian" entry from a previous deploy.
        vars.write("Boot0000", &load_option("UEFI PXEv4", &hd, "\\pxe"))
            .unwrap();
        vars.write("Boot0001", &load_option("debian", &hd, "\\old.efi"))
            .unwrap();
        vars.write("BootOrder", &[0, 0, 1, 0]).unwrap();
        let n = vars
            .add_boot_entry("debian", &load_option("debian", &hd, "\\new.efi"))
            .unwrap();
        assert_eq!(n, 1, "the freed number is reused");
        assert_eq!(vars.boot_order().unwrap(), vec![1, 0]);
        assert_eq!(
            vars.boot_entries().unwrap(),
            vec![(0, "UEFI PXEv4".into()), (1, "debian".into())]
        );
        // Attribute word on disk, then the option.
        let raw = std::fs::read(dir.path().join(format!("Boot0001-{GLOBAL_GUID}"))).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(&raw[4..], &load_option("debian", &hd, "\\new.efi")[..]);
        // A second label takes the next free number; the first stays.
        let m = vars
            .add_boot_entry("ironic1", &load_option("ironic1", &hd, "\\b.efi"))
            .unwrap();
        assert_eq!(m, 2);
        assert_eq!(vars.boot_order().unwrap(), vec![2, 1, 0]);
    }
}
