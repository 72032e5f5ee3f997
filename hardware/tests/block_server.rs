//! Block devices read from the handcrafted server fixture (tests/fixtures/make_server.py).

mod common;

use std::path::Path;

use ferric_hardware::{
    block_device, default_root_device, device_in_use, list_block_devices, DeviceKind, HardwareError,
};
use serde_json::json;

#[test]
fn lists_whole_devices_sorted_with_kinds() {
    let root = common::fixture("server");
    let devs = list_block_devices(&root).unwrap();
    let names: Vec<(&str, DeviceKind)> = devs.iter().map(|d| (d.name.as_str(), d.kind)).collect();
    assert_eq!(
        names,
        vec![
            ("/dev/loop0", DeviceKind::Loop),
            ("/dev/nvme0n1", DeviceKind::Disk),
            ("/dev/sda", DeviceKind::Disk),
            ("/dev/sdb", DeviceKind::Disk),
            ("/dev/sdc", DeviceKind::Disk),
            ("/dev/sr0", DeviceKind::Rom),
        ]
    );
    let inventory: Vec<&str> = devs
        .iter()
        .filter(|d| d.is_inventory_disk())
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        inventory,
        ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc"]
    );
}

#[test]
fn sata_disk_serializes_as_ipa_inventory_disk() {
    let root = common::fixture("server");
    let devs = list_block_devices(&root).unwrap();
    let sda = devs.iter().find(|d| d.name == "/dev/sda").unwrap();
    assert_eq!(
        serde_json::to_value(sda).unwrap(),
        json!({
            "name": "/dev/sda",
            "model": "Samsung SSD 860 EVO 500GB",
            "size": 500107862016u64,
            "rotational": false,
            "wwn": "0x5002538e40123456",
            "serial": "S3Z1NB0K123456A",
            "vendor": "ATA",
            "wwn_with_extension": "0x5002538e40123456",
            "wwn_vendor_extension": null,
            "hctl": "0:0:0:0",
            "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-1",
            "logical_sectors": 512,
            "physical_sectors": 4096,
            "tran": "sata"
        })
    );
    // Key order is IPA's serializable_fields order.
    let text = serde_json::to_string(sda).unwrap();
    let keys = [
        "\"name\"",
        "\"model\"",
        "\"size\"",
        "\"rotational\"",
        "\"wwn\"",
        "\"serial\"",
        "\"vendor\"",
        "\"wwn_with_extension\"",
        "\"wwn_vendor_extension\"",
        "\"hctl\"",
        "\"by_path\"",
        "\"logical_sectors\"",
        "\"physical_sectors\"",
        "\"tran\"",
    ];
    let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(!text.contains("kind") && !text.contains("removable"));
    assert_eq!(sda.major_minor, (8, 0));
    assert!(!sda.removable && !sda.read_only);
}

#[test]
fn sas_nvme_usb_and_rom_fields() {
    let root = common::fixture("server");
    let devs = list_block_devices(&root).unwrap();
    let get = |n: &str| devs.iter().find(|d| d.name == n).unwrap();

    let sdb = get("/dev/sdb");
    assert_eq!(sdb.model, "ST16000NM004J");
    assert_eq!(sdb.vendor.as_deref(), Some("SEAGATE"));
    assert_eq!(sdb.serial.as_deref(), Some("ZL2ABCDE0000C1234567"));
    assert_eq!(sdb.wwn.as_deref(), Some("0x6000c500d1e2f301"));
    assert_eq!(
        sdb.wwn_with_extension.as_deref(),
        Some("0x6000c500d1e2f3010000000000abcdef")
    );
    assert_eq!(
        sdb.wwn_vendor_extension.as_deref(),
        Some("0x0000000000abcdef")
    );
    assert_eq!(sdb.hctl.as_deref(), Some("2:0:0:0"));
    assert_eq!(sdb.tran.as_deref(), Some("sas"));
    assert!(sdb.rotational);
    assert_eq!(sdb.size, 31251759104 * 512);
    assert_eq!(
        sdb.by_path.as_deref(),
        Some("/dev/disk/by-path/pci-0000:3b:00.0-sas-0x5000c500d1e2f301-lun-0")
    );

    let nvme = get("/dev/nvme0n1");
    assert_eq!(nvme.model, "SAMSUNG MZQL21T9HCJR-00A07");
    assert_eq!(nvme.serial.as_deref(), Some("S64GNE0R123456"));
    assert_eq!(nvme.wwn.as_deref(), Some("eui.0025388b71b2c3d4"));
    assert_eq!(nvme.wwn_with_extension, None);
    assert_eq!(nvme.vendor, None);
    assert_eq!(nvme.hctl, None);
    assert_eq!(nvme.tran.as_deref(), Some("nvme"));
    assert_eq!(nvme.major_minor, (259, 0));
    assert_eq!(
        nvme.by_path.as_deref(),
        Some("/dev/disk/by-path/pci-0000:5e:00.0-nvme-1")
    );

    let sdc = get("/dev/sdc");
    assert!(sdc.removable);
    assert_eq!(sdc.tran.as_deref(), Some("usb"));
    assert_eq!(sdc.size, 16 << 30);
    assert_eq!(sdc.model, "Ultra Fit");
    assert_eq!(sdc.by_path, None);

    let sr0 = get("/dev/sr0");
    assert!(sr0.read_only && sr0.removable);
    assert_eq!(sr0.logical_sectors, Some(2048));
    assert_eq!(sr0.tran.as_deref(), Some("sata"));

    let loop0 = get("/dev/loop0");
    assert_eq!(loop0.size, 0);
    assert_eq!(loop0.model, "");
    assert_eq!(loop0.tran, None);
}

#[test]
fn default_root_device_is_smallest_fixed_disk_of_4gib() {
    let root = common::fixture("server");
    let devs = list_block_devices(&root).unwrap();
    // sdc (16 GiB) is smaller but removable; loop0/sr0 never qualify.
    assert_eq!(default_root_device(&devs).unwrap().name, "/dev/sda");

    let only_small: Vec<_> = devs
        .iter()
        .filter(|d| d.name == "/dev/sdc" || d.name == "/dev/loop0")
        .cloned()
        .collect();
    assert!(default_root_device(&only_small).is_none());

    // Ties on size are broken by name.
    let mut twins = devs.clone();
    for d in &mut twins {
        d.size = 8 << 30;
    }
    assert_eq!(default_root_device(&twins).unwrap().name, "/dev/nvme0n1");
    // Below 4 GiB nothing qualifies.
    for d in &mut twins {
        d.size = (4 << 30) - 512;
    }
    assert!(default_root_device(&twins).is_none());
}

#[test]
fn block_device_by_name_link_and_errors() {
    let root = common::fixture("server");
    let sda = block_device(&root, Path::new("/dev/sda")).unwrap();
    assert_eq!(sda.serial.as_deref(), Some("S3Z1NB0K123456A"));
    let via_link =
        block_device(&root, Path::new("/dev/disk/by-id/wwn-0x5002538e40123456")).unwrap();
    assert_eq!(via_link, sda);
    assert_eq!(
        block_device(&root, Path::new("/dev/loop0")).unwrap().kind,
        DeviceKind::Loop
    );

    match block_device(&root, Path::new("/dev/sda1")) {
        Err(HardwareError::IsPartition { device }) => assert_eq!(device, "/dev/sda1"),
        other => panic!("expected IsPartition, got {other:?}"),
    }
    match block_device(&root, Path::new("/dev/sdz")) {
        Err(e @ HardwareError::DeviceNotFound { .. }) => {
            assert!(e.to_string().contains("/dev/sdz"), "{e}")
        }
        other => panic!("expected DeviceNotFound, got {other:?}"),
    }
    assert!(block_device(&root, Path::new("/dev/..")).is_err());
}

#[test]
fn in_use_reasons() {
    let root = common::fixture("server");
    let devs = list_block_devices(&root).unwrap();
    let get = |n: &str| devs.iter().find(|d| d.name == n).unwrap();
    assert_eq!(
        device_in_use(&root, get("/dev/sda")).unwrap().as_deref(),
        Some("partition /dev/sda1 is mounted at /mnt/boot efi")
    );
    assert_eq!(
        device_in_use(&root, get("/dev/sdb")).unwrap().as_deref(),
        Some("/dev/sdb is held by md127")
    );
    assert_eq!(
        device_in_use(&root, get("/dev/sdc")).unwrap().as_deref(),
        Some("/dev/sdc is active swap")
    );
    assert_eq!(device_in_use(&root, get("/dev/nvme0n1")).unwrap(), None);
}

#[test]
fn missing_sys_block_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = list_block_devices(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("sys/block"), "{err}");
}

#[test]
fn garbage_attributes_do_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("sys/block/sdx");
    std::fs::create_dir_all(d.join("device")).unwrap();
    std::fs::write(d.join("dev"), "8:99\n").unwrap();
    std::fs::write(d.join("size"), "not a number").unwrap();
    let err = list_block_devices(tmp.path()).unwrap_err();
    assert!(matches!(err, HardwareError::Parse { .. }), "{err}");

    std::fs::write(d.join("size"), "18446744073709551615\n").unwrap();
    std::fs::write(d.join("device/vpd_pg89"), [0u8, 0x89, 0xff]).unwrap();
    std::fs::write(d.join("device/vpd_pg80"), [0u8, 0x80, 0xff, 0xff, 0xff]).unwrap();
    std::fs::write(d.join("device/model"), [0xffu8, 0xfe, b'X']).unwrap();
    std::fs::write(d.join("queue"), "not a dir").unwrap();
    let devs = list_block_devices(tmp.path()).unwrap();
    assert_eq!(devs[0].size, u64::MAX, "saturates instead of overflowing");
    assert_eq!(devs[0].serial, None);
    assert_eq!(devs[0].logical_sectors, None);

    std::fs::write(d.join("dev"), "8-99\n").unwrap();
    assert!(matches!(
        list_block_devices(tmp.path()).unwrap_err(),
        HardwareError::Parse { .. }
    ));
}
