//! Reading and editing GPT and MBR tables made by sgdisk and sfdisk (fixtures made by
//! tests/fixtures/make-fixtures.sh), cross-checked against `sfdisk --json` output recorded at
//! generation time and, when installed, against sgdisk/sfdisk run on the edited disks.

#[path = "fixtures/helpers.rs"]
mod helpers;

use ferric_imagewriter::partition::{
    add_partition_at_end, disk_identifier, fix_gpt_backup, read_table, PartitionError,
    PartitionTable,
};
use helpers::*;
use std::os::unix::fs::FileExt;

const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// Partition number from sfdisk's node name (`mbr-logical.img5` → 5).
fn node_number(node: &str) -> u32 {
    let digits: String = node
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

fn check_against_sfdisk(name: &str) {
    let json = sfdisk_json(name);
    let pt = &json["partitiontable"];
    let d = disk(name, 16 * MIB);
    let table = read_table(d.as_file()).unwrap().expect("a table");
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(table.entries().len(), parts.len(), "{name}: {table:?}");
    for (e, p) in table.entries().iter().zip(parts) {
        assert_eq!(e.number, node_number(p["node"].as_str().unwrap()), "{name}");
        assert_eq!(
            e.start,
            p["start"].as_u64().unwrap() * 512,
            "{name} #{}",
            e.number
        );
        assert_eq!(
            e.size,
            p["size"].as_u64().unwrap() * 512,
            "{name} #{}",
            e.number
        );
    }
    match (&table, pt["label"].as_str().unwrap()) {
        (
            PartitionTable::Gpt {
                disk_guid,
                entries,
                first_usable_lba,
                last_usable_lba,
                sector_size,
                from_backup,
                ..
            },
            "gpt",
        ) => {
            assert_eq!(*disk_guid, pt["id"].as_str().unwrap().to_lowercase());
            assert_eq!(*first_usable_lba, pt["firstlba"].as_u64().unwrap());
            assert_eq!(*last_usable_lba, pt["lastlba"].as_u64().unwrap());
            assert_eq!((*sector_size, *from_backup), (512, false));
            for (e, p) in entries.iter().zip(parts) {
                let ty = p["type"].as_str().unwrap().to_lowercase();
                assert_eq!(e.type_guid_or_id, ty);
                let uuid = p["uuid"].as_str().unwrap().to_lowercase();
                assert_eq!(e.unique_guid.as_deref(), Some(uuid.as_str()));
                assert_eq!(e.name.as_deref(), p["name"].as_str());
            }
        }
        (PartitionTable::Mbr { signature, entries }, "dos") => {
            let id = pt["id"].as_str().unwrap().trim_start_matches("0x");
            assert_eq!(*signature, u32::from_str_radix(id, 16).unwrap());
            for (e, p) in entries.iter().zip(parts) {
                let ty = u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap();
                assert_eq!(e.type_guid_or_id, format!("{ty:#04x}"));
                assert_eq!(e.name, None);
                let partuuid = format!("{id}-{:02x}", e.number);
                assert_eq!(e.unique_guid.as_deref(), Some(partuuid.as_str()));
            }
        }
        (t, label) => panic!("{name}: read {t:?}, sfdisk says {label}"),
    }
}

#[test]
fn gpt_fixtures_read_as_sfdisk_reads_them() {
    for name in ["gpt", "gpt-config2", "gpt-isolabel", "gpt-full"] {
        check_against_sfdisk(name);
    }
}

#[test]
fn mbr_fixtures_read_as_sfdisk_reads_them() {
    for name in ["mbr", "mbr-full", "mbr-logical", "mbr-vfat"] {
        check_against_sfdisk(name);
    }
}

#[test]
fn logical_partitions_are_numbered_from_five() {
    let d = disk("mbr-logical", 16 * MIB);
    let t = read_table(d.as_file()).unwrap().unwrap();
    let numbers: Vec<u32> = t.entries().iter().map(|e| e.number).collect();
    assert_eq!(numbers, [1, 2, 5, 6]);
    assert_eq!(t.entries()[1].type_guid_or_id, "0x05");
    assert_eq!(t.entries()[3].type_guid_or_id, "0x82");
}

#[test]
fn disk_identifier_is_ipas_hexdump_of_offset_440() {
    // The value the recorded conductor received as root uuid (recordings/01-deploy.jsonl).
    let d = disk("mbr", 16 * MIB);
    assert_eq!(disk_identifier(d.as_file()).unwrap(), "0x1badb002");
    // A GPT disk: the protective MBR's signature, zero as sgdisk writes it.
    let d = disk("gpt", 16 * MIB);
    assert_eq!(disk_identifier(d.as_file()).unwrap(), "0x00000000");
}

#[test]
fn a_blank_disk_has_no_table() {
    let f = tempfile::tempfile().unwrap();
    f.set_len(8 * MIB).unwrap();
    assert!(read_table(&f).unwrap().is_none());
    assert!(matches!(
        add_partition_at_end(&f, MIB, "x"),
        Err(PartitionError::NoTable)
    ));
    assert!(!fix_gpt_backup(&f).unwrap());
    // A FAT filesystem on the bare disk carries 0x55AA too, but is not a partition table.
    let fat = image("mbr-vfat");
    f.write_all_at(&fat[18432 * 512..18433 * 512], 0).unwrap();
    assert!(read_table(&f).unwrap().is_none());
}

#[test]
fn damaged_primary_gpt_is_read_from_the_backup_but_not_edited() {
    let d = disk("gpt", 16 * MIB);
    let f = d.as_file();
    // Flip a byte of the primary header's last-usable field: its CRC no longer matches.
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 512 + 48).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 512 + 48).unwrap();
    match read_table(f).unwrap().unwrap() {
        PartitionTable::Gpt {
            from_backup,
            entries,
            ..
        } => {
            assert!(from_backup);
            assert_eq!(entries.len(), 2);
        }
        t => panic!("{t:?}"),
    }
    let err = add_partition_at_end(f, MIB, "config-2").unwrap_err();
    assert!(
        matches!(err, PartitionError::PrimaryGptDamaged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("CRC32"), "{err}");
    // Now the backup too: nothing valid is left, which is an error, not "no table".
    f.write_all_at(&[0u8; 8], (32767) * 512).unwrap();
    let err = read_table(f).unwrap_err();
    assert!(matches!(err, PartitionError::NoValidGpt { .. }), "{err}");
}

#[test]
fn fix_gpt_backup_moves_the_backup_to_the_end_of_a_larger_disk() {
    let size = 100 * MIB;
    let d = disk("gpt", size);
    let f = d.as_file();
    let last_lba = size / 512 - 1;
    let before = raw_gpt_header(f, 1);
    assert_eq!(before.alternate_lba, 16 * MIB / 512 - 1);

    assert!(fix_gpt_backup(f).unwrap());

    let primary = raw_gpt_header(f, 1);
    let backup = raw_gpt_header(f, last_lba);
    assert_eq!(primary.alternate_lba, last_lba);
    assert_eq!(backup.alternate_lba, 1);
    // 128 entries × 128 bytes = 32 sectors before the backup header.
    assert_eq!(backup.entries_lba, last_lba - 32);
    assert_eq!(primary.last_usable, last_lba - 33);
    assert_eq!(backup.last_usable, primary.last_usable);
    assert_eq!(primary.first_usable, before.first_usable);
    assert_eq!(primary.disk_guid, before.disk_guid);
    assert_eq!(primary.entries, before.entries);
    assert_eq!(backup.entries, before.entries);
    // The old backup header is gone; the protective MBR covers the disk.
    assert_eq!(read_at(f, before.alternate_lba * 512, 8), [0u8; 8]);
    let pmbr_sectors = u32::from_le_bytes(read_at(f, 446 + 12, 4).try_into().unwrap());
    assert_eq!(u64::from(pmbr_sectors), last_lba);

    // Idempotent.
    assert!(!fix_gpt_backup(f).unwrap());
    sgdisk_verify(d.path());
}

#[test]
fn fix_gpt_backup_rewrites_a_damaged_backup_in_place() {
    let d = disk("gpt", 16 * MIB);
    let f = d.as_file();
    let last = 16 * MIB / 512 - 1;
    let before = raw_gpt_header(f, 1);
    f.write_all_at(&[0xffu8; 64], (last - 32) * 512).unwrap(); // Backup entries CRC breaks.
    assert!(fix_gpt_backup(f).unwrap());
    let backup = raw_gpt_header(f, last);
    assert_eq!(backup.entries, before.entries);
    assert_eq!(raw_gpt_header(f, 1).last_usable, before.last_usable);
    assert!(!fix_gpt_backup(f).unwrap());
    sgdisk_verify(d.path());
}

#[test]
fn fix_gpt_backup_leaves_mbr_disks_alone() {
    let d = disk("mbr", 64 * MIB);
    let before = std::fs::read(d.path()).unwrap();
    assert!(!fix_gpt_backup(d.as_file()).unwrap());
    assert_eq!(std::fs::read(d.path()).unwrap(), before);
}

#[test]
fn gpt_partition_is_added_at_the_end_after_the_backup_fix() {
    let size = 200 * MIB;
    let d = disk("gpt", size);
    let f = d.as_file();
    // Without the fix the image's root partition reaches its last usable LBA: no room.
    let err = add_partition_at_end(f, 64 * MIB, "config-2").unwrap_err();
    match &err {
        PartitionError::NoRoom { requested, .. } => assert_eq!(*requested, 64 * MIB),
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains(&(64 * MIB).to_string()), "{err}");

    fix_gpt_backup(f).unwrap();
    let e = add_partition_at_end(f, 64 * MIB, "config-2").unwrap();
    assert_eq!(e.number, 3);
    assert_eq!(e.size, 64 * MIB);
    assert_eq!(e.start % MIB, 0);
    let last_usable_end = (size / 512 - 33) * 512;
    assert!(
        e.end() <= last_usable_end && e.end() + MIB > last_usable_end,
        "{e:?}"
    );
    assert_eq!(e.name.as_deref(), Some("config-2"));
    assert_eq!(e.type_guid_or_id, LINUX_FS);

    let t = read_table(f).unwrap().unwrap();
    assert_eq!(t.entries().len(), 3);
    assert_eq!(t.entries()[2], e);
    // Primary and backup agree, CRCs included.
    let primary = raw_gpt_header(f, 1);
    assert_eq!(raw_gpt_header(f, size / 512 - 1).entries, primary.entries);

    sgdisk_verify(d.path());
    if let Some(j) = sfdisk_now(d.path()) {
        let p = &j["partitiontable"]["partitions"][2];
        assert_eq!(p["start"].as_u64().unwrap() * 512, e.start);
        assert_eq!(p["size"].as_u64().unwrap() * 512, e.size);
        assert_eq!(p["name"], "config-2");
        assert_eq!(
            p["uuid"].as_str().unwrap().to_lowercase(),
            e.unique_guid.clone().unwrap()
        );
    }
}

#[test]
fn gpt_partition_sizes_round_up_to_sectors() {
    let d = disk("gpt", 100 * MIB);
    fix_gpt_backup(d.as_file()).unwrap();
    let e = add_partition_at_end(d.as_file(), 1000, "x").unwrap();
    assert_eq!(e.size, 1024);
    assert_eq!(e.start % MIB, 0);
}

#[test]
fn gpt_without_a_free_slot_is_refused() {
    let d = disk("gpt-full", 64 * MIB);
    fix_gpt_backup(d.as_file()).unwrap();
    let err = add_partition_at_end(d.as_file(), MIB, "config-2").unwrap_err();
    assert!(
        matches!(
            err,
            PartitionError::NoFreeSlot {
                table: "gpt",
                slots: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn gpt_names_longer_than_36_units_are_refused() {
    let d = disk("gpt", 100 * MIB);
    fix_gpt_backup(d.as_file()).unwrap();
    let err = add_partition_at_end(d.as_file(), MIB, &"n".repeat(37)).unwrap_err();
    assert!(matches!(err, PartitionError::NameTooLong(_)), "{err}");
}

#[test]
fn mbr_partition_takes_a_free_primary_slot_at_the_end() {
    let size = 100 * MIB;
    let d = disk("mbr", size);
    let f = d.as_file();
    let e = add_partition_at_end(f, 64 * MIB, "config-2").unwrap();
    assert_eq!(e.number, 3);
    assert_eq!(e.type_guid_or_id, "0x83");
    assert_eq!((e.start % MIB, e.size), (0, 64 * MIB));
    assert!(e.end() <= size && e.end() + MIB > size, "{e:?}");
    assert_eq!(e.unique_guid.as_deref(), Some("1badb002-03"));
    let t = read_table(f).unwrap().unwrap();
    assert_eq!(t.entries().len(), 3);
    assert_eq!(t.entries()[2], e);
    // The untouched entries and the disk signature are byte-identical.
    let img = image("mbr");
    assert_eq!(read_at(f, 440, 6 + 32), img[440..478]);
    assert_eq!(read_at(f, 510, 2), [0x55, 0xaa]);
    if let Some(j) = sfdisk_now(d.path()) {
        let p = &j["partitiontable"]["partitions"][2];
        assert_eq!(p["start"].as_u64().unwrap() * 512, e.start);
        assert_eq!(p["size"].as_u64().unwrap() * 512, e.size);
        assert_eq!(p["type"], "83");
    }
}

#[test]
fn mbr_partition_goes_after_the_extended_partition() {
    let d = disk("mbr-logical", 64 * MIB);
    let e = add_partition_at_end(d.as_file(), 8 * MIB, "config-2").unwrap();
    assert_eq!(e.number, 3);
    assert!(e.start >= 26 * MIB, "{e:?}"); // The extended partition ends at 26 MiB.
    let t = read_table(d.as_file()).unwrap().unwrap();
    let numbers: Vec<u32> = t.entries().iter().map(|e| e.number).collect();
    assert_eq!(numbers, [1, 2, 3, 5, 6]);
}

#[test]
fn mbr_with_four_primaries_is_refused() {
    let d = disk("mbr-full", 64 * MIB);
    let before = std::fs::read(d.path()).unwrap();
    let err = add_partition_at_end(d.as_file(), MIB, "config-2").unwrap_err();
    assert!(
        matches!(
            err,
            PartitionError::NoFreeSlot {
                table: "msdos",
                slots: 4
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(d.path()).unwrap(), before, "nothing written");
}

#[test]
fn mbr_without_room_is_refused_with_sizes() {
    // The image's last partition runs to the end of the 16 MiB image = disk.
    let d = disk("mbr", 16 * MIB);
    let err = add_partition_at_end(d.as_file(), 64 * MIB, "config-2").unwrap_err();
    match err {
        PartitionError::NoRoom {
            requested,
            free_start,
            free_end,
        } => {
            assert_eq!(requested, 64 * MIB);
            assert_eq!((free_start, free_end), (16 * MIB, 16 * MIB));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn mbr_partition_stays_below_two_tib_on_a_larger_disk() {
    let size = 3 << 40; // Sparse: only the table is written.
    let d = disk("mbr", size);
    let e = add_partition_at_end(d.as_file(), 64 * MIB, "config-2").unwrap();
    assert!(e.end() <= (1u64 << 32) * 512, "{e:?}");
    assert!(e.end() + MIB > (1u64 << 32) * 512, "{e:?}");
    let t = read_table(d.as_file()).unwrap().unwrap();
    assert_eq!(t.entries()[2], e);
}

#[test]
fn hostile_tables_never_panic() {
    // Deterministic xorshift: corrupt bytes in the first sectors of every fixture and read.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for name in ["gpt", "gpt-full", "mbr", "mbr-logical"] {
        let img = image(name);
        for _ in 0..200 {
            let mut bytes = img[..64 * 1024].to_vec();
            for _ in 0..8 {
                let i = (next() % 1100) as usize; // MBR, GPT header and the first entries.
                bytes[i] = next() as u8;
            }
            let f = tempfile::tempfile().unwrap();
            f.write_all_at(&bytes, 0).unwrap();
            f.set_len(16 * MIB).unwrap();
            let _ = read_table(&f);
            let _ = fix_gpt_backup(&f);
            let _ = add_partition_at_end(&f, MIB, "config-2");
        }
    }
}

/// Recompute the primary GPT's entry-array and header CRCs after an edit (512-byte sectors,
/// 128 entries of 128 bytes at LBA 2, as in the gpt fixture).
fn fix_crcs(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[1024..1024 + 128 * 128]);
    bytes[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
    bytes[512 + 16..512 + 20].fill(0);
    let crc = crc32fast::hash(&bytes[512..512 + 92]);
    bytes[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
}

fn disk_from_bytes(bytes: &[u8], size: u64) -> std::fs::File {
    let f = tempfile::tempfile().unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.set_len(size).unwrap();
    f
}

#[test]
fn hostile_gpt_with_valid_crcs_is_refused_not_trusted() {
    let img = image("gpt");
    // An entry far beyond any disk.
    let mut b = img[..64 * 1024].to_vec();
    let e = 1024 + 128; // Entry 2.
    b[e + 32..e + 40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    b[e + 40..e + 48].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    fix_crcs(&mut b);
    let f = disk_from_bytes(&b, 100 * MIB);
    let err = read_table(&f).unwrap_err();
    assert!(err.to_string().contains("beyond any disk"), "{err}");
    assert!(add_partition_at_end(&f, MIB, "config-2").is_err());
    assert!(fix_gpt_backup(&f).is_err());

    // A header claiming usable space up to LBA 2^64 - 2 (the image's backup, at the end of
    // the 16 MiB disk, is intact).
    let mut b = img.clone();
    b[512 + 48..512 + 56].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    fix_crcs(&mut b);
    let f = disk_from_bytes(&b, 16 * MIB);
    assert!(read_table(&f).is_ok(), "falls back to the (valid) backup");
    assert!(matches!(
        add_partition_at_end(&f, MIB, "config-2"),
        Err(PartitionError::PrimaryGptDamaged { .. })
    ));
}

#[test]
fn hostile_gpt_fields_with_valid_crcs_never_panic() {
    let img = image("gpt");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let mut b = img[..64 * 1024].to_vec();
        for _ in 0..4 {
            // Header fields after the CRC, or the first two entries' LBAs.
            let i = if round % 2 == 0 {
                512 + 24 + (next() % 68) as usize
            } else {
                1024 + 32 + (next() % 16) as usize + 128 * (next() % 2) as usize
            };
            b[i] = next() as u8;
        }
        fix_crcs(&mut b);
        let size = [16 * MIB, 100 * MIB, 4096, 17 * MIB + 512][(next() % 4) as usize];
        let f = disk_from_bytes(&b[..b.len().min(size as usize)], size);
        let _ = read_table(&f);
        let _ = fix_gpt_backup(&f);
        let _ = add_partition_at_end(&f, MIB, "config-2");
        let _ = read_table(&f);
    }
}

/// An MBR whose second slot is an extended partition starting at LBA 0: its first EBR is the
/// MBR itself, so the MBR's own first two entries also read as logical partitions 5 and 6.
/// Found by the partition_table fuzz target (fuzz/regressions/partition_table/mbr-extended-at-lba-0):
/// the config drive added to the free first slot came back twice, as partitions 1 and 5.
#[test]
fn mbr_extended_partition_at_lba_0_is_refused() {
    let mut b = vec![0u8; 512];
    b[440..444].copy_from_slice(&0x1bad_b002u32.to_le_bytes());
    let ext = [0, 0, 0, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0]; // LBA 0, 2048 sectors.
    b[446 + 16..446 + 32].copy_from_slice(&ext);
    b[510..512].copy_from_slice(&[0x55, 0xaa]);
    let f = disk_from_bytes(&b, 16 * MIB);

    let err = read_table(&f).unwrap_err();
    assert!(
        matches!(err, PartitionError::ExtendedAtLba0 { number: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("LBA 0"), "{err}");
    let err = add_partition_at_end(&f, MIB, "config-2").unwrap_err();
    assert!(
        matches!(err, PartitionError::ExtendedAtLba0 { .. }),
        "{err}"
    );
    assert_eq!(read_at(&f, 0, 512), b, "nothing written");
}

/// A GPT whose primary entry array is at LBA 0, in the protective MBR (4 entries of 128 bytes:
/// the fourth holds the MBR's partition table and its 0x55AA). Found by the partition_table
/// fuzz target (fuzz/regressions/partition_table/gpt-entries-at-lba-0): adding the config
/// drive wrote its entry into the fourth slot and wiped the MBR, so the disk had no partition
/// table left; growing the protective MBR broke the entry array's CRC.
#[test]
fn gpt_entry_array_over_the_mbr_is_not_edited() {
    let mut b = image("gpt");
    // The fixture's two entries and a third, copied to LBA 0; the fourth slot is the MBR's
    // partition table (its type GUID bytes, in the zeroed boot code, make it look free).
    let entries = b[1024..1024 + 256].to_vec();
    b[..256].copy_from_slice(&entries);
    b[256..384].copy_from_slice(&entries[128..]);
    b[256 + 16] ^= 1; // Its own unique GUID.
    assert_eq!(b[384..400], [0u8; 16]);
    let crc = crc32fast::hash(&b[..512]);
    b[512 + 72..512 + 80].copy_from_slice(&0u64.to_le_bytes());
    b[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
    b[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
    b[512 + 16..512 + 20].fill(0);
    let crc = crc32fast::hash(&b[512..512 + 92]);
    b[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    let f = disk_from_bytes(&b, 16 * MIB);

    // The backup at the end of the disk is intact and is what a reader gets.
    match read_table(&f).unwrap().unwrap() {
        PartitionTable::Gpt { from_backup, .. } => assert!(from_backup),
        t => panic!("{t:?}"),
    }
    for err in [
        fix_gpt_backup(&f).unwrap_err(),
        add_partition_at_end(&f, MIB, "config-2").unwrap_err(),
    ] {
        match &err {
            PartitionError::PrimaryGptDamaged { reason } => {
                assert!(reason.contains("entry array"), "{err}");
                assert!(reason.contains("LBA 0"), "{err}");
            }
            e => panic!("{e}"),
        }
    }
    assert_eq!(read_at(&f, 0, 1024), b[..1024], "nothing written");
}
