//! Booting the real Ferric ramdisk in QEMU for end-to-end deploys: prerequisites (with the
//! project's CI rule), building the static musl agent and the ramdisk, a QEMU virtual machine
//! whose serial console is collected line by line and which is killed when dropped, and the
//! check of what a whole-disk deploy left on the VM's disk file.
//!
//! Used by `tests/qemu_deploy.rs`. Network facts the callers rely on: QEMU's user-mode
//! network (slirp) gives the guest 10.0.2.15 and maps the gateway 10.0.2.2 to the host's
//! loopback, so servers on 127.0.0.1 are reachable from the guest as `10.0.2.2`; a
//! `hostfwd=tcp:127.0.0.1:P-:9999` rule lets the host reach the agent's API as
//! `127.0.0.1:P`.
//!
//! # Design
//! [`Vm`] owns the QEMU child and two reader threads: one splits the serial console (QEMU's
//! stdout under `-nographic`) into lines stamped with the time since QEMU was spawned (the
//! VM's "power-on"), optionally echoing them with a prefix; the other keeps QEMU's stderr.
//! Both end at EOF, when QEMU exits or is killed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent_process::workspace_root;
use crate::disk_layout::{read_at, read_layout, Layout, Partition, Table};
use crate::e2e::first_difference;

/// Rust target of the agent that goes into the ramdisk.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Logical sector size of QEMU's virtio disk (default 512).
const SECTOR: u64 = 512;
/// Sectors the primary GPT occupies (protective MBR, header, 32 sectors of 128 entries).
const GPT_PRIMARY_SECTORS: u64 = 34;
/// Sectors the backup GPT occupies at the end (entries and header).
const GPT_BACKUP_SECTORS: u64 = 33;

/// The cargo that runs this test (`$CARGO`), else `cargo` from `PATH`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// What is missing on this host to boot the ramdisk, as sentences naming the package or
/// command that provides it; empty when everything is there. `need_musl` is false when a
/// prebuilt agent is given (`FERRIC_AGENT_BIN`).
pub fn missing_prerequisites(need_musl: bool) -> Vec<String> {
    let mut missing = Vec::new();
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs("qemu-system-x86_64", "--version") {
        missing.push("qemu-system-x86_64 (Debian package qemu-system-x86)".to_string());
    }
    if need_musl {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let libdir = Command::new(rustc)
            .args(["--print", "target-libdir", "--target", MUSL_TARGET])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if !libdir.is_some_and(|d| d.is_dir()) {
            missing.push(format!(
                "the {MUSL_TARGET} Rust target (rustup target add {MUSL_TARGET})"
            ));
        }
        // ring compiles C for the static build with musl-gcc.
        if !runs("musl-gcc", "--version") && !runs("musl-gcc", "-v") {
            missing.push("musl-gcc (Debian package musl-tools)".to_string());
        }
    }
    missing
}

/// Runs `cmd` with its output in `log`, killing it after `timeout`; `Err` carries the tail
/// of the output.
fn run_logged(mut cmd: Command, what: &str, log: &Path, timeout: Duration) -> Result<(), String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} did not finish within {timeout:?} (killed); log:\n{}",
                    tail_of(log, 40)
                ));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("{what} failed ({status}):\n{}", tail_of(log, 40)));
    }
    Ok(())
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The static agent for the ramdisk: `$FERRIC_AGENT_BIN` when set, else
/// `cargo build --release --target x86_64-unknown-linux-musl -p ferric-agent` (a no-op when
/// up to date, so a stale binary is never booted) and its output path. Cargo's output goes
/// to `log`. Returns the path and how long the build took.
pub fn build_musl_agent(log: &Path, timeout: Duration) -> Result<(PathBuf, Duration), String> {
    if let Some(p) = std::env::var_os("FERRIC_AGENT_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok((p, Duration::ZERO))
        } else {
            Err(format!("FERRIC_AGENT_BIN={} is not a file", p.display()))
        };
    }
    let started = Instant::now();
    let mut cmd = Command::new(cargo());
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--release", "--target", MUSL_TARGET, "-p", "ferric-agent"]);
    run_logged(cmd, "cargo build (musl ferric-agent)", log, timeout)?;
    let path = target_dir().join(MUSL_TARGET).join("release/ferric-agent");
    if !path.is_file() {
        return Err(format!("cargo succeeded but {} is missing", path.display()));
    }
    Ok((path, started.elapsed()))
}

/// A built ramdisk.
#[derive(Clone, Debug)]
pub struct Ramdisk {
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs (gzip newc cpio).
    pub initramfs: PathBuf,
    /// `ramdisk-build`'s summary (sizes, kernel version, modules).
    pub summary: String,
    /// How long the build took (compiling ramdisk-build included).
    pub build_time: Duration,
}

impl Ramdisk {
    /// Sizes of the kernel and the initramfs in bytes.
    pub fn sizes(&self) -> (u64, u64) {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        (len(&self.vmlinuz), len(&self.initramfs))
    }
}

/// Builds the ramdisk into `out` around `agent` with
/// `cargo run --release -p ramdisk-build` (the same command the README gives), using the
/// workspace's download cache `target/ramdisk-cache` so Debian's kernel is fetched once.
/// `FERRIC_KERNEL_DEB` selects another kernel package, as in ramdisk-build's own boot test.
pub fn build_ramdisk(
    out: &Path,
    agent: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Ramdisk, String> {
    let started = Instant::now();
    let mut cmd = Command::new(cargo());
    cmd.arg("run")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--release", "-q", "-p", "ramdisk-build", "--"])
        .arg("--out")
        .arg(out)
        .arg("--agent")
        .arg(agent)
        .arg("--cache")
        .arg(workspace_root().join("target/ramdisk-cache"));
    if let Some(deb) = std::env::var_os("FERRIC_KERNEL_DEB") {
        cmd.arg("--kernel-deb").arg(deb);
    }
    run_logged(cmd, "ramdisk-build", log, timeout)?;
    let r = Ramdisk {
        vmlinuz: out.join("vmlinuz"),
        initramfs: out.join("initramfs"),
        summary: std::fs::read_to_string(log).unwrap_or_default(),
        build_time: started.elapsed(),
    };
    if !r.vmlinuz.is_file() || !r.initramfs.is_file() {
        return Err(format!(
            "ramdisk-build succeeded but {} has no vmlinuz/initramfs",
            out.display()
        ));
    }
    Ok(r)
}

/// The PCI slot of the VM's virtio disk (bus 0, function 0): the disk is
/// `/dev/disk/by-path/pci-0000:00:04.0` to udev, and to the agent without udev.
pub const DISK_PCI_SLOT: u32 = 4;
/// The disk's by-path name in the guest.
pub const DISK_BY_PATH: &str = "/dev/disk/by-path/pci-0000:00:04.0";

/// How to boot the VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel and initramfs.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Raw disk image attached as a virtio disk (`/dev/vda` in the guest, in PCI slot
    /// [`DISK_PCI_SLOT`]).
    pub disk: PathBuf,
    /// MAC address of the virtio NIC.
    pub mac: String,
    /// Host port on 127.0.0.1 forwarded to the guest's port 9999 (the agent's API).
    pub agent_port: u16,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Echo console lines to stdout with this prefix as they arrive.
    pub echo_prefix: Option<String>,
    /// Boot through UEFI firmware (OVMF) instead of SeaBIOS.
    pub uefi: Option<Uefi>,
}

/// UEFI firmware for a VM: OVMF's code (read only) and a private copy of its variable store,
/// which keeps the NVRAM (boot entries) from one boot of the VM to the next.
#[derive(Clone, Debug)]
pub struct Uefi {
    /// `OVMF_CODE_4M.fd`.
    pub code: PathBuf,
    /// The VM's own copy of `OVMF_VARS_4M.fd`.
    pub vars: PathBuf,
}

impl Uefi {
    /// Debian's OVMF (package `ovmf`) with a fresh variable store copied to `vars`; `None`
    /// when OVMF is not installed.
    pub fn fresh(vars: &Path) -> Option<Uefi> {
        let dir = Path::new("/usr/share/OVMF");
        let (code, template) = (dir.join("OVMF_CODE_4M.fd"), dir.join("OVMF_VARS_4M.fd"));
        if !code.is_file() || !template.is_file() {
            return None;
        }
        std::fs::copy(&template, vars).ok()?;
        Some(Uefi {
            code,
            vars: vars.to_owned(),
        })
    }

    fn args(&self, cmd: &mut Command) {
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            self.code.display()
        ));
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.vars.display()
        ));
    }
}

/// A running QEMU (TCG, no display, no reboot: a guest reboot or panic ends QEMU too).
/// Killed and reaped when dropped.
pub struct Vm {
    child: Child,
    started: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    /// What the console printed after its last newline (a `login: ` prompt).
    partial: Arc<Mutex<String>>,
    stdin: Option<ChildStdin>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    exit: Option<(ExitStatus, Duration)>,
}

impl Vm {
    /// Spawns `qemu-system-x86_64 -accel tcg -m … -nographic -no-reboot` with a virtio NIC on
    /// user-mode networking (forwarding `127.0.0.1:agent_port` to the guest's 9999) and a
    /// virtio raw disk. The VM's power-on time is the moment QEMU is spawned.
    pub fn start(cfg: &VmConfig) -> Result<Vm, String> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", &cfg.memory_mib.to_string()])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&cfg.vmlinuz)
            .arg("-initrd")
            .arg(&cfg.initramfs)
            .args(["-append", &cfg.append])
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:9999",
                cfg.agent_port
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={},addr=0x3", cfg.mac))
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=disk0,format=raw,cache=writeback",
                cfg.disk.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtio-blk-pci,drive=disk0,addr={DISK_PCI_SLOT:#x}"
            ));
        if let Some(u) = &cfg.uefi {
            u.args(&mut cmd);
        }
        Vm::spawn(cmd, cfg.echo_prefix.clone())
    }

    /// Powers on a VM with no kernel and no network: the UEFI firmware boots what its NVRAM
    /// and `disk` (a virtio disk) offer. Its console shows the firmware's boot manager lines
    /// (`BdsDxe: loading Boot0004 "debian" from HD(1,GPT,…)/\EFI\…`).
    pub fn boot_firmware(
        uefi: &Uefi,
        disk: &Path,
        memory_mib: u32,
        echo_prefix: Option<String>,
    ) -> Result<Vm, String> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", &memory_mib.to_string()])
            .args(["-nographic", "-no-reboot", "-net", "none"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,cache=writeback",
                disk.display()
            ));
        uefi.args(&mut cmd);
        Vm::spawn(cmd, echo_prefix)
    }

    fn spawn(mut cmd: Command, prefix: Option<String>) -> Result<Vm, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let partial = Arc::new(Mutex::new(String::new()));
        let (sink, partial_sink) = (lines.clone(), partial.clone());
        let stdout_reader = std::thread::Builder::new()
            .name("qemu-serial".into())
            .spawn(move || {
                // The console writes CRLF and the odd escape sequence; keep it readable.
                let clean = |b: &[u8]| -> String {
                    String::from_utf8_lossy(b)
                        .chars()
                        .filter(|c| *c == '\t' || !c.is_control())
                        .collect()
                };
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                        let text = clean(&pending[..i]);
                        pending.drain(..=i);
                        if let Some(p) = &prefix {
                            println!("{p}{text}");
                        }
                        lock(&sink).push((started.elapsed(), text));
                    }
                    *lock(&partial_sink) = clean(&pending);
                }
                if !pending.is_empty() {
                    lock(&sink).push((started.elapsed(), clean(&pending)));
                }
                lock(&partial_sink).clear();
            })
            .map_err(|e| format!("cannot spawn the serial reader: {e}"))?;
        let stderr_reader = std::thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || {
                let mut s = String::new();
                let _ = stderr.read_to_string(&mut s);
                s
            })
            .map_err(|e| format!("cannot spawn the stderr reader: {e}"))?;
        Ok(Vm {
            child,
            started,
            lines,
            partial,
            stdin,
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            exit: None,
        })
    }

    /// When QEMU was spawned (the VM's power-on).
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Console lines so far, each with its arrival time since power-on.
    pub fn lines(&self) -> Vec<(Duration, String)> {
        lock(&self.lines).clone()
    }

    /// The first console line containing `needle`, with its time since power-on.
    pub fn find(&self, needle: &str) -> Option<(Duration, String)> {
        lock(&self.lines)
            .iter()
            .find(|(_, l)| l.contains(needle))
            .cloned()
    }

    /// Waits up to `timeout` for `needle` on the console, in a finished line or in what it
    /// printed after its last newline (a prompt); returns whether it appeared.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.find(needle).is_some() || lock(&self.partial).contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` on the serial console (QEMU's stdin is the guest's ttyS0).
    pub fn type_text(&mut self, text: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("QEMU's stdin is closed")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("typing on the console: {e}"))
    }

    /// The exit status and time since power-on, if QEMU has exited.
    pub fn try_exit(&mut self) -> Option<(ExitStatus, Duration)> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some((status, self.started.elapsed()));
                self.join_readers();
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for QEMU to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_exit() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills QEMU (if running) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some((status, self.started.elapsed()));
            }
            self.join_readers();
        }
    }

    fn join_readers(&mut self) {
        if let Some(t) = self.stdout_reader.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_reader.take() {
            if let Ok(s) = t.join() {
                if !s.trim().is_empty() {
                    lock(&self.lines).push((self.started.elapsed(), format!("[qemu stderr] {s}")));
                }
            }
        }
    }

    /// The whole console log, one `[  12.34s] line` per line (for failure reports and files).
    pub fn serial_log(&self) -> String {
        lock(&self.lines)
            .iter()
            .map(|(t, l)| format!("[{:7.2}s] {l}\n", t.as_secs_f64()))
            .collect()
    }

    /// The last `n` console lines, formatted like [`Vm::serial_log`].
    pub fn serial_tail(&self, n: usize) -> String {
        let lines = lock(&self.lines);
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|(t, l)| format!("[{:7.2}s] {l}\n", t.as_secs_f64()))
            .collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`verify_whole_disk_deploy`] found.
#[derive(Clone, Debug)]
pub struct DeployedDisk {
    /// The disk's partition table after the deploy.
    pub layout: Layout,
    /// The `config-2` partition.
    pub config_drive: Partition,
}

/// Checks what a whole-disk deploy of the GPT image `image` with the config drive `iso` left
/// on `disk` (a raw file): the image bytes (boot code 0..440, and everything after the primary
/// GPT up to the image's backup GPT: adding a partition rewrites LBA 0–33 and retires the
/// image's last 33 sectors), a valid GPT whose backup sits at the end of the disk, every
/// partition of the image unchanged, and a partition named `config-2` after the image holding
/// `iso` byte for byte. `image_file` is the image written to a file (to parse its table).
pub fn verify_whole_disk_deploy(
    disk: &Path,
    image_file: &Path,
    image: &[u8],
    iso: &[u8],
) -> Result<DeployedDisk, String> {
    let len = image.len() as u64;
    let head = read_at(disk, 0, 440).map_err(|e| format!("{}: {e}", disk.display()))?;
    if let Some(d) = first_difference(&head, &image[..440]) {
        return Err(format!(
            "boot code (bytes 0..440) differs from the image: {d}"
        ));
    }
    let from = GPT_PRIMARY_SECTORS * SECTOR;
    let to = len - GPT_BACKUP_SECTORS * SECTOR;
    let body = read_at(disk, from, (to - from) as usize)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    if let Some(d) = first_difference(&body, &image[from as usize..to as usize]) {
        return Err(format!(
            "image bytes {from}..{to} differ on the disk (offsets relative to {from}): {d}"
        ));
    }
    let layout = read_layout(disk)?;
    if layout.table != Table::Gpt {
        return Err(format!("the disk has a {:?} table, not GPT", layout.table));
    }
    if layout.gpt_backup_at_end != Some(true) {
        return Err("no valid backup GPT header at the last sector of the disk".into());
    }
    let last_lba = layout.disk_size / SECTOR - 1;
    if layout.gpt_last_usable_lba != Some(last_lba - GPT_BACKUP_SECTORS) {
        return Err(format!(
            "last usable LBA {:?}, expected {} (the whole disk minus the backup GPT)",
            layout.gpt_last_usable_lba,
            last_lba - GPT_BACKUP_SECTORS
        ));
    }
    let original = read_layout(image_file)?;
    for p in &original.partitions {
        if !layout.partitions.contains(p) {
            return Err(format!(
                "image partition {p:?} is not unchanged on the disk: {:?}",
                layout.partitions
            ));
        }
    }
    let cd = layout
        .partitions
        .iter()
        .find(|p| p.name == "config-2")
        .cloned()
        .ok_or_else(|| format!("no partition named config-2: {:?}", layout.partitions))?;
    if cd.start < len || cd.start + cd.size > (last_lba - GPT_BACKUP_SECTORS + 1) * SECTOR {
        return Err(format!(
            "config-2 partition {cd:?} is not between the image's end ({len}) and the backup GPT"
        ));
    }
    if cd.size < iso.len() as u64 {
        return Err(format!(
            "config-2 partition ({} bytes) is smaller than the ISO ({} bytes)",
            cd.size,
            iso.len()
        ));
    }
    let written = read_at(disk, cd.start, iso.len()).map_err(|e| format!("{e}"))?;
    if let Some(d) = first_difference(&written, iso) {
        return Err(format!("the config-2 partition does not hold the ISO: {d}"));
    }
    Ok(DeployedDisk {
        layout,
        config_drive: cd,
    })
}

/// `/proc/loadavg`'s first three fields (the machine is shared; timings depend on it).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{guid_bytes, pattern, test_image, TableKind, LINUX_FS_GUID};

    const MIB: usize = 1 << 20;

    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// What a correct deploy leaves: `image` on a `disk_size` disk, a partition `name`d
    /// `config-2` at `cd_start` holding `iso`, the GPT grown to the disk with its backup at the end.
    /// Written here independently of the agent's imagewriter.
    fn deployed(
        image: &[u8],
        disk_size: usize,
        cd_start: usize,
        iso: &[u8],
        name: &str,
    ) -> Vec<u8> {
        let s = 512;
        let mut disk = image.to_vec();
        disk.resize(disk_size, 0);
        let last = (disk_size / s - 1) as u64;
        let mut entries = disk[2 * s..34 * s].to_vec();
        let e = &mut entries[128..256];
        e[0..16].copy_from_slice(&guid_bytes(LINUX_FS_GUID));
        e[16..32].copy_from_slice(&guid_bytes("C0F16000-0002-4000-8000-000000000002"));
        put_u64(e, 32, (cd_start / s) as u64);
        put_u64(e, 40, ((cd_start + 2 * MIB) / s - 1) as u64);
        for (i, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        disk[cd_start..cd_start + iso.len()].copy_from_slice(iso);
        disk[2 * s..34 * s].copy_from_slice(&entries);
        let entries_crc = crc32fast::hash(&entries);
        let mut hdr = disk[s..s + 92].to_vec();
        put_u64(&mut hdr, 32, last);
        put_u64(&mut hdr, 48, last - 33);
        put_u32(&mut hdr, 88, entries_crc);
        let header = |h: &mut Vec<u8>| {
            put_u32(h, 16, 0);
            let crc = crc32fast::hash(h);
            put_u32(h, 16, crc);
        };
        let mut backup = hdr.clone();
        header(&mut hdr);
        disk[s..s + 92].copy_from_slice(&hdr);
        put_u64(&mut backup, 24, last);
        put_u64(&mut backup, 32, 1);
        put_u64(&mut backup, 72, last - 32);
        header(&mut backup);
        let b = last as usize * s;
        disk[b - 32 * s..b].copy_from_slice(&entries);
        disk[b..b + 92].copy_from_slice(&backup);
        // Protective MBR covering the grown disk.
        put_u32(&mut disk, 446 + 12, last as u32);
        disk
    }

    struct Case {
        _dir: tempfile::TempDir,
        image_file: PathBuf,
        disk_file: PathBuf,
        image: Vec<u8>,
        iso: Vec<u8>,
    }

    fn case(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (Case, Result<DeployedDisk, String>) {
        let dir = tempfile::tempdir().unwrap();
        let image = test_image(TableKind::Gpt, 8 * MIB, 3).bytes;
        let mut iso = pattern(256 * 1024, 5);
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let mut disk = deployed(&image, 16 * MIB, 12 * MIB, &iso, name);
        edit(&mut disk);
        let image_file = dir.path().join("image.raw");
        let disk_file = dir.path().join("disk.raw");
        std::fs::write(&image_file, &image).unwrap();
        std::fs::write(&disk_file, &disk).unwrap();
        let r = verify_whole_disk_deploy(&disk_file, &image_file, &image, &iso);
        let c = Case {
            _dir: dir,
            image_file,
            disk_file,
            image,
            iso,
        };
        (c, r)
    }

    #[test]
    fn accepts_a_correct_deploy() {
        let (_, r) = case("config-2", |_| {});
        let d = r.expect("a correct deploy is accepted");
        assert_eq!(d.config_drive.number, 2);
        assert_eq!(d.config_drive.start, 12 * MIB as u64);
        assert_eq!(d.config_drive.size, 2 * MIB as u64);
        assert_eq!(d.layout.partitions.len(), 2);
    }

    #[test]
    fn rejects_a_changed_image_byte() {
        let (_, r) = case("config-2", |d| d[5 * MIB + 7] ^= 1);
        let e = r.unwrap_err();
        assert!(e.contains("differ on the disk"), "{e}");
        let (_, r) = case("config-2", |d| d[17] ^= 1);
        assert!(r.unwrap_err().contains("boot code"));
    }

    #[test]
    fn rejects_a_wrong_config_drive() {
        let (_, r) = case("config-2", |d| d[12 * MIB + 1000] ^= 0xff);
        let e = r.unwrap_err();
        assert!(e.contains("does not hold the ISO"), "{e}");
    }

    #[test]
    fn rejects_a_backup_gpt_left_inside_the_disk() {
        let (c, r) = case("config-2", |d| {
            let n = d.len();
            d[n - 512..].fill(0);
        });
        let e = r.unwrap_err();
        assert!(e.contains("backup GPT"), "{e}");
        // The same checks pass on the untouched disk (the case itself is sound).
        let good = deployed(&c.image, 16 * MIB, 12 * MIB, &c.iso, "config-2");
        std::fs::write(&c.disk_file, good).unwrap();
        verify_whole_disk_deploy(&c.disk_file, &c.image_file, &c.image, &c.iso).unwrap();
    }

    #[test]
    fn rejects_a_disk_without_config_2() {
        let (_, r) = case("config-3", |_| {});
        let e = r.unwrap_err();
        assert!(e.contains("no partition named config-2"), "{e}");
        // A damaged entry array is refused too (its CRC no longer matches).
        let (_, r) = case("config-2", |d| d[2 * 512 + 128 + 56] = b'X');
        let e = r.unwrap_err();
        assert!(e.contains("CRC"), "{e}");
    }
}
