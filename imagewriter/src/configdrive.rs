//! Config drives: decoding what Ironic sends and writing it into a `config-2` partition.
//!
//! Follows IPA's `partition_utils.get_configdrive` and `create_config_drive_partition`
//! (ironic_python_agent/partition_utils.py, imported from ironic-lib disk_utils):
//!
//! 1. [`decode`]: an http(s) URL is fetched (by the caller's closure); the content is base64
//!    (IPA: when the download is not base64 it is taken as the raw image); a gzip stream is
//!    inflated. At most [`MAX_CONFIG_DRIVE_BYTES`] (IPA's `MAX_CONFIG_DRIVE_SIZE_MB`), enforced
//!    while inflating so a gzip bomb costs at most that much memory.
//! 2. [`write_config_drive`]: reuse the one partition labelled `config-2` (IPA asks lsblk for
//!    filesystem labels; a GPT partition name `config-2` counts too), else fix the GPT backup
//!    and add a 64 MiB partition at the end of the disk (IPA: `sgdisk -n 0:-64MB:0` on GPT,
//!    `parted mkpart primary -64MiB -0` on MBR, refusing a fifth primary). A disk without a
//!    partition table is refused, as IPA's MBR path refuses it.
//! 3. The ISO is written at the partition's offset through the whole-disk descriptor, so it
//!    works whether or not the kernel has a node for the partition, then fsync'ed.
//! 4. The kernel is told: `BLKRRPART`, and where that does not create the partition (loop
//!    devices without partscan, a disk with a partition in use) `BLKPG_ADD_PARTITION` for that
//!    one partition. Any cached pages of the partition node are dropped so that blkid reads
//!    the new `config-2` label.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use crate::partition::{self, PartitionEntry, PartitionError, PartitionTable};
use crate::sys;

// The ISO 9660 reader is private to the config drive; it lives in its own file.
#[path = "iso.rs"]
mod iso;

/// Largest config drive accepted, decompressed: 64 MiB (IPA `MAX_CONFIG_DRIVE_SIZE_MB`).
pub const MAX_CONFIG_DRIVE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest compressed payload accepted: gzip of an incompressible 64 MiB is a little larger
/// than 64 MiB.
pub const MAX_PAYLOAD_BYTES: u64 = MAX_CONFIG_DRIVE_BYTES + (1 << 20);

/// Largest encoded value accepted: base64 of [`MAX_PAYLOAD_BYTES`] with room for CRLF line
/// breaks every 76 characters. A closure passed to [`decode`] should cap downloads here (a
/// URL may serve base64, which is 4/3 the size of the ISO).
pub const MAX_ENCODED_BYTES: u64 = MAX_PAYLOAD_BYTES / 3 * 4 + MAX_PAYLOAD_BYTES / 19 + 64;

/// The filesystem label cloud-init looks for, and the GPT name given to a new partition.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";

/// Size of the partition created for a config drive: always the maximum, like IPA, so a
/// rebuild with a larger config drive still fits.
const PARTITION_BYTES: u64 = MAX_CONFIG_DRIVE_BYTES;

/// How long to wait for the device node of a partition the kernel just added (devtmpfs creates
/// it synchronously; udev-managed /dev may lag).
const NODE_WAIT: Duration = Duration::from_secs(3);

/// Why a config drive could not be decoded or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    /// Nothing to write.
    #[error("the config drive is empty")]
    Empty,
    /// The caller's fetch closure failed.
    #[error("cannot download the config drive from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What the closure said.
        reason: String,
    },
    /// The value is neither an http(s) URL nor base64.
    #[error(
        "the config drive is neither an http(s) URL nor base64 (Ironic sends a base64-encoded \
         gzipped ISO 9660 image): {reason}"
    )]
    NotBase64 {
        /// The base64 decoder's complaint.
        reason: String,
    },
    /// The decoded bytes are neither an ISO 9660 nor a FAT filesystem.
    #[error(
        "the config drive is not a filesystem image: after base64{gz} it is {len} bytes that \
         are neither ISO 9660 nor FAT (Ironic sends a base64-encoded gzipped ISO 9660 image)"
    )]
    NotAFilesystem {
        /// `" and gunzip"` when the payload was gzip.
        gz: &'static str,
        /// Its length.
        len: usize,
    },
    /// The payload starts like gzip but does not inflate.
    #[error("the config drive is not a valid gzip stream: {reason}")]
    Gunzip {
        /// The inflater's complaint.
        reason: String,
    },
    /// Over the size limit, at some stage.
    #[error(
        "the config drive is too large: {what} is {size} bytes or more, the limit is {limit} bytes"
    )]
    TooLarge {
        /// Which stage (`"the ISO after decompression"`, `"the base64 value"`…).
        what: &'static str,
        /// Bytes seen (a lower bound when the stage was cut short).
        size: u64,
        /// The limit for that stage.
        limit: u64,
    },
    /// The device cannot be opened.
    #[error("cannot open {}: {source}", device.display())]
    Open {
        /// The device.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the device failed.
    #[error("cannot {action} {len} bytes at byte {offset} of {}: {source}", device.display())]
    Io {
        /// The device.
        device: PathBuf,
        /// `"read"`, `"write"`, `"zero"` or `"flush"`.
        action: &'static str,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No partition table to add the config drive partition to.
    #[error(
        "{} has no partition table, so there is nowhere to put a config-2 partition (IPA \
         refuses this too); deploy a whole-disk image that has a GPT or MBR table",
        device.display()
    )]
    NoPartitionTable {
        /// The device.
        device: PathBuf,
    },
    /// Reading or editing the partition table failed.
    #[error("partition table of {}: {source}", device.display())]
    Partition {
        /// The device.
        device: PathBuf,
        /// What went wrong.
        #[source]
        source: PartitionError,
    },
    /// More than one partition is labelled `config-2`: which one cloud-init would read is a
    /// guess (IPA refuses this too).
    #[error(
        "more than one partition labelled config-2 on {}: partitions {partitions:?}",
        device.display()
    )]
    Ambiguous {
        /// The device.
        device: PathBuf,
        /// Their numbers.
        partitions: Vec<u32>,
    },
    /// The existing `config-2` partition is smaller than the new config drive.
    #[error(
        "the existing config-2 partition {number} of {} has {size} bytes, the config drive \
         needs {needed}",
        device.display()
    )]
    ExistingTooSmall {
        /// The device.
        device: PathBuf,
        /// Partition number.
        number: u32,
        /// Its size.
        size: u64,
        /// The ISO's size.
        needed: u64,
    },
}

fn base64_engine() -> GeneralPurpose {
    // Ironic pads; a value copied through other tools may not. Trailing bits are tolerated as
    // Python's b64decode tolerates them.
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Base64 with ASCII whitespace ignored (line-wrapped base64 is common in files served over
/// HTTP). The copy without whitespace is only made when the direct decode fails.
fn decode_base64(data: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let engine = base64_engine();
    match engine.decode(data) {
        Err(_) if data.iter().any(u8::is_ascii_whitespace) => {
            let compact: Vec<u8> = data
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            engine.decode(compact)
        }
        r => r,
    }
}

fn is_http_url(s: &str) -> bool {
    let l = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Inflate a gzip stream (several members allowed, like Python's gzip), stopping as soon as
/// the output would exceed [`MAX_CONFIG_DRIVE_BYTES`]: the output buffer never grows past it.
fn gunzip_bounded(gz: &[u8]) -> Result<Vec<u8>, ConfigDriveError> {
    let mut dec = flate2::read::MultiGzDecoder::new(gz);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ConfigDriveError::Gunzip {
                    reason: e.to_string(),
                })
            }
        };
        if (out.len() + n) as u64 > MAX_CONFIG_DRIVE_BYTES {
            return Err(ConfigDriveError::TooLarge {
                what: "the ISO after decompression",
                size: (out.len() + n) as u64,
                limit: MAX_CONFIG_DRIVE_BYTES,
            });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Turn the `configdrive` value Ironic sent into the bytes of the config drive image.
///
/// - An `http://` or `https://` URL is passed to `fetch` (the agent's downloader; it should cap
///   the body at [`MAX_ENCODED_BYTES`]). The body is base64-decoded when it is base64, else
///   taken as is (IPA: "not base64 encoded, assuming binary").
/// - Anything else must be base64 (whitespace ignored).
/// - A result starting with the gzip magic is inflated, bounded by
///   [`MAX_CONFIG_DRIVE_BYTES`]. IPA always gunzips; an uncompressed ISO in base64 is accepted
///   here as well.
///
/// The result is at most [`MAX_CONFIG_DRIVE_BYTES`] and never empty.
pub fn decode(
    value: &str,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, ConfigDriveError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigDriveError::Empty);
    }
    let payload = if is_http_url(value) {
        let body = fetch(value).map_err(|reason| ConfigDriveError::Fetch {
            url: value.to_owned(),
            reason,
        })?;
        if body.len() as u64 > MAX_ENCODED_BYTES {
            return Err(ConfigDriveError::TooLarge {
                what: "the downloaded config drive",
                size: body.len() as u64,
                limit: MAX_ENCODED_BYTES,
            });
        }
        match decode_base64(&body) {
            Ok(decoded) if !decoded.is_empty() => decoded,
            _ => {
                log::debug!("config drive from {value} is not base64, taking it as binary");
                body
            }
        }
    } else {
        if value.len() as u64 > MAX_ENCODED_BYTES {
            return Err(ConfigDriveError::TooLarge {
                what: "the base64 value",
                size: value.len() as u64,
                limit: MAX_ENCODED_BYTES,
            });
        }
        decode_base64(value.as_bytes()).map_err(|e| ConfigDriveError::NotBase64 {
            reason: e.to_string(),
        })?
    };
    let gzipped = payload.starts_with(&[0x1f, 0x8b]);
    let image = if gzipped {
        if payload.len() as u64 > MAX_PAYLOAD_BYTES {
            return Err(ConfigDriveError::TooLarge {
                what: "the gzipped config drive",
                size: payload.len() as u64,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        gunzip_bounded(&payload)?
    } else {
        payload
    };
    if image.is_empty() {
        return Err(ConfigDriveError::Empty);
    }
    if image.len() as u64 > MAX_CONFIG_DRIVE_BYTES {
        return Err(ConfigDriveError::TooLarge {
            what: "the config drive",
            size: image.len() as u64,
            limit: MAX_CONFIG_DRIVE_BYTES,
        });
    }
    // IPA fails on anything that does not gunzip; an uncompressed filesystem is taken too,
    // but bytes that are no filesystem at all would only make a config-2 partition that
    // cloud-init cannot read.
    if !is_filesystem(&image) {
        return Err(ConfigDriveError::NotAFilesystem {
            gz: if gzipped { " and gunzip" } else { "" },
            len: image.len(),
        });
    }
    // A filesystem labelled otherwise is written, as IPA does, with a warning.
    match filesystem_label(&image) {
        Some(l) if l.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL) => {}
        other => log::warn!(
            "the config drive's filesystem label is {other:?}, not \"config-2\": cloud-init \
             finds config drives by that label"
        ),
    }
    if let Some(declared) = iso::volume_size(&image).filter(|&n| n > image.len() as u64) {
        log::warn!(
            "the config drive ISO declares {declared} bytes but has {}: it looks truncated",
            image.len()
        );
    }
    Ok(image)
}

/// What [`write_config_drive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDriveReport {
    /// Number of the partition written.
    pub partition_number: u32,
    /// Byte offset of the partition on the disk.
    pub offset: u64,
    /// Size of the partition in bytes.
    pub size: u64,
    /// True when the partition was created, false when an existing `config-2` one was reused.
    pub created: bool,
    /// The partition's device node, when the kernel has one (`/dev/sda2`, `/dev/loop3p2`).
    pub partition_device: Option<PathBuf>,
}

/// Write the config drive image `iso` into the `config-2` partition of `device` (a block
/// device, or a disk image file in tests), creating the partition when there is none. See the
/// module documentation for the steps.
pub fn write_config_drive(
    device: &Path,
    iso: &[u8],
) -> Result<ConfigDriveReport, ConfigDriveError> {
    if iso.is_empty() {
        return Err(ConfigDriveError::Empty);
    }
    if iso.len() as u64 > MAX_CONFIG_DRIVE_BYTES {
        return Err(ConfigDriveError::TooLarge {
            what: "the config drive",
            size: iso.len() as u64,
            limit: MAX_CONFIG_DRIVE_BYTES,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|source| ConfigDriveError::Open {
            device: device.to_owned(),
            source,
        })?;
    let ptable = |source| ConfigDriveError::Partition {
        device: device.to_owned(),
        source,
    };
    let mut table = partition::read_table(&file)
        .map_err(ptable)?
        .ok_or_else(|| ConfigDriveError::NoPartitionTable {
            device: device.to_owned(),
        })?;
    // IPA runs fix_gpt_partition before deciding whether to reuse or create.
    if matches!(table, PartitionTable::Gpt { .. })
        && partition::fix_gpt_backup(&file).map_err(ptable)?
    {
        table = partition::read_table(&file)
            .map_err(ptable)?
            .ok_or_else(|| ConfigDriveError::NoPartitionTable {
                device: device.to_owned(),
            })?;
    }

    let labelled = labelled_partitions(&file, device, &table);
    let (entry, created) = match labelled.as_slice() {
        [] => (create_partition(&file, device, iso.len() as u64)?, true),
        [one] if one.size < iso.len() as u64 => {
            return Err(ConfigDriveError::ExistingTooSmall {
                device: device.to_owned(),
                number: one.number,
                size: one.size,
                needed: iso.len() as u64,
            })
        }
        [one] => (one.clone(), false),
        many => {
            return Err(ConfigDriveError::Ambiguous {
                device: device.to_owned(),
                partitions: many.iter().map(|e| e.number).collect(),
            })
        }
    };
    log::info!(
        "config drive: {} partition {} of {} at byte {} ({} bytes)",
        if created { "created" } else { "reusing" },
        entry.number,
        device.display(),
        entry.start,
        entry.size
    );

    write_image(&file, device, &entry, iso)?;

    let is_block = sys::is_block_device(&file).map_err(|source| ConfigDriveError::Open {
        device: device.to_owned(),
        source,
    })?;
    let partition_device = if is_block {
        let on_disk = partition::read_table(&file).map_err(ptable)?;
        let entries = on_disk.as_ref().map(|t| t.entries()).unwrap_or_default();
        expose_partition(&file, device, entries, &entry)
    } else {
        None
    };
    Ok(ConfigDriveReport {
        partition_number: entry.number,
        offset: entry.start,
        size: entry.size,
        created,
        partition_device,
    })
}

/// A new partition at the end of the disk: 64 MiB like IPA, or just the ISO's size (rounded
/// to 1 MiB) when 64 MiB does not fit.
fn create_partition(
    file: &File,
    device: &Path,
    iso_len: u64,
) -> Result<PartitionEntry, ConfigDriveError> {
    let ptable = |source| ConfigDriveError::Partition {
        device: device.to_owned(),
        source,
    };
    match partition::add_partition_at_end(file, PARTITION_BYTES, CONFIG_DRIVE_LABEL) {
        Err(PartitionError::NoRoom { .. })
            if iso_len.next_multiple_of(1 << 20) < PARTITION_BYTES =>
        {
            let smaller = iso_len.next_multiple_of(1 << 20);
            log::warn!(
                "no room for a {PARTITION_BYTES}-byte config drive partition on {}, trying {smaller} bytes",
                device.display()
            );
            partition::add_partition_at_end(file, smaller, CONFIG_DRIVE_LABEL).map_err(ptable)
        }
        r => r.map_err(ptable),
    }
}

/// The partitions that are config drives: GPT name `config-2`, or a filesystem labelled
/// `config-2` (case-insensitive, as IPA compares lsblk's LABEL).
fn labelled_partitions(file: &File, device: &Path, table: &PartitionTable) -> Vec<PartitionEntry> {
    let mut found = Vec::new();
    for e in table.entries() {
        let by_name = e
            .name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL));
        // A partition whose start cannot be read (a table pointing past the end of the disk)
        // holds no config drive; the write would tell about a real I/O problem.
        let by_label = || {
            let len = (iso::PROBE_LEN as u64).min(e.size) as usize;
            let mut head = vec![0u8; len];
            match file.read_exact_at(&mut head, e.start) {
                Ok(()) => filesystem_label(&head)
                    .is_some_and(|l| l.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL)),
                Err(err) => {
                    log::warn!(
                        "cannot read partition {} of {} at byte {}: {err}",
                        e.number,
                        device.display(),
                        e.start
                    );
                    false
                }
            }
        };
        if by_name || by_label() {
            found.push(e.clone());
        }
    }
    found
}

/// The label of an ISO 9660 or FAT filesystem starting at `head[0]`.
fn filesystem_label(head: &[u8]) -> Option<String> {
    iso::volume_id(head).or_else(|| fat_label(head))
}

/// The volume label in a FAT boot sector (FAT12/16 at 0x2B, FAT32 at 0x47, both after an
/// extended boot signature 0x29). blkid prefers the root directory's label entry; mkfs.fat
/// writes both.
/// True when `b` starts with an ISO 9660 primary volume descriptor or a FAT boot sector.
fn is_filesystem(b: &[u8]) -> bool {
    iso::volume_id(b).is_some() || fat_boot_sector(b)
}

fn fat_boot_sector(b: &[u8]) -> bool {
    b.len() >= 512
        && b[510..512] == [0x55, 0xaa]
        && matches!(b[0], 0xeb | 0xe9)
        && matches!(u16::from_le_bytes([b[11], b[12]]), 512 | 1024 | 2048 | 4096)
}

fn fat_label(b: &[u8]) -> Option<String> {
    if !fat_boot_sector(b) {
        return None;
    }
    let fat16_sectors = u16::from_le_bytes([b[22], b[23]]);
    let (sig, label) = if fat16_sectors == 0 {
        (0x42, 0x47)
    } else {
        (0x26, 0x2b)
    };
    if b[sig] != 0x29 {
        return None;
    }
    let l = String::from_utf8_lossy(&b[label..label + 11])
        .trim_end()
        .to_owned();
    (!l.is_empty() && l != "NO NAME").then_some(l)
}

/// Zero the partition after the image (up to 64 MiB into it), write the image, fsync.
fn write_image(
    file: &File,
    device: &Path,
    entry: &PartitionEntry,
    iso: &[u8],
) -> Result<(), ConfigDriveError> {
    let io_err = |action, offset, len| {
        move |source| ConfigDriveError::Io {
            device: device.to_owned(),
            action,
            offset,
            len,
            source,
        }
    };
    // Pad to 512 bytes: BLKZEROOUT needs 512-aligned ranges and partitions start on sectors.
    let padded_len = (iso.len() as u64).next_multiple_of(512).min(entry.size);
    let zero_start = entry.start + padded_len;
    let zero_end = entry.start + entry.size.min(MAX_CONFIG_DRIVE_BYTES);
    if zero_end > zero_start {
        zero_range(file, zero_start, zero_end - zero_start).map_err(io_err(
            "zero",
            zero_start,
            zero_end - zero_start,
        ))?;
    }
    let mut data = iso.to_vec();
    data.resize(padded_len as usize, 0);
    file.write_all_at(&data, entry.start).map_err(io_err(
        "write",
        entry.start,
        data.len() as u64,
    ))?;
    file.sync_all()
        .map_err(io_err("flush", entry.start, data.len() as u64))?;
    Ok(())
}

/// Zero a range: BLKZEROOUT on block devices, a punched hole in files, plain writes when
/// neither works.
fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if sys::is_block_device(file)? {
        if sys::zero_out(file, offset, len).is_ok() {
            return Ok(());
        }
    } else {
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(file.as_raw_fd(), flags, offset as i64, len as i64).is_ok() {
            return Ok(());
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A partition as the kernel knows it, from sysfs.
struct KernelPartition {
    number: u32,
    name: String,
    start: u64,
    size: u64,
}

/// The kernel's partitions of the disk whose sysfs directory is `disk_dir`
/// (`/sys/dev/block/M:m`): subdirectories with a `partition` file; `start`/`size` are in
/// 512-byte units whatever the sector size.
fn kernel_partitions(disk_dir: &Path) -> Vec<KernelPartition> {
    let read = |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let Ok(dir) = std::fs::read_dir(disk_dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|d| {
            let p = d.path();
            Some(KernelPartition {
                number: u32::try_from(read(p.join("partition"))?).ok()?,
                name: d.file_name().to_string_lossy().into_owned(),
                start: read(p.join("start"))? * 512,
                size: read(p.join("size"))? * 512,
            })
        })
        .collect()
}

/// Make the kernel's partitions of `file` match `table` (the on-disk table, `entry` in it) and
/// return the device node of `entry` once it exists.
///
/// BLKRRPART first. Where it fails (EINVAL: a loop device without partscan; EBUSY: a partition
/// of the disk is in use) the kernel's view is updated one partition at a time with BLKPG, as
/// `partx --update` does: partitions the table does not have (or has elsewhere) are removed,
/// because the kernel refuses to add a partition overlapping a stale one, and the table's
/// partitions the kernel lacks are added (the config drive's, and the image's own). Failures are logged, not returned: the table and the data are on disk,
/// which is what the deployed OS reads.
fn expose_partition(
    file: &File,
    device: &Path,
    table: &[PartitionEntry],
    entry: &PartitionEntry,
) -> Option<PathBuf> {
    let rdev = file.metadata().ok()?.rdev();
    let disk_dir = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    ));
    let same = |k: &KernelPartition, e: &PartitionEntry| {
        k.number == e.number && k.start == e.start && k.size == e.size
    };
    if let Err(e) = sys::reread_partitions(file) {
        log::info!(
            "the kernel did not re-read the partition table of {} ({e}); updating its \
             partitions with BLKPG",
            device.display()
        );
        for k in kernel_partitions(&disk_dir) {
            if !table.iter().any(|e| same(&k, e)) {
                if let Err(err) = sys::delete_partition(file, k.number) {
                    log::warn!("cannot remove stale kernel partition {}: {err}", k.name);
                }
            }
        }
        let known = kernel_partitions(&disk_dir);
        for e in table {
            if known.iter().any(|k| same(k, e)) {
                continue;
            }
            if let Err(err) = sys::add_partition(file, e.number, e.start, e.size) {
                log::warn!(
                    "cannot make the kernel see partition {} of {}: {err}",
                    e.number,
                    device.display()
                );
            }
        }
    }
    let node = match kernel_partitions(&disk_dir)
        .into_iter()
        .find(|k| same(k, entry))
    {
        Some(k) => PathBuf::from("/dev").join(k.name),
        // No sysfs (or the kernel does not have it): IPA's naming rule.
        None => partition::partition_path(device, entry.number),
    };
    let deadline = Instant::now() + NODE_WAIT;
    while !node.exists() {
        if Instant::now() >= deadline {
            log::warn!("partition node {} did not appear", node.display());
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_cached_pages(&node);
    Some(node)
}

/// The partition node has its own page cache, separate from the whole disk's that the image
/// went through: drop whatever it cached before the write so readers (blkid) see the new
/// bytes.
fn drop_cached_pages(node: &Path) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    if let Ok(f) = File::open(node) {
        let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_labels() {
        let mut b = vec![0u8; 512];
        b[0] = 0xeb;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[22] = 8; // FAT12/16
        b[0x26] = 0x29;
        b[0x2b..0x36].copy_from_slice(b"CONFIG-2   ");
        b[510] = 0x55;
        b[511] = 0xaa;
        assert_eq!(fat_label(&b).as_deref(), Some("CONFIG-2"));
        b[0x2b..0x36].copy_from_slice(b"NO NAME    ");
        assert_eq!(fat_label(&b), None);
        b[22] = 0; // FAT32: label further on.
        b[0x42] = 0x29;
        b[0x47..0x52].copy_from_slice(b"config-2   ");
        assert_eq!(fat_label(&b).as_deref(), Some("config-2"));
    }

    #[test]
    fn url_detection_is_case_insensitive_like_ipa() {
        assert!(is_http_url("HTTPS://x/cd"));
        assert!(is_http_url("http://x"));
        assert!(!is_http_url("H4sIAAAA"));
        assert!(!is_http_url("ftp://x"));
    }

    #[test]
    fn encoded_limit_covers_wrapped_base64_of_the_largest_payload() {
        let b64 = MAX_PAYLOAD_BYTES.div_ceil(3) * 4;
        assert!(MAX_ENCODED_BYTES >= b64 + b64.div_ceil(76) * 2);
    }
}
