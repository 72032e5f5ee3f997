//! Finding partitions from the on-disk tables (GPT, MBR with logical
//! partitions), for the metadata wipe.
//!
//! The kernel does not always show a disk's partitions (loop devices without
//! partition scanning, a table it rejected, a disk whose partitions were never
//! re-read), but signatures inside them still need wiping; IPA gets them from
//! lsblk and leaves the rest to `wipefs`. Everything read here is untrusted:
//! counts and sizes are bounded, ranges are clamped to the device, and the
//! EBR chain is cut at a fixed length and on loops.

use std::io;

/// A byte range on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Extent {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    pub(crate) fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Something that can be read at an offset (a device, or bytes in tests).
pub(crate) trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

#[cfg(test)]
impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What the tables on a device describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tables {
    /// Partitions (GPT entries, MBR primaries, the extended container and
    /// logical partitions).
    pub partitions: Vec<Extent>,
    /// Extended boot records of the logical partition chain.
    pub ebrs: Vec<Extent>,
}

/// At most this many GPT entry bytes are read (128 entries × 128 bytes is
/// the norm; UEFI allows more, nothing sane needs 4 MiB).
const MAX_GPT_ENTRY_BYTES: u64 = 4 << 20;
/// At most this many logical partitions are followed.
const MAX_EBRS: usize = 256;

/// Reads the GPT (primary, else backup) and the MBR of a device of `size`
/// bytes whose logical sector size is `lbs`. Unreadable or absent tables
/// give nothing; this never fails.
pub(crate) fn read_tables(dev: &dyn ReadAt, size: u64, lbs: u64) -> Tables {
    let mut t = Tables::default();
    let mut sizes = vec![lbs];
    // A table written for the other common sector size (an image made on a
    // 512-byte disk copied to a 4Kn disk) is still worth finding.
    for other in [512, 4096] {
        if !sizes.contains(&other) {
            sizes.push(other);
        }
    }
    for s in sizes {
        let found = gpt(dev, size, s);
        if !found.is_empty() {
            t.partitions.extend(found);
            break;
        }
    }
    let (parts, ebrs) = mbr(dev, size, lbs);
    t.partitions.extend(parts);
    t.ebrs = ebrs;
    t.partitions.sort();
    t.partitions.dedup();
    t
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// GPT entries, from the primary header at LBA 1 or, when that is not a
/// valid header, the backup header at the last LBA.
fn gpt(dev: &dyn ReadAt, size: u64, lbs: u64) -> Vec<Extent> {
    if lbs < 512 || size < 3 * lbs {
        return Vec::new();
    }
    let sectors = size / lbs;
    for header_lba in [1, sectors - 1] {
        let mut h = vec![0u8; lbs as usize];
        if dev.read_exact_at(&mut h, header_lba * lbs).is_err() || &h[0..8] != b"EFI PART" {
            continue;
        }
        let header_size = le32(&h, 12) as u64;
        let entries_lba = le64(&h, 72);
        let count = le32(&h, 80) as u64;
        let entry_size = le32(&h, 84) as u64;
        if !(92..=lbs).contains(&header_size)
            || entry_size < 128
            || entry_size & 7 != 0
            || count == 0
            || entries_lba == 0
            || entries_lba >= sectors
        {
            continue;
        }
        let bytes = count.saturating_mul(entry_size).min(MAX_GPT_ENTRY_BYTES);
        let bytes = bytes.min(size - entries_lba * lbs);
        let bytes = bytes - bytes % entry_size;
        let mut entries = vec![0u8; bytes as usize];
        if dev.read_exact_at(&mut entries, entries_lba * lbs).is_err() {
            continue;
        }
        let mut out = Vec::new();
        for e in entries.chunks_exact(entry_size as usize) {
            if e[0..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            if first == 0 || first > last || last >= sectors {
                continue;
            }
            out.push(Extent {
                start: first * lbs,
                len: (last - first + 1) * lbs,
            });
        }
        return out;
    }
    Vec::new()
}

/// One MBR/EBR slot: (type, first sector relative to its base, sectors).
fn mbr_slots(sector: &[u8]) -> Option<[(u8, u64, u64); 4]> {
    if sector.len() < 512 || sector[510] != 0x55 || sector[511] != 0xAA {
        return None;
    }
    let mut out = [(0u8, 0u64, 0u64); 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        *slot = (e[4], le32(e, 8) as u64, le32(e, 12) as u64);
        // The boot indicator is 0x00 or 0x80; anything else is boot code or a
        // filesystem boot sector, not a partition entry.
        if e[0] != 0 && e[0] != 0x80 {
            slot.0 = 0;
        }
    }
    Some(out)
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// MBR primaries, the extended container, logical partitions and EBRs.
fn mbr(dev: &dyn ReadAt, size: u64, lbs: u64) -> (Vec<Extent>, Vec<Extent>) {
    let mut parts = Vec::new();
    let mut ebrs = Vec::new();
    let mut sector = vec![0u8; 512];
    if dev.read_exact_at(&mut sector, 0).is_err() {
        return (parts, ebrs);
    }
    let Some(slots) = mbr_slots(&sector) else {
        return (parts, ebrs);
    };
    let sectors = size / lbs;
    let extent = |base: u64, rel: u64, n: u64| -> Option<Extent> {
        let first = base.checked_add(rel)?;
        let end = first.checked_add(n)?;
        (n > 0 && first > 0 && end <= sectors).then(|| Extent {
            start: first * lbs,
            len: n * lbs,
        })
    };
    let mut extended = None;
    for (ty, rel, n) in slots {
        // 0xEE is the protective entry of a GPT disk, not a partition.
        if ty == 0 || ty == 0xEE {
            continue;
        }
        if let Some(e) = extent(0, rel, n) {
            parts.push(e);
            if is_extended(ty) && extended.is_none() {
                extended = Some(rel);
            }
        }
    }
    let Some(ext_base) = extended else {
        return (parts, ebrs);
    };
    // Each EBR: slot 0 is a logical partition relative to the EBR, slot 1 the
    // next EBR relative to the start of the extended partition.
    let mut ebr = ext_base;
    let mut seen = Vec::new();
    while seen.len() < MAX_EBRS && !seen.contains(&ebr) && ebr < sectors {
        seen.push(ebr);
        let mut s = vec![0u8; 512];
        if dev.read_exact_at(&mut s, ebr * lbs).is_err() {
            break;
        }
        let Some(slots) = mbr_slots(&s) else { break };
        ebrs.push(Extent {
            start: ebr * lbs,
            len: lbs,
        });
        let (ty, rel, n) = slots[0];
        if ty != 0 {
            if let Some(e) = extent(ebr, rel, n) {
                parts.push(e);
            }
        }
        let (ty, rel, _) = slots[1];
        if !is_extended(ty) || rel == 0 {
            break;
        }
        ebr = ext_base.saturating_add(rel);
    }
    (parts, ebrs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes an MBR slot.
    pub(crate) fn put_slot(disk: &mut [u8], sector_off: usize, i: usize, ty: u8, rel: u32, n: u32) {
        let e = sector_off + 446 + 16 * i;
        disk[e + 4] = ty;
        disk[e + 8..e + 12].copy_from_slice(&rel.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        disk[sector_off + 510] = 0x55;
        disk[sector_off + 511] = 0xAA;
    }

    /// A GPT at LBA 1 (header) / LBA 2 (entries) with the given LBA ranges.
    pub(crate) fn put_gpt(disk: &mut [u8], lbs: usize, parts: &[(u64, u64)]) {
        let h = lbs;
        disk[h..h + 8].copy_from_slice(b"EFI PART");
        disk[h + 12..h + 16].copy_from_slice(&92u32.to_le_bytes());
        disk[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[h + 80..h + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[h + 84..h + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = 2 * lbs + 128 * i;
            disk[e] = 0xAF; // non-zero type GUID
            disk[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            disk[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
    }

    #[test]
    fn gpt_entries_become_byte_extents() {
        let mut disk = vec![0u8; 8 << 20];
        put_gpt(&mut disk, 512, &[(2048, 4095), (4096, 16383)]);
        let t = read_tables(&disk, disk.len() as u64, 512);
        assert_eq!(
            t.partitions,
            vec![
                Extent {
                    start: 1 << 20,
                    len: 1 << 20
                },
                Extent {
                    start: 2 << 20,
                    len: 6 << 20
                }
            ]
        );
    }

    #[test]
    fn backup_gpt_is_used_when_the_primary_is_gone() {
        let size = 8usize << 20;
        let mut disk = vec![0u8; size];
        put_gpt(&mut disk, 512, &[(2048, 4095)]);
        // Move header to the last LBA (entries stay at LBA 2), wipe the primary.
        let hdr: Vec<u8> = disk[512..1024].to_vec();
        disk[size - 512..].copy_from_slice(&hdr);
        disk[512..1024].fill(0);
        let t = read_tables(&disk, size as u64, 512);
        assert_eq!(
            t.partitions,
            vec![Extent {
                start: 1 << 20,
                len: 1 << 20
            }]
        );
    }

    #[test]
    fn gpt_on_4k_sectors() {
        let mut disk = vec![0u8; 16 << 20];
        put_gpt(&mut disk, 4096, &[(256, 511)]);
        let t = read_tables(&disk, disk.len() as u64, 4096);
        assert_eq!(
            t.partitions,
            vec![Extent {
                start: 1 << 20,
                len: 1 << 20
            }]
        );
    }

    #[test]
    fn hostile_gpt_is_bounded() {
        let mut disk = vec![0u8; 1 << 20];
        put_gpt(&mut disk, 512, &[(34, 1_000_000_000), (10, 5), (40, 60)]);
        // Claim 2^32-1 entries of 2^31 bytes each.
        disk[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&(1u32 << 31).to_le_bytes());
        let t = read_tables(&disk, disk.len() as u64, 512);
        assert!(t.partitions.is_empty(), "{t:?}");
        // Sane sizes again: only the in-range, ordered entry survives.
        disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let t = read_tables(&disk, disk.len() as u64, 512);
        assert_eq!(
            t.partitions,
            vec![Extent {
                start: 40 * 512,
                len: 21 * 512
            }]
        );
    }

    #[test]
    fn mbr_with_logical_partitions() {
        let mut disk = vec![0u8; 64 << 20];
        put_slot(&mut disk, 0, 0, 0x83, 2048, 2048);
        put_slot(&mut disk, 0, 1, 0x05, 8192, 100_000);
        // First EBR at 8192: logical at +2048, next EBR at ext+40960.
        put_slot(&mut disk, 8192 * 512, 0, 0x83, 2048, 4096);
        put_slot(&mut disk, 8192 * 512, 1, 0x05, 40960, 8192);
        // Second EBR: logical, and a link to itself (a loop).
        let second = (8192 + 40960) * 512;
        put_slot(&mut disk, second, 0, 0x82, 2048, 2048);
        put_slot(&mut disk, second, 1, 0x05, 40960, 10);
        let t = read_tables(&disk, disk.len() as u64, 512);
        let s = |first: u64, n: u64| Extent {
            start: first * 512,
            len: n * 512,
        };
        assert_eq!(
            t.partitions,
            vec![
                s(2048, 2048),
                s(8192, 100_000),
                s(10240, 4096),
                s(51200, 2048)
            ]
        );
        assert_eq!(t.ebrs, vec![s(8192, 1), s(49152, 1)]);
    }

    #[test]
    fn ebr_loops_and_garbage_terminate() {
        let mut disk = vec![0u8; 8 << 20];
        put_slot(&mut disk, 0, 0, 0x0F, 2048, 8000);
        // The EBR links far beyond the end of the disk.
        put_slot(&mut disk, 2048 * 512, 0, 0x83, 1, 10);
        put_slot(&mut disk, 2048 * 512, 1, 0x05, 0x7fff_ffff, 10);
        let t = read_tables(&disk, disk.len() as u64, 512);
        assert_eq!(t.ebrs.len(), 1);
        // A boot sector whose "entries" have a bogus boot flag is no table.
        let mut fat = vec![0u8; 1 << 20];
        put_slot(&mut fat, 0, 0, 0x83, 1, 10);
        fat[446] = 0x4F;
        assert!(read_tables(&fat, fat.len() as u64, 512)
            .partitions
            .is_empty());
        // A protective MBR alone yields nothing.
        let mut pmbr = vec![0u8; 1 << 20];
        put_slot(&mut pmbr, 0, 0, 0xEE, 1, 2047);
        assert!(read_tables(&pmbr, pmbr.len() as u64, 512)
            .partitions
            .is_empty());
    }
}
