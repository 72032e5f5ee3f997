//! In-process reading and editing of GPT and MBR partition tables.
//!
//! IPA shells out to `sgdisk`, `parted` and `partprobe` for this; the ramdisk Ferric runs in
//! has none of them, so the few edits a deploy needs are done here:
//!
//! - [`read_table`]: the table as the kernel would see it (GPT behind a protective MBR first,
//!   then DOS/MBR with its logical partitions).
//! - [`disk_identifier`]: the 4 bytes at offset 440 as `0x%08x`, what IPA's
//!   `get_disk_identifier` returns as the "root uuid" of a whole-disk image.
//! - [`fix_gpt_backup`]: IPA's `sgdisk -e` (disk_utils `_fix_gpt_structs`): a whole-disk image
//!   is smaller than the disk, so its backup GPT sits in the middle of the disk; move it to the
//!   end and let the last usable LBA follow.
//! - [`add_partition_at_end`]: the config drive partition (IPA: `sgdisk -n 0:-64MB:0` on GPT,
//!   `parted mkpart primary … -64MiB -0` on MBR).
//!
//! Writes go backup-first: the backup GPT structures are written before the primary ones, so a
//! crash in between leaves a valid primary table that tools repair from. Every edit ends with
//! `fsync`. Making the kernel notice the change is the caller's job (see
//! [`crate::configdrive`]).

mod gpt;
mod mbr;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use uuid::Uuid;

use crate::sys;

/// Alignment of new partitions: 1 MiB, what parted (`-a optimal`) and sgdisk use.
const ALIGN_BYTES: u64 = 1 << 20;

/// One partition of a table. Positions are in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// Partition number as Linux names it: GPT slot + 1; MBR 1–4 primary, 5… logical.
    pub number: u32,
    /// Offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT partition name (`PARTLABEL`); `None` when empty and always on MBR.
    pub name: Option<String>,
    /// GPT: the type GUID, lower case. MBR: the type id as `0x83`.
    pub type_guid_or_id: String,
    /// GPT: the unique partition GUID, lower case. MBR: the `PARTUUID` Linux derives,
    /// `<signature as %08x>-<number as %02x>` (e.g. `1badb002-02`).
    pub unique_guid: Option<String>,
}

impl PartitionEntry {
    /// Offset of the byte after the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A partition table read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionTable {
    /// A GUID Partition Table (behind a protective or hybrid MBR).
    Gpt {
        /// Disk GUID, lower case (blkid's `PTUUID`).
        disk_guid: String,
        /// Used entries, in slot order.
        entries: Vec<PartitionEntry>,
        /// Logical sector size the table was read with.
        sector_size: u32,
        /// First LBA partitions may use.
        first_usable_lba: u64,
        /// Last LBA partitions may use.
        last_usable_lba: u64,
        /// Where the header read says the other header is. For a primary header on a disk
        /// larger than the image this is not the disk's last LBA until
        /// [`fix_gpt_backup`] ran.
        alternate_lba: u64,
        /// True when the primary header was damaged and the table came from the backup at the
        /// disk's last LBA. The editing functions refuse such a disk.
        from_backup: bool,
    },
    /// A DOS/MBR table.
    Mbr {
        /// Disk signature, the 4 bytes at offset 440 (little endian).
        signature: u32,
        /// Primary entries (an extended partition is listed with its full extent) followed by
        /// the logical partitions, numbered from 5.
        entries: Vec<PartitionEntry>,
    },
}

impl PartitionTable {
    /// The partitions, whatever the table type.
    pub fn entries(&self) -> &[PartitionEntry] {
        match self {
            PartitionTable::Gpt { entries, .. } | PartitionTable::Mbr { entries, .. } => entries,
        }
    }

    /// `"gpt"` or `"msdos"` (parted's and IPA's names).
    pub fn kind(&self) -> &'static str {
        match self {
            PartitionTable::Gpt { .. } => "gpt",
            PartitionTable::Mbr { .. } => "msdos",
        }
    }
}

/// Why a partition table could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Reading or writing the device failed.
    #[error("cannot {action} {len} bytes at byte {offset} of the disk: {source}")]
    Io {
        /// `"read"` or `"write"`.
        action: &'static str,
        /// Byte offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Querying the device (size, sector size) or flushing it failed.
    #[error("cannot {what} of the disk: {source}")]
    Device {
        /// What was asked (`"get the size"`, `"flush writes"`…).
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A logical sector size this code does not handle.
    #[error("unsupported logical sector size of {0} bytes (supported: 512, 1024, 2048, 4096)")]
    SectorSize(u32),
    /// The disk has neither a GPT nor an MBR partition table.
    #[error("the disk has no partition table (no valid MBR and no GPT)")]
    NoTable,
    /// A protective MBR announces a GPT, but neither GPT header is valid.
    #[error(
        "the protective MBR announces a GPT, but the primary header (LBA 1) is invalid \
         ({primary}) and so is the backup at the last LBA {backup_lba} ({backup})"
    )]
    NoValidGpt {
        /// What is wrong with the primary header.
        primary: String,
        /// Where the backup was looked for.
        backup_lba: u64,
        /// What is wrong with the backup header.
        backup: String,
    },
    /// The primary GPT header is invalid; it is not edited from the backup alone.
    #[error(
        "the primary GPT header is damaged ({reason}); refusing to edit a GPT that only its \
         backup describes"
    )]
    PrimaryGptDamaged {
        /// What is wrong with the primary header.
        reason: String,
    },
    /// The GPT entry array does not match the header's CRC, or holds an impossible entry.
    #[error("the {which} GPT partition entry array at LBA {lba} is invalid: {reason}")]
    BadGptEntries {
        /// `"primary"` or `"backup"`.
        which: &'static str,
        /// LBA of the array.
        lba: u64,
        /// What is wrong.
        reason: String,
    },
    /// An MBR extended partition starts at LBA 0. Its first EBR would be the MBR itself, whose
    /// first two entries would then also count as logical partitions: a partition added to one
    /// of those slots would appear twice.
    #[error(
        "MBR partition {number} is an extended partition starting at LBA 0, on the MBR itself"
    )]
    ExtendedAtLba0 {
        /// Its partition number (1–4).
        number: u32,
    },
    /// The table describes space beyond the end of the disk.
    #[error("the partition table needs {table_end} bytes but the disk has only {disk_size} bytes")]
    DiskTooSmall {
        /// Bytes the table needs (end of its last partition or structure).
        table_end: u64,
        /// Size of the disk.
        disk_size: u64,
    },
    /// Every entry slot is used.
    #[error("no free {table} partition slot: all {slots} entries are in use")]
    NoFreeSlot {
        /// `"gpt"` or `"msdos"` (for MBR: primary slots; logical partitions are not created,
        /// as IPA does not create them either, ironic bug 1561283).
        table: &'static str,
        /// Number of slots.
        slots: u32,
    },
    /// Not enough free space after the last partition.
    #[error(
        "no room for a partition of {requested} bytes: the free space after the last partition \
         runs from byte {free_start} to byte {free_end} ({} bytes, 1 MiB aligned)",
        free_end.saturating_sub(*free_start)
    )]
    NoRoom {
        /// Bytes asked for.
        requested: u64,
        /// First usable byte after the last partition (aligned).
        free_start: u64,
        /// End of the usable space (exclusive): the last usable LBA on GPT, the end of the
        /// disk or the 2 TiB MBR limit on MBR.
        free_end: u64,
    },
    /// The GPT name does not fit the 36 UTF-16 units of an entry.
    #[error("partition name {0:?} is longer than the 36 UTF-16 code units a GPT entry holds")]
    NameTooLong(String),
    /// A zero-byte partition was asked for.
    #[error("a partition cannot be empty")]
    EmptyPartition,
}

/// Random-access view of a disk with its geometry.
struct Disk<'a> {
    file: &'a File,
    sector: u64,
    size: u64,
}

impl<'a> Disk<'a> {
    fn open(file: &'a File) -> Result<Disk<'a>, PartitionError> {
        let sector = sys::logical_sector_size(file).map_err(|source| PartitionError::Device {
            what: "get the logical sector size",
            source,
        })?;
        if !matches!(sector, 512 | 1024 | 2048 | 4096) {
            return Err(PartitionError::SectorSize(sector));
        }
        let size = sys::device_size(file).map_err(|source| PartitionError::Device {
            what: "get the size",
            source,
        })?;
        Ok(Disk {
            file,
            sector: u64::from(sector),
            size,
        })
    }

    /// Number of whole logical sectors.
    fn sectors(&self) -> u64 {
        self.size / self.sector
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, PartitionError> {
        let mut buf = vec![0u8; len];
        if offset.saturating_add(len as u64) > self.size {
            return Err(PartitionError::Io {
                action: "read",
                offset,
                len: len as u64,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the end of the disk"),
            });
        }
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| PartitionError::Io {
                action: "read",
                offset,
                len: len as u64,
                source,
            })?;
        Ok(buf)
    }

    fn read_lba(&self, lba: u64, len: usize) -> Result<Vec<u8>, PartitionError> {
        self.read(lba * self.sector, len)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), PartitionError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|source| PartitionError::Io {
                action: "write",
                offset,
                len: data.len() as u64,
                source,
            })
    }

    fn write_lba(&self, lba: u64, data: &[u8]) -> Result<(), PartitionError> {
        self.write(lba * self.sector, data)
    }

    fn sync(&self) -> Result<(), PartitionError> {
        self.file
            .sync_all()
            .map_err(|source| PartitionError::Device {
                what: "flush writes",
                source,
            })
    }

    /// Sectors an entry array of `len` bytes occupies.
    fn sectors_for(&self, len: usize) -> u64 {
        (len as u64).div_ceil(self.sector)
    }
}

/// A GPT read from disk, with the header it came from.
struct Gpt {
    header: gpt::Header,
    array: Vec<u8>,
    entries: Vec<gpt::Entry>,
    from_backup: bool,
}

/// Read the header at `lba` and its entry array, checking both CRCs.
fn read_gpt_at(disk: &Disk, lba: u64, which: &'static str) -> Result<Gpt, GptProblem> {
    let sector = disk
        .read_lba(lba, disk.sector as usize)
        .map_err(GptProblem::Fatal)?;
    let header = gpt::Header::parse(&sector, lba).map_err(GptProblem::Invalid)?;
    let entries_lba = header.entries_lba();
    let len = header.entries_len();
    if entries_lba
        .checked_add(disk.sectors_for(len))
        .is_none_or(|end| end > disk.sectors())
    {
        return Err(GptProblem::Invalid(format!(
            "its entry array at LBA {entries_lba} runs past the end of the disk"
        )));
    }
    let array = disk.read_lba(entries_lba, len).map_err(GptProblem::Fatal)?;
    let crc = gpt::entries_crc(&array);
    if crc != header.entries_crc() {
        return Err(GptProblem::Invalid(format!(
            "{which} entry array CRC32 is {:#010x}, header says {:#010x}",
            crc,
            header.entries_crc()
        )));
    }
    let entries = gpt::parse_entries(&array, header.entry_size() as usize).map_err(|reason| {
        GptProblem::Fatal(PartitionError::BadGptEntries {
            which,
            lba: entries_lba,
            reason,
        })
    })?;
    Ok(Gpt {
        header,
        array,
        entries,
        from_backup: which == "backup",
    })
}

enum GptProblem {
    /// The header or array is not a valid GPT (try the other copy).
    Invalid(String),
    /// I/O error or an impossible entry: report as is.
    Fatal(PartitionError),
}

/// Read the primary GPT, falling back to the backup at the last LBA.
fn read_gpt(disk: &Disk) -> Result<Gpt, PartitionError> {
    let primary = match read_gpt_at(disk, 1, "primary") {
        Ok(g) => return Ok(g),
        Err(GptProblem::Fatal(e)) => return Err(e),
        Err(GptProblem::Invalid(why)) => why,
    };
    let backup_lba = disk.sectors().saturating_sub(1);
    match read_gpt_at(disk, backup_lba, "backup") {
        Ok(g) => Ok(g),
        Err(GptProblem::Fatal(e)) => Err(e),
        Err(GptProblem::Invalid(backup)) => Err(PartitionError::NoValidGpt {
            primary,
            backup_lba,
            backup,
        }),
    }
}

/// The primary GPT, or an error when it is damaged (edits start from the primary).
fn read_primary_gpt(disk: &Disk) -> Result<Gpt, PartitionError> {
    let g = read_gpt(disk)?;
    if g.from_backup {
        let reason = match read_gpt_at(disk, 1, "primary") {
            Err(GptProblem::Invalid(r)) => r,
            _ => "unreadable".into(),
        };
        return Err(PartitionError::PrimaryGptDamaged { reason });
    }
    Ok(g)
}

/// What sector 0 says the disk holds.
enum Sector0 {
    Gpt,
    Mbr([mbr::RawEntry; 4], u32),
    Nothing,
}

fn probe_sector0(disk: &Disk) -> Result<Sector0, PartitionError> {
    let s0 = disk.read(0, 512)?;
    Ok(match mbr::primary_entries(&s0) {
        // The kernel's efi.c accepts a protective entry in any slot (hybrid MBRs).
        Some(e) if e.iter().any(|e| e.kind == mbr::TYPE_GPT_PROTECTIVE) => Sector0::Gpt,
        Some(e) => Sector0::Mbr(e, mbr::signature(&s0)),
        None => Sector0::Nothing,
    })
}

fn gpt_table(disk: &Disk, g: &Gpt) -> PartitionTable {
    PartitionTable::Gpt {
        disk_guid: g.header.disk_guid(),
        entries: g.entries.iter().map(|e| gpt_entry(disk, e)).collect(),
        sector_size: disk.sector as u32,
        first_usable_lba: g.header.first_usable(),
        last_usable_lba: g.header.last_usable(),
        alternate_lba: g.header.alternate_lba(),
        from_backup: g.from_backup,
    }
}

fn gpt_entry(disk: &Disk, e: &gpt::Entry) -> PartitionEntry {
    PartitionEntry {
        number: e.index as u32 + 1,
        start: e.first_lba * disk.sector,
        size: (e.last_lba - e.first_lba + 1) * disk.sector,
        name: (!e.name.is_empty()).then(|| e.name.clone()),
        type_guid_or_id: e.type_guid.clone(),
        unique_guid: Some(e.unique_guid.clone()),
    }
}

fn mbr_entry(
    signature: u32,
    number: u32,
    start: u64,
    sectors: u64,
    kind: u8,
    ss: u64,
) -> PartitionEntry {
    PartitionEntry {
        number,
        start: start * ss,
        size: sectors * ss,
        name: None,
        type_guid_or_id: format!("{kind:#04x}"),
        unique_guid: Some(format!("{signature:08x}-{number:02x}")),
    }
}

fn mbr_table(
    disk: &Disk,
    primaries: &[mbr::RawEntry; 4],
    signature: u32,
) -> Result<PartitionTable, PartitionError> {
    let mut entries = Vec::new();
    let mut logical = Vec::new();
    for (i, e) in primaries.iter().enumerate() {
        // The kernel skips empty slots and zero-length entries alike.
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        // The kernel would read the MBR as the first EBR; no partitioning tool writes this.
        if e.is_extended() && e.start == 0 {
            return Err(PartitionError::ExtendedAtLba0 {
                number: i as u32 + 1,
            });
        }
        let (start, sectors) = (u64::from(e.start), u64::from(e.sectors));
        entries.push(mbr_entry(
            signature,
            i as u32 + 1,
            start,
            sectors,
            e.kind,
            disk.sector,
        ));
        if e.is_extended() && logical.is_empty() {
            logical = mbr::logical_entries(start, sectors, |lba| {
                if lba >= disk.sectors() {
                    return Ok(Vec::new());
                }
                disk.read_lba(lba, 512)
            })?;
        }
    }
    for (n, (start, sectors, kind)) in logical.into_iter().enumerate() {
        entries.push(mbr_entry(
            signature,
            n as u32 + 5,
            start,
            sectors,
            kind,
            disk.sector,
        ));
    }
    Ok(PartitionTable::Mbr { signature, entries })
}

/// Read the partition table of `dev` (a block device or a disk image file), with the logical
/// sector size of the device ([`sys::logical_sector_size`], 512 for files).
///
/// `Ok(None)` when the disk has no partition table at all. A protective MBR whose GPT headers
/// are both invalid is an error, not `None`: something is there and it is broken.
pub fn read_table(dev: &File) -> Result<Option<PartitionTable>, PartitionError> {
    let disk = Disk::open(dev)?;
    if disk.size < 512 {
        return Ok(None);
    }
    match probe_sector0(&disk)? {
        Sector0::Gpt => Ok(Some(gpt_table(&disk, &read_gpt(&disk)?))),
        Sector0::Mbr(primaries, sig) => Ok(Some(mbr_table(&disk, &primaries, sig)?)),
        Sector0::Nothing => Ok(None),
    }
}

/// The disk identifier IPA reports as `root uuid` of a whole-disk image: the 4 bytes at offset
/// 440 read as a little-endian u32 and printed `0x%08x` (IPA disk_utils `get_disk_identifier`,
/// which runs `hexdump -s 440 -n 4 -e '"0x%08x"'`). On a GPT disk this is the protective MBR's
/// signature, usually `0x00000000`, exactly as IPA reports it.
pub fn disk_identifier(dev: &File) -> Result<String, PartitionError> {
    let mut b = [0u8; 4];
    dev.read_exact_at(&mut b, mbr::SIGNATURE_OFFSET as u64)
        .map_err(|source| PartitionError::Io {
            action: "read",
            offset: mbr::SIGNATURE_OFFSET as u64,
            len: 4,
            source,
        })?;
    Ok(format!("{:#010x}", u32::from_le_bytes(b)))
}

/// Move the backup GPT (entry array + header) to the end of the disk, as `sgdisk -e` does in
/// IPA's `_fix_gpt_structs`, and grow the last usable LBA to match. A whole-disk image written
/// to a larger disk leaves the backup where the image ended, which makes the space after it
/// unusable and the table invalid to strict tools.
///
/// Also rewrites a damaged backup that is at the right place, and grows a pure protective MBR
/// entry to cover the disk (UEFI §5.2.3). Returns `Ok(true)` when something was written,
/// `Ok(false)` when the disk is not GPT or already consistent.
pub fn fix_gpt_backup(dev: &File) -> Result<bool, PartitionError> {
    let disk = Disk::open(dev)?;
    if disk.sectors() < 3 || !matches!(probe_sector0(&disk)?, Sector0::Gpt) {
        return Ok(false);
    }
    let g = read_primary_gpt(&disk)?;
    let last_lba = disk.sectors() - 1;
    let old_alt = g.header.alternate_lba();
    let array_sectors = disk.sectors_for(g.array.len());
    let backup_ok = old_alt == last_lba
        && matches!(read_gpt_at(&disk, last_lba, "backup"), Ok(b) if b.array == g.array);

    let mut changed = false;
    if !backup_ok {
        let max_end = g.entries.iter().map(|e| e.last_lba).max().unwrap_or(0);
        let too_small = || PartitionError::DiskTooSmall {
            table_end: (max_end + 2 + array_sectors) * disk.sector,
            disk_size: disk.size,
        };
        let backup_entries_lba = last_lba.checked_sub(array_sectors).ok_or_else(too_small)?;
        // Moving the backup frees the space up to the new backup entry array. A backup that
        // was already at the end (but damaged) keeps the image's last usable LBA.
        let mut new_last_usable = backup_entries_lba.saturating_sub(1);
        if old_alt == last_lba {
            new_last_usable = new_last_usable.min(g.header.last_usable());
        }
        if max_end > new_last_usable || new_last_usable < g.header.first_usable() {
            return Err(too_small());
        }
        let mut primary = g.header.clone();
        primary.set_alternate_lba(last_lba);
        primary.set_last_usable(new_last_usable);
        let backup = primary.mirrored(last_lba, 1, backup_entries_lba);
        let ss = disk.sector as usize;
        disk.write_lba(backup_entries_lba, &pad(&g.array, ss))?;
        disk.write_lba(last_lba, &backup.to_sector(ss))?;
        disk.sync()?;
        disk.write_lba(1, &primary.to_sector(ss))?;
        // Invalidate the old backup header so no tool finds two backups. It lies after every
        // partition and before the new backup entry array, so nothing else lives there.
        if old_alt > g.header.last_usable() && old_alt > max_end && old_alt < backup_entries_lba {
            disk.write_lba(old_alt, &vec![0u8; ss])?;
        }
        log::info!(
            "GPT backup moved from LBA {old_alt} to LBA {last_lba}, last usable LBA {} -> {}",
            g.header.last_usable(),
            new_last_usable
        );
        changed = true;
    }
    changed |= grow_protective_mbr(&disk, last_lba)?;
    if changed {
        disk.sync()?;
    }
    Ok(changed)
}

/// Make a pure protective MBR (one 0xEE entry at LBA 1, nothing else) cover the whole disk:
/// `min(last LBA, 0xFFFFFFFF)` sectors. Hybrid MBRs are left alone.
fn grow_protective_mbr(disk: &Disk, last_lba: u64) -> Result<bool, PartitionError> {
    let s0 = disk.read(0, 512)?;
    let Some(entries) = mbr::primary_entries(&s0) else {
        return Ok(false);
    };
    let pure = entries[0].kind == mbr::TYPE_GPT_PROTECTIVE
        && entries[0].start == 1
        && entries[1..].iter().all(|e| e.kind == 0);
    let want = last_lba.min(u64::from(u32::MAX)) as u32;
    if !pure || entries[0].sectors == want {
        return Ok(false);
    }
    let e = mbr::RawEntry {
        sectors: want,
        ..entries[0]
    };
    disk.write(mbr::TABLE_OFFSET as u64, &e.encode())?;
    Ok(true)
}

fn pad(data: &[u8], sector: usize) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(sector) * sector, 0);
    v
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// Place `sectors` sectors as late as possible in `[lower, upper)`, start aligned to 1 MiB.
/// `lower` is the first sector after the last partition. Returns the start sector.
fn place_at_end(disk: &Disk, sectors: u64, lower: u64, upper: u64) -> Result<u64, PartitionError> {
    let align = (ALIGN_BYTES / disk.sector).max(1);
    let lower = align_up(lower, align);
    let no_room = || PartitionError::NoRoom {
        requested: sectors * disk.sector,
        free_start: lower * disk.sector,
        free_end: upper.max(lower) * disk.sector,
    };
    let start = align_down(upper.checked_sub(sectors).ok_or_else(no_room)?, align);
    if start < lower {
        return Err(no_room());
    }
    Ok(start)
}

/// Add a partition of `size_bytes` (rounded up to whole sectors) after the last partition, as
/// late on the disk as it fits with its start aligned to 1 MiB: at the end of the disk, where
/// IPA puts the config drive (`sgdisk -n 0:-64MB:0`, `parted mkpart … -64MiB -0`), so that the
/// root partition of the image can still be grown into the space between them.
///
/// - GPT: first free slot, type "Linux filesystem" (sgdisk's default, what IPA gets), named
///   `name`, random unique GUID, ending at most at the last usable LBA. Call
///   [`fix_gpt_backup`] first on a freshly written image, or the last usable LBA is still the
///   image's.
/// - MBR: first free primary slot, type 0x83, entirely below 2^32 sectors (2 TiB with 512-byte
///   sectors: IPA likewise places it below 2 TiB on larger disks). `name` is not stored.
///
/// Errors: no table, no free slot, no room (naming sizes), a damaged primary GPT.
pub fn add_partition_at_end(
    dev: &File,
    size_bytes: u64,
    name: &str,
) -> Result<PartitionEntry, PartitionError> {
    if size_bytes == 0 {
        return Err(PartitionError::EmptyPartition);
    }
    let disk = Disk::open(dev)?;
    if disk.size < 512 {
        return Err(PartitionError::NoTable);
    }
    let sectors = size_bytes.div_ceil(disk.sector);
    match probe_sector0(&disk)? {
        Sector0::Gpt => add_gpt(&disk, sectors, name),
        Sector0::Mbr(primaries, sig) => add_mbr(&disk, &primaries, sig, sectors),
        Sector0::Nothing => Err(PartitionError::NoTable),
    }
}

fn add_gpt(disk: &Disk, sectors: u64, name: &str) -> Result<PartitionEntry, PartitionError> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > gpt::NAME_UNITS {
        return Err(PartitionError::NameTooLong(name.to_owned()));
    }
    let g = read_primary_gpt(disk)?;
    let h = &g.header;
    let esize = h.entry_size() as usize;
    let used: Vec<usize> = g.entries.iter().map(|e| e.index).collect();
    let slot = (0..h.num_entries() as usize)
        .find(|i| !used.contains(i))
        .ok_or(PartitionError::NoFreeSlot {
            table: "gpt",
            slots: h.num_entries(),
        })?;
    let lower = g
        .entries
        .iter()
        .map(|e| e.last_lba + 1)
        .max()
        .unwrap_or(0)
        .max(h.first_usable());
    // A primary header whose last usable LBA is beyond the disk (an image larger than the
    // disk) does not make that space usable.
    let upper = (h.last_usable() + 1).min(disk.sectors());
    let start = place_at_end(disk, sectors, lower, upper)?;
    let last = start + sectors - 1;

    let type_guid = Uuid::parse_str(gpt::LINUX_FILESYSTEM).expect("constant GUID");
    let unique = Uuid::new_v4();
    let mut array = g.array.clone();
    gpt::encode_entry(
        &mut array[slot * esize..(slot + 1) * esize],
        &type_guid,
        &unique,
        start,
        last,
        &units,
    );
    let mut primary = h.clone();
    primary.set_entries_crc(gpt::entries_crc(&array));
    let ss = disk.sector as usize;
    // Rewrite the backup from the primary: a stale or damaged backup is replaced, a valid one
    // gets the same new entry.
    let alt = h.alternate_lba();
    let backup_entries_lba = alt.saturating_sub(disk.sectors_for(array.len()));
    let backup_fits = alt < disk.sectors() && backup_entries_lba > h.last_usable();
    if backup_fits {
        let backup = primary.mirrored(alt, 1, backup_entries_lba);
        disk.write_lba(backup_entries_lba, &pad(&array, ss))?;
        disk.write_lba(alt, &backup.to_sector(ss))?;
        disk.sync()?;
    } else {
        log::warn!("GPT backup header LBA {alt} is not usable; only the primary GPT is updated");
    }
    disk.write_lba(h.entries_lba(), &pad(&array, ss))?;
    disk.write_lba(1, &primary.to_sector(ss))?;
    disk.sync()?;
    let entry = gpt::Entry {
        index: slot,
        type_guid: gpt::LINUX_FILESYSTEM.to_owned(),
        unique_guid: unique.hyphenated().to_string(),
        first_lba: start,
        last_lba: last,
        name: name.to_owned(),
    };
    Ok(gpt_entry(disk, &entry))
}

fn add_mbr(
    disk: &Disk,
    primaries: &[mbr::RawEntry; 4],
    signature: u32,
    sectors: u64,
) -> Result<PartitionEntry, PartitionError> {
    let slot = primaries
        .iter()
        .position(|e| e.kind == 0)
        .ok_or(PartitionError::NoFreeSlot {
            table: "msdos",
            slots: 4,
        })?;
    let table = mbr_table(disk, primaries, signature)?;
    // After everything, the extended container and its logical partitions included.
    let lower = table
        .entries()
        .iter()
        .map(|e| e.end().div_ceil(disk.sector))
        .max()
        .unwrap_or(1)
        .max(1);
    // Start and size are 32-bit sector counts; keep the whole partition below 2^32 sectors.
    let upper = disk.sectors().min(1 << 32);
    let start = place_at_end(disk, sectors, lower, upper)?;
    let e = mbr::RawEntry {
        boot: 0,
        kind: mbr::TYPE_LINUX,
        start: start as u32,
        sectors: sectors as u32,
    };
    disk.write((mbr::TABLE_OFFSET + 16 * slot) as u64, &e.encode())?;
    disk.sync()?;
    Ok(mbr_entry(
        signature,
        slot as u32 + 1,
        start,
        sectors,
        mbr::TYPE_LINUX,
        disk.sector,
    ))
}

/// The device node Linux gives partition `number` of `disk`: `/dev/sda2`, but `/dev/nvme0n1p2`
/// and `/dev/loop3p2` when the disk name ends in a digit (IPA disk_utils
/// `partition_index_to_path`). A name only: the node may not exist.
pub fn partition_path(disk: &std::path::Path, number: u32) -> std::path::PathBuf {
    let s = disk.as_os_str().to_string_lossy();
    let sep = if s.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    std::path::PathBuf::from(format!("{s}{sep}{number}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn partition_paths_follow_linux_naming() {
        assert_eq!(
            partition_path(Path::new("/dev/sda"), 2),
            Path::new("/dev/sda2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/loop3"), 2),
            Path::new("/dev/loop3p2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1"), 1),
            Path::new("/dev/nvme0n1p1")
        );
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(2049, 2048), 4096);
        assert_eq!(align_up(2048, 2048), 2048);
        assert_eq!(align_down(4095, 2048), 2048);
    }
}
