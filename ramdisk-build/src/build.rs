//! The whole build: gather inputs, pick modules, assemble and compress the initramfs, write
//! `vmlinuz`, `initramfs` and `boot.ipxe` into the output directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::initramfs::{self, Contents};
use crate::inputs;
use crate::modules::{ModuleTree, DEFAULT_MODULES};

/// The iPXE script written next to the kernel and initramfs.
pub const BOOT_IPXE: &str = include_str!("../assets/boot.ipxe");

/// What to build from and where to put it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Agent binary; `None`: the workspace's musl release build (built if missing).
    pub agent: Option<PathBuf>,
    /// busybox binary; `None`: `/bin/busybox` if static, else Debian's busybox-static.
    pub busybox: Option<PathBuf>,
    /// A linux-image `.deb` to use.
    pub kernel_deb: Option<PathBuf>,
    /// An extracted linux-image package to use (wins over `kernel_deb`).
    pub kernel_dir: Option<PathBuf>,
    /// Where downloads and extracted packages are kept.
    pub cache: PathBuf,
    /// CA bundle to ship; `None`: built from Debian's ca-certificates package.
    pub ca_bundle: Option<PathBuf>,
    /// Modules to ship in addition to [`DEFAULT_MODULES`].
    pub extra_modules: Vec<String>,
    /// The Ferric workspace (for building the agent).
    pub workspace: PathBuf,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Report {
    /// Kernel version.
    pub kernel_version: String,
    /// Path and size of `vmlinuz`.
    pub vmlinuz: (PathBuf, u64),
    /// Path and size of `initramfs` (compressed).
    pub initramfs: (PathBuf, u64),
    /// Size of the uncompressed cpio archive.
    pub cpio_bytes: u64,
    /// Path of `boot.ipxe`.
    pub boot_ipxe: PathBuf,
    /// Agent binary used and its size.
    pub agent: (PathBuf, u64),
    /// busybox binary used and its size.
    pub busybox: (PathBuf, u64),
    /// Number of modules shipped and their total (decompressed) size.
    pub modules: (usize, u64),
    /// Requested modules the kernel does not have.
    pub modules_not_found: Vec<String>,
    /// Certificates in the CA bundle and where they came from.
    pub ca_bundle: (usize, String),
}

impl Report {
    /// Human-readable summary, one item per line.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = String::new();
        let _ = writeln!(s, "kernel     {}", self.kernel_version);
        let _ = writeln!(
            s,
            "vmlinuz    {:>10} bytes ({:.1} MiB)  {}",
            self.vmlinuz.1,
            mib(self.vmlinuz.1),
            self.vmlinuz.0.display()
        );
        let _ = writeln!(
            s,
            "initramfs  {:>10} bytes ({:.1} MiB; cpio {:.1} MiB)  {}",
            self.initramfs.1,
            mib(self.initramfs.1),
            mib(self.cpio_bytes),
            self.initramfs.0.display()
        );
        let _ = writeln!(
            s,
            "  agent    {:>10} bytes  {}",
            self.agent.1,
            self.agent.0.display()
        );
        let _ = writeln!(
            s,
            "  busybox  {:>10} bytes  {}",
            self.busybox.1,
            self.busybox.0.display()
        );
        let _ = writeln!(
            s,
            "  modules  {:>10} bytes in {} modules",
            self.modules.1, self.modules.0
        );
        let _ = writeln!(
            s,
            "  CA certs {:>10} from {}",
            self.ca_bundle.0, self.ca_bundle.1
        );
        if !self.modules_not_found.is_empty() {
            let _ = writeln!(
                s,
                "  not in this kernel: {}",
                self.modules_not_found.join(" ")
            );
        }
        let total = self.vmlinuz.1 + self.initramfs.1;
        let _ = writeln!(s, "total      {:>10} bytes ({:.1} MiB)", total, mib(total));
        let _ = writeln!(s, "ipxe       {}", self.boot_ipxe.display());
        s
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees
/// a half-written kernel or initramfs.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

/// Builds the ramdisk.
pub fn build(opts: &Options) -> Result<Report> {
    let kernel = inputs::kernel(
        opts.kernel_dir.as_deref(),
        opts.kernel_deb.as_deref(),
        &opts.cache,
    )?;
    let busybox_path = inputs::busybox(opts.busybox.as_deref(), &opts.cache)?;
    let busybox = inputs::read_static_x86_64(&busybox_path, "busybox")?;
    let applets = inputs::busybox_applets(&busybox_path)?;
    let agent_path = inputs::agent(opts.agent.as_deref(), &opts.workspace)?;
    let agent = inputs::read_static_x86_64(&agent_path, "agent")?;

    let (ca_bundle, ca_source) = inputs::ca_bundle(opts.ca_bundle.as_deref(), &opts.cache)?;
    let ca_count = ca_bundle
        .windows(27)
        .filter(|w| *w == b"-----BEGIN CERTIFICATE-----")
        .count();

    let tree = ModuleTree::open(&kernel.modules)?;
    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(opts.extra_modules.iter().cloned());
    let selection = tree.select(&wanted)?;
    for name in &selection.not_found {
        if opts
            .extra_modules
            .iter()
            .any(|m| crate::modules::module_name(m) == *name)
        {
            anyhow::bail!(
                "module {name} requested with --module is not in kernel {}",
                kernel.version
            );
        }
    }

    let mut build_info = format!(
        "kernel {}\n{}\nagent {} bytes\nmodules",
        kernel.version,
        inputs::busybox_version(&busybox_path),
        agent.len()
    );
    for m in &selection.modules {
        build_info.push(' ');
        build_info.push_str(&m.name);
    }
    build_info.push('\n');

    let archive = initramfs::assemble(&Contents {
        agent: &agent,
        busybox: &busybox,
        applets: &applets,
        modules: &selection,
        build_info: &build_info,
        ca_bundle: &ca_bundle,
    })?;
    let cpio = archive.to_bytes();
    let gz = initramfs::gzip(&cpio)?;

    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let vmlinuz_bytes = std::fs::read(&kernel.vmlinuz)
        .with_context(|| format!("cannot read {}", kernel.vmlinuz.display()))?;
    let vmlinuz_out = opts.out.join("vmlinuz");
    let initramfs_out = opts.out.join("initramfs");
    let ipxe_out = opts.out.join("boot.ipxe");
    write_atomic(&vmlinuz_out, &vmlinuz_bytes)?;
    write_atomic(&initramfs_out, &gz)?;
    write_atomic(&ipxe_out, BOOT_IPXE.as_bytes())?;

    Ok(Report {
        kernel_version: kernel.version,
        vmlinuz: (vmlinuz_out, vmlinuz_bytes.len() as u64),
        initramfs: (initramfs_out, gz.len() as u64),
        cpio_bytes: cpio.len() as u64,
        boot_ipxe: ipxe_out,
        agent: (agent_path, agent.len() as u64),
        busybox: (busybox_path, busybox.len() as u64),
        modules: (selection.modules.len(), selection.total_bytes()),
        modules_not_found: selection.not_found,
        ca_bundle: (ca_count, ca_source),
    })
}
