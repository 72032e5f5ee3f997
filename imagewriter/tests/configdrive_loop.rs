//! `write_config_drive` on real block devices: loop devices over image files, 512-byte and
//! 4096-byte sectors. This kernel does not parse partition tables of loop devices, so these
//! tests exercise the BLKPG path; a ramdisk kernel that does exercises BLKRRPART.
//!
//! Needs root and losetup. In CI (`CI` set) a missing facility fails the test; elsewhere the
//! test says loudly that it is skipped.

#[path = "fixtures/helpers.rs"]
mod helpers;

use ferric_imagewriter::configdrive::write_config_drive;
use ferric_imagewriter::partition::{read_table, PartitionTable};
use ferric_imagewriter::sys;
use helpers::*;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device this test attached; partitions it gained and the device itself are removed
/// on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// Attach `file` (optionally with a logical sector size), or `None` when this machine
    /// cannot (not root, no losetup) and we are not in CI.
    fn attach(file: &Path, sector_size: Option<u32>) -> Option<Loop> {
        let mut cmd = Command::new("losetup");
        if let Some(s) = sector_size {
            cmd.arg("-b").arg(s.to_string());
        }
        let out = cmd.args(["-f", "--show"]).arg(file).output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                Some(Loop { dev: dev.into() })
            }
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                if std::env::var_os("CI").is_some() {
                    panic!("CI is set but losetup failed: {why}");
                }
                eprintln!("WARNING: SKIPPING loop-device test (needs root and losetup): {why}");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // This kernel keeps BLKPG-added partitions after LOOP_CLR_FD: remove them first.
        if let Ok(f) = File::open(&self.dev) {
            for n in 1..=8 {
                let _ = sys::delete_partition(&f, n);
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// `blkid -o value -s LABEL <node>`, the check an operator would run. `None` (said loudly)
/// when blkid is not installed.
fn blkid_label(node: &Path) -> Option<String> {
    if !have_tool("blkid") {
        return None;
    }
    let out = Command::new("blkid")
        .args(["-o", "value", "-s", "LABEL"])
        .arg(node)
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn read_node(node: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(node).unwrap().read_exact(&mut buf).unwrap();
    buf
}

/// Write the recorded config drive onto `lo` twice (create, then reuse) and check what the
/// kernel, blkid and the partition node show.
fn create_then_reuse(lo: &Loop, expected_number: u32) {
    init_logging();
    let iso = recorded_iso();
    let r = write_config_drive(&lo.dev, &iso).unwrap();
    assert!(r.created);
    assert_eq!(r.partition_number, expected_number);
    let node = r.partition_device.clone().expect("partition node");
    assert_eq!(
        node,
        PathBuf::from(format!("{}p{expected_number}", lo.dev.display()))
    );
    // The kernel's view matches the table.
    let sysfs = format!(
        "/sys/class/block/{}/",
        node.file_name().unwrap().to_string_lossy()
    );
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(format!("{sysfs}{f}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        (read("start") * 512, read("size") * 512),
        (r.offset, r.size)
    );
    // Read through the partition node: the bytes written through the whole disk.
    assert_eq!(read_node(&node, iso.len()), iso);
    if let Some(label) = blkid_label(&node) {
        assert_eq!(label, "config-2");
    }

    // A redeploy: the partition is found by label and reused, the node is still right.
    let mut iso2 = iso.clone();
    let marker = b"second deploy";
    iso2[0x9000..0x9000 + marker.len()].copy_from_slice(marker);
    let again = write_config_drive(&lo.dev, &iso2).unwrap();
    assert!(!again.created);
    assert_eq!(
        (again.partition_number, again.offset),
        (r.partition_number, r.offset)
    );
    assert_eq!(again.partition_device.as_deref(), Some(node.as_path()));
    assert_eq!(read_node(&node, iso2.len()), iso2, "no stale cached pages");
    if let Some(label) = blkid_label(&node) {
        assert_eq!(label, "config-2");
    }
}

#[test]
fn gpt_loop_device_gets_a_config_2_partition_blkid_sees() {
    let d = disk("gpt", 200 * MIB);
    let Some(lo) = Loop::attach(d.path(), None) else {
        return;
    };
    create_then_reuse(&lo, 3);
    drop(lo);
    sgdisk_verify(d.path());
}

#[test]
fn mbr_loop_device_gets_a_config_2_partition_blkid_sees() {
    let d = disk("mbr", 200 * MIB);
    let Some(lo) = Loop::attach(d.path(), None) else {
        return;
    };
    create_then_reuse(&lo, 3);
}

#[test]
fn gpt_on_a_4k_sector_loop_device() {
    let d = disk("gpt-4k", 200 * MIB);
    let Some(lo) = Loop::attach(d.path(), Some(4096)) else {
        return;
    };
    // The table reads with the device's 4096-byte sectors, as sfdisk read it.
    let json = sfdisk_json("gpt-4k");
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    let f = File::open(&lo.dev).unwrap();
    match read_table(&f).unwrap().unwrap() {
        PartitionTable::Gpt {
            sector_size,
            entries,
            disk_guid,
            ..
        } => {
            assert_eq!(sector_size, 4096);
            assert_eq!(disk_guid, "41111111-2222-4333-8444-555555555555");
            assert_eq!(entries.len(), parts.len());
            for (e, p) in entries.iter().zip(parts) {
                assert_eq!(e.start, p["start"].as_u64().unwrap() * 4096);
                assert_eq!(e.size, p["size"].as_u64().unwrap() * 4096);
            }
        }
        t => panic!("{t:?}"),
    }
    drop(f);
    create_then_reuse(&lo, 3);
    if have_tool("sgdisk") {
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(&lo.dev)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
    }
}

#[test]
fn stale_kernel_partitions_are_replaced_by_the_tables() {
    let d = disk("gpt", 200 * MIB);
    let Some(lo) = Loop::attach(d.path(), None) else {
        return;
    };
    // What the kernel may still believe from the disk's previous contents: a partition 2
    // spanning the space where the config drive goes (BLKPG refuses overlapping partitions).
    let f = File::open(&lo.dev).unwrap();
    sys::add_partition(&f, 2, 50 * MIB, 150 * MIB).unwrap();
    drop(f);
    let iso = recorded_iso();
    let r = write_config_drive(&lo.dev, &iso).unwrap();
    let node = r.partition_device.expect("partition node");
    assert_eq!(read_node(&node, iso.len()), iso);
    // Every partition of the table is now known to the kernel, with the table's geometry.
    let table = read_table(&File::open(&lo.dev).unwrap()).unwrap().unwrap();
    for e in table.entries() {
        let name = format!(
            "{}p{}",
            lo.dev.file_name().unwrap().to_string_lossy(),
            e.number
        );
        let start: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/start"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(start * 512, e.start, "{name}");
    }
}
