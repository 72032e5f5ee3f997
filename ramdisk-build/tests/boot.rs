//! End-to-end: build the ramdisk twice (it must be byte-identical), boot it in QEMU (TCG)
//! with a stand-in agent (tests/fixtures/standin-agent.rs), and check on the serial log
//! that drivers load, eth0 gets 10.0.2.15 by DHCP, /dev/vda exists, the agent is started,
//! restarted after it exits, and can power the machine off.
//!
//! Needs: qemu-system-x86_64, the x86_64-unknown-linux-musl Rust target, and either network
//! access to Debian's archive (apt-get download of the kernel and busybox-static) or those
//! packages already in `target/ramdisk-cache`. When `CI` is set, anything missing is a
//! failure; otherwise the test skips loudly.
//!
//! Prints the kernel and initramfs sizes and the time from QEMU start to the agent start.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for one QEMU run (TCG on a 2-core machine boots in well under a minute).
const QEMU_TIMEOUT_SECS: u64 = 300;

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Missing facility: fail in CI, skip loudly elsewhere. Returns whether to skip.
fn missing(what: &str) -> bool {
    if in_ci() {
        panic!("CI is set but {what}");
    }
    eprintln!("\n!!! SKIPPING the QEMU boot test: {what} !!!\n");
    true
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_standin(dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standin-agent.rs");
    let out = dir.join("standin-agent");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let o = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--target",
            "x86_64-unknown-linux-musl",
            "-O",
        ])
        .args(["-C", "strip=symbols"])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "rustc --target x86_64-unknown-linux-musl failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

fn build_ramdisk(out: &Path, agent: &Path) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_ramdisk-build"))
        .arg("--out")
        .arg(out)
        .arg("--agent")
        .arg(agent)
        .arg("--cache")
        .arg(workspace().join("target/ramdisk-cache"))
        .output()
        .map_err(|e| format!("cannot run ramdisk-build: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ramdisk-build failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn ramdisk_boots_in_qemu_and_runs_the_agent() {
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu_ok && missing("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = match build_standin(tmp.path()) {
        Ok(a) => a,
        Err(e) => {
            if missing(&format!("the stand-in agent cannot be built: {e}")) {
                return;
            }
            unreachable!()
        }
    };

    let out1 = tmp.path().join("out1");
    let summary = match build_ramdisk(&out1, &agent) {
        Ok(s) => s,
        Err(e) => {
            if missing(&format!("no kernel/busybox could be obtained: {e}")) {
                return;
            }
            unreachable!()
        }
    };
    print!("{summary}");

    // Reproducibility on the real inputs: a second build gives the same bytes.
    let out2 = tmp.path().join("out2");
    build_ramdisk(&out2, &agent).expect("second build");
    for f in ["vmlinuz", "initramfs", "boot.ipxe"] {
        let a = std::fs::read(out1.join(f)).unwrap();
        let b = std::fs::read(out2.join(f)).unwrap();
        assert!(a == b, "{f} differs between two builds of the same inputs");
    }

    let kernel_size = std::fs::metadata(out1.join("vmlinuz")).unwrap().len();
    let initramfs_size = std::fs::metadata(out1.join("initramfs")).unwrap().len();
    let total = kernel_size + initramfs_size;
    println!(
        "sizes: kernel {kernel_size} B, initramfs {initramfs_size} B, total {:.1} MiB",
        total as f64 / 1048576.0
    );

    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let started = Instant::now();
    let mut child = Command::new("timeout")
        .arg(QEMU_TIMEOUT_SECS.to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nographic",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(out1.join("vmlinuz"))
        .arg("-initrd")
        .arg(out1.join("initramfs"))
        .args(["-append", "console=ttyS0 ipa-debug=1 panic=-1"])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send((started.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    let status = child.wait().expect("wait qemu");
    let elapsed = started.elapsed();
    reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let lines: Vec<(Duration, String)> = rx.try_iter().collect();
    let log: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let log_path = tmp.path().join("serial.log");
    std::fs::write(&log_path, &log).unwrap();
    let fail = |msg: &str| -> ! {
        panic!("{msg}\n--- serial log ---\n{log}\n--- qemu stderr ---\n{stderr}");
    };
    let find = |needle: &str| lines.iter().find(|(_, l)| l.contains(needle));

    // Timeout's status 124 means QEMU was killed: the guest never powered off.
    if !status.success() {
        fail(&format!(
            "QEMU did not exit cleanly after {elapsed:?}: {status} (124 = timed out)"
        ));
    }

    let Some((_, modules)) = find("ferric-init: modules loaded:") else {
        fail("init never reported its modules")
    };
    for m in ["virtio_net", "virtio_blk", "virtio_pci"] {
        if !modules.split_whitespace().any(|w| w == m) {
            fail(&format!("{m} not loaded: {modules}"));
        }
    }
    if find("STANDIN addr eth0 10.0.2.15/24").is_none() {
        fail("eth0 did not get 10.0.2.15 by DHCP");
    }
    if find("STANDIN route default via 10.0.2.2 dev eth0").is_none() {
        fail("no default route from DHCP");
    }
    if find("nameserver 10.0.2.3").is_none() {
        fail("resolv.conf was not written from DHCP");
    }
    if find("dev_vda=true").is_none() {
        fail("/dev/vda does not exist");
    }
    if find("STANDIN marker=true rootfs=rootfs").is_none() {
        fail("the agent did not see /etc/ferric-ramdisk on a rootfs root");
    }
    if !find("STANDIN cmdline=").is_some_and(|(_, l)| l.contains("ipa-debug=1")) {
        fail("kernel command line not visible to the agent");
    }
    let Some((agent_at, agent_line)) = find("starting /usr/bin/ferric-agent (start 1") else {
        fail("the agent was never started")
    };
    if find("STANDIN start=1").is_none() || find("STANDIN start=2").is_none() {
        fail("the agent was not restarted after it exited");
    }
    if find("ferric-agent exited with status 3").is_none() {
        fail("init did not report the agent's exit status");
    }
    if find("STANDIN powering off").is_none() || find("STANDIN poweroff returned").is_some() {
        fail("power off did not happen");
    }
    if find("ipa-debug: shells started on /dev/ttyS0").is_none() {
        fail("ipa-debug=1 did not start a console shell");
    }
    println!(
        "timing: QEMU start -> agent start {:.1} s wall ({agent_line}); QEMU start -> power off {:.1} s",
        agent_at.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
