//! The initramfs layout: what goes where, as a pure function of the inputs' bytes, plus
//! the gzip step. Everything is decided here so that a test can check the tree without a
//! kernel or a network.

use std::io::Write;

use flate2::{Compression, GzBuilder};

use crate::cpio::{Archive, CpioError};
use crate::modules::Selection;

/// `/init`: mounts, drivers, network, agent loop (see the script's header).
pub const INIT_SCRIPT: &str = include_str!("../assets/init");
/// busybox udhcpc's event script: addresses, routes, resolv.conf, hostname.
pub const UDHCPC_SCRIPT: &str = include_str!("../assets/udhcpc.script");
/// Handler for `busybox uevent`: loads drivers for devices that appear after boot.
pub const UEVENT_SCRIPT: &str = include_str!("../assets/uevent");

/// Where the agent lives in the ramdisk (the init script starts it from there).
pub const AGENT_PATH: &str = "usr/bin/ferric-agent";
/// Where busybox lives; applet links point to it.
pub const BUSYBOX_PATH: &str = "bin/busybox";

/// Everything that goes into the archive.
#[derive(Debug)]
pub struct Contents<'a> {
    /// The static agent binary.
    pub agent: &'a [u8],
    /// The static busybox binary.
    pub busybox: &'a [u8],
    /// Applet paths from `busybox --list-full` (e.g. `sbin/modprobe`).
    pub applets: &'a [String],
    /// Kernel modules and their index files.
    pub modules: &'a Selection,
    /// Text stored as `/etc/ferric-build` (versions of what went in).
    pub build_info: &'a str,
    /// PEM bundle for `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_bundle: &'a [u8],
}

/// Where the agent's HTTPS client reads its trust roots (Debian's location).
pub const CA_BUNDLE_PATH: &str = "etc/ssl/certs/ca-certificates.crt";

/// Builds the archive tree.
pub fn assemble(c: &Contents<'_>) -> Result<Archive, CpioError> {
    let mut a = Archive::new();
    for dir in [
        "proc", "sys", "dev", "run", "etc", "mnt", "var/log", "usr/sbin",
    ] {
        a.add_dir(dir, 0o755)?;
    }
    a.add_dir("tmp", 0o1777)?;
    a.add_dir("root", 0o700)?;
    a.add_symlink("var/run", "/run")?;
    // The kernel opens /dev/console for init's stdin/stdout before /init runs, i.e. before
    // devtmpfs is mounted: without this node init starts with no output at all.
    a.add_char_device("dev/console", 0o600, 5, 1)?;
    a.add_char_device("dev/null", 0o666, 1, 3)?;

    a.add_file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec())?;
    a.add_file(BUSYBOX_PATH, 0o755, c.busybox.to_vec())?;
    for applet in c.applets {
        let path = applet.trim_start_matches('/');
        // Never let an applet link replace /init or busybox itself.
        if path == "init" || path == BUSYBOX_PATH || path == "linuxrc" {
            continue;
        }
        a.add_symlink(path, "/bin/busybox")?;
    }
    a.add_file(AGENT_PATH, 0o755, c.agent.to_vec())?;
    a.add_file(
        "usr/share/udhcpc/default.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    )?;

    a.add_file(
        "usr/lib/ferric/uevent",
        0o755,
        UEVENT_SCRIPT.as_bytes().to_vec(),
    )?;

    a.add_file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    )?;
    a.add_file("etc/shadow", 0o600, b"root:*:0:0:99999:7:::\n".to_vec())?;
    a.add_file("etc/group", 0o644, b"root:x:0:\ntty:x:5:\n".to_vec())?;
    a.add_file(
        "etc/hosts",
        0o644,
        b"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".to_vec(),
    )?;
    a.add_file("etc/ferric-build", 0o644, c.build_info.as_bytes().to_vec())?;
    a.add_file(CA_BUNDLE_PATH, 0o644, c.ca_bundle.to_vec())?;

    let moddir = format!("lib/modules/{}", c.modules.kernel_version);
    for m in &c.modules.modules {
        a.add_file(&format!("{moddir}/{}", m.path), 0o644, m.data.clone())?;
    }
    for (name, text) in [
        ("modules.dep", &c.modules.modules_dep),
        ("modules.alias", &c.modules.modules_alias),
        ("modules.builtin", &c.modules.modules_builtin),
    ] {
        a.add_file(&format!("{moddir}/{name}"), 0o644, text.as_bytes().to_vec())?;
    }
    Ok(a)
}

/// gzip at the highest level, with no file name and mtime 0 in the header, so the output
/// depends on the archive bytes only. (The kernel also reads xz and zstd, but the only
/// pure-Rust encoders for those do not beat gzip -9; see the crate docs.)
pub fn gzip(archive: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix, fixed whatever the build host
        .write(Vec::new(), Compression::best());
    enc.write_all(archive)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_newc;
    use crate::modules::Module;
    use std::io::Read;

    fn selection() -> Selection {
        Selection {
            kernel_version: "6.1.0-test".into(),
            modules: vec![Module {
                name: "virtio_net".into(),
                path: "kernel/drivers/net/virtio_net.ko".into(),
                data: b"module bytes".to_vec(),
                aliases: vec!["virtio:d00000001v*".into()],
            }],
            not_found: vec![],
            modules_dep: "kernel/drivers/net/virtio_net.ko:\n".into(),
            modules_alias: "alias virtio:d00000001v* virtio_net\n".into(),
            modules_builtin: "kernel/net/packet/af_packet.ko\n".into(),
        }
    }

    #[test]
    fn tree_has_init_busybox_links_agent_and_modules() {
        let sel = selection();
        let applets: Vec<String> = ["bin/sh", "sbin/modprobe", "usr/bin/udhcpc", "linuxrc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let contents = Contents {
            agent: b"AGENT",
            busybox: b"BUSYBOX",
            applets: &applets,
            modules: &sel,
            build_info: "kernel 6.1.0-test\n",
            ca_bundle: b"-----BEGIN CERTIFICATE-----\n",
        };
        let bytes = assemble(&contents).unwrap().to_bytes();
        let entries = read_newc(&bytes).unwrap();
        let get = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        let init = get("init");
        assert_eq!(init.mode, 0o100755);
        assert!(init.data.starts_with(b"#!/bin/sh\n"));
        assert_eq!(get("bin/busybox").data, b"BUSYBOX");
        assert!(get("bin/sh").is_symlink());
        assert_eq!(get("sbin/modprobe").data, b"/bin/busybox");
        assert!(entries.iter().all(|e| e.path != "linuxrc"));
        assert_eq!(get("usr/bin/ferric-agent").data, b"AGENT");
        assert_eq!(get("usr/bin/ferric-agent").mode, 0o100755);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("tmp").mode, 0o041777);
        assert_eq!(
            get("lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko").data,
            b"module bytes"
        );
        assert_eq!(
            get("lib/modules/6.1.0-test/modules.alias").data,
            b"alias virtio:d00000001v* virtio_net\n"
        );
        assert_eq!(
            get("etc/ssl/certs/ca-certificates.crt").data,
            b"-----BEGIN CERTIFICATE-----\n"
        );
        assert!(get("usr/share/udhcpc/default.script")
            .data
            .starts_with(b"#!/bin/sh"));
        // The ramdisk marker is written by /init at boot, never shipped: its presence must
        // mean "our init ran".
        assert!(entries.iter().all(|e| e.path != "etc/ferric-ramdisk"));
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let a = gzip(&data).unwrap();
        let b = gzip(&data).unwrap();
        assert_eq!(a, b);
        // gzip header: magic, deflate, no flags, mtime 0, xfl 2 (best), OS 3.
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn init_script_is_valid_shell() {
        // `sh -n` parses without running; busybox ash and dash accept the same syntax here.
        for (name, text) in [
            ("init", INIT_SCRIPT),
            ("udhcpc", UDHCPC_SCRIPT),
            ("uevent", UEVENT_SCRIPT),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", text])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
