//! Network interfaces from `sys/class/net`, and the MACs used for lookup.
//!
//! IPA `hardware.py` `list_network_interfaces` keeps interfaces that have a
//! `device` link (physical NICs); Ferric lists every non-loopback interface
//! with a `physical` flag so lookup can fall back to virtual ones.

use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use crate::error::HardwareError;
use crate::sysfs::{attr, dir_names, uevent_value, under};

/// One network interface, serialized with IPA's inventory keys (PROTOCOL.md §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetInterface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address, lowercase (`sys/class/net/X/address`).
    pub mac_address: String,
    /// First IPv4 address, when known.
    pub ipv4_address: Option<String>,
    /// First IPv6 address (global preferred over link-local), when known.
    pub ipv6_address: Option<String>,
    /// `sys/class/net/X/carrier` is 1.
    pub has_carrier: bool,
    /// LLDP TLVs; Ferric does not collect LLDP yet.
    pub lldp: Option<Vec<(u8, String)>>,
    /// PCI/virtio vendor id as in `device/vendor`, e.g. `0x8086`.
    pub vendor: Option<String>,
    /// PCI/virtio device id as in `device/device`.
    pub product: Option<String>,
    /// DHCP client id, IPA sets it for InfiniBand only.
    pub client_id: Option<String>,
    /// biosdevname's name; Ferric does not ship biosdevname.
    pub biosdevname: Option<String>,
    /// Link speed in Mbit/s (`speed`), absent when the link is down or unknown.
    pub speed_mbps: Option<u32>,
    /// PCI address of the NIC, e.g. `0000:00:03.0`.
    pub pci_address: Option<String>,
    /// Kernel driver bound to the NIC.
    pub driver: Option<String>,
    /// Backed by a device (`sys/class/net/X/device` exists): a real NIC.
    #[serde(skip)]
    pub physical: bool,
}

/// Lists interfaces from `root/sys/class/net`, sorted by name, without `lo`.
///
/// Addresses are left `None`: they come from the live kernel, not from sysfs
/// (the inventory fills them in).
pub fn list_interfaces(root: &Path) -> Result<Vec<NetInterface>, HardwareError> {
    let dir = under(root, "sys/class/net");
    std::fs::read_dir(&dir).map_err(|e| HardwareError::read(&dir, e))?;
    let mut out = Vec::new();
    for name in dir_names(&dir) {
        if name == "lo" {
            continue;
        }
        let ndir = dir.join(&name);
        let Some(mac) = attr(&ndir.join("address")) else {
            // Interfaces without a hardware address (tun, some tunnels) cannot be looked up.
            continue;
        };
        let device = ndir.join("device");
        let physical = device.exists();
        out.push(NetInterface {
            mac_address: mac.to_ascii_lowercase(),
            ipv4_address: None,
            ipv6_address: None,
            // Reading carrier fails with EINVAL while the interface is down.
            has_carrier: attr(&ndir.join("carrier")).as_deref() == Some("1"),
            lldp: None,
            vendor: physical.then(|| attr(&device.join("vendor"))).flatten(),
            product: physical.then(|| attr(&device.join("device"))).flatten(),
            client_id: None,
            biosdevname: None,
            // -1 (or EINVAL) when there is no link.
            speed_mbps: attr(&ndir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0),
            pci_address: physical.then(|| pci_address(&device)).flatten(),
            driver: physical.then(|| driver(&device)).flatten(),
            physical,
            name,
        });
    }
    Ok(out)
}

/// The driver: the `device/driver` link's target name, else `DRIVER=` in `device/uevent`.
fn driver(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| uevent_value(&device.join("uevent"), "DRIVER"))
}

/// The nearest PCI function on the device link's target (virtio NICs sit one
/// level below their PCI function), else `PCI_SLOT_NAME=` from `device/uevent`
/// (PCI NICs; fixture trees, which hold copies instead of links).
fn pci_address(device: &Path) -> Option<String> {
    if let Ok(real) = std::fs::canonicalize(device) {
        let found = real
            .components()
            .rev()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .find(|c| is_pci_address(c));
        if found.is_some() {
            return found;
        }
    }
    uevent_value(&device.join("uevent"), "PCI_SLOT_NAME").filter(|s| is_pci_address(s))
}

/// `dddd:bb:dd.f`.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Normalises a MAC to lowercase `aa:bb:cc:dd:ee:ff`; `None` unless it has six octets.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// The MAC in a `BOOTIF=` kernel parameter (`01-aa-bb-cc-dd-ee-ff`, the
/// leading `01` being the ARP hardware type for Ethernet, as pxelinux and
/// iPXE write it), or a plain MAC.
pub fn bootif_mac(bootif: &str) -> Option<String> {
    let t = bootif.trim();
    let parts: Vec<&str> = t.split(['-', ':']).collect();
    match parts.len() {
        7 if parts[0] == "01" => normalize_mac(&parts[1..].join(":")),
        6 => normalize_mac(t),
        _ => None,
    }
}

/// MACs to send to Ironic's lookup: the BOOTIF MAC first, then the physical
/// NICs' MACs; when there is no physical NIC, every non-loopback interface
/// with a non-zero MAC. Only six-octet MACs (Ironic rejects others),
/// de-duplicated, in that order. An unreadable `sys/class/net` yields BOOTIF alone.
pub fn lookup_macs(root: &Path, bootif: Option<&str>) -> Vec<String> {
    let mut macs: Vec<String> = Vec::new();
    let mut push = |m: String| {
        if m != "00:00:00:00:00:00" && !macs.contains(&m) {
            macs.push(m);
        }
    };
    if let Some(b) = bootif {
        match bootif_mac(b) {
            Some(m) => push(m),
            None => log::warn!("ignoring malformed BOOTIF {b:?}"),
        }
    }
    let ifaces = list_interfaces(root).unwrap_or_else(|e| {
        log::warn!("cannot list network interfaces: {e}");
        Vec::new()
    });
    let any_physical = ifaces.iter().any(|i| i.physical);
    for i in ifaces.iter().filter(|i| i.physical || !any_physical) {
        if let Some(m) = normalize_mac(&i.mac_address) {
            push(m);
        }
    }
    macs
}

/// Where interface addresses come from when building an inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AddressSource {
    /// Ask the running kernel (`getifaddrs`).
    #[default]
    Live,
    /// Use these `(interface, address)` pairs (tests, or addresses gathered elsewhere).
    Fixed(Vec<(String, IpAddr)>),
    /// Leave `ipv4_address`/`ipv6_address` empty.
    Skip,
}

impl AddressSource {
    /// The `(interface, address)` pairs this source yields, in kernel order.
    pub fn addresses(&self) -> Vec<(String, IpAddr)> {
        match self {
            AddressSource::Live => live_addresses(),
            AddressSource::Fixed(v) => v.clone(),
            AddressSource::Skip => Vec::new(),
        }
    }
}

fn live_addresses() -> Vec<(String, IpAddr)> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            log::warn!("getifaddrs failed: {e}");
            return Vec::new();
        }
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect()
}

/// Fills `ipv4_address` (the first IPv4 address) and `ipv6_address` (the
/// first global IPv6 address, else the first link-local one, without a
/// `%scope` suffix). IPA reports the interface's first address of each family
/// (`netutils.get_ipv4_addr`/`get_ipv6_addr`); preferring a routable IPv6
/// address keeps `fe80::` out of the inventory when a better one exists.
pub fn apply_addresses(ifaces: &mut [NetInterface], addrs: &[(String, IpAddr)]) {
    for iface in ifaces {
        let mine = addrs
            .iter()
            .filter(|(n, _)| *n == iface.name)
            .map(|(_, a)| a);
        iface.ipv4_address = mine.clone().find(|a| a.is_ipv4()).map(|a| a.to_string());
        let v6: Vec<&IpAddr> = mine.filter(|a| a.is_ipv6()).collect();
        let link_local =
            |a: &&&IpAddr| matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80);
        iface.ipv6_address = v6
            .iter()
            .find(|a| !link_local(a))
            .or_else(|| v6.first())
            .map(|a| a.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootif_forms() {
        assert_eq!(
            bootif_mac("01-AA-bb-cc-dd-ee-ff").as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(
            bootif_mac("aa:bb:cc:dd:ee:ff").as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(bootif_mac("02-aa-bb-cc-dd-ee-ff"), None);
        // Six groups are a plain MAC, whatever the separator (IPA strips
        // "01-" only from the 20-character form).
        assert_eq!(
            bootif_mac("01-aa-bb-cc-dd-ee").as_deref(),
            Some("01:aa:bb:cc:dd:ee")
        );
        assert_eq!(bootif_mac("01-aa-bb-cc-dd"), None);
        assert_eq!(bootif_mac("01-zz-bb-cc-dd-ee-ff"), None);
    }

    #[test]
    fn addresses_prefer_global_ipv6() {
        let mut ifaces = vec![NetInterface {
            name: "eth0".into(),
            mac_address: "52:54:00:00:00:01".into(),
            ipv4_address: None,
            ipv6_address: None,
            has_carrier: true,
            lldp: None,
            vendor: None,
            product: None,
            client_id: None,
            biosdevname: None,
            speed_mbps: None,
            pci_address: None,
            driver: None,
            physical: true,
        }];
        let addrs: Vec<(String, IpAddr)> = vec![
            ("eth1".into(), "10.0.0.9".parse().unwrap()),
            ("eth0".into(), "fe80::1".parse().unwrap()),
            ("eth0".into(), "192.0.2.10".parse().unwrap()),
            ("eth0".into(), "2001:db8::10".parse().unwrap()),
            ("eth0".into(), "192.0.2.11".parse().unwrap()),
        ];
        apply_addresses(&mut ifaces, &addrs);
        assert_eq!(ifaces[0].ipv4_address.as_deref(), Some("192.0.2.10"));
        assert_eq!(ifaces[0].ipv6_address.as_deref(), Some("2001:db8::10"));
        apply_addresses(&mut ifaces, &addrs[..2]);
        assert_eq!(ifaces[0].ipv4_address, None);
        assert_eq!(ifaces[0].ipv6_address.as_deref(), Some("fe80::1"));
    }

    #[test]
    fn pci_address_shape() {
        assert!(is_pci_address("0000:00:1f.6"));
        assert!(!is_pci_address("virtio0"));
        assert!(!is_pci_address("0000:00:1f:6"));
    }
}
