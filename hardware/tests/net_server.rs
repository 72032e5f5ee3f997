//! NICs and lookup MACs from the server fixture and from small temp trees.

mod common;

use std::fs;
use std::path::Path;

use ferric_hardware::net::{list_interfaces, lookup_macs};
use serde_json::json;

#[test]
fn interfaces_from_sysfs() {
    let root = common::fixture("server");
    let ifaces = list_interfaces(&root).unwrap();
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["bond0", "eno1", "eno1.100", "eno2", "ib0"]);

    let eno1 = &ifaces[1];
    assert_eq!(
        serde_json::to_value(eno1).unwrap(),
        json!({
            "name": "eno1", "mac_address": "3c:fd:fe:aa:bb:01",
            "ipv4_address": null, "ipv6_address": null, "has_carrier": true, "lldp": null,
            "vendor": "0x8086", "product": "0x1521", "client_id": null, "biosdevname": null,
            "speed_mbps": 1000, "pci_address": "0000:19:00.0", "driver": "igb"
        })
    );
    assert!(eno1.physical);
    let eno2 = &ifaces[3];
    assert!(!eno2.has_carrier);
    assert_eq!(eno2.speed_mbps, None);
    assert_eq!(eno2.pci_address.as_deref(), Some("0000:19:00.1"));
    let bond0 = &ifaces[0];
    assert!(!bond0.physical);
    assert_eq!(
        (bond0.driver.as_deref(), bond0.vendor.as_deref()),
        (None, None)
    );
    assert_eq!(ifaces[4].driver.as_deref(), Some("mlx5_core"));
    // A VLAN has no device link of its own.
    assert!(!ifaces[2].physical);
}

#[test]
fn lookup_macs_bootif_first_then_physical() {
    let root = common::fixture("server");
    assert_eq!(
        lookup_macs(&root, Some("01-3C-FD-FE-AA-BB-02")),
        ["3c:fd:fe:aa:bb:02", "3c:fd:fe:aa:bb:01"]
    );
    // ib0's 20-octet address is skipped: Ironic only accepts MACs.
    assert_eq!(
        lookup_macs(&root, None),
        ["3c:fd:fe:aa:bb:01", "3c:fd:fe:aa:bb:02"]
    );
    assert_eq!(
        lookup_macs(&root, Some("01-52-54-00-12-34-56")),
        [
            "52:54:00:12:34:56",
            "3c:fd:fe:aa:bb:01",
            "3c:fd:fe:aa:bb:02"
        ]
    );
    // A malformed BOOTIF is ignored, not fatal.
    assert_eq!(
        lookup_macs(&root, Some("garbage")),
        ["3c:fd:fe:aa:bb:01", "3c:fd:fe:aa:bb:02"]
    );
}

fn iface(root: &Path, name: &str, mac: &str, physical: bool) {
    let d = root.join("sys/class/net").join(name);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("address"), format!("{mac}\n")).unwrap();
    if physical {
        fs::create_dir_all(d.join("device")).unwrap();
    }
}

#[test]
fn lookup_macs_falls_back_to_virtual_nics() {
    let tmp = tempfile::tempdir().unwrap();
    iface(tmp.path(), "lo", "00:00:00:00:00:00", false);
    iface(tmp.path(), "dummy0", "00:00:00:00:00:00", false);
    iface(tmp.path(), "eth0", "52:54:00:AB:CD:EF", false);
    iface(tmp.path(), "eth1", "52:54:00:ab:cd:ef", false);
    assert_eq!(lookup_macs(tmp.path(), None), ["52:54:00:ab:cd:ef"]);
    // With a physical NIC present, virtual ones are not sent.
    iface(tmp.path(), "enp1s0", "0c:c4:7a:00:00:01", true);
    assert_eq!(lookup_macs(tmp.path(), None), ["0c:c4:7a:00:00:01"]);
}

#[test]
fn no_sysfs_means_bootif_only() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        lookup_macs(tmp.path(), Some("01-aa-bb-cc-dd-ee-ff")),
        ["aa:bb:cc:dd:ee:ff"]
    );
    assert!(lookup_macs(tmp.path(), None).is_empty());
    assert!(list_interfaces(tmp.path()).is_err());
}
