//! GPT and MBR reading: `partition::read_table` (and `disk_identifier`) on a file holding the
//! fuzz input as a disk image with 512-byte sectors. Hostile tables must give an error, never
//! a panic, an arithmetic overflow or an allocation beyond the bound on GPT entry arrays.
//!
//! With bit 2 of the flags the harness also edits the table as a deploy with a config drive
//! does (the table comes from the image, so it is hostile too): `fix_gpt_backup`, then
//! `add_partition_at_end` of 1 MiB named `config-2`. A partition that was added must be read
//! back, lie inside the disk (inside the usable LBAs on GPT) and overlap no other partition.
//!
//! Input: one flag byte, then the disk. CRC32s stop a mutator cold, so on request the harness
//! repairs them after mutation: bit 0 → the primary GPT (header at LBA 1), bit 1 → the backup
//! (header at the last LBA); each time the entry array CRC first, then the header CRC. Bit 2:
//! edit (above). Bit 3: the disk is 4 MiB, the input its start (an image smaller than the
//! disk it was written to, which is what `fix_gpt_backup` is for).
#![no_main]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Mutex;

use ferric_imagewriter::partition::{self, PartitionEntry, PartitionTable};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;
/// Disk size with flag bit 3.
const GROWN: u64 = 4 << 20;
/// What the config drive code adds (smaller than its 64 MiB, to fit a small test disk).
const NEW_PARTITION: u64 = 1 << 20;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Make the GPT header at `lba` (if it has the signature) carry correct CRCs.
fn fix_gpt_crcs(disk: &mut [u8], lba: usize) {
    let h = lba * SECTOR;
    if disk.len() < h + SECTOR || &disk[h..h + 8] != b"EFI PART" {
        return;
    }
    let entries_lba = u64_at(disk, h + 72);
    let len = u64::from(u32_at(disk, h + 80)) * u64::from(u32_at(disk, h + 84));
    let start = entries_lba.saturating_mul(SECTOR as u64);
    if len <= 4 << 20 && start.saturating_add(len) <= disk.len() as u64 {
        let (start, len) = (start as usize, len as usize);
        let crc = crc32fast::hash(&disk[start..start + len]);
        disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    let size = (u32_at(disk, h + 12) as usize).clamp(92, SECTOR);
    disk[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&disk[h..h + size]);
    disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

/// One scratch file for the whole run (unlinked at once), rewritten for every input.
fn scratch() -> &'static Mutex<File> {
    static FILE: std::sync::OnceLock<Mutex<File>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ferric-fuzz-disk-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the scratch disk file");
        let _ = std::fs::remove_file(&path);
        Mutex::new(f)
    })
}

fn overlaps(a: &PartitionEntry, b: &PartitionEntry) -> bool {
    a.start < b.end() && b.start < a.end()
}

/// What the config drive code does to the image's table, and what must hold afterwards.
fn edit(f: &File, size: u64) {
    let _ = partition::fix_gpt_backup(f);
    let Ok(new) = partition::add_partition_at_end(f, NEW_PARTITION, "config-2") else {
        return;
    };
    let table = partition::read_table(f)
        .expect("the table can be read after adding a partition")
        .expect("there is a table after adding a partition");
    assert!(
        table.entries().contains(&new),
        "the new partition {new:?} is not in the table read back: {table:?}"
    );
    assert!(new.size >= NEW_PARTITION, "{new:?}");
    assert!(
        new.end() <= size,
        "{new:?} ends past the disk of {size} bytes"
    );
    for other in table.entries() {
        if other.number != new.number {
            assert!(
                !overlaps(other, &new),
                "the new partition {new:?} overlaps {other:?}"
            );
        }
    }
    if let PartitionTable::Gpt {
        first_usable_lba,
        last_usable_lba,
        sector_size,
        ..
    } = &table
    {
        let ss = u64::from(*sector_size);
        assert!(new.start / ss >= *first_usable_lba, "{new:?} {table:?}");
        assert!(new.end() / ss - 1 <= *last_usable_lba, "{new:?} {table:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, disk)) = data.split_first() else {
        return;
    };
    let mut disk = disk.to_vec();
    if flags & 1 != 0 {
        fix_gpt_crcs(&mut disk, 1);
    }
    if flags & 2 != 0 && disk.len() >= 2 * SECTOR {
        let last = disk.len() / SECTOR - 1;
        fix_gpt_crcs(&mut disk, last);
    }
    let mut f = scratch().lock().unwrap();
    f.set_len(0).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&disk).unwrap();
    let mut size = disk.len() as u64;
    if flags & 8 != 0 && size < GROWN {
        f.set_len(GROWN).unwrap();
        size = GROWN;
    }

    if let Ok(Some(t)) = partition::read_table(&f) {
        let _ = t.kind();
        for e in t.entries() {
            let _ = e.end();
        }
        if let PartitionTable::Gpt {
            first_usable_lba,
            last_usable_lba,
            ..
        } = &t
        {
            assert!(*first_usable_lba <= last_usable_lba.saturating_add(1));
        }
    }
    if flags & 4 != 0 {
        edit(&f, size);
    }
    match partition::disk_identifier(&f) {
        Ok(id) => {
            assert!(size >= 444);
            assert_eq!(id.len(), 10, "{id}");
        }
        Err(_) => assert!(size < 444),
    }
});
