//! LLDP collection on a real interface: a veth pair made for the test (deleted on drop), a
//! switch-like LLDP frame sent into one end with a raw socket, `lldp::collect` listening on
//! the other. Needs root and `ip` (iproute2): fails under `CI` without them, skips loudly
//! elsewhere. Only the test's own veth pair is touched.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::loopdev::tool;
use ferric_hardware::lldp;

struct Veth {
    a: String,
    b: String,
}

impl Veth {
    fn create(tag: &str) -> Veth {
        let id = std::process::id() % 10_000;
        let (a, b) = (format!("fl{tag}{id}a"), format!("fl{tag}{id}b"));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let v = Veth { a, b };
        ip(&["link", "set", &v.a, "up"]);
        ip(&["link", "set", &v.b, "up"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.a]).status();
    }
}

fn facility(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root (CI is set, so this fails instead of skipping)"
        );
        eprintln!("\n*** SKIPPING {test}: needs root ***\n");
        return false;
    }
    tool(test, "ip")
}

/// Sends raw Ethernet frames out of `iface`.
fn send(iface: &str, frames: &[Vec<u8>]) {
    use nix::libc;
    let index: i32 = std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    for f in frames {
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&f[..6]);
        // SAFETY: valid fd; buffer and address live across the call, sizes passed with them.
        let n = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            f.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closing the fd this function opened.
    unsafe { libc::close(fd) };
}

#[test]
fn collect_reports_the_switch_tlvs_heard_on_each_interface() {
    if !facility("lldp_veth::collect") {
        return;
    }
    let v = Veth::create("c");
    let quiet = Veth::create("q");
    let names = vec![v.a.clone(), quiet.a.clone(), "nonexistent0".to_string()];
    let t0 = Instant::now();
    let listener =
        std::thread::spawn(move || lldp::collect(Path::new("/"), &names, Duration::from_secs(8)));
    std::thread::sleep(Duration::from_millis(700));
    // An IPv4 frame first (not LLDP: never reported), then the LLDP frame.
    send(
        &v.b,
        &[
            lldp::switch_frame(0x0800), // IPv4: must be ignored
            lldp::switch_frame(0x88cc), // LLDP
        ],
    );
    let found = listener.join().expect("collect panicked");
    let took = t0.elapsed();
    let tlvs = found
        .get(&v.a)
        .unwrap_or_else(|| panic!("nothing heard on {}: {found:?}", v.a));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        tlvs,
        &vec![
            (1, "04525400aabbcc".to_string()),
            (2, hex(b"\x05Ethernet1/7")),
            (3, "0078".to_string()),
            (5, hex(b"switch-a")),
        ]
    );
    // The quiet interface and the missing one are absent; the timeout bounded the wait.
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        took < Duration::from_secs(12),
        "collect overran its timeout: {took:?}"
    );
}
