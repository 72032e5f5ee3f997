//! DOS/MBR partition table codec: the four primary entries, the extended-partition chain
//! (EBRs) and the checks the Linux kernel applies before trusting a sector as an MBR
//! (`block/partitions/msdos.c`).

/// Offset of the first of the four 16-byte primary entries.
pub(super) const TABLE_OFFSET: usize = 446;
/// Offset of the 4-byte disk signature (the "disk identifier").
pub(super) const SIGNATURE_OFFSET: usize = 440;
/// Partition type of a GPT protective MBR entry.
pub(super) const TYPE_GPT_PROTECTIVE: u8 = 0xee;
/// "Linux" partition type: what the brief asks for the config drive (IPA's `parted mkpart
/// primary fat32` would give 0x0b/0x0c; cloud-init finds the config drive by label, not type).
pub(super) const TYPE_LINUX: u8 = 0x83;
/// Upper bound on logical partitions followed through an EBR chain; a hostile chain may loop.
pub(super) const MAX_LOGICAL: usize = 128;

/// One 16-byte entry of an MBR or EBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawEntry {
    pub boot: u8,
    pub kind: u8,
    pub start: u32,
    pub sectors: u32,
}

impl RawEntry {
    pub(super) fn parse(b: &[u8]) -> RawEntry {
        RawEntry {
            boot: b[0],
            kind: b[4],
            start: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            sectors: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        }
    }

    /// Encode with CHS fields computed for the conventional 255 heads × 63 sectors geometry,
    /// clamped to 1023/254/63 past the CHS range, as fdisk and parted do.
    pub(super) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.boot;
        b[1..4].copy_from_slice(&chs(u64::from(self.start)));
        b[4] = self.kind;
        let last = u64::from(self.start) + u64::from(self.sectors).saturating_sub(1);
        b[5..8].copy_from_slice(&chs(last));
        b[8..12].copy_from_slice(&self.start.to_le_bytes());
        b[12..16].copy_from_slice(&self.sectors.to_le_bytes());
        b
    }

    pub(super) fn is_extended(&self) -> bool {
        // DOS extended, Win95 extended (LBA), Linux extended.
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }
}

fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cyl = lba / (HEADS * SECTORS);
    if cyl > 1023 {
        return [254, 0xff, 0xff];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cyl >> 8) as u8) << 6),
        cyl as u8,
    ]
}

/// The four primary entries of `sector0` when it holds a partition table, following the
/// kernel's rules: the 0x55AA signature and boot indicators of 0x00 or 0x80 only. A FAT or NTFS
/// boot sector without partitions (a filesystem on the bare disk) is not a table.
pub(super) fn primary_entries(sector0: &[u8]) -> Option<[RawEntry; 4]> {
    if sector0.len() < 512 || sector0[510] != 0x55 || sector0[511] != 0xaa {
        return None;
    }
    let entries: [RawEntry; 4] =
        std::array::from_fn(|i| RawEntry::parse(&sector0[TABLE_OFFSET + 16 * i..]));
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return None;
    }
    if entries.iter().all(|e| e.kind == 0) && looks_like_boot_sector(sector0) {
        return None;
    }
    Some(entries)
}

/// FAT12/16/32 and NTFS boot sectors carry the same 0x55AA signature as an MBR.
fn looks_like_boot_sector(s: &[u8]) -> bool {
    matches!(s[0], 0xeb | 0xe9)
        && (&s[3..11] == b"NTFS    " || &s[0x36..0x39] == b"FAT" || &s[0x52..0x55] == b"FAT")
}

/// The disk signature at byte 440.
pub(super) fn signature(sector0: &[u8]) -> u32 {
    u32::from_le_bytes(
        sector0[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    )
}

/// The logical partitions of the chain whose EBRs `read_ebr` returns: `(start, sectors,
/// kind)` in absolute sectors, numbered 5, 6, … in chain order as Linux numbers them. Stops
/// at a loop, at [`MAX_LOGICAL`], or at an EBR without the 0x55AA signature.
pub(super) fn logical_entries<E>(
    ext_start: u64,
    ext_sectors: u64,
    mut read_ebr: impl FnMut(u64) -> Result<Vec<u8>, E>,
) -> Result<Vec<(u64, u64, u8)>, E> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut ebr = ext_start;
    while out.len() < MAX_LOGICAL && !seen.contains(&ebr) {
        seen.push(ebr);
        let s = read_ebr(ebr)?;
        if s.len() < 512 || s[510] != 0x55 || s[511] != 0xaa {
            break;
        }
        let data = RawEntry::parse(&s[TABLE_OFFSET..]);
        let next = RawEntry::parse(&s[TABLE_OFFSET + 16..]);
        if data.kind != 0 && data.sectors != 0 {
            out.push((
                ebr + u64::from(data.start),
                u64::from(data.sectors),
                data.kind,
            ));
        }
        if next.kind == 0 || !next.is_extended() || next.start == 0 {
            break;
        }
        let next_ebr = ext_start + u64::from(next.start);
        if next_ebr >= ext_start + ext_sectors {
            break;
        }
        ebr = next_ebr;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_fdisk_conventions() {
        // LBA 2048 is cylinder 0, head 32, sector 33 (what sfdisk writes for a 1 MiB start).
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(1 << 30), [254, 0xff, 0xff]);
    }

    #[test]
    fn fat_boot_sector_is_not_a_table() {
        let mut s = vec![0u8; 512];
        s[0] = 0xeb;
        s[0x36..0x3b].copy_from_slice(b"FAT16");
        s[510] = 0x55;
        s[511] = 0xaa;
        assert!(primary_entries(&s).is_none());
        s[0] = 0; // No jump instruction: an empty MBR (what `sfdisk` writes for `label: dos`).
        assert!(primary_entries(&s).is_some());
        s[TABLE_OFFSET] = 0x12; // Invalid boot indicator.
        assert!(primary_entries(&s).is_none());
    }

    #[test]
    fn ebr_loop_terminates() {
        let mut ebr = vec![0u8; 512];
        ebr[510] = 0x55;
        ebr[511] = 0xaa;
        let data = RawEntry {
            boot: 0,
            kind: 0x83,
            start: 1,
            sectors: 10,
        };
        // The "next" link points back at the first EBR.
        let next = RawEntry {
            boot: 0,
            kind: 0x05,
            start: 0,
            sectors: 0,
        };
        ebr[TABLE_OFFSET..TABLE_OFFSET + 16].copy_from_slice(&data.encode());
        ebr[TABLE_OFFSET + 16..TABLE_OFFSET + 32].copy_from_slice(&next.encode());
        let l = logical_entries::<()>(100, 1000, |_| Ok(ebr.clone())).unwrap();
        assert_eq!(l, vec![(101, 10, 0x83)]);
        let mut looping = ebr.clone();
        let back = RawEntry {
            boot: 0,
            kind: 0x05,
            start: 50,
            sectors: 10,
        };
        looping[TABLE_OFFSET + 16..TABLE_OFFSET + 32].copy_from_slice(&back.encode());
        let mut reads = 0;
        let l = logical_entries::<()>(100, 1000, |lba| {
            reads += 1;
            let mut s = looping.clone();
            // Every EBR links to the one at +50, and the one at +50 links back to +50.
            if lba == 150 {
                s[TABLE_OFFSET + 16..TABLE_OFFSET + 32].copy_from_slice(&back.encode());
            }
            Ok(s)
        })
        .unwrap();
        assert_eq!(reads, 2);
        assert_eq!(l.len(), 2);
    }
}
