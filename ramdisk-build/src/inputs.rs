//! Finding (or fetching) the three inputs: the static agent, a static busybox and a Debian
//! kernel with its modules.
//!
//! Fetching uses the machine's own Debian tools: `apt-get download` into the cache
//! directory and `dpkg-deb -x` into a directory named after the `.deb`, so a second build
//! reuses both and gets the same bytes. The agent is built with cargo for the musl target
//! when its default path does not exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::elf;

/// Target triple the agent must be built for (static musl).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";
const X86_64: u16 = 62;

/// Runs a command, failing with its stderr when it exits non-zero.
fn run(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that `path` is a static x86-64 ELF executable and returns its bytes.
pub fn read_static_x86_64(path: &Path, what: &str) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let machine = elf::machine(&bytes).with_context(|| format!("{what} {}", path.display()))?;
    if machine != X86_64 {
        bail!(
            "{what} {} is not an x86-64 binary (e_machine {machine})",
            path.display()
        );
    }
    if !elf::is_static(&bytes).with_context(|| format!("{what} {}", path.display()))? {
        bail!(
            "{what} {} is dynamically linked; the ramdisk has no libc or loader (build it for {AGENT_TARGET})",
            path.display()
        );
    }
    Ok(bytes)
}

/// The agent binary: `explicit` if given (it must exist), else the default musl release
/// build under the workspace's target directory (`$CARGO_TARGET_DIR` when set), built with
/// cargo when missing.
pub fn agent(explicit: Option<&Path>, workspace: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let path = target_dir.join(AGENT_TARGET).join("release/ferric-agent");
    if path.exists() {
        return Ok(path);
    }
    eprintln!(
        "ramdisk-build: {} missing, building ferric-agent",
        path.display()
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            AGENT_TARGET,
            "-p",
            "ferric-agent",
        ])
        .current_dir(workspace)
        .status()
        .context("cannot run cargo to build ferric-agent")?;
    if !status.success() {
        bail!("building ferric-agent failed ({status}); pass --agent PATH to use another binary");
    }
    if !path.exists() {
        bail!(
            "cargo built ferric-agent but {} does not exist",
            path.display()
        );
    }
    Ok(path)
}

/// Downloads `package` with `apt-get download` into `cache` (unless a `.deb` of it is
/// already there) and extracts it with `dpkg-deb -x`; returns the extracted root.
pub fn fetch_deb(package: &str, cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let deb = match find_deb(package, cache)? {
        Some(d) => d,
        None => {
            eprintln!("ramdisk-build: apt-get download {package}");
            run(Command::new("apt-get")
                .args(["download", package])
                .current_dir(cache))?;
            find_deb(package, cache)?.ok_or_else(|| {
                anyhow!(
                    "apt-get download {package} left no .deb in {}",
                    cache.display()
                )
            })?
        }
    };
    extract_deb(&deb, cache)
}

/// Extracts `deb` into `cache/<deb file stem>` (once; a marker file records completion).
pub fn extract_deb(deb: &Path, cache: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .ok_or_else(|| anyhow!("{} has no file name", deb.display()))?
        .to_string_lossy()
        .into_owned();
    let dest = cache.join(&stem);
    let marker = cache.join(format!("{stem}.extracted"));
    if marker.exists() && dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    // A per-process scratch name: two builds sharing the cache may extract at once.
    let tmp = cache.join(format!("{stem}.tmp.{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    if marker.exists() && dest.is_dir() {
        // Another build finished first; its tree is identical.
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(dest);
    }
    if dest.exists() {
        // Left over from an interrupted extraction (no marker).
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("cannot remove {}", dest.display()))?;
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    std::fs::write(&marker, b"")?;
    Ok(dest)
}

fn find_deb(package: &str, cache: &Path) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .with_context(|| format!("cannot list {}", cache.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

/// The package `linux-image-amd64` currently depends on (e.g. `linux-image-6.1.0-56-amd64`),
/// running `apt-get update` first when apt knows nothing about it.
pub fn current_kernel_package() -> Result<String> {
    let query = || run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let parsed = query().ok().and_then(|o| parse_kernel_depends(&o));
    if let Some(p) = parsed {
        return Ok(p);
    }
    eprintln!("ramdisk-build: apt-cache knows no linux-image-amd64, running apt-get update");
    run(Command::new("apt-get").arg("update"))?;
    let out = query()?;
    parse_kernel_depends(&out).ok_or_else(|| {
        anyhow!("apt-cache depends linux-image-amd64 names no kernel package:\n{out}")
    })
}

/// Picks the first `Depends: linux-image-…` line of `apt-cache depends` output. apt shows
/// virtual packages as `<name>`; those cannot be downloaded and are skipped.
pub fn parse_kernel_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains(' '))
        .map(str::to_string)
}

/// A kernel: its image and its module directory.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel version, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

/// Finds the kernel in an extracted linux-image package (or any root holding
/// `boot/vmlinuz-<v>` and `[usr/]lib/modules/<v>`). Exactly one such version must exist.
pub fn kernel_in(root: &Path) -> Result<Kernel> {
    let mut found = Vec::new();
    for moddir in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = std::fs::read_dir(root.join(moddir)) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let version = e.file_name().to_string_lossy().into_owned();
            let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
            if vmlinuz.is_file() && e.path().join("kernel").is_dir() {
                found.push(Kernel {
                    version,
                    vmlinuz,
                    modules: e.path(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.version.cmp(&b.version));
    found.dedup_by(|a, b| a.version == b.version);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "{}: no boot/vmlinuz-<version> with a matching lib/modules/<version>/kernel",
            root.display()
        ),
        _ => bail!(
            "{}: several kernels ({}); pass an extracted package holding one",
            root.display(),
            found
                .iter()
                .map(|k| k.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The kernel to use: `--kernel-dir`, else `--kernel-deb` extracted into the cache, else
/// Debian's current amd64 kernel downloaded into the cache.
pub fn kernel(dir: Option<&Path>, deb: Option<&Path>, cache: &Path) -> Result<Kernel> {
    if let Some(d) = dir {
        return kernel_in(d);
    }
    if let Some(deb) = deb {
        return kernel_in(&extract_deb(deb, cache)?);
    }
    let package = current_kernel_package()?;
    kernel_in(&fetch_deb(&package, cache)?)
}

/// busybox: `explicit`, else `/bin/busybox` when it is static, else Debian's
/// `busybox-static` downloaded into the cache.
pub fn busybox(explicit: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let system = Path::new("/bin/busybox");
    if let Ok(bytes) = std::fs::read(system) {
        if elf::is_static(&bytes).unwrap_or(false) {
            return Ok(system.to_path_buf());
        }
    }
    let root = fetch_deb("busybox-static", cache)?;
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{}: busybox-static holds no bin/busybox", root.display()))
}

/// The CA bundle for `/etc/ssl/certs/ca-certificates.crt` (where the agent's HTTPS client
/// looks for roots): `explicit` verbatim, else built from Debian's `ca-certificates`
/// package the way its `update-ca-certificates` does by default (every Mozilla
/// certificate, concatenated; here in file-name order, so the result is reproducible).
/// Returns the bundle and a description of its source.
pub fn ca_bundle(explicit: Option<&Path>, cache: &Path) -> Result<(Vec<u8>, String)> {
    if let Some(p) = explicit {
        let bytes =
            std::fs::read(p).with_context(|| format!("cannot read CA bundle {}", p.display()))?;
        if !bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            bail!("{} holds no PEM certificate", p.display());
        }
        return Ok((bytes, p.display().to_string()));
    }
    let root = fetch_deb("ca-certificates", cache)?;
    let dir = root.join("usr/share/ca-certificates/mozilla");
    let bundle = concat_certs(&dir)?;
    Ok((bundle, dir.display().to_string()))
}

/// Concatenates the `*.crt` files of `dir` in file-name order, each ending in a newline.
pub fn concat_certs(dir: &Path) -> Result<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .crt files", dir.display());
    }
    let mut out = Vec::new();
    for f in files {
        let mut pem = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        if pem.last() != Some(&b'\n') {
            pem.push(b'\n');
        }
        out.extend_from_slice(&pem);
    }
    Ok(out)
}

/// The applets `busybox --list-full` reports (paths like `bin/sh`, `usr/sbin/udhcpc`).
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = run(Command::new(busybox).arg("--list-full"))?;
    let applets: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !applets.iter().any(|a| a == "bin/sh") {
        bail!("{} --list-full lists no bin/sh", busybox.display());
    }
    Ok(applets)
}

/// The `BusyBox v…` banner line (recorded in the ramdisk's build info).
pub fn busybox_version(busybox: &Path) -> String {
    Command::new(busybox)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        let virtual_first = "linux-image-amd64\n  Depends: <linux-image-virtual>\n  \
                             Depends: linux-image-6.12.9-amd64\n";
        assert_eq!(
            parse_kernel_depends(virtual_first).as_deref(),
            Some("linux-image-6.12.9-amd64")
        );
        assert_eq!(parse_kernel_depends("linux-image-amd64\n"), None);
        assert_eq!(parse_kernel_depends("  Depends: libc6\n"), None);
    }

    #[test]
    fn finds_one_kernel_in_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(kernel_in(root).is_err());
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), b"k").unwrap();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0-9-amd64/kernel")).unwrap();
        let k = kernel_in(root).unwrap();
        assert_eq!(k.version, "6.1.0-9-amd64");
        assert_eq!(k.modules, root.join("usr/lib/modules/6.1.0-9-amd64"));
        std::fs::write(root.join("boot/vmlinuz-6.2"), b"k").unwrap();
        std::fs::create_dir_all(root.join("lib/modules/6.2/kernel")).unwrap();
        let err = kernel_in(root).unwrap_err().to_string();
        assert!(err.contains("6.1.0-9-amd64, 6.2"), "{err}");
    }

    #[test]
    fn ca_bundle_concatenates_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |n: &str| format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----");
        std::fs::write(dir.path().join("b.crt"), pem("B")).unwrap();
        std::fs::write(dir.path().join("a.crt"), pem("A") + "\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let bundle = String::from_utf8(concat_certs(dir.path()).unwrap()).unwrap();
        assert_eq!(bundle, format!("{}\n{}\n", pem("A"), pem("B")));
        let empty = tempfile::tempdir().unwrap();
        assert!(concat_certs(empty.path()).is_err());
        // An explicit bundle is used verbatim, but must hold a certificate.
        let f = dir.path().join("bundle.pem");
        std::fs::write(&f, &bundle).unwrap();
        let (bytes, src) = ca_bundle(Some(&f), dir.path()).unwrap();
        assert_eq!(bytes, bundle.as_bytes());
        assert_eq!(src, f.display().to_string());
        assert!(ca_bundle(Some(&dir.path().join("notes.txt")), dir.path()).is_err());
    }

    #[test]
    fn refuses_dynamic_binaries() {
        let exe = std::env::current_exe().unwrap();
        let err = read_static_x86_64(&exe, "agent").unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(read_static_x86_64(&p, "agent").is_err());
    }
}
