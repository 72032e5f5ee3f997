//! Deterministic fixtures: whole-disk test images (MBR or GPT, built here byte by byte so no
//! host tool is needed) and the config drive Ironic built in recording 01.
//!
//! `fixtures/configdrive.b64` is `params.step.args.configdrive` of the
//! `deploy.execute_deploy_step` request in `shared/recordings/01-deploy.jsonl` (base64 of a
//! gzipped ISO 9660 labelled `config-2`, 395264 bytes), extracted with:
//! `python3 -c 'import json;L=[json.loads(l) for l in open("01-deploy.jsonl")];
//! print(L[5]["body"]["params"]["step"]["args"]["configdrive"])'`.

use std::io::Read;

use base64::Engine as _;
use sha2::Digest;

/// The MBR disk signature of the recordings' image (`root uuid` `0x1badb002`), at offset 440.
pub const MBR_DISK_SIGNATURE: u32 = 0x1bad_b002;
/// Logical sector size assumed throughout (loop devices default to 512).
pub const SECTOR: u64 = 512;
/// Linux filesystem data partition type GUID.
pub const LINUX_FS_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Disk GUID of GPT test images.
pub const TEST_DISK_GUID: &str = "1BADB002-0000-4000-8000-00000000F00D";
/// Unique GUID of the root partition of GPT test images.
pub const TEST_ROOT_PART_GUID: &str = "1BADB002-0001-4000-8000-00000000F00D";

/// Partition table of a test image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// DOS/MBR, disk signature [`MBR_DISK_SIGNATURE`], one bootable Linux partition.
    Mbr,
    /// GPT sized exactly to the image (so the backup header is at the image's end, not the
    /// disk's: the agent must relocate it).
    Gpt,
}

/// A generated whole-disk image.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// The image bytes.
    pub bytes: Vec<u8>,
    /// Its partition table.
    pub kind: TableKind,
    /// Lower-case hex sha256.
    pub sha256: String,
}

impl TestImage {
    /// Lower-case hex sha512 (computed on demand: hashing is slow in debug builds).
    pub fn sha512(&self) -> String {
        sha512_hex(&self.bytes)
    }

    /// Lower-case hex md5 (computed on demand).
    pub fn md5(&self) -> String {
        md5_hex(&self.bytes)
    }
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// Lower-case hex sha512 of `data`.
pub fn sha512_hex(data: &[u8]) -> String {
    hex(&sha2::Sha512::digest(data))
}

/// Lower-case hex md5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&md5::Md5::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// xorshift64*: tiny deterministic generator so fixtures never change between runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Deterministic payload: 64 KiB blocks that are random, zero (so sparse/zero-skipping
/// writers are exercised) or a repeated byte.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut rng = Rng(seed | 1);
    for (i, block) in out.chunks_mut(64 * 1024).enumerate() {
        match rng.next() % 4 {
            0 => {} // zeros
            1 => block.fill((i % 251) as u8 | 1),
            _ => {
                for w in block.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    w.copy_from_slice(&v[..w.len()]);
                }
            }
        }
    }
    out
}

/// Builds a whole-disk image of `size` bytes (a multiple of 1 MiB, at least 4 MiB) with one
/// partition starting at 1 MiB filled by [`pattern`].
pub fn test_image(kind: TableKind, size: usize, seed: u64) -> TestImage {
    assert!(
        size >= 4 << 20 && size & ((1 << 20) - 1) == 0,
        "size must be n MiB, n >= 4"
    );
    let mut img = pattern(size, seed);
    let sectors = (size as u64) / SECTOR;
    img[..1 << 20].fill(0);
    match kind {
        TableKind::Mbr => {
            img[440..444].copy_from_slice(&MBR_DISK_SIGNATURE.to_le_bytes());
            write_mbr_entry(&mut img, 0, 0x80, 0x83, 2048, (sectors - 2048) as u32);
            img[510] = 0x55;
            img[511] = 0xaa;
        }
        TableKind::Gpt => {
            let last = sectors - 1;
            let last_usable = last - 33;
            // Partition ends 1 MiB-aligned below the last usable LBA.
            let part_last = (last_usable + 1) / 2048 * 2048 - 1;
            img[(last_usable as usize + 1) * 512..].fill(0);
            write_protective_mbr(&mut img, sectors);
            let mut entries = vec![0u8; 128 * 128];
            write_gpt_entry(
                &mut entries[..128],
                LINUX_FS_GUID,
                TEST_ROOT_PART_GUID,
                2048,
                part_last,
                "root",
            );
            write_gpt(&mut img, &entries, TEST_DISK_GUID, sectors);
        }
    }
    TestImage {
        sha256: sha256_hex(&img),
        bytes: img,
        kind,
    }
}

fn write_mbr_entry(img: &mut [u8], idx: usize, status: u8, ptype: u8, start: u32, count: u32) {
    let e = &mut img[446 + idx * 16..446 + (idx + 1) * 16];
    e.fill(0);
    e[0] = status;
    // CHS fields: "use LBA" markers, as modern tools write for large disks.
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = ptype;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
}

fn write_protective_mbr(img: &mut [u8], sectors: u64) {
    img[..512].fill(0);
    let count = (sectors - 1).min(u32::MAX as u64) as u32;
    write_mbr_entry(img, 0, 0, 0xee, 1, count);
    img[1..4].fill(0);
    img[446 + 1..446 + 4].copy_from_slice(&[0, 2, 0]);
    img[510] = 0x55;
    img[511] = 0xaa;
}

/// Encodes a textual GUID in GPT's mixed-endian byte order.
pub fn guid_bytes(s: &str) -> [u8; 16] {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    assert_eq!(h.len(), 32, "bad GUID {s}");
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex GUID"))
        .collect();
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..16].copy_from_slice(&b[8..16]);
    out
}

/// Decodes GPT's mixed-endian GUID bytes to upper-case text.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn write_gpt_entry(e: &mut [u8], type_guid: &str, uniq: &str, first: u64, last: u64, name: &str) {
    e[0..16].copy_from_slice(&guid_bytes(type_guid));
    e[16..32].copy_from_slice(&guid_bytes(uniq));
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, u) in name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
}

fn gpt_header(
    my: u64,
    alt: u64,
    entries_lba: u64,
    last_usable: u64,
    disk: &str,
    crc: u32,
) -> [u8; 92] {
    let mut h = [0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&guid_bytes(disk));
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&hcrc.to_le_bytes());
    h
}

fn write_gpt(img: &mut [u8], entries: &[u8], disk: &str, sectors: u64) {
    let last = sectors - 1;
    let last_usable = last - 33;
    let crc = crc32fast::hash(entries);
    let primary = gpt_header(1, last, 2, last_usable, disk, crc);
    let backup = gpt_header(last, 1, last - 32, last_usable, disk, crc);
    let s = SECTOR as usize;
    img[s..2 * s].fill(0);
    img[s..s + 92].copy_from_slice(&primary);
    img[2 * s..2 * s + entries.len()].copy_from_slice(entries);
    let be = (last as usize - 32) * s;
    img[be..be + entries.len()].copy_from_slice(entries);
    let bh = last as usize * s;
    img[bh..bh + s].fill(0);
    img[bh..bh + 92].copy_from_slice(&backup);
}

/// The recorded config drive, base64 of a gzipped ISO (as Ironic sends it).
pub fn configdrive_b64() -> &'static str {
    include_str!("../fixtures/configdrive.b64").trim()
}

/// The recorded config drive ISO (decoded and gunzipped).
pub fn configdrive_iso() -> Vec<u8> {
    let gz = base64::engine::general_purpose::STANDARD
        .decode(configdrive_b64())
        .expect("fixtures/configdrive.b64 is base64");
    let mut iso = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut iso)
        .expect("fixtures/configdrive.b64 is gzip");
    iso
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unique GUID of the ESP of [`uefi_disk_image`].
pub const ESP_UUID: &str = "5e8a6f1c-3b2d-4c8e-9f10-a1b2c3d4e5f6";
const ROOT_UUID: &str = "0c6d8e3a-1f2b-4a5c-8d7e-112233445566";

/// A 40 MiB GPT disk image made with sfdisk, mkfs.vfat and mtools (in `dir`): partition 1, a
/// 16 MiB ESP at 1 MiB holding shim's layout (EFI/debian with `shim` as shimx64.efi,
/// grubx64.efi and a UTF-16 BOOTX64.CSV naming shimx64.efi "debian"; EFI/BOOT/BOOTX64.EFI),
/// then a 20 MiB Linux partition.
pub fn uefi_disk_image(dir: &std::path::Path, shim: &[u8]) -> Vec<u8> {
    use std::process::Command;
    let img = dir.join("uefi.img");
    std::fs::write(&img, vec![0u8; 40 << 20]).unwrap();
    let table = format!(
        "label: gpt\n\
         start=2048, size=32768, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_UUID}\n\
         start=34816, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={ROOT_UUID}\n"
    );
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    // 16 MiB at byte offset 1 MiB (mkfs.vfat's --offset is in 512-byte sectors).
    run(Command::new("mkfs.vfat")
        .args(["-n", "ESP", "--offset", "2048"])
        .arg(&img)
        .arg("16384"));
    let target = format!("{}@@1M", img.display());
    run(Command::new("mmd").args(["-i", &target, "::/EFI", "::/EFI/debian", "::/EFI/BOOT"]));
    let mut csv = vec![0xff, 0xfe];
    csv.extend(
        "shimx64.efi,debian,,This is the boot entry for debian\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes),
    );
    for (name, content) in [
        ("shimx64.efi", shim.to_vec()),
        ("grubx64.efi", b"MZ grub".to_vec()),
        ("BOOTX64.CSV", csv),
        ("fallback.efi", b"MZ fallback".to_vec()),
    ] {
        let local = dir.join(name);
        std::fs::write(&local, content).unwrap();
        let dest = if name == "fallback.efi" {
            "::/EFI/BOOT/BOOTX64.EFI".to_string()
        } else {
            format!("::/EFI/debian/{name}")
        };
        run(Command::new("mcopy")
            .args(["-i", &target])
            .arg(&local)
            .arg(dest));
    }
    std::fs::read(&img).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_configdrive_is_a_config_2_iso() {
        let iso = configdrive_iso();
        assert_eq!(iso.len(), 395_264);
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        assert_eq!(&iso[0x8028..0x8030], b"config-2");
    }

    #[test]
    fn images_are_deterministic_and_tabled() {
        let a = test_image(TableKind::Mbr, 8 << 20, 7);
        let b = test_image(TableKind::Mbr, 8 << 20, 7);
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(&a.bytes[440..444], &[0x02, 0xb0, 0xad, 0x1b]);
        assert_eq!(&a.bytes[510..512], &[0x55, 0xaa]);
        assert!(a.bytes[1 << 20..].iter().any(|x| *x != 0));
        assert!(a.bytes[1 << 20..]
            .chunks(64 * 1024)
            .any(|c| c.iter().all(|x| *x == 0)));
        let g = test_image(TableKind::Gpt, 8 << 20, 7);
        assert_eq!(&g.bytes[512..520], b"EFI PART");
        assert_eq!(&g.bytes[(8 << 20) - 512..(8 << 20) - 504], b"EFI PART");
        assert_ne!(a.sha256, g.sha256);
    }

    #[test]
    fn guid_round_trips() {
        assert_eq!(guid_string(&guid_bytes(LINUX_FS_GUID)), LINUX_FS_GUID);
        assert_eq!(guid_bytes(LINUX_FS_GUID)[0], 0xaf);
    }
}
