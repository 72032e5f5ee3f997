//! Builds the Ferric ramdisk: a Debian kernel, a reproducible gzip-compressed newc
//! initramfs (busybox, the static `ferric-agent`, a curated set of drivers and an init
//! script) and an iPXE script that boots them.
//!
//! ```text
//! cargo run --release -p ramdisk-build -- --out DIR [--agent PATH] [--busybox PATH]
//!     [--kernel-deb FILE | --kernel-dir DIR] [--cache DIR] [--ca-bundle FILE]
//!     [--module NAME]...
//! ```
//! writes `DIR/vmlinuz`, `DIR/initramfs`, `DIR/boot.ipxe` and prints their sizes.
//!
//! # Inputs
//! - agent: `--agent`, else `$CARGO_TARGET_DIR` (or `<workspace>/target`)
//!   `/x86_64-unknown-linux-musl/release/ferric-agent`, built with cargo when missing
//!   (ring needs `musl-gcc`: Debian package `musl-tools`). Must be a static x86-64 ELF.
//! - busybox: `--busybox`, else `/bin/busybox` when static, else Debian's
//!   `busybox-static` (`apt-get download` + `dpkg-deb -x` into the cache).
//! - kernel: `--kernel-dir` (an extracted linux-image package), `--kernel-deb`, else the
//!   package `linux-image-amd64` depends on, downloaded into the cache
//!   (`<workspace>/target/ramdisk-cache` by default).
//! - CA bundle (`/etc/ssl/certs/ca-certificates.crt`, where the agent's HTTPS client
//!   looks): `--ca-bundle`, else every Mozilla certificate of Debian's `ca-certificates`
//!   package concatenated in name order (what `update-ca-certificates` builds by default).
//!
//! # The initramfs
//! [`initramfs::assemble`] lays it out: `/init` (`assets/init`), busybox and its applet
//! links, `/usr/bin/ferric-agent`, udhcpc's event script (`assets/udhcpc.script`),
//! `/etc/ferric-build` (versions of what went in) and `lib/modules/<version>` holding
//! [`modules::DEFAULT_MODULES`] plus dependencies, with generated `modules.dep`,
//! `modules.alias` and the kernel's `modules.builtin`. Boot-time behaviour (mounts, the
//! `/etc/ferric-ramdisk` marker, driver loading by modalias, DHCP on every NIC with
//! BOOTIF first, the agent restart loop, `ipa-debug=1` shells) is documented at the top of
//! `assets/init`.
//!
//! # Decisions
//! - **modules.dep is generated** from each module's `.modinfo` (Debian packages do not
//!   ship it; their postinst runs depmod). On Debian's 6.1 kernel the result was checked
//!   against kmod's depmod: identical dependency sets and aliases for all shipped modules.
//! - **Compressed modules are decompressed at build time** (`.ko.xz`/`.ko.zst`/`.ko.gz`,
//!   pure-Rust decoders), so busybox modprobe never needs decompression support. Checked
//!   with Debian trixie's 6.12 kernel (`.ko.xz`, merged `/usr`): the ramdisk boots, loads
//!   its drivers and gets DHCP leases in QEMU (`FERRIC_KERNEL_DEB=… cargo test --test boot`).
//! - **gzip** (flate2, level 9) for the archive. On the 6.1 ramdisk xz (crc32, 1 MiB
//!   dictionary) would be ~27 % smaller, but there is no pure-Rust xz/zstd encoder of
//!   comparable ratio in the dependency set, and kernel + initramfs is well under the
//!   24 MiB budget.
//! - **Reproducible**: [`cpio::Archive`] sorts entries and fixes mtime, owners and inode
//!   numbers; gzip has mtime 0 and a fixed OS byte; downloaded packages are cached and
//!   reused. `tests/boot.rs` builds twice and compares bytes.
//!
//! # Tests
//! Unit tests cover the cpio writer (layout bytes, own reader and GNU cpio as an
//! independent reader), ELF parsing, module resolution on a real depmod fixture, and the
//! tree layout. `tests/boot.rs` boots the result in QEMU (needs `qemu-system-x86`, `cpio`,
//! the musl target and Debian's archive; it fails when `CI` is set and those are missing).
//!
//! The crate stands alone: it depends on no other Ferric crate. `main.rs` only parses the
//! command line and calls [`build::build`].

#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;
pub mod elf;
pub mod initramfs;
pub mod inputs;
pub mod modules;
