//! Root device hints from `node.properties.root_device`: `hints::parse` then `select` on a
//! fixed list of devices (spinning SATA, NVMe, virtio without serial, removable, tiny).
//!
//! Input: the hints as JSON.
#![no_main]

use std::sync::OnceLock;

use ferric_hardware::block::{BlockDevice, DeviceKind};
use ferric_hardware::hints;
use libfuzzer_sys::fuzz_target;

fn disk(name: &str, size_gib_x10: u64) -> BlockDevice {
    BlockDevice {
        name: name.to_string(),
        model: String::new(),
        size: size_gib_x10 * (1 << 30) / 10,
        rotational: false,
        wwn: None,
        serial: None,
        vendor: None,
        wwn_with_extension: None,
        wwn_vendor_extension: None,
        hctl: None,
        by_path: None,
        logical_sectors: Some(512),
        physical_sectors: Some(512),
        tran: None,
        kind: DeviceKind::Disk,
        removable: false,
        read_only: false,
        major_minor: (8, 0),
    }
}

fn devices() -> &'static [BlockDevice] {
    static DEVICES: OnceLock<Vec<BlockDevice>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let mut sda = disk("/dev/sda", 5000);
        sda.model = "ST500DM002-1BD142".into();
        sda.rotational = true;
        sda.serial = Some("Z3T1ABCD".into());
        sda.vendor = Some("ATA".into());
        sda.wwn = Some("0x5000c5006b7f1a2b".into());
        sda.wwn_with_extension = Some("0x5000c5006b7f1a2b".into());
        sda.hctl = Some("0:0:0:0".into());
        sda.by_path = Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into());
        sda.tran = Some("sata".into());
        let mut nvme = disk("/dev/nvme0n1", 105);
        nvme.model = "Big  Disk ".into();
        nvme.serial = Some("S4EVNX0N 123".into());
        nvme.wwn = Some("eui.0025388b91b2a1c3".into());
        nvme.vendor = Some("0x144d".into());
        nvme.tran = Some("nvme".into());
        nvme.major_minor = (259, 0);
        let mut vda = disk("/dev/vda", 200);
        vda.vendor = Some("0x1af4".into());
        vda.tran = Some("virtio".into());
        vda.major_minor = (253, 0);
        let mut usb = disk("/dev/sdb", 80);
        usb.removable = true;
        usb.tran = Some("usb".into());
        usb.model = "Flash Drive".into();
        let mut tiny = disk("/dev/sdc", 1);
        tiny.read_only = true;
        tiny.hctl = Some("1:0:0:0".into());
        vec![sda, nvme, vda, usb, tiny]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(h) = hints::parse(&v) else {
        return;
    };
    let _ = h.to_string();
    let devs = devices();
    match hints::select(devs, &h) {
        Ok(d) => {
            // The chosen device is one of the list, and the first that matches.
            let first = devs
                .iter()
                .position(|x| std::ptr::eq(x, d))
                .expect("select returned a device from the list");
            if !h.is_empty() {
                assert!(h.matches(d));
                assert!(devs[..first].iter().all(|x| !h.matches(x)));
            }
        }
        Err(_) => {
            if !h.is_empty() {
                assert!(devs.iter().all(|x| !h.matches(x)));
            }
        }
    }
});
