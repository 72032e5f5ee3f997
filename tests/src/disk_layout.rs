//! Reads MBR and GPT partition tables from a disk image or device by byte offset, so tests can
//! check what the agent wrote without host tools and without kernel partition nodes.
//! Assumes 512-byte logical sectors (loop devices' default).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::fixtures::guid_string;

/// The kind of partition table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// DOS/MBR.
    Mbr,
    /// GPT (behind a protective MBR).
    Gpt,
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number (as in `/dev/loop0p1`).
    pub number: u32,
    /// Start offset in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// MBR type byte as two hex digits (`83`), or the GPT type GUID (upper case).
    pub type_id: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

/// A parsed partition table.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Table kind.
    pub table: Table,
    /// MBR disk signature as `0x%08x`, or the GPT disk GUID.
    pub disk_id: String,
    /// Partitions in table order (empty slots skipped).
    pub partitions: Vec<Partition>,
    /// Size of the file/device in bytes.
    pub disk_size: u64,
    /// GPT only: whether a valid backup header (good CRC, `my_lba` = last LBA) sits at the
    /// last sector of the disk.
    pub gpt_backup_at_end: Option<bool>,
    /// GPT only: last usable LBA recorded in the primary header.
    pub gpt_last_usable_lba: Option<u64>,
}

impl Layout {
    /// The partition that starts last on the disk.
    pub fn last_partition(&self) -> Option<&Partition> {
        self.partitions.iter().max_by_key(|p| p.start)
    }
}

/// Reads `len` bytes at `offset` of `path` (a file or a block device).
pub fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn u32le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn u64le(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn check_gpt_header(h: &[u8]) -> Result<(), String> {
    if &h[0..8] != b"EFI PART" {
        return Err("no EFI PART signature".into());
    }
    let size = u32le(&h[12..16]) as usize;
    if !(92..=512).contains(&size) {
        return Err(format!("header size {size}"));
    }
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    let want = u32le(&h[16..20]);
    let got = crc32fast::hash(&copy);
    if want != got {
        return Err(format!("header CRC {want:#x} != computed {got:#x}"));
    }
    Ok(())
}

/// Parses the partition table of `path`.
pub fn read_layout(path: &Path) -> Result<Layout, String> {
    let err = |e: io::Error| format!("{}: {e}", path.display());
    let mut f = File::open(path).map_err(err)?;
    let disk_size = f.seek(SeekFrom::End(0)).map_err(err)?;
    let mbr = read_at(path, 0, 512).map_err(err)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Err(format!(
            "{}: no MBR boot signature (bytes 510..512 = {:02x}{:02x})",
            path.display(),
            mbr[510],
            mbr[511]
        ));
    }
    let is_gpt = (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xee);
    if !is_gpt {
        let mut partitions = Vec::new();
        for i in 0..4 {
            let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
            let ptype = e[4];
            let start = u32le(&e[8..12]) as u64;
            let count = u32le(&e[12..16]) as u64;
            if ptype == 0 || count == 0 {
                continue;
            }
            partitions.push(Partition {
                number: i as u32 + 1,
                start: start * 512,
                size: count * 512,
                type_id: format!("{ptype:02x}"),
                name: String::new(),
            });
        }
        return Ok(Layout {
            table: Table::Mbr,
            disk_id: format!("0x{:08x}", u32le(&mbr[440..444])),
            partitions,
            disk_size,
            gpt_backup_at_end: None,
            gpt_last_usable_lba: None,
        });
    }
    let hdr = read_at(path, 512, 512).map_err(err)?;
    check_gpt_header(&hdr).map_err(|e| format!("{}: primary GPT header: {e}", path.display()))?;
    let entries_lba = u64le(&hdr[72..80]);
    let n = u32le(&hdr[80..84]) as usize;
    let esz = u32le(&hdr[84..88]) as usize;
    if !(128..=4096).contains(&esz) || n > 1024 {
        return Err(format!(
            "{}: odd GPT entry geometry {n}x{esz}",
            path.display()
        ));
    }
    let entries = read_at(path, entries_lba * 512, n * esz).map_err(err)?;
    if crc32fast::hash(&entries) != u32le(&hdr[88..92]) {
        return Err(format!(
            "{}: GPT partition entry array CRC mismatch",
            path.display()
        ));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks(esz).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = u64le(&e[32..40]);
        let last = u64le(&e[40..48]);
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            start: first * 512,
            size: (last + 1).saturating_sub(first) * 512,
            type_id: guid_string(&e[0..16]),
            name: String::from_utf16_lossy(&name),
        });
    }
    let last_lba = disk_size / 512 - 1;
    let backup = read_at(path, last_lba * 512, 512).map_err(err)?;
    let backup_ok = check_gpt_header(&backup).is_ok() && u64le(&backup[24..32]) == last_lba;
    Ok(Layout {
        table: Table::Gpt,
        disk_id: guid_string(&hdr[56..72]),
        partitions,
        disk_size,
        gpt_backup_at_end: Some(backup_ok),
        gpt_last_usable_lba: Some(u64le(&hdr[48..56])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{test_image, TableKind, LINUX_FS_GUID};

    #[test]
    fn parses_generated_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mbr.img");
        std::fs::write(&p, test_image(TableKind::Mbr, 8 << 20, 1).bytes).unwrap();
        let l = read_layout(&p).unwrap();
        assert_eq!(l.table, Table::Mbr);
        assert_eq!(l.disk_id, "0x1badb002");
        assert_eq!(l.partitions.len(), 1);
        assert_eq!(l.partitions[0].start, 1 << 20);
        assert_eq!(l.partitions[0].size, 7 << 20);
        assert_eq!(l.partitions[0].type_id, "83");

        let g = dir.path().join("gpt.img");
        std::fs::write(&g, test_image(TableKind::Gpt, 8 << 20, 1).bytes).unwrap();
        let l = read_layout(&g).unwrap();
        assert_eq!(l.table, Table::Gpt);
        assert_eq!(l.gpt_backup_at_end, Some(true));
        assert_eq!(l.partitions.len(), 1);
        assert_eq!(l.partitions[0].type_id, LINUX_FS_GUID);
        assert_eq!(l.partitions[0].name, "root");
        assert_eq!(l.partitions[0].start, 1 << 20);

        // The same image on a bigger disk: backup header no longer at the end.
        let f = std::fs::OpenOptions::new().write(true).open(&g).unwrap();
        f.set_len(16 << 20).unwrap();
        assert_eq!(read_layout(&g).unwrap().gpt_backup_at_end, Some(false));
    }
}
