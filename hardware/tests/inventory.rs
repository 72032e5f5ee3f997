//! Inventory on the handcrafted server fixture and on the captured fixture of
//! the Ferric build VM (tests/fixtures/capture_this_machine.sh), field by field.

mod common;

use std::net::IpAddr;
use std::os::unix::fs::symlink;
use std::path::Path;

use ferric_hardware::net::{list_interfaces, AddressSource};
use ferric_hardware::{device_in_use, inventory, list_block_devices, InventoryOptions};
use serde_json::{json, Value};

fn fixed(pairs: &[(&str, &str)]) -> AddressSource {
    AddressSource::Fixed(
        pairs
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse::<IpAddr>().unwrap()))
            .collect(),
    )
}

#[test]
fn server_inventory_is_ipa_shaped() {
    let root = common::fixture("server");
    let opts = InventoryOptions {
        bootif: Some("01-3c-fd-fe-aa-bb-02".into()),
        addresses: fixed(&[
            ("eno1", "fe80::3efd:feff:feaa:bb01"),
            ("eno1", "192.0.2.10"),
            ("eno1", "2001:db8::10"),
            ("eno1.100", "198.51.100.7"),
            ("bond0", "203.0.113.1"),
        ]),
        lldp_timeout: None,
    };
    let inv = inventory(&root, &opts);
    let v = serde_json::to_value(&inv).unwrap();

    let names: Vec<&str> = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    // bond0 (no device link) and lo are not inventory interfaces; the VLAN is.
    assert_eq!(names, ["eno1", "eno1.100", "eno2", "ib0"]);
    assert_eq!(
        v["interfaces"][0],
        json!({
            "name": "eno1", "mac_address": "3c:fd:fe:aa:bb:01",
            "ipv4_address": "192.0.2.10", "ipv6_address": "2001:db8::10",
            "has_carrier": true, "lldp": null, "vendor": "0x8086", "product": "0x1521",
            "client_id": null, "biosdevname": null, "speed_mbps": 1000,
            "pci_address": "0000:19:00.0", "driver": "igb"
        })
    );
    assert_eq!(v["interfaces"][1]["ipv4_address"], "198.51.100.7");
    assert_eq!(v["interfaces"][2]["ipv4_address"], Value::Null);
    assert_eq!(
        v["interfaces"][3]["mac_address"],
        "00:00:10:29:fe:80:00:00:00:00:00:00:50:6b:4b:03:00:2a:bc:de"
    );

    assert_eq!(
        v["cpu"],
        json!({
            "model_name": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
            "frequency": "3900.0000",
            "count": 4,
            "architecture": "x86_64",
            "flags": ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic",
                      "sep", "mtrr", "vmx", "smx", "est", "lm", "aes", "avx", "avx2"],
            "socket_count": 2
        })
    );
    let disks: Vec<&str> = v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc"]);
    assert_eq!(v["disks"][1]["serial"], "S3Z1NB0K123456A");
    assert_eq!(
        v["memory"],
        json!({"total": 394934772u64 * 1024, "physical_mb": 11 * 32768 + 16384})
    );
    assert_eq!(
        v["system_vendor"],
        json!({
            "product_name": "PowerEdge R640 (SKU=NotProvided;ModelName=PowerEdge R640)",
            "serial_number": "7XK4Q53",
            "manufacturer": "Dell Inc.",
            "firmware": {"vendor": "Dell Inc.", "version": "2.19.1", "build_date": "06/07/2023"}
        })
    );
    assert_eq!(
        v["boot"],
        json!({"current_boot_mode": "uefi", "pxe_interface": "01-3c-fd-fe-aa-bb-02"})
    );
    assert_eq!(v["hostname"], "node-17.example.org");
    for k in ["bmc_address", "bmc_v6address", "bmc_mac"] {
        assert_eq!(v[k], Value::Null, "{k}");
    }
    // Exactly IPA's top-level keys, in IPA's order.
    let text = serde_json::to_string(&inv).unwrap();
    let keys = [
        "interfaces",
        "cpu",
        "disks",
        "memory",
        "system_vendor",
        "boot",
        "hostname",
        "bmc_address",
        "bmc_v6address",
        "bmc_mac",
    ];
    assert_eq!(v.as_object().unwrap().len(), keys.len());
    let pos: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn this_machine_inventory() {
    let root = common::fixture("this-machine");
    let inv = inventory(
        &root,
        &InventoryOptions {
            bootif: None,
            addresses: fixed(&[("eth0", "fd00::2"), ("lo", "127.0.0.1")]),
            lldp_timeout: None,
        },
    );
    let v = serde_json::to_value(&inv).unwrap();
    assert_eq!(
        v["interfaces"],
        json!([{
            "name": "eth0", "mac_address": "02:fc:00:00:00:01",
            "ipv4_address": null, "ipv6_address": "fd00::2",
            "has_carrier": true, "lldp": null, "vendor": "0x1af4", "product": "0x0001",
            "client_id": null, "biosdevname": null, "speed_mbps": null,
            "pci_address": null, "driver": "virtio_net"
        }])
    );
    assert_eq!(v["cpu"]["model_name"], "Intel(R) Xeon(R) Processor");
    assert_eq!(v["cpu"]["frequency"], "2299.998");
    assert_eq!(v["cpu"]["count"], 2);
    assert_eq!(v["cpu"]["socket_count"], 1);
    assert_eq!(v["cpu"]["architecture"], "x86_64");
    let flags = v["cpu"]["flags"].as_array().unwrap();
    assert_eq!(flags.first().unwrap(), "fpu");
    assert!(flags.iter().any(|f| f == "avx512f"));
    assert_eq!(
        v["disks"],
        json!([{
            "name": "/dev/vda", "model": "", "size": 274877906944u64, "rotational": true,
            "wwn": null, "serial": "overlayblk", "vendor": "0x1af4",
            "wwn_with_extension": null, "wwn_vendor_extension": null, "hctl": null,
            "by_path": null, "logical_sectors": 512, "physical_sectors": 4096, "tran": "virtio"
        }])
    );
    assert_eq!(
        v["memory"],
        json!({"total": 24684112u64 * 1024, "physical_mb": 192 * 128})
    );
    assert_eq!(
        v["system_vendor"],
        json!({"product_name": "", "serial_number": "", "manufacturer": "",
               "firmware": {"vendor": "", "version": "", "build_date": ""}})
    );
    assert_eq!(
        v["boot"],
        json!({"current_boot_mode": "bios", "pxe_interface": null})
    );
    assert_eq!(v["hostname"], "vm");

    // The root disk is in use; loop0/zram0 are listed with their kinds.
    let devs = list_block_devices(&root).unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/loop0", "/dev/vda", "/dev/zram0"]);
    let vda = &devs[1];
    assert_eq!(
        device_in_use(&root, vda).unwrap().as_deref(),
        Some("/dev/vda is mounted at /")
    );
    assert_eq!(device_in_use(&root, &devs[0]).unwrap(), None);
}

#[test]
fn empty_root_gives_an_empty_but_valid_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = inventory(
        tmp.path(),
        &InventoryOptions {
            bootif: None,
            addresses: AddressSource::Skip,
            lldp_timeout: None,
        },
    );
    let v = serde_json::to_value(&inv).unwrap();
    assert_eq!(v["interfaces"], json!([]));
    assert_eq!(v["disks"], json!([]));
    assert_eq!(v["cpu"]["count"], 0);
    assert_eq!(v["memory"], json!({"total": null, "physical_mb": null}));
    assert_eq!(v["hostname"], Value::Null);
    assert_eq!(v["boot"]["current_boot_mode"], "bios");
}

/// On a live system the NIC's device is a link into sys/devices; the PCI
/// address and driver come from the link targets.
#[test]
fn nic_pci_address_and_driver_through_links() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pci = root.join("sys/devices/pci0000:00/0000:00:03.0");
    let virtio = pci.join("virtio2");
    std::fs::create_dir_all(&virtio).unwrap();
    std::fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_net")).unwrap();
    symlink(
        "../../../../bus/virtio/drivers/virtio_net",
        virtio.join("driver"),
    )
    .unwrap();
    std::fs::write(virtio.join("vendor"), "0x1af4\n").unwrap();
    let net = root.join("sys/class/net/eth0");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("address"), "52:54:00:12:34:56\n").unwrap();
    symlink(
        "../../../devices/pci0000:00/0000:00:03.0/virtio2",
        net.join("device"),
    )
    .unwrap();
    assert!(Path::new(&net.join("device/vendor")).exists());

    let ifaces = list_interfaces(root).unwrap();
    assert_eq!(ifaces[0].pci_address.as_deref(), Some("0000:00:03.0"));
    assert_eq!(ifaces[0].driver.as_deref(), Some("virtio_net"));
    assert_eq!(ifaces[0].vendor.as_deref(), Some("0x1af4"));
}

/// The live machine: whatever it has, reading it must not fail or panic, and
/// every listed disk must be an inventory disk.
#[test]
fn live_root_inventory_reads() {
    let inv = inventory(Path::new("/"), &InventoryOptions::default());
    assert!(inv.cpu.count > 0, "a running machine has a CPU");
    assert!(inv.memory.total.unwrap_or(0) > 0);
    assert!(inv.disks.iter().all(|d| d.is_inventory_disk()));
    serde_json::to_string(&inv).unwrap();
}
