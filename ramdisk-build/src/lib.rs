//! Builds the Ferric ramdisk: a Debian kernel, a reproducible gzip-compressed newc
//! initramfs (busybox, the static `ferric-agent`, a curated set of drivers and an init
//! script) and an iPXE script that boots them.
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
