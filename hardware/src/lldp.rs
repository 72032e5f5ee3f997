//! LLDP for inspection (IPA `netutils.get_lldp_info`, enabled by `ipa-collect-lldp`): listen
//! on every interface at once for one LLDP frame each, bounded by a timeout, and report its
//! TLVs as IPA does in the inventory: `interfaces[].lldp = [[type, "hex value"], …]`. Ironic's
//! inspection hooks (`local_link_connection`, `parse_lldp`) read the switch port from them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Ethernet header: destination, source, ethertype.
const ETH_HEADER: usize = 14;
/// Most TLVs kept from one frame (a real LLDPDU has a dozen).
const MAX_TLVS: usize = 64;

/// The TLVs of an LLDPDU (the Ethernet payload): `(type, value)`, up to the End TLV (type
/// 0) or the end of the bytes; a TLV claiming more bytes than remain ends the list.
pub fn parse_tlvs(payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = payload;
    while rest.len() >= 2 && out.len() < MAX_TLVS {
        let header = u16::from_be_bytes([rest[0], rest[1]]);
        let (kind, len) = ((header >> 9) as u8, usize::from(header & 0x1ff));
        if kind == 0 {
            break;
        }
        let Some(value) = rest.get(2..2 + len) else {
            break;
        };
        out.push((kind, value.to_vec()));
        rest = &rest[2 + len..];
    }
    out
}

/// The TLVs of one received Ethernet frame, if it is LLDP (ethertype 0x88cc).
pub fn frame_tlvs(frame: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    if frame.len() < ETH_HEADER || frame[12..14] != crate::sys::ETH_P_LLDP.to_be_bytes() {
        return None;
    }
    Some(parse_tlvs(&frame[ETH_HEADER..]))
}

/// Hex of a TLV value, as IPA reports it (`binascii.hexlify`).
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Listen on `interfaces` (names of interfaces of this machine; `sys/class/net/<name>` is
/// read under `root` for the index) for at most `timeout`, returning the first LLDP frame's
/// TLVs of each interface that got one. Interfaces that cannot be listened on are logged and
/// left out; this never fails.
pub fn collect(
    root: &Path,
    interfaces: &[String],
    timeout: Duration,
) -> BTreeMap<String, Vec<(u8, String)>> {
    let mut socks: Vec<(String, File)> = Vec::new();
    for name in interfaces {
        let index = std::fs::read_to_string(root.join("sys/class/net").join(name).join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let Some(index) = index else {
            log::warn!("LLDP: no interface index for {name}");
            continue;
        };
        match crate::sys::lldp_socket(index) {
            Ok(fd) => socks.push((name.clone(), File::from(fd))),
            Err(e) => log::warn!("LLDP: cannot listen on {name}: {e}"),
        }
    }
    let mut found = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 9216];
    while !socks.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = socks
                .iter()
                .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => fds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("LLDP: poll failed: {e}");
                    break;
                }
            }
        };
        let mut done = Vec::new();
        for (i, (name, file)) in socks.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            // Drain what is queued; keep the first LLDP frame.
            loop {
                match file.read(&mut buf) {
                    Ok(n) => {
                        if let Some(tlvs) = frame_tlvs(&buf[..n]) {
                            log::info!("LLDP: {} TLVs on {name}", tlvs.len());
                            found.insert(
                                name.clone(),
                                tlvs.iter().map(|(t, v)| (*t, hex(v))).collect(),
                            );
                            done.push(i);
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("LLDP: reading on {name}: {e}");
                        done.push(i);
                        break;
                    }
                }
            }
        }
        for i in done.into_iter().rev() {
            socks.swap_remove(i);
        }
    }
    for (name, _) in &socks {
        log::info!("LLDP: nothing received on {name} within {timeout:?}");
    }
    found
}

/// A frame as a switch sends it, for the unit and veth tests: to the LLDP multicast address,
/// with `ethertype`, chassis ID (MAC), port ID (interface name `Ethernet1/7`), TTL 120, system
/// name `switch-a`, End, padded to Ethernet's 60-byte minimum.
#[doc(hidden)]
pub fn switch_frame(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    f.extend_from_slice(&[0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    let tlv = |t: u8, v: &[u8]| {
        let mut b = ((u16::from(t) << 9) | v.len() as u16)
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(v);
        b
    };
    f.extend(tlv(1, &[4, 0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]));
    f.extend(tlv(2, b"\x05Ethernet1/7"));
    f.extend(tlv(3, &[0, 120]));
    f.extend(tlv(5, b"switch-a"));
    f.extend(tlv(0, b""));
    f.resize(f.len().max(60), 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlvs_are_parsed_up_to_the_end_tlv() {
        let tlvs = frame_tlvs(&switch_frame(crate::sys::ETH_P_LLDP)).unwrap();
        let kinds: Vec<u8> = tlvs.iter().map(|(t, _)| *t).collect();
        assert_eq!(kinds, [1, 2, 3, 5]);
        assert_eq!(hex(&tlvs[1].1), hex(b"\x05Ethernet1/7"));
        assert_eq!(hex(&tlvs[2].1), "0078");
    }

    #[test]
    fn hostile_frames_end_the_list_without_panicking() {
        // Not LLDP, too short, a TLV longer than the frame, an endless run of empty TLVs.
        let ip = switch_frame(0x0800);
        assert_eq!(frame_tlvs(&ip), None);
        assert_eq!(frame_tlvs(&[0u8; 10]), None);
        let mut f = switch_frame(crate::sys::ETH_P_LLDP)[..14].to_vec();
        f.extend_from_slice(&[0x02, 0xff, 1, 2, 3]);
        assert_eq!(frame_tlvs(&f), Some(vec![]));
        let empty: Vec<u8> = std::iter::repeat_n([0x02u8, 0x00], 1000)
            .flatten()
            .collect();
        assert_eq!(parse_tlvs(&empty).len(), MAX_TLVS);
        assert_eq!(parse_tlvs(&[0x02]), vec![]);
    }
}
