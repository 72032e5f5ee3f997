//! GUID Partition Table structures (UEFI 2.10 §5.3): header and entry array codecs.
//!
//! The header is kept as the raw bytes read from disk and edited in place, so that fields this
//! code does not know (a header larger than 92 bytes) survive an edit; only the fields changed
//! and the CRCs are rewritten.

use uuid::Uuid;

/// `"EFI PART"`, the header signature.
pub(super) const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Size of the header fields defined by the specification.
const HEADER_MIN: usize = 92;
/// Smallest entry the specification allows (entries are 128 × 2^n bytes).
const ENTRY_MIN: usize = 128;
/// Upper bound on the entry array we accept (num × size). Real tables use 16 KiB; the bound
/// keeps a hostile header from making us allocate gigabytes.
pub(super) const MAX_ENTRY_ARRAY: usize = 4 << 20;
/// No LBA in a sane GPT reaches 2^48 (128 EiB of 512-byte sectors, 1 ZiB of 4 KiB ones);
/// rejecting larger ones keeps `lba × sector size` from overflowing on hostile tables.
pub(super) const MAX_LBA: u64 = 1 << 48;
/// UTF-16 code units in the entry's name field (72 bytes).
pub(super) const NAME_UNITS: usize = 36;

/// "Linux filesystem data", the type sgdisk gives a new partition by default (code 8300):
/// what IPA's `sgdisk -n 0:-64MB:0` produces for the config drive
/// (ironic_python_agent/partition_utils.py, create_config_drive_partition).
pub(super) const LINUX_FILESYSTEM: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// A GPT header, as its raw `header_size` bytes.
#[derive(Debug, Clone)]
pub(super) struct Header {
    raw: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// CRC32 of the header with its CRC field taken as zero.
fn header_crc(raw: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[..16]);
    h.update(&[0; 4]);
    h.update(&raw[20..]);
    h.finalize()
}

impl Header {
    /// Parse and validate the header found in `sector` (one logical sector read at `lba`).
    /// The error is a sentence saying what is wrong, for [`super::PartitionError`].
    pub(super) fn parse(sector: &[u8], lba: u64) -> Result<Header, String> {
        if sector.len() < HEADER_MIN || &sector[..8] != SIGNATURE {
            return Err("no \"EFI PART\" signature".into());
        }
        let size = u32_at(sector, 12) as usize;
        if size < HEADER_MIN || size > sector.len() {
            return Err(format!(
                "header size {size} outside {HEADER_MIN}..={}",
                sector.len()
            ));
        }
        let raw = sector[..size].to_vec();
        let stored = u32_at(&raw, 16);
        let computed = header_crc(&raw);
        if stored != computed {
            return Err(format!(
                "header CRC32 is {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let h = Header { raw };
        if h.my_lba() != lba {
            return Err(format!(
                "header says it lives at LBA {}, found at LBA {lba}",
                h.my_lba()
            ));
        }
        let (num, esize) = (h.num_entries() as usize, h.entry_size() as usize);
        if esize < ENTRY_MIN || esize % ENTRY_MIN != 0 {
            return Err(format!(
                "partition entry size {esize} is not a multiple of 128"
            ));
        }
        if num.checked_mul(esize).is_none_or(|n| n > MAX_ENTRY_ARRAY) {
            return Err(format!(
                "partition entry array of {num} × {esize} bytes exceeds {MAX_ENTRY_ARRAY} bytes"
            ));
        }
        for (what, lba) in [
            ("alternate", h.alternate_lba()),
            ("last usable", h.last_usable()),
            ("entry array", h.entries_lba()),
        ] {
            if lba >= MAX_LBA {
                return Err(format!("{what} LBA {lba} is beyond any disk"));
            }
        }
        if h.first_usable() > h.last_usable().saturating_add(1) {
            return Err(format!(
                "first usable LBA {} is after last usable LBA {}",
                h.first_usable(),
                h.last_usable()
            ));
        }
        h.check_layout(sector.len() as u64)?;
        Ok(h)
    }

    /// The structures must not overlap (UEFI 2.10 §5.3.2: the primary entry array lies after
    /// the primary header and ends before the first usable LBA, the backup array after the
    /// last usable LBA and before the backup header). An edit writes the entry array, the
    /// header and later the new partition's contents where the header says: with an array in
    /// LBA 0 a new entry overwrites the protective MBR, with an array on a header the header
    /// overwrites the entries, and a partition in LBA 0–1 overwrites both. The kernel does not
    /// check this; `sgdisk -v` reports "Main partition table appears impossibly early".
    fn check_layout(&self, sector_size: u64) -> Result<(), String> {
        // No overflow: every LBA is below MAX_LBA and the array below MAX_ENTRY_ARRAY bytes.
        let array = self.entries_lba()
            ..self.entries_lba() + (self.entries_len() as u64).div_ceil(sector_size);
        let usable = self.first_usable()..self.last_usable() + 1;
        let overlaps =
            |a: &std::ops::Range<u64>, b: &std::ops::Range<u64>| a.start < b.end && b.start < a.end;
        let fixed = [
            ("LBA 0-1 (protective MBR and primary header)", 0..2),
            ("this header", self.my_lba()..self.my_lba() + 1),
        ];
        for (what, other) in fixed.iter().chain([&("the usable LBAs", usable.clone())]) {
            if overlaps(&array, other) {
                return Err(format!(
                    "its partition entry array (LBA {}..={}) overlaps {what}",
                    array.start,
                    array.end - 1
                ));
            }
        }
        for (what, other) in &fixed {
            if overlaps(&usable, other) {
                return Err(format!(
                    "its usable LBAs {}..={} include {what}",
                    usable.start,
                    usable.end - 1
                ));
            }
        }
        Ok(())
    }

    pub(super) fn my_lba(&self) -> u64 {
        u64_at(&self.raw, 24)
    }
    pub(super) fn alternate_lba(&self) -> u64 {
        u64_at(&self.raw, 32)
    }
    pub(super) fn first_usable(&self) -> u64 {
        u64_at(&self.raw, 40)
    }
    pub(super) fn last_usable(&self) -> u64 {
        u64_at(&self.raw, 48)
    }
    pub(super) fn disk_guid(&self) -> String {
        guid_to_string(&self.raw[56..72])
    }
    pub(super) fn entries_lba(&self) -> u64 {
        u64_at(&self.raw, 72)
    }
    pub(super) fn num_entries(&self) -> u32 {
        u32_at(&self.raw, 80)
    }
    pub(super) fn entry_size(&self) -> u32 {
        u32_at(&self.raw, 84)
    }
    pub(super) fn entries_crc(&self) -> u32 {
        u32_at(&self.raw, 88)
    }
    /// Bytes of the partition entry array.
    pub(super) fn entries_len(&self) -> usize {
        self.num_entries() as usize * self.entry_size() as usize
    }

    fn set_u64(&mut self, off: usize, v: u64) {
        self.raw[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub(super) fn set_my_lba(&mut self, v: u64) {
        self.set_u64(24, v);
    }
    pub(super) fn set_alternate_lba(&mut self, v: u64) {
        self.set_u64(32, v);
    }
    pub(super) fn set_last_usable(&mut self, v: u64) {
        self.set_u64(48, v);
    }
    pub(super) fn set_entries_lba(&mut self, v: u64) {
        self.set_u64(72, v);
    }
    pub(super) fn set_entries_crc(&mut self, v: u32) {
        self.raw[88..92].copy_from_slice(&v.to_le_bytes());
    }

    /// The header as a full sector with a fresh CRC (the rest of the sector is zero, as the
    /// specification requires).
    pub(super) fn to_sector(&self, sector_size: usize) -> Vec<u8> {
        let mut raw = self.raw.clone();
        let crc = header_crc(&raw);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        raw.resize(sector_size, 0);
        raw
    }

    /// The copy of this header that lives at the other end of the disk: `my_lba` and
    /// `alternate_lba` swapped, entry array at `entries_lba`.
    pub(super) fn mirrored(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64) -> Header {
        let mut h = self.clone();
        h.set_my_lba(my_lba);
        h.set_alternate_lba(alternate_lba);
        h.set_entries_lba(entries_lba);
        h
    }
}

/// CRC32 of a partition entry array, as stored in the header.
pub(super) fn entries_crc(entries: &[u8]) -> u32 {
    crc32fast::hash(entries)
}

/// One used slot of the entry array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Slot index (partition number − 1).
    pub index: usize,
    pub type_guid: String,
    pub unique_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// The used entries of an entry array (slots whose type GUID is not all zero).
pub(super) fn parse_entries(array: &[u8], entry_size: usize) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (index, e) in array.chunks_exact(entry_size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first_lba, last_lba) = (u64_at(e, 32), u64_at(e, 40));
        if last_lba >= MAX_LBA {
            return Err(format!(
                "entry {} ends at LBA {last_lba}, beyond any disk",
                index + 1
            ));
        }
        if last_lba < first_lba {
            return Err(format!(
                "entry {} ends (LBA {last_lba}) before it starts (LBA {first_lba})",
                index + 1
            ));
        }
        let units: Vec<u16> = e[56..56 + 2 * NAME_UNITS]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Entry {
            index,
            type_guid: guid_to_string(&e[..16]),
            unique_guid: guid_to_string(&e[16..32]),
            first_lba,
            last_lba,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

/// Encode a new entry into `slot` (exactly `entry_size` bytes, zeroed first).
pub(super) fn encode_entry(
    slot: &mut [u8],
    type_guid: &Uuid,
    unique_guid: &Uuid,
    first_lba: u64,
    last_lba: u64,
    name: &[u16],
) {
    slot.fill(0);
    slot[..16].copy_from_slice(&type_guid.to_bytes_le());
    slot[16..32].copy_from_slice(&unique_guid.to_bytes_le());
    slot[32..40].copy_from_slice(&first_lba.to_le_bytes());
    slot[40..48].copy_from_slice(&last_lba.to_le_bytes());
    for (i, u) in name.iter().take(NAME_UNITS).enumerate() {
        slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
}

/// GUIDs are stored "mixed endian": the first three fields little endian (UEFI Appendix A).
/// Printed lower case, as blkid and lsblk print them.
pub(super) fn guid_to_string(b: &[u8]) -> String {
    let bytes: [u8; 16] = b[..16].try_into().expect("16 bytes");
    Uuid::from_bytes_le(bytes).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_sector() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&92u32.to_le_bytes());
        s[24..32].copy_from_slice(&1u64.to_le_bytes());
        s[32..40].copy_from_slice(&99u64.to_le_bytes());
        s[40..48].copy_from_slice(&34u64.to_le_bytes());
        s[48..56].copy_from_slice(&66u64.to_le_bytes());
        s[72..80].copy_from_slice(&2u64.to_le_bytes());
        s[80..84].copy_from_slice(&128u32.to_le_bytes());
        s[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = header_crc(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    #[test]
    fn header_round_trips_and_checks_crc() {
        let s = header_sector();
        let h = Header::parse(&s, 1).unwrap();
        assert_eq!(
            (h.alternate_lba(), h.last_usable(), h.entries_len()),
            (99, 66, 16384)
        );
        assert_eq!(h.to_sector(512), s);
        let mut bad = s.clone();
        bad[48] ^= 1;
        assert!(Header::parse(&bad, 1).unwrap_err().contains("CRC32"));
        assert!(Header::parse(&s, 2).unwrap_err().contains("LBA 2"));
    }

    #[test]
    fn hostile_entry_array_size_is_refused() {
        let mut s = header_sector();
        s[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = header_crc(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(Header::parse(&s, 1).unwrap_err().contains("exceeds"));
    }

    /// `header_sector` with the u64 at `off` set to `v` and a fresh CRC.
    fn with_u64(off: usize, v: u64) -> Vec<u8> {
        let mut s = header_sector();
        s[off..off + 8].copy_from_slice(&v.to_le_bytes());
        s[16..20].fill(0);
        let crc = header_crc(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    #[test]
    fn overlapping_structures_are_refused() {
        // The entry array on the protective MBR or on the header itself.
        for lba in [0, 1] {
            let err = Header::parse(&with_u64(72, lba), 1).unwrap_err();
            assert!(err.contains("LBA 0-1"), "{err}");
        }
        // The array (LBA 2..=33) reaching into the usable LBAs.
        let err = Header::parse(&with_u64(40, 33), 1).unwrap_err();
        assert!(err.contains("overlaps the usable LBAs"), "{err}");
        // Usable LBAs that include the protective MBR and the header (array moved away).
        let mut s = with_u64(72, 67);
        s[40..48].copy_from_slice(&0u64.to_le_bytes());
        s[16..20].fill(0);
        let crc = header_crc(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        let err = Header::parse(&s, 1).unwrap_err();
        assert!(err.contains("usable LBAs 0..=66 include LBA 0-1"), "{err}");
        // A backup header (LBA 99) whose array runs onto itself: LBA 67..=98 is fine, 68 is not.
        let backup = |entries_lba| {
            let mut s = with_u64(72, entries_lba);
            s[24..32].copy_from_slice(&99u64.to_le_bytes());
            s[32..40].copy_from_slice(&1u64.to_le_bytes());
            s[16..20].fill(0);
            let crc = header_crc(&s[..92]);
            s[16..20].copy_from_slice(&crc.to_le_bytes());
            s
        };
        assert!(Header::parse(&backup(67), 99).is_ok());
        let err = Header::parse(&backup(68), 99).unwrap_err();
        assert!(err.contains("overlaps this header"), "{err}");
    }

    #[test]
    fn guid_is_mixed_endian() {
        // The ESP type GUID as it sits on disk.
        let on_disk = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(
            guid_to_string(&on_disk),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
    }
}
