//! End to end: a UEFI whole-disk deploy driven by the fake conductor (which sends
//! `image.install_bootloader` in UEFI mode, as Ironic does), with the agent's UEFI variables in
//! a directory (`--efivars-dir`) instead of this machine's NVRAM. The image's EFI system
//! partition is made by sfdisk, mkfs.vfat and mtools, so the loader discovery is checked
//! against a FAT written by other tools, and the boot entry is decoded here field by field.
//! Needs root and loop devices: FAILS under `CI` when they are missing, skips loudly elsewhere.

use std::path::Path;
use std::time::Duration;

use ferric_tests::conductor::{Conductor, DeployPlan, Plan};
use ferric_tests::e2e::{report, spawn_agent_for_ironic, RunningAgent};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig};
use ferric_tests::fixtures::{sha256_hex, test_image, uefi_disk_image, TableKind, ESP_UUID};
use ferric_tests::image_server::ImageServer;
use ferric_tests::loopdev::LoopDevice;

const SETTLE: Duration = Duration::from_secs(55);
const MIB: u64 = 1 << 20;
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

struct Run {
    agent: RunningAgent,
    conductor: Conductor,
    ironic: FakeIronic,
    images: ImageServer,
    _dev: LoopDevice,
}

impl Run {
    fn report(&self) -> String {
        report(
            Some(&self.agent),
            Some(&self.ironic),
            Some(&self.conductor),
            Some(&self.images),
        )
    }
}

fn start(test: &str, image: &[u8], efivars: &Path) -> Option<Run> {
    let dev = LoopDevice::create_or_skip(test, 64 * MIB)?;
    let images = ImageServer::start().expect("image server");
    images.add("disk.raw", image.to_vec());
    let ironic = FakeIronic::start(FakeIronicConfig::default()).expect("fake Ironic");
    let sha = sha256_hex(image);
    let url = images.url("disk.raw");
    let conductor = Conductor::start(
        &ironic,
        Plan::Deploy(DeployPlan::whole_disk_raw(&url, &sha, None)),
    );
    let vars = efivars.to_string_lossy().into_owned();
    let agent = spawn_agent_for_ironic(&ironic, dev.path(), "", &["--efivars-dir", &vars]);
    Some(Run {
        agent,
        conductor,
        ironic,
        images,
        _dev: dev,
    })
}

fn var_path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}-{GLOBAL}"))
}

/// Writes a variable as efivarfs stores it: attribute word, then data.
fn put_var(dir: &Path, name: &str, data: &[u8]) {
    let mut b = 7u32.to_le_bytes().to_vec();
    b.extend_from_slice(data);
    std::fs::write(var_path(dir, name), b).unwrap();
}

fn utf16(b: &[u8]) -> (String, usize) {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    (String::from_utf16(&units).unwrap(), 2 * units.len() + 2)
}

/// A firmware's PXE entry, as it would be before the deploy (label and a dummy path).
fn pxe_entry() -> Vec<u8> {
    let mut o = 1u32.to_le_bytes().to_vec();
    let dp = [0x7fu8, 0xff, 4, 0];
    o.extend_from_slice(&(dp.len() as u16).to_le_bytes());
    o.extend(
        "UEFI PXEv4"
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes),
    );
    o.extend_from_slice(&dp);
    o
}

#[test]
fn uefi_deploy_adds_a_boot_entry_for_the_shim_loader_first_in_boot_order() {
    let tmp = tempfile::tempdir().unwrap();
    let efivars = tmp.path().join("efivars");
    std::fs::create_dir(&efivars).unwrap();
    put_var(&efivars, "Boot0000", &pxe_entry());
    put_var(&efivars, "BootOrder", &[0, 0]);
    let image = uefi_disk_image(tmp.path(), b"MZ shim");
    let Some(r) = start("e2e_uefi::boot_entry", &image, &efivars) else {
        return;
    };
    let st = match r.conductor.wait_until_settled(SETTLE) {
        Ok(st) => st,
        Err(st) => panic!("not settled: {:?}{}", st.phase, r.report()),
    };
    assert_eq!(st.provision_state, "active", "{}", r.report());
    assert_eq!(
        st.sent("image.install_bootloader").len(),
        1,
        "{}",
        r.report()
    );

    // BootOrder: the new entry first, the PXE entry kept after it.
    let order = std::fs::read(var_path(&efivars, "BootOrder")).unwrap();
    assert_eq!(order, [7, 0, 0, 0, 1, 0, 0, 0], "{}", r.report());
    let raw = std::fs::read(var_path(&efivars, "Boot0001")).unwrap();
    assert_eq!(&raw[..4], &[7, 0, 0, 0], "attributes NV|BS|RT");
    let opt = &raw[4..];
    assert_eq!(&opt[..4], &[1, 0, 0, 0], "LOAD_OPTION_ACTIVE");
    let dp_len = u16::from_le_bytes([opt[4], opt[5]]) as usize;
    let (label, label_bytes) = utf16(&opt[6..]);
    assert_eq!(label, "debian", "the CSV's label");
    let dp = &opt[6 + label_bytes..];
    assert_eq!(dp.len(), dp_len);
    // HD(1, GPT, ESP_UUID, 2048, 32768).
    assert_eq!(&dp[..4], &[4, 1, 42, 0]);
    assert_eq!(u32::from_le_bytes(dp[4..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(dp[8..16].try_into().unwrap()), 2048);
    assert_eq!(u64::from_le_bytes(dp[16..24].try_into().unwrap()), 32768);
    let g = &dp[24..40];
    let guid = format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes(g[0..4].try_into().unwrap()),
        u16::from_le_bytes(g[4..6].try_into().unwrap()),
        u16::from_le_bytes(g[6..8].try_into().unwrap()),
        g[8..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        g[10..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(guid, ESP_UUID);
    assert_eq!(&dp[40..42], &[2, 2], "GPT partition, GUID signature");
    // File(\EFI\debian\shimx64.efi), then the end node.
    assert_eq!(&dp[42..44], &[4, 4]);
    let file_len = u16::from_le_bytes([dp[44], dp[45]]) as usize;
    let (path, _) = utf16(&dp[46..42 + file_len]);
    assert_eq!(path, "\\EFI\\debian\\shimx64.efi");
    assert_eq!(&dp[42 + file_len..], &[0x7f, 0xff, 4, 0]);
    // The PXE entry is untouched, and nothing else was added (the CSV wins over BOOTX64.EFI).
    let pxe = std::fs::read(var_path(&efivars, "Boot0000")).unwrap();
    assert_eq!(&pxe[4..], &pxe_entry()[..]);
    let vars: Vec<String> = std::fs::read_dir(&efivars)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(vars.len(), 3, "{vars:?}");
}

#[test]
fn uefi_deploy_of_an_image_without_an_esp_fails_install_bootloader() {
    let tmp = tempfile::tempdir().unwrap();
    let efivars = tmp.path().join("efivars");
    std::fs::create_dir(&efivars).unwrap();
    put_var(&efivars, "BootOrder", &[0, 0]);
    let img = test_image(TableKind::Mbr, 8 << 20, 0xe5);
    let Some(r) = start("e2e_uefi::no_esp", &img.bytes, &efivars) else {
        return;
    };
    let st = match r.conductor.wait_until_settled(SETTLE) {
        Ok(st) => st,
        Err(st) => panic!("not settled: {:?}{}", st.phase, r.report()),
    };
    assert_eq!(st.provision_state, "deploy failed", "{}", r.report());
    let err = st
        .failed_command_error
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("DeviceNotFound") && err.contains("No EFI partition"),
        "{err}{}",
        r.report()
    );
    assert_eq!(
        std::fs::read(var_path(&efivars, "BootOrder")).unwrap(),
        [7, 0, 0, 0, 0, 0],
        "BootOrder untouched"
    );
}
