//! Cleaning on real loop devices (root): real signatures made by the real
//! tools, checked with `blkid -p` before and after, and byte comparisons of
//! the backing files. Without root/loop devices these tests skip loudly,
//! and fail when `CI` is set.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use common::loopdev::{blkid_types, root_facility, run, run_env, tool, Backing, Loop, MIB};
use ferric_hardware::{DeviceFilter, Managers, Operation, Progress, StepContext, StepError};
use serde_json::{json, Value};

/// Runs a step through the generic manager on exactly `devices`.
fn step(name: &str, node: &Value, devices: &[PathBuf]) -> Result<Value, StepError> {
    let root = Path::new("/");
    let managers = Managers::generic(root);
    let ports = json!([]);
    let ctx = StepContext::new(root, node, &ports, DeviceFilter::only(devices));
    managers.execute_step(&json!({"step": name, "interface": "deploy"}), &ctx)
}

fn erase_node(iterations: u64, zeroize: bool, concurrency: u64) -> Value {
    json!({"uuid": "deac3149-028a-46ae-9ba7-d09dcef7d201", "driver_internal_info": {
        "agent_erase_devices_iterations": iterations,
        "agent_erase_devices_zeroize": zeroize,
        "agent_enable_nvme_secure_erase": true,
        "agent_enable_ata_secure_erase": true,
        "agent_continue_if_secure_erase_failed": false,
        "disk_erasure_concurrency": concurrency,
        "agent_erase_skip_read_only": false}})
}

// ---- md superblocks (no md driver in this test kernel, so mdadm --create
// cannot run; the superblocks are written as mdadm writes them and blkid
// must recognise them before the wipe) ----

const MD_MAGIC: u32 = 0xa92b_4efc;

/// md 0.90: at the end, `(size & !64K) - 64K` (md_p.h MD_NEW_SIZE_SECTORS).
fn md090(len: u64) -> (u64, Vec<u8>) {
    let mut sb = vec![0u8; 4096];
    sb[0..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
    sb[8..12].copy_from_slice(&90u32.to_le_bytes()); // minor_version
    sb[20..24].copy_from_slice(&0x1234_5678u32.to_le_bytes()); // set_uuid0
    sb[28..32].copy_from_slice(&1u32.to_le_bytes()); // level 1
    sb[40..44].copy_from_slice(&2u32.to_le_bytes()); // raid_disks
    sb[52..64].copy_from_slice(&[0x9a; 12]); // set_uuid1..3
    ((len & !(65_536 - 1)) - 65_536, sb)
}

/// md 1.x superblock at `off` (bytes into the member) with mdadm's checksum.
fn md1(off: u64, len: u64) -> Vec<u8> {
    let mut sb = vec![0u8; 4096];
    let put32 =
        |sb: &mut Vec<u8>, at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |sb: &mut Vec<u8>, at: usize, v: u64| sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut sb, 0, MD_MAGIC);
    put32(&mut sb, 4, 1); // major_version
    sb[16..32].copy_from_slice(&[0x5c; 16]); // set_uuid
    sb[32..38].copy_from_slice(b"ferric");
    put32(&mut sb, 72, 1); // level
    put32(&mut sb, 92, 2); // raid_disks
    put64(&mut sb, 128, if off == 0 || off == 4096 { 2048 } else { 0 }); // data_offset
    put64(&mut sb, 136, len / 512 - 4096); // data_size
    put64(&mut sb, 144, off / 512); // super_offset
    sb[168..184].copy_from_slice(&[0x7e; 16]); // device_uuid
    put32(&mut sb, 220, 2); // max_dev
                            // dev_roles[0] = 0, dev_roles[1] = 0xffff (missing)
    sb[258..260].copy_from_slice(&0xffffu16.to_le_bytes());
    // mdadm calc_sb_1_csum: 32-bit LE words over 256 + 2*max_dev bytes.
    let size = 256 + 2 * 2;
    let mut sum: u64 = 0;
    let mut i = 0;
    while i + 4 <= size {
        sum += u32::from_le_bytes(sb[i..i + 4].try_into().unwrap()) as u64;
        i += 4;
    }
    if size - i == 2 {
        sum += u16::from_le_bytes(sb[i..i + 2].try_into().unwrap()) as u64;
    }
    let csum = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    put32(&mut sb, 216, csum);
    sb
}

/// md 1.0: 8-12 KiB before the end, 4 KiB aligned.
fn md10_offset(len: u64) -> u64 {
    ((len / 512 - 16) & !7) * 512
}

#[derive(Debug, Clone, Copy)]
enum Sig {
    Ext4,
    Xfs,
    Swap,
    Vfat,
    Btrfs,
    Lvm,
    Luks2,
    Md12,
    Md090,
    Md10,
    Iso,
}

impl Sig {
    fn blkid_type(self) -> &'static str {
        match self {
            Sig::Ext4 => "ext4",
            Sig::Xfs => "xfs",
            Sig::Swap => "swap",
            Sig::Vfat => "vfat",
            Sig::Btrfs => "btrfs",
            Sig::Lvm => "LVM2_member",
            Sig::Luks2 => "crypto_LUKS",
            Sig::Md12 | Sig::Md090 | Sig::Md10 => "linux_raid_member",
            Sig::Iso => "iso9660",
        }
    }

    fn tool(self) -> Option<&'static str> {
        match self {
            Sig::Ext4 => Some("mkfs.ext4"),
            Sig::Xfs => Some("mkfs.xfs"),
            Sig::Swap => Some("mkswap"),
            Sig::Vfat => Some("mkfs.vfat"),
            Sig::Btrfs => Some("mkfs.btrfs"),
            Sig::Lvm => Some("pvcreate"),
            Sig::Luks2 => Some("cryptsetup"),
            Sig::Iso => Some("genisoimage"),
            Sig::Md12 | Sig::Md090 | Sig::Md10 => None,
        }
    }
}

/// Puts signature `sig` into `[off, off+len)` of the backing file.
fn make_signature(test: &str, b: &Backing, sig: Sig, off: u64, len: u64) -> bool {
    if let Some(t) = sig.tool() {
        if !tool(test, t) {
            return false;
        }
    }
    match sig {
        Sig::Md12 => b.write_at(off + 4096, &md1(4096, len)),
        Sig::Md10 => b.write_at(off + md10_offset(len), &md1(md10_offset(len), len)),
        Sig::Md090 => {
            let (o, sb) = md090(len);
            b.write_at(off + o, &sb);
        }
        Sig::Iso => {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("hello.txt"), b"hello").unwrap();
            let iso = dir.path().join("x.iso");
            run(
                "genisoimage",
                &[
                    "-quiet",
                    "-o",
                    iso.to_str().unwrap(),
                    dir.path().to_str().unwrap(),
                ],
            );
            let data = std::fs::read(&iso).unwrap();
            assert!(data.len() as u64 <= len);
            b.write_at(off, &data);
        }
        _ => {
            let l = Loop::attach_range(b, off, len);
            let d = l.path_str();
            match sig {
                Sig::Ext4 => drop(run("mkfs.ext4", &["-q", "-F", d])),
                // mkfs.xfs refuses filesystems under 300 MB unless it runs
                // under fstests; these variables say so.
                Sig::Xfs => drop(run_env(
                    "mkfs.xfs",
                    &["-f", "-q", d],
                    &[("TEST_DEV", "1"), ("TEST_DIR", "1"), ("QA_CHECK_FS", "1")],
                )),
                Sig::Swap => drop(run("mkswap", &[d])),
                Sig::Vfat => drop(run("mkfs.vfat", &[d])),
                Sig::Btrfs => drop(run("mkfs.btrfs", &["-f", "-q", d])),
                Sig::Lvm => drop(run("pvcreate", &["-ff", "-y", "-q", d])),
                Sig::Luks2 => {
                    let dir = tempfile::tempdir().unwrap();
                    let key = dir.path().join("key");
                    std::fs::write(&key, b"not-a-secret").unwrap();
                    // A 2 MiB metadata area puts the secondary header at
                    // 2 MiB, outside the first MiB the wipe always zeroes.
                    drop(run(
                        "cryptsetup",
                        &[
                            "luksFormat",
                            "-q",
                            "--type",
                            "luks2",
                            "--pbkdf",
                            "pbkdf2",
                            "--pbkdf-force-iterations",
                            "1000",
                            "--luks2-metadata-size",
                            "2048k",
                            "--luks2-keyslots-size",
                            "4096k",
                            "--key-file",
                            key.to_str().unwrap(),
                            d,
                        ],
                    ))
                }
                _ => unreachable!(),
            }
        }
    }
    true
}

/// Asserts that every byte that differs between `before` and `after` lies in
/// `allowed`, and that every allowed range is zero afterwards.
fn assert_only_changed(before: &[u8], after: &[u8], allowed: &[(u64, u64)]) {
    assert_eq!(before.len(), after.len());
    let inside = |i: u64| allowed.iter().any(|(s, l)| i >= *s && i < s + l);
    let mut changed = 0u64;
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            changed += 1;
            assert!(
                inside(i as u64),
                "byte {i} (MiB {}) changed outside the wiped regions",
                i as u64 / MIB
            );
        }
    }
    for (s, l) in allowed {
        let r = &after[*s as usize..(*s + *l) as usize];
        assert!(r.iter().all(|&b| b == 0), "region {s}+{l} is not zero");
    }
    assert!(changed > 0);
}

fn ends(start: u64, len: u64) -> Vec<(u64, u64)> {
    if len <= 2 * MIB {
        vec![(start, len)]
    } else {
        vec![(start, MIB), (start + len - MIB, MIB)]
    }
}

#[test]
fn metadata_wipe_of_a_gpt_disk_removes_every_signature_and_keeps_the_middle() {
    let test = "metadata_wipe_gpt";
    if !root_facility(test) || !tool(test, "sgdisk") {
        return;
    }
    // (first MiB, MiB, signature)
    let layout = [
        (1, 16, Sig::Ext4),
        (17, 32, Sig::Xfs),
        (49, 8, Sig::Swap),
        (57, 16, Sig::Vfat),
        (73, 120, Sig::Btrfs),
        (193, 16, Sig::Lvm),
        (209, 24, Sig::Luks2),
        (233, 8, Sig::Md12),
        (241, 8, Sig::Md090),
        (249, 8, Sig::Md10),
        (257, 16, Sig::Iso),
    ];
    let b = Backing::new(288 * MIB, 0x5A);
    let mut args = vec!["-o".to_string()];
    for (i, (first, len, _)) in layout.iter().enumerate() {
        args.push(format!("-n{}:{}M:+{}M", i + 1, first, len));
    }
    args.push(b.path_str().to_string());
    run(
        "sgdisk",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut made = Vec::new();
    for (first, len, sig) in layout {
        if make_signature(test, &b, sig, first * MIB, len * MIB) {
            made.push((first * MIB, len * MIB, sig));
        }
    }

    let l = Loop::attach(&b);
    assert_eq!(blkid_types(&l.dev, 0, b.size), vec!["gpt"]);
    for (off, len, sig) in &made {
        assert_eq!(
            blkid_types(&l.dev, *off, *len),
            vec![sig.blkid_type()],
            "{sig:?} before the wipe"
        );
    }
    let before = b.read();

    let out = step(
        "erase_devices_metadata",
        &json!({}),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    let summary = out[l.path_str()].as_str().unwrap().to_string();
    assert!(
        summary.contains(&format!("{} partitions", layout.len())),
        "{summary}"
    );

    assert!(blkid_types(&l.dev, 0, b.size).is_empty(), "GPT still found");
    for (off, len, sig) in &made {
        assert!(
            blkid_types(&l.dev, *off, *len).is_empty(),
            "{sig:?} still found after the wipe"
        );
    }
    let after = b.read();
    let mut allowed = ends(0, b.size);
    for (first, len, sig) in layout {
        allowed.extend(ends(first * MIB, len * MIB));
        match sig {
            // btrfs superblock mirror at 64 MiB into the filesystem.
            Sig::Btrfs if made.iter().any(|m| matches!(m.2, Sig::Btrfs)) => {
                allowed.push((first * MIB + 64 * MIB, 4096))
            }
            // LUKS2 secondary header at 2 MiB (the metadata size chosen above).
            Sig::Luks2 if made.iter().any(|m| matches!(m.2, Sig::Luks2)) => {
                allowed.push((first * MIB + 2 * MIB, 4096))
            }
            _ => {}
        }
    }
    assert_only_changed(&before, &after, &allowed);
    // Where no mkfs wrote (or discarded), the original pattern is still
    // there: the middle of the md member and the space after the last partition.
    for mib in [237, 280] {
        let at = (mib * MIB) as usize;
        assert!(
            after[at..at + MIB as usize].iter().all(|&x| x == 0x5A),
            "MiB {mib}"
        );
    }
}

#[test]
fn metadata_wipe_of_an_mbr_disk_with_logical_partitions() {
    let test = "metadata_wipe_mbr";
    if !root_facility(test) || !tool(test, "sfdisk") || !tool(test, "mkfs.ext4") {
        return;
    }
    let b = Backing::new(128 * MIB, 0xC3);
    // Logical partitions are named by number (disk.img5) in sfdisk scripts.
    let script = "label: dos\nstart=2048, size=32768, type=83\nstart=34816, size=200704, type=5\n\
                  disk.img5 : size=32768, type=83\ndisk.img6 : size=32768, type=82\n";
    let mut child = std::process::Command::new("sfdisk")
        .current_dir(b.path.parent().unwrap())
        .args(["-q", "disk.img"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let json: Value = serde_json::from_str(&run("sfdisk", &["-J", b.path_str()])).unwrap();
    let parts: Vec<(u64, u64)> = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    assert_eq!(parts.len(), 4, "{json}");
    let (p1, p5, p6) = (parts[0], parts[2], parts[3]);
    make_signature(test, &b, Sig::Ext4, p1.0, p1.1);
    make_signature(test, &b, Sig::Ext4, p5.0, p5.1);
    let swap = tool(test, "mkswap") && make_signature(test, &b, Sig::Swap, p6.0, p6.1);
    // The EBR of the second logical partition sits in the gap before it.
    let ebr2 = p6.0 - 2048 * 512;
    let mut sector = vec![0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&b.path).unwrap(),
        &mut sector,
        ebr2,
    )
    .unwrap();
    assert_eq!(sector[510..], [0x55, 0xAA], "EBR expected at {ebr2}");

    let l = Loop::attach(&b);
    assert_eq!(blkid_types(&l.dev, 0, b.size), vec!["dos"]);
    assert_eq!(blkid_types(&l.dev, p5.0, p5.1), vec!["ext4"]);
    let before = b.read();
    step(
        "erase_devices_metadata",
        &json!({}),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    let after = b.read();
    assert!(blkid_types(&l.dev, 0, b.size).is_empty());
    for (off, len) in [p1, p5, p6] {
        assert!(
            blkid_types(&l.dev, off, len).is_empty(),
            "signature left at {off}"
        );
    }
    let mut allowed = ends(0, b.size);
    for (off, len) in &parts {
        allowed.extend(ends(*off, *len));
    }
    allowed.push((ebr2, 512));
    assert_only_changed(&before, &after, &allowed);
    let _ = swap;
}

#[test]
fn metadata_wipe_of_a_whole_disk_btrfs_clears_its_mirror_too() {
    let test = "metadata_wipe_whole_btrfs";
    if !root_facility(test) || !tool(test, "mkfs.btrfs") {
        return;
    }
    let b = Backing::new(160 * MIB, 0x11);
    let l = Loop::attach(&b);
    run("mkfs.btrfs", &["-f", "-q", l.path_str()]);
    run("blockdev", &["--flushbufs", l.path_str()]);
    assert_eq!(blkid_types(&l.dev, 0, b.size), vec!["btrfs"]);
    let before = b.read();
    assert_eq!(
        &before[(64 * MIB + 0x40) as usize..(64 * MIB + 0x48) as usize],
        b"_BHRfS_M"
    );
    step(
        "erase_devices_metadata",
        &json!({}),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    assert!(blkid_types(&l.dev, 0, b.size).is_empty());
    let after = b.read();
    let mut allowed = ends(0, b.size);
    allowed.push((64 * MIB, 4096));
    assert_only_changed(&before, &after, &allowed);
}

#[test]
fn metadata_wipe_removes_partitions_the_kernel_shows() {
    let test = "metadata_wipe_kernel_partitions";
    if !root_facility(test) || !tool(test, "sgdisk") || !tool(test, "addpart") {
        return;
    }
    let b = Backing::new(64 * MIB, 0x77);
    run(
        "sgdisk",
        &["-o", "-n1:1M:+20M", "-n2:21M:+20M", b.path_str()],
    );
    make_signature(test, &b, Sig::Ext4, MIB, 20 * MIB);
    make_signature(test, &b, Sig::Vfat, 21 * MIB, 20 * MIB);
    let mut l = Loop::attach(&b);
    l.add_partition(1, MIB, 20 * MIB);
    l.add_partition(2, 21 * MIB, 20 * MIB);
    assert_eq!(l.kernel_partitions().len(), 2);
    let p1 = PathBuf::from(format!("{}p1", l.path_str()));
    assert_eq!(blkid_types(&p1, 0, 20 * MIB), vec!["ext4"]);

    let out = step(
        "erase_devices_metadata",
        &json!({}),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    let summary = out[l.path_str()].as_str().unwrap();
    // The loop device cannot re-scan partitions (no partscan): they are
    // deleted one by one, as partprobe does.
    assert!(summary.contains("2 kernel partitions removed"), "{summary}");
    assert!(l.kernel_partitions().is_empty());
    for off in [MIB, 21 * MIB] {
        assert!(blkid_types(&l.dev, off, 20 * MIB).is_empty());
    }
    assert!(blkid_types(&l.dev, 0, b.size).is_empty());
}

/// Progress events `(device, operation, pass, passes, done, total)`.
type Events = Mutex<Vec<(String, Operation, u32, u32, u64, u64)>>;

fn recorder(events: &Events) -> impl Fn(&Progress<'_>) + Sync + '_ {
    move |p: &Progress<'_>| {
        events.lock().unwrap().push((
            p.device.to_string(),
            p.operation,
            p.pass,
            p.passes,
            p.bytes_done,
            p.bytes_total,
        ))
    }
}

#[test]
fn erase_devices_one_random_pass_and_zeroes_leaves_all_zero() {
    if !root_facility("erase_devices_zero") {
        return;
    }
    let b = Backing::new(64 * MIB, 0xA5);
    let l = Loop::attach(&b);
    let devices = [l.dev.clone()];
    let events = Events::default();
    let progress = recorder(&events);
    let root = Path::new("/");
    let node = erase_node(1, true, 1);
    let ports = json!([]);
    let ctx = StepContext::new(root, &node, &ports, DeviceFilter::only(&devices))
        .with_progress(&progress);
    let out = Managers::generic(root)
        .execute_step(&json!({"step": "erase_devices"}), &ctx)
        .unwrap();
    let what = out[l.path_str()].as_str().unwrap();
    assert!(
        what.starts_with("overwritten: 1 random pass(es) and a zero pass"),
        "{what}"
    );
    assert!(b.read().iter().all(|&x| x == 0), "device is not all zero");

    let ev = events.lock().unwrap();
    for (pass, op) in [(1, Operation::RandomPass), (2, Operation::ZeroPass)] {
        let mine: Vec<_> = ev.iter().filter(|e| e.2 == pass).collect();
        assert!(!mine.is_empty(), "no progress for pass {pass}");
        assert!(mine
            .iter()
            .all(|e| e.0 == l.path_str() && e.1 == op && e.3 == 2 && e.5 == 64 * MIB));
        assert_eq!(mine.first().unwrap().4, 0);
        assert_eq!(mine.last().unwrap().4, 64 * MIB);
        assert!(
            mine.windows(2).all(|w| w[0].4 <= w[1].4),
            "progress went backwards"
        );
    }
}

#[test]
fn erase_devices_without_zeroize_leaves_random_data() {
    if !root_facility("erase_devices_random") {
        return;
    }
    let b = Backing::new(16 * MIB, 0xA5);
    let l = Loop::attach(&b);
    step(
        "erase_devices",
        &erase_node(1, false, 1),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    let data = b.read();
    let pattern = data.iter().filter(|&&x| x == 0xA5).count();
    let zeros = data.iter().filter(|&&x| x == 0).count();
    // Uniform random bytes: about 1/256 of each value.
    assert!(
        pattern < data.len() / 128 && zeros < data.len() / 128,
        "{pattern} {zeros}"
    );
    // No overwrite pass at all is refused rather than reported as an erase.
    let err = step(
        "erase_devices",
        &erase_node(0, false, 1),
        std::slice::from_ref(&l.dev),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no overwrite pass would run"),
        "{err}"
    );
    assert_eq!(b.read(), data);
}

#[test]
fn erase_devices_runs_devices_concurrently_and_erases_all() {
    if !root_facility("erase_devices_concurrency") {
        return;
    }
    let backs: Vec<Backing> = (0..3).map(|i| Backing::new(24 * MIB, 0x30 + i)).collect();
    let loops: Vec<Loop> = backs.iter().map(Loop::attach).collect();
    let devices: Vec<PathBuf> = loops.iter().map(|l| l.dev.clone()).collect();
    let events = Events::default();
    let progress = recorder(&events);
    let root = Path::new("/");
    let node = erase_node(1, true, 3);
    let ports = json!([]);
    let ctx = StepContext::new(root, &node, &ports, DeviceFilter::only(&devices))
        .with_progress(&progress);
    let out = Managers::generic(root)
        .execute_step(&json!({"step": "erase_devices"}), &ctx)
        .unwrap();
    assert_eq!(out.as_object().unwrap().len(), 3);
    for b in &backs {
        assert!(b.read().iter().all(|&x| x == 0));
    }
    let finished: BTreeMap<String, usize> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.2 == 2 && e.4 == e.5)
        .fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.0.clone()).or_default() += 1;
            m
        });
    assert_eq!(finished.len(), 3, "{finished:?}");
}

#[test]
fn a_device_the_guard_refuses_fails_the_step_and_nothing_is_written() {
    if !root_facility("guard_refusal") {
        return;
    }
    let a = Backing::new(8 * MIB, 0x42);
    let bb = Backing::new(8 * MIB, 0x43);
    let la = Loop::attach(&a);
    let lb = Loop::attach(&bb);
    let (a0, b0) = (a.read(), bb.read());
    let devices = [la.dev.clone(), lb.dev.clone()];
    let only_a = la.dev.clone();
    let guard = move |p: &Path| p == only_a;
    let root = Path::new("/");
    let ports = json!([]);
    let node = erase_node(1, true, 2);
    let managers = Managers::generic(root);
    for name in [
        "erase_devices",
        "erase_devices_metadata",
        "erase_devices_express",
    ] {
        let ctx = StepContext::new(
            root,
            &node,
            &ports,
            DeviceFilter::only(&devices).with_guard(&guard),
        );
        let err = managers
            .execute_step(&json!({"step": name}), &ctx)
            .unwrap_err();
        assert_eq!(err.ipa_type(), "ProtectedDeviceError");
        let msg = err.to_string();
        assert!(msg.contains("Nothing was written"), "{msg}");
        match err {
            StepError::ProtectedDevice { devices, .. } => {
                assert_eq!(devices, vec![lb.path_str().to_string()])
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            a.read(),
            a0,
            "{name} touched the allowed device of a refused step"
        );
        assert_eq!(bb.read(), b0, "{name} touched the refused device");
    }
    // Listing only A: B is never considered and stays byte-identical.
    step(
        "erase_devices",
        &erase_node(0, true, 2),
        std::slice::from_ref(&la.dev),
    )
    .unwrap();
    assert!(a.read().iter().all(|&x| x == 0));
    assert_eq!(bb.read(), b0);
}

#[test]
fn read_only_devices_fail_or_are_skipped_as_the_conductor_says() {
    if !root_facility("read_only") {
        return;
    }
    let b = Backing::new(8 * MIB, 0x99);
    let l = Loop::attach_read_only(&b);
    let before = b.read();
    let err = step(
        "erase_devices",
        &erase_node(1, true, 1),
        std::slice::from_ref(&l.dev),
    )
    .unwrap_err();
    assert_eq!(err.ipa_type(), "BlockDeviceEraseError");
    assert!(err.to_string().contains("flagged read-only"), "{err}");
    let mut node = erase_node(1, true, 1);
    node["driver_internal_info"]["agent_erase_skip_read_only"] = json!(true);
    let out = step("erase_devices", &node, std::slice::from_ref(&l.dev)).unwrap();
    assert_eq!(out[l.path_str()], "skipped: read-only device");
    let out = step(
        "erase_devices_metadata",
        &json!({}),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    assert_eq!(out[l.path_str()], "skipped: read-only device");
    assert_eq!(b.read(), before);
}

#[test]
fn express_erase_wipes_metadata_and_discards() {
    let test = "express";
    if !root_facility(test) || !tool(test, "mkfs.ext4") {
        return;
    }
    let b = Backing::new(32 * MIB, 0x66);
    let l = Loop::attach(&b);
    run("mkfs.ext4", &["-q", "-F", l.path_str()]);
    run("blockdev", &["--flushbufs", l.path_str()]);
    assert_eq!(blkid_types(&l.dev, 0, b.size), vec!["ext4"]);
    let out = step(
        "erase_devices_express",
        &erase_node(1, true, 1),
        std::slice::from_ref(&l.dev),
    )
    .unwrap();
    let what = out[l.path_str()].as_str().unwrap();
    assert!(what.starts_with("metadata wiped"), "{what}");
    assert!(blkid_types(&l.dev, 0, b.size).is_empty());
    // Loop devices implement discard by punching holes in the backing file.
    assert!(
        what.contains(&format!("{} bytes discarded", 32 * MIB)),
        "{what}"
    );
    assert!(b.read().iter().all(|&x| x == 0));
}

#[test]
fn cancellation_stops_an_erase() {
    if !root_facility("cancel") {
        return;
    }
    let b = Backing::new(64 * MIB, 0x12);
    let l = Loop::attach(&b);
    let devices = [l.dev.clone()];
    let cancel = AtomicBool::new(false);
    let progress = |_: &Progress<'_>| cancel.store(true, Ordering::SeqCst);
    let root = Path::new("/");
    let node = erase_node(3, true, 1);
    let ports = json!([]);
    let ctx = StepContext::new(root, &node, &ports, DeviceFilter::only(&devices))
        .with_progress(&progress)
        .with_cancel(&cancel);
    let err = Managers::generic(root)
        .execute_step(&json!({"step": "erase_devices"}), &ctx)
        .unwrap_err();
    assert!(matches!(err, StepError::Cancelled), "{err}");
}
