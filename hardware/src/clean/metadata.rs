//! `erase_devices_metadata`: destroy every filesystem, RAID, LVM and
//! partition-table signature of a disk and of each of its partitions without
//! erasing the data in between.
//!
//! IPA runs `wipefs --force --all` on each disk and partition, zeroes the
//! first and last 33 sectors (primary and backup GPT) and runs `sgdisk -Z`
//! (IPA `disk_utils.destroy_disk_metadata`). Ferric does the same in-process
//! and more generously, because the ramdisk carries none of those tools: for
//! the disk and for every partition (the kernel's and those found in the
//! on-disk tables, see `ptable`) it zeroes the first and the last MiB. That
//! covers every signature blkid probes at fixed offsets near either end:
//! - start: MBR/GPT (sector 0-33), ext2/3/4 (1024+56), XFS (0), btrfs primary
//!   (64 KiB + 64), swap (page size − 10, page sizes up to 64 KiB), LVM2 label
//!   (sectors 0-3), md 1.1 (0) and 1.2 (4 KiB), bcache (4 KiB), ISO9660
//!   (32 KiB), FAT/exFAT/NTFS boot sectors and their near backups, LUKS1/2
//!   primary headers, ZFS labels L0/L1 (0, 256 KiB);
//! - end: backup GPT (last 33 sectors, or 5+1 on 4Kn), md 0.90 (64 KiB-aligned,
//!   64 KiB before the end) and 1.0 (8-12 KiB before the end), DDF anchor
//!   (last sector, or 257 sectors before it on old writers), Intel IMSM
//!   (2 sectors before the end), ZFS labels L2/L3, NTFS backup boot sector.
//!
//! Signatures blkid also finds away from the ends are checked by their magic
//! and zeroed only when present, so the data in the middle stays untouched:
//! btrfs superblock mirrors (64 MiB, 256 GiB), LUKS2 secondary headers at or
//! beyond 1 MiB, and the DDF headers the anchor points to. Then the kernel is
//! asked to re-read the (now empty) partition table.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::block::BlockDevice;
use crate::clean::ptable::{self, Extent, ReadAt};
use crate::clean::{dev_path, Operation, Progress, Ticker};
use crate::manager::{StepContext, StepError};
use crate::sys;
use crate::sysfs::{attr, attr_u64, dir_names, under};

const MIB: u64 = 1 << 20;

/// What the metadata wipe of one disk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataWipe {
    /// `/dev/x`.
    pub device: String,
    /// Partitions whose ends were wiped (kernel's and on-disk tables', merged).
    pub partitions: usize,
    /// Zeroed byte ranges `(start, len)`, sorted and merged.
    pub regions: Vec<(u64, u64)>,
    /// Total bytes zeroed.
    pub bytes_zeroed: u64,
    /// How the kernel's view of the partitions was refreshed (or why not).
    pub reread: String,
}

impl MetadataWipe {
    /// One-line summary for step results.
    pub fn summary(&self) -> String {
        format!(
            "metadata wiped: {} bytes zeroed in {} regions (disk and {} partitions); {}",
            self.bytes_zeroed,
            self.regions.len(),
            self.partitions,
            self.reread
        )
    }
}

/// A partition the kernel knows: number and byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelPartition {
    name: String,
    number: u32,
    extent: Extent,
}

/// Partitions listed under `sys/block/<disk>/` (`start`/`size` are in
/// 512-byte units whatever the sector size).
fn kernel_partitions(root: &Path, kname: &str) -> Vec<KernelPartition> {
    let dir = under(root, "sys/block").join(kname);
    let mut out = Vec::new();
    for child in dir_names(&dir) {
        let cdir = dir.join(&child);
        let Some(number) = attr_u64(&cdir.join("partition")) else {
            continue;
        };
        let (Some(start), Some(size)) =
            (attr_u64(&cdir.join("start")), attr_u64(&cdir.join("size")))
        else {
            continue;
        };
        out.push(KernelPartition {
            name: child,
            number: number as u32,
            extent: Extent {
                start: start.saturating_mul(512),
                len: size.saturating_mul(512),
            },
        });
    }
    out
}

/// The first and last MiB of `e` (all of it when it is 2 MiB or smaller).
fn ends(e: Extent) -> [Extent; 2] {
    if e.len <= 2 * MIB {
        return [
            e,
            Extent {
                start: e.end(),
                len: 0,
            },
        ];
    }
    [
        Extent {
            start: e.start,
            len: MIB,
        },
        Extent {
            start: e.end() - MIB,
            len: MIB,
        },
    ]
}

/// Sorts, clamps to `[0, size)` and merges overlapping or touching ranges.
fn merge(mut v: Vec<Extent>, size: u64) -> Vec<Extent> {
    v.retain(|e| e.len > 0 && e.start < size);
    for e in &mut v {
        e.len = e.len.min(size - e.start);
    }
    v.sort();
    let mut out: Vec<Extent> = Vec::new();
    for e in v {
        match out.last_mut() {
            Some(last) if e.start <= last.end() => {
                let end = last.end().max(e.end());
                last.len = end - last.start;
            }
            _ => out.push(e),
        }
    }
    out
}

fn has_magic(dev: &dyn ReadAt, at: u64, magic: &[u8]) -> bool {
    let mut buf = vec![0u8; magic.len()];
    dev.read_exact_at(&mut buf, at).is_ok() && buf == magic
}

/// Signatures away from the ends of `range`, zeroed only when their magic is there.
fn inner_signatures(dev: &dyn ReadAt, range: Extent) -> Vec<Extent> {
    let mut out = Vec::new();
    let inside = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= range.len);
    // btrfs superblock mirrors (primary at 64 KiB is in the first MiB); the
    // magic `_BHRfS_M` sits at offset 0x40 of each 4 KiB copy.
    for off in [64 * MIB, 256 << 30] {
        if inside(off, 4096) && has_magic(dev, range.start + off + 0x40, b"_BHRfS_M") {
            out.push(Extent {
                start: range.start + off,
                len: 4096,
            });
        }
    }
    // LUKS2 secondary header: right after the primary header area, whose size
    // is a power of two from 16 KiB to 4 MiB (blkid probes all of them).
    for off in [MIB, 2 * MIB, 4 * MIB] {
        if inside(off, 4096) && has_magic(dev, range.start + off, b"SKUL\xba\xbe") {
            out.push(Extent {
                start: range.start + off,
                len: 4096,
            });
        }
    }
    // SNIA DDF: the anchor header in the last sector names the primary and
    // secondary headers (big-endian LBAs at bytes 96 and 104).
    if range.len >= 512 {
        let anchor_at = range.start + (range.len / 512 - 1) * 512;
        let mut a = [0u8; 512];
        if dev.read_exact_at(&mut a, anchor_at).is_ok() && a[0..4] == [0xDE, 0x11, 0xDE, 0x11] {
            for at in [96, 104] {
                let lba = u64::from_be_bytes(a[at..at + 8].try_into().expect("8 bytes"));
                if let Some(off) = lba.checked_mul(512) {
                    if lba != u64::MAX && inside(off, 512) {
                        out.push(Extent {
                            start: range.start + off,
                            len: 512,
                        });
                    }
                }
            }
        }
    }
    out
}

/// All regions to zero on a device of `size` bytes with these partitions.
pub(crate) fn plan(
    dev: &dyn ReadAt,
    size: u64,
    partitions: &[Extent],
    ebrs: &[Extent],
) -> Vec<Extent> {
    let whole = Extent {
        start: 0,
        len: size,
    };
    let mut regions: Vec<Extent> = Vec::new();
    for r in std::iter::once(&whole).chain(partitions) {
        regions.extend(ends(*r));
        regions.extend(inner_signatures(dev, *r));
    }
    regions.extend_from_slice(ebrs);
    merge(regions, size)
}

/// Retries `op` while it fails with EBUSY: after a disk is written, udev
/// (and any other prober on the machine) briefly opens it and its
/// partitions, which makes exclusive opens, BLKRRPART and BLKPG fail for a
/// moment (IPA runs `udevadm settle` and retries partprobe for the same
/// reason). At most ~3 s.
pub(crate) fn retry_busy<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut delay = std::time::Duration::from_millis(50);
    for _ in 0..7 {
        match op() {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            other => return other,
        }
    }
    op()
}

pub(crate) fn open_exclusive(path: &Path) -> io::Result<File> {
    // O_EXCL on a block device makes the kernel refuse the open while the
    // device or one of its partitions is mounted or held by md/dm.
    retry_busy(|| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_EXCL | nix::libc::O_CLOEXEC)
            .open(path)
    })
}

/// Wipes the metadata of one whole device (see the module docs).
pub(crate) fn wipe_device(
    ctx: &StepContext<'_>,
    dev: &BlockDevice,
) -> Result<MetadataWipe, StepError> {
    let path = dev_path(ctx.root, dev);
    let fail = |what: &str, e: io::Error| {
        StepError::BlockDeviceErase(format!(
            "Failed to erase the metadata on device {}: {what}: {e}",
            dev.name
        ))
    };
    let f =
        open_exclusive(&path).map_err(|e| fail(&format!("cannot open {}", path.display()), e))?;
    let size = sys::device_size(&f).map_err(|e| fail("cannot read the device size", e))?;
    let lbs = sys::logical_sector_size(&f)
        .ok()
        .filter(|s| s.is_power_of_two() && *s >= 512)
        .or(dev.logical_sectors)
        .unwrap_or(512) as u64;

    let kparts = kernel_partitions(ctx.root, dev.kernel_name());
    let tables = ptable::read_tables(&f, size, lbs);
    let mut parts: Vec<Extent> = kparts.iter().map(|p| p.extent).collect();
    parts.extend(tables.partitions.iter().copied());
    parts.sort();
    parts.dedup();
    let regions = plan(&f, size, &parts, &tables.ebrs);
    let total: u64 = regions.iter().map(|r| r.len).sum();

    let report = |done: u64| {
        (ctx.progress)(&Progress {
            device: &dev.name,
            operation: Operation::MetadataWipe,
            pass: 1,
            passes: 1,
            bytes_done: done,
            bytes_total: total,
        })
    };
    report(0);
    let mut ticker = Ticker::new();
    let zeroes = vec![0u8; MIB as usize];
    let mut done = 0u64;
    for r in &regions {
        let mut off = r.start;
        while off < r.end() {
            if ctx.cancelled() {
                return Err(StepError::Cancelled);
            }
            let n = (r.end() - off).min(MIB);
            f.write_all_at(&zeroes[..n as usize], off)
                .map_err(|e| fail(&format!("write of {n} bytes at offset {off}"), e))?;
            off += n;
            done += n;
            if ticker.due() {
                report(done);
            }
        }
    }
    f.sync_data().map_err(|e| fail("fsync", e))?;
    // Drop cached pages of the disk and of its partitions so the next probe
    // (blkid, the kernel's partition scan) reads what is on the disk now.
    if let Err(e) = sys::flush_buffers(&f) {
        log::warn!("BLKFLSBUF on {} failed: {e}", dev.name);
    }
    for p in &kparts {
        if let Ok(pf) = File::open(under(ctx.root, &format!("dev/{}", p.name))) {
            let _ = sys::flush_buffers(&pf);
        }
    }
    report(done);
    let reread = reread(&f, &kparts);
    log::info!(
        "metadata of {} destroyed: {done} bytes in {} regions; {reread}",
        dev.name,
        regions.len()
    );
    Ok(MetadataWipe {
        device: dev.name.clone(),
        partitions: parts.len(),
        regions: regions.iter().map(|r| (r.start, r.len)).collect(),
        bytes_zeroed: done,
        reread,
    })
}

/// Makes the kernel forget the partitions: BLKRRPART, or, where the kernel
/// cannot scan this device (loop devices without partscan answer EINVAL),
/// BLKPG deletion of each partition it still lists, as partprobe does.
fn reread(f: &File, kparts: &[KernelPartition]) -> String {
    match retry_busy(|| sys::reread_partitions(f)) {
        Ok(()) => "partition table re-read".to_string(),
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            let mut failed = Vec::new();
            for p in kparts {
                if let Err(e) = retry_busy(|| sys::delete_partition(f, p.number)) {
                    failed.push(format!("{}: {e}", p.name));
                }
            }
            if failed.is_empty() {
                format!("{} kernel partitions removed", kparts.len())
            } else {
                format!("could not remove kernel partitions ({})", failed.join(", "))
            }
        }
        Err(e) => format!("partition table re-read failed: {e}"),
    }
}

/// Whether the kernel says discarded blocks read back as zeroes. The
/// attribute was removed from modern kernels (it always reads 0 there), so
/// in practice discard is never trusted to erase.
pub(crate) fn discard_zeroes_data(root: &Path, dev: &BlockDevice) -> bool {
    let q = under(root, "sys/block")
        .join(dev.kernel_name())
        .join("queue");
    attr(&q.join("discard_zeroes_data")).as_deref() == Some("1")
        && attr_u64(&q.join("discard_max_bytes")).unwrap_or(0) > 0
}

/// Whether the device accepts discards at all.
pub(crate) fn supports_discard(root: &Path, dev: &BlockDevice) -> bool {
    let q = under(root, "sys/block")
        .join(dev.kernel_name())
        .join("queue");
    attr_u64(&q.join("discard_max_bytes")).unwrap_or(0) > 0
}

/// Discards the whole device (best effort, in 1 GiB steps so the call can be
/// interrupted). Returns the number of bytes discarded.
pub(crate) fn discard_all(ctx: &StepContext<'_>, dev: &BlockDevice) -> io::Result<u64> {
    let f = open_exclusive(&dev_path(ctx.root, dev))?;
    let size = sys::device_size(&f)?;
    let step = 1u64 << 30;
    let mut off = 0;
    (ctx.progress)(&Progress {
        device: &dev.name,
        operation: Operation::Discard,
        pass: 1,
        passes: 1,
        bytes_done: 0,
        bytes_total: size,
    });
    while off < size {
        if ctx.cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = (size - off).min(step);
        sys::discard(&f, off, n)?;
        off += n;
    }
    let _ = sys::flush_buffers(&f);
    (ctx.progress)(&Progress {
        device: &dev.name,
        operation: Operation::Discard,
        pass: 1,
        passes: 1,
        bytes_done: size,
        bytes_total: size,
    });
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(regions: &[Extent], at: u64, len: u64) -> bool {
        regions.iter().any(|r| r.start <= at && at + len <= r.end())
    }

    /// Every end-of-device signature blkid knows lies in the planned regions,
    /// for sizes that are and are not multiples of 64 KiB / 1 MiB.
    #[test]
    fn signatures_near_the_ends_are_always_covered() {
        let empty = Vec::<u8>::new();
        let empty = &empty;
        for size in [
            3 * MIB,
            64 * MIB,
            64 * MIB + 512,
            100 * MIB + 65_536 + 4096 + 512 * 7,
            (1 << 40) + 12345 * 512,
        ] {
            let r = plan(empty, size, &[], &[]);
            let sectors = size / 512;
            // md 0.90: (size rounded down to 64 KiB) − 64 KiB, 4 KiB long.
            let md090 = (size & !(65_536 - 1)) - 65_536;
            assert!(covered(&r, md090, 4096), "md0.90 at size {size}");
            // md 1.0: ((sectors − 16) & !7) sectors.
            assert!(
                covered(&r, ((sectors - 16) & !7) * 512, 4096),
                "md1.0 {size}"
            );
            // md 1.1 / 1.2.
            assert!(covered(&r, 0, 4096) && covered(&r, 4096, 4096));
            // Backup GPT: last 33 sectors.
            assert!(covered(&r, (sectors - 33) * 512, 33 * 512));
            // DDF anchor (last sector and the old −257 location), IMSM (−2 sectors).
            assert!(covered(&r, (sectors - 1) * 512, 512));
            assert!(covered(&r, (sectors - 257) * 512, 512));
            assert!(covered(&r, (sectors - 2) * 512, 512));
            // ZFS L2/L3 (256 KiB labels in the last 512 KiB of the aligned size).
            let zsize = size & !(256 * 1024 - 1);
            assert!(covered(&r, zsize - 512 * 1024, 512 * 1024));
            // Start: swap at page size − 10 for 64 KiB pages, btrfs primary, ISO9660.
            assert!(covered(&r, 65_536 - 10, 10));
            assert!(covered(&r, 65_536, 4096));
            assert!(covered(&r, 32_768, 2048));
            // And the middle is left alone.
            if size > 4 * MIB {
                assert!(!covered(&r, size / 2, 1), "middle of {size}");
                assert_eq!(r.iter().map(|e| e.len).sum::<u64>(), 2 * MIB);
            }
        }
    }

    #[test]
    fn partitions_get_both_ends_and_small_ones_all() {
        let empty = Vec::<u8>::new();
        let empty = &empty;
        let parts = [
            Extent {
                start: MIB,
                len: 512 * 1024,
            },
            Extent {
                start: 8 * MIB,
                len: 32 * MIB,
            },
        ];
        let r = plan(
            empty,
            64 * MIB,
            &parts,
            &[Extent {
                start: 50 * MIB,
                len: 512,
            }],
        );
        assert_eq!(
            r,
            vec![
                // Disk start + the small partition, merged.
                Extent {
                    start: 0,
                    len: MIB + 512 * 1024
                },
                Extent {
                    start: 8 * MIB,
                    len: MIB
                },
                Extent {
                    start: 39 * MIB,
                    len: MIB
                },
                Extent {
                    start: 50 * MIB,
                    len: 512
                },
                Extent {
                    start: 63 * MIB,
                    len: MIB
                },
            ]
        );
    }

    #[test]
    fn partitions_beyond_the_device_are_clamped() {
        let empty = Vec::<u8>::new();
        let empty = &empty;
        // The partition's start MiB is on the disk, its end MiB is not.
        let r = plan(
            empty,
            4 * MIB,
            &[Extent {
                start: 3 * MIB,
                len: 10 * MIB,
            }],
            &[],
        );
        assert_eq!(
            r,
            vec![
                Extent { start: 0, len: MIB },
                Extent {
                    start: 3 * MIB,
                    len: MIB
                }
            ]
        );
        let r = plan(
            empty,
            4 * MIB,
            &[Extent {
                start: 9 * MIB,
                len: MIB,
            }],
            &[],
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn inner_signatures_only_where_their_magic_is() {
        let size = 80 * MIB;
        let mut disk = vec![0u8; size as usize];
        // A btrfs mirror at 64 MiB, a LUKS2 secondary header at 2 MiB.
        disk[(64 * MIB + 0x40) as usize..(64 * MIB + 0x48) as usize].copy_from_slice(b"_BHRfS_M");
        disk[(2 * MIB) as usize..(2 * MIB + 6) as usize].copy_from_slice(b"SKUL\xba\xbe");
        // A DDF anchor in the last sector naming headers at LBA 100000 and 120000.
        let a = (size - 512) as usize;
        disk[a..a + 4].copy_from_slice(&[0xDE, 0x11, 0xDE, 0x11]);
        disk[a + 96..a + 104].copy_from_slice(&100_000u64.to_be_bytes());
        disk[a + 104..a + 112].copy_from_slice(&120_000u64.to_be_bytes());
        let r = plan(&disk, size, &[], &[]);
        assert!(covered(&r, 64 * MIB, 4096));
        assert!(covered(&r, 2 * MIB, 4096));
        assert!(covered(&r, 100_000 * 512, 512));
        assert!(covered(&r, 120_000 * 512, 512));
        assert!(!covered(&r, 4 * MIB, 1));
        // Without the magic nothing in the middle is planned.
        let plain = vec![0u8; size as usize];
        assert_eq!(plan(&plain, size, &[], &[]).len(), 2);
    }
}
