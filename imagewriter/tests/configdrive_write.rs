//! `configdrive::write_config_drive` on tempfile disks: whole-disk GPT and MBR images smaller
//! than the disk, existing config-2 partitions (by GPT name, ISO label, FAT label), and the
//! refusals. The ISO is the one the real conductor sent (recordings/01-deploy.jsonl).

#[path = "fixtures/helpers.rs"]
mod helpers;

use ferric_imagewriter::configdrive::{write_config_drive, ConfigDriveError};
use ferric_imagewriter::partition::{read_table, PartitionError, PartitionTable};
use helpers::*;
use std::os::unix::fs::FileExt;
use std::process::Command;

/// `blkid -p` on the filesystem at `offset` of a disk image, when blkid is installed.
fn blkid_label_at(path: &std::path::Path, offset: u64) -> Option<String> {
    if !have_tool("blkid") {
        return None;
    }
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "LABEL", "-O"])
        .arg(offset.to_string())
        .arg(path)
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn gpt_whole_disk_image_on_a_larger_disk_gets_a_new_partition_at_the_end() {
    let size = 200 * MIB;
    let d = disk("gpt", size);
    let f = d.as_file();
    // Stale bytes where the partition will go, to see the zeroing.
    f.write_all_at(&vec![0xaa; 70 * MIB as usize], size - 71 * MIB)
        .unwrap();
    let iso = recorded_iso();

    let r = write_config_drive(d.path(), &iso).unwrap();

    assert!(r.created);
    assert_eq!(r.partition_number, 3);
    assert_eq!((r.offset % MIB, r.size), (0, 64 * MIB));
    assert_eq!(r.partition_device, None, "a file has no partition nodes");
    // At the end of the usable space (the backup GPT was moved to the disk's end first).
    let last_usable_end = (size / 512 - 33) * 512;
    assert!(r.offset + r.size <= last_usable_end);
    assert!(r.offset + r.size + MIB > last_usable_end);
    assert_eq!(read_at(f, r.offset, iso.len()), iso);
    let rest = read_at(
        f,
        r.offset + iso.len() as u64,
        (r.size as usize) - iso.len(),
    );
    assert!(rest.iter().all(|&b| b == 0), "rest of the partition zeroed");

    match read_table(f).unwrap().unwrap() {
        PartitionTable::Gpt { entries, .. } => {
            assert_eq!(entries.len(), 3);
            assert_eq!(entries[2].name.as_deref(), Some("config-2"));
            assert_eq!((entries[2].start, entries[2].size), (r.offset, r.size));
        }
        t => panic!("{t:?}"),
    }
    sgdisk_verify(d.path());
    if let Some(label) = blkid_label_at(d.path(), r.offset) {
        assert_eq!(label, "config-2");
    }

    // A second deploy onto the same disk reuses the partition.
    let again = write_config_drive(d.path(), &iso).unwrap();
    assert!(!again.created);
    assert_eq!((again.partition_number, again.offset), (3, r.offset));
    assert_eq!(read_table(f).unwrap().unwrap().entries().len(), 3);
}

#[test]
fn mbr_whole_disk_image_gets_a_primary_partition() {
    let size = 100 * MIB;
    let d = disk("mbr", size);
    let iso = recorded_iso();
    let r = write_config_drive(d.path(), &iso).unwrap();
    assert!(r.created);
    assert_eq!(r.partition_number, 3);
    assert!(r.offset + r.size <= size && r.offset + r.size + MIB > size);
    assert_eq!(read_at(d.as_file(), r.offset, iso.len()), iso);
    let t = read_table(d.as_file()).unwrap().unwrap();
    assert_eq!(t.entries()[2].type_guid_or_id, "0x83");
    if let Some(label) = blkid_label_at(d.path(), r.offset) {
        assert_eq!(label, "config-2");
    }
}

#[test]
fn existing_partition_named_config_2_is_reused() {
    let d = disk("gpt-config2", 64 * MIB);
    let f = d.as_file();
    let before = read_table(f).unwrap().unwrap();
    let p3 = before.entries()[2].clone();
    assert_eq!(p3.name.as_deref(), Some("config-2"));
    // A marker right after the partition must survive the zeroing.
    f.write_all_at(b"MARK", p3.end()).unwrap();
    let iso = recorded_iso();

    let r = write_config_drive(d.path(), &iso).unwrap();

    assert!(!r.created);
    assert_eq!(
        (r.partition_number, r.offset, r.size),
        (3, p3.start, p3.size)
    );
    assert_eq!(read_at(f, r.offset, iso.len()), iso);
    assert_eq!(read_at(f, p3.end(), 4), b"MARK");
    let after = read_table(f).unwrap().unwrap();
    assert_eq!(
        after.entries(),
        before.entries(),
        "no partition added or changed"
    );
}

#[test]
fn existing_iso_labelled_config_2_is_reused() {
    // Partition 3 has no GPT name; only the ISO inside says config-2 (what lsblk shows IPA).
    let d = disk("gpt-isolabel", 64 * MIB);
    let before = read_table(d.as_file()).unwrap().unwrap();
    assert_eq!(before.entries()[2].name, None);
    let r = write_config_drive(d.path(), &recorded_iso()).unwrap();
    assert!(!r.created);
    assert_eq!(r.partition_number, 3);
    assert_eq!(read_table(d.as_file()).unwrap().unwrap().entries().len(), 3);
}

#[test]
fn existing_fat_labelled_config_2_is_reused() {
    // mkfs.fat -n CONFIG-2: IPA compares labels case-insensitively.
    let d = disk("mbr-vfat", 64 * MIB);
    let iso = recorded_iso();
    let r = write_config_drive(d.path(), &iso).unwrap();
    assert!(!r.created);
    assert_eq!((r.partition_number, r.offset), (2, 9 * MIB));
    assert_eq!(read_at(d.as_file(), r.offset, iso.len()), iso);
}

#[test]
fn two_config_2_partitions_are_refused() {
    let d = disk("gpt-config2", 64 * MIB);
    let f = d.as_file();
    let p2 = read_table(f).unwrap().unwrap().entries()[1].clone();
    f.write_all_at(&recorded_iso(), p2.start).unwrap();
    let err = write_config_drive(d.path(), &recorded_iso()).unwrap_err();
    match &err {
        ConfigDriveError::Ambiguous { partitions, .. } => assert_eq!(partitions, &[2, 3]),
        e => panic!("{e}"),
    }
}

#[test]
fn existing_partition_too_small_is_refused() {
    let d = disk("gpt-config2", 64 * MIB);
    let mut iso = recorded_iso();
    iso.resize(3 * MIB as usize, 0); // The partition has 2 MiB.
    let err = write_config_drive(d.path(), &iso).unwrap_err();
    match err {
        ConfigDriveError::ExistingTooSmall {
            number,
            size,
            needed,
            ..
        } => assert_eq!((number, size, needed), (3, 2 * MIB, 3 * MIB)),
        e => panic!("{e}"),
    }
}

#[test]
fn falls_back_to_a_smaller_partition_when_64_mib_do_not_fit() {
    // 4 MiB beyond the image: room for the 386 KiB ISO, not for 64 MiB.
    let d = disk("gpt", 20 * MIB);
    let iso = recorded_iso();
    let r = write_config_drive(d.path(), &iso).unwrap();
    assert!(r.created);
    assert_eq!(r.size, MIB);
    assert_eq!(read_at(d.as_file(), r.offset, iso.len()), iso);
    sgdisk_verify(d.path());
}

#[test]
fn a_disk_without_partition_table_is_refused_untouched() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(64 * MIB).unwrap();
    let err = write_config_drive(f.path(), &recorded_iso()).unwrap_err();
    assert!(
        matches!(err, ConfigDriveError::NoPartitionTable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no partition table"), "{err}");
    let bytes = std::fs::read(f.path()).unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
}

#[test]
fn a_full_mbr_is_refused() {
    let d = disk("mbr-full", 64 * MIB);
    let err = write_config_drive(d.path(), &recorded_iso()).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigDriveError::Partition {
                source: PartitionError::NoFreeSlot { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("all 4 entries are in use"),
        "{err}"
    );
}

#[test]
fn empty_and_oversized_isos_are_refused() {
    let d = disk("gpt", 100 * MIB);
    assert!(matches!(
        write_config_drive(d.path(), &[]),
        Err(ConfigDriveError::Empty)
    ));
    let big = vec![0u8; 64 * MIB as usize + 1];
    assert!(matches!(
        write_config_drive(d.path(), &big),
        Err(ConfigDriveError::TooLarge { .. })
    ));
    // Nothing was done to the disk: its backup GPT is still where the image put it.
    assert_eq!(
        raw_gpt_header(d.as_file(), 1).alternate_lba,
        16 * MIB / 512 - 1
    );
}

#[test]
fn a_missing_device_is_a_clear_error() {
    let err = write_config_drive(std::path::Path::new("/nonexistent/disk"), b"x").unwrap_err();
    assert!(matches!(err, ConfigDriveError::Open { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/disk"), "{err}");
}
