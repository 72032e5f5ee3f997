//! End-to-end: build the ramdisk, boot it in QEMU (TCG) and read the serial console.
//!
//! `ramdisk_boots_in_qemu_and_runs_the_agent` uses a stand-in agent
//! (tests/fixtures/standin-agent.rs): it builds twice (the bytes must be identical), boots
//! with two NICs (virtio, and an e1000 named by BOOTIF) and a virtio disk, and checks that
//! drivers load, both NICs get their DHCP address with the BOOTIF lease winning the default
//! route and DNS, /dev/vda exists, the agent sees the ramdisk marker, is restarted after it
//! exits, and can power the machine off.
//!
//! `real_agent_serves_its_api_and_powers_off` boots the real musl `ferric-agent` (when it
//! has been built) in standalone mode, talks to its API through a loopback port forward
//! and has it power the VM off.
//!
//! Needs qemu-system-x86_64, the x86_64-unknown-linux-musl Rust target, and Debian's
//! archive (apt-get download of the kernel and busybox-static) or those packages already
//! in `target/ramdisk-cache`. When `CI` is set anything missing is a failure; otherwise the
//! test skips loudly. Prints sizes and the time from QEMU start to the agent start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for one QEMU run (TCG on a 2-core machine boots in well under a minute).
const QEMU_TIMEOUT_SECS: u64 = 300;
/// MAC of the virtio NIC (QEMU's default first MAC).
const VIRTIO_MAC: &str = "52:54:00:12:34:56";
/// MAC of the e1000 NIC, passed as BOOTIF.
const BOOTIF_MAC: &str = "52:54:00:12:34:57";

/// One QEMU (and one ramdisk build) at a time: the machine has two cores, and builds share
/// the download cache.
static SERIAL: Mutex<()> = Mutex::new(());

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Missing facility: fail in CI, skip loudly elsewhere. Returns true (skip) or panics.
fn missing(what: &str) -> bool {
    if in_ci() {
        panic!("CI is set but {what}");
    }
    eprintln!("\n!!! SKIPPING a QEMU boot test: {what} !!!\n");
    true
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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

/// Builds with Debian's current kernel, or the linux-image .deb named by
/// `FERRIC_KERNEL_DEB` (e.g. to check a newer kernel with .ko.xz modules).
fn build_ramdisk(out: &Path, agent: &Path) -> Result<String, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ramdisk-build"));
    if let Some(deb) = std::env::var_os("FERRIC_KERNEL_DEB") {
        cmd.arg("--kernel-deb").arg(deb);
    }
    let o = cmd
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

/// A running QEMU whose serial console is collected line by line with arrival times.
struct Qemu {
    child: Child,
    started: Instant,
    lines: mpsc::Receiver<(Duration, String)>,
    seen: Vec<(Duration, String)>,
    stderr: std::thread::JoinHandle<String>,
}

impl Qemu {
    fn start(dir: &Path, append: &str, extra: &[String]) -> Qemu {
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let started = Instant::now();
        let mut child = Command::new("timeout")
            .arg(QEMU_TIMEOUT_SECS.to_string())
            .args(["qemu-system-x86_64", "-accel", "tcg", "-m", "1024"])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(dir.join("initramfs"))
            .args(["-append", append])
            .args(extra)
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu");
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send((started.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        Qemu {
            child,
            started,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for QEMU to exit (bounded by `timeout`) and collects the whole log.
    fn wait(mut self) -> (ExitStatus, Duration, Vec<(Duration, String)>, String) {
        let status = self.child.wait().expect("wait qemu");
        let elapsed = self.started.elapsed();
        let stderr = self.stderr.join().unwrap_or_default();
        // The reader thread ends at EOF; drain everything it sent.
        self.seen.extend(self.lines.iter());
        (status, elapsed, self.seen, stderr)
    }

    /// Waits until a console line contains `needle`, up to `limit`.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<(Duration, String)> {
        let deadline = Instant::now() + limit;
        if let Some(hit) = self.seen.iter().find(|(_, l)| l.contains(needle)) {
            return Some(hit.clone());
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(item) => {
                    let hit = item.1.contains(needle);
                    self.seen.push(item.clone());
                    if hit {
                        return Some(item);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }
}

fn report(lines: &[(Duration, String)], stderr: &str) -> String {
    let log: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    format!("--- serial log ---\n{log}\n--- qemu stderr ---\n{stderr}")
}

#[test]
fn ramdisk_boots_in_qemu_and_runs_the_agent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !qemu_available()
        && missing("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = match build_standin(tmp.path()) {
        Ok(a) => a,
        Err(e) => {
            missing(&format!("the stand-in agent cannot be built: {e}"));
            return;
        }
    };

    let out1 = tmp.path().join("out1");
    let summary = match build_ramdisk(&out1, &agent) {
        Ok(s) => s,
        Err(e) => {
            missing(&format!("no kernel/busybox could be obtained: {e}"));
            return;
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
    println!(
        "sizes: kernel {kernel_size} B, initramfs {initramfs_size} B, total {:.1} MiB",
        (kernel_size + initramfs_size) as f64 / 1048576.0
    );

    let append = format!(
        "console=ttyS0 ipa-debug=1 panic=-1 BOOTIF=01-{}",
        BOOTIF_MAC.replace(':', "-")
    );
    let nics = [
        "-netdev".to_string(),
        "user,id=n0".to_string(),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={VIRTIO_MAC}"),
        // A second NIC on another subnet, named by BOOTIF: its driver (e1000) must be found
        // through modules.alias, and its lease must win the default route and DNS.
        "-netdev".to_string(),
        "user,id=n1,net=10.0.3.0/24".to_string(),
        "-device".to_string(),
        format!("e1000,netdev=n1,mac={BOOTIF_MAC}"),
    ];
    let (status, elapsed, lines, stderr) = Qemu::start(&out1, &append, &nics).wait();
    let fail = |msg: &str| -> ! { panic!("{msg}\n{}", report(&lines, &stderr)) };
    let find = |needle: &str| lines.iter().find(|(_, l)| l.contains(needle));

    // timeout's status 124 means QEMU was killed: the guest never powered off.
    if !status.success() {
        fail(&format!(
            "QEMU did not exit cleanly after {elapsed:?}: {status} (124 = timed out)"
        ));
    }
    let Some((_, modules)) = find("ferric-init: modules loaded:") else {
        fail("init never reported its modules")
    };
    // virtio_pci is not checked: it is built in on newer Debian kernels (6.12).
    for m in ["virtio_net", "virtio_blk", "e1000"] {
        if !modules.split_whitespace().any(|w| w == m) {
            fail(&format!("{m} not loaded: {modules}"));
        }
    }
    // Interface names depend on probe order; addresses are matched by MAC.
    let Some((_, virtio_addr)) = find(&format!("{VIRTIO_MAC} 10.0.2.15/24")) else {
        fail("the virtio NIC did not get 10.0.2.15 by DHCP")
    };
    let virtio_if = virtio_addr.split_whitespace().nth(2).unwrap().to_string();
    let Some((_, bootif_addr)) = find(&format!("{BOOTIF_MAC} 10.0.3.15/24")) else {
        fail("the BOOTIF NIC did not get 10.0.3.15 by DHCP")
    };
    let bootif_if = bootif_addr.split_whitespace().nth(2).unwrap().to_string();
    println!("interfaces: virtio {virtio_if}, BOOTIF (e1000) {bootif_if}");
    // busybox pads `ip route` columns with extra spaces: compare words.
    let has_route = |want: &str| {
        let want: Vec<&str> = want.split_whitespace().collect();
        lines
            .iter()
            .any(|(_, l)| l.split_whitespace().collect::<Vec<_>>() == want)
    };
    if !has_route(&format!(
        "STANDIN route default via 10.0.3.2 dev {bootif_if} metric 10"
    )) {
        fail("the BOOTIF NIC's default route does not have the lowest metric (10)");
    }
    if find(&format!(
        "STANDIN route default via 10.0.2.2 dev {virtio_if}"
    ))
    .is_none()
    {
        fail("the second NIC's default route is missing");
    }
    if find("resolv=\"nameserver 10.0.3.3\\n\"").is_none() {
        fail("resolv.conf does not come from the BOOTIF NIC's lease");
    }
    if find(&format!(
        "STANDIN hostname=ferric-{}",
        BOOTIF_MAC.replace(':', "")
    ))
    .is_none()
    {
        fail("hostname not derived from BOOTIF");
    }
    let ca_certs: usize = find("STANDIN ca_certs=")
        .and_then(|(_, l)| l.rsplit('=').next()?.parse().ok())
        .unwrap_or(0);
    if ca_certs < 50 {
        fail(&format!("only {ca_certs} CA certificates in the ramdisk"));
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
        "timing: QEMU start -> agent start {:.1} s wall ({}); QEMU start -> power off {:.1} s",
        agent_at.as_secs_f64(),
        agent_line.trim_start_matches("/ # "),
        elapsed.as_secs_f64()
    );
}

/// Minimal HTTP/1.0 request over loopback; returns (status code, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.take(1 << 20).read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {resp:?}")))?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((code, body.to_string()))
}

fn real_agent_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRIC_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let p = target.join("x86_64-unknown-linux-musl/release/ferric-agent");
    p.exists().then_some(p)
}

#[test]
fn real_agent_serves_its_api_and_powers_off() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Opt-in: building the musl agent takes minutes; CI enables this by building it first
    // (or by setting FERRIC_AGENT_BIN).
    let Some(agent) = real_agent_path() else {
        eprintln!(
            "\n!!! SKIPPING real_agent_serves_its_api_and_powers_off: no musl ferric-agent \
             (cargo build --release --target x86_64-unknown-linux-musl -p ferric-agent, \
             or FERRIC_AGENT_BIN=PATH) !!!\n"
        );
        return;
    };
    if !qemu_available()
        && missing("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    if let Err(e) = build_ramdisk(&out, &agent) {
        missing(&format!("no kernel/busybox could be obtained: {e}"));
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = format!("ferric-boot-test-{}", std::process::id());
    let append = format!("console=ttyS0 ipa-standalone=1 ipa-agent-token={token} panic=-1");
    let nic = [
        "-netdev".to_string(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:9999"),
        "-device".to_string(),
        "virtio-net-pci,netdev=n0".to_string(),
    ];
    let mut qemu = Qemu::start(&out, &append, &nic);
    let listening = qemu.wait_for("ferric-agent listening on", Duration::from_secs(240));
    let ramdisk_line = qemu.wait_for("starting (in the ramdisk)", Duration::from_secs(1));
    let mut status = None;
    if listening.is_some() {
        // The port forward accepts before the guest does; retry for a bounded while.
        for _ in 0..30 {
            match http(port, "GET", "/v1/status", "") {
                Ok((200, body)) => {
                    status = Some(body);
                    break;
                }
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
    let power_off = status.as_ref().map(|_| {
        http(
            port,
            "POST",
            &format!("/v1/commands/?agent_token={token}"),
            r#"{"name": "standby.power_off", "params": {}}"#,
        )
    });
    let (exit, elapsed, lines, stderr) = qemu.wait();
    let fail = |msg: &str| -> ! { panic!("{msg}\n{}", report(&lines, &stderr)) };
    let Some((listen_at, _)) = listening else {
        fail("the agent never listened")
    };
    if ramdisk_line.is_none() {
        fail("the agent did not detect that it runs in the ramdisk");
    }
    let Some(status) = status else {
        fail("GET /v1/status through the port forward never answered 200")
    };
    if !status.contains("\"version\"") {
        fail(&format!("unexpected /v1/status body {status}"));
    }
    match power_off {
        Some(Ok((code, _))) if code < 300 => {}
        other => fail(&format!("standby.power_off was refused: {other:?}")),
    }
    if !exit.success() {
        fail(&format!(
            "QEMU did not power off after {elapsed:?}: {exit} (124 = timed out)"
        ));
    }
    println!(
        "timing (real agent): QEMU start -> API listening {:.1} s; -> powered off {:.1} s",
        listen_at.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

/// Serves the files of `dir` over HTTP/1.0 on 127.0.0.1 (what QEMU's user network reaches
/// as 10.0.2.2) until `stop` is set; records every requested path.
fn serve_dir(
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    requests: std::sync::Arc<Mutex<Vec<String>>>,
) -> u16 {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (mut conn, _) = match listener.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            requests.lock().unwrap().push(path.clone());
            // Plain file names only.
            let name = path.trim_start_matches('/');
            let body = (!name.is_empty() && !name.contains('/') && !name.contains(".."))
                .then(|| std::fs::read(dir.join(name)).ok())
                .flatten();
            let _ = match body {
                Some(b) => conn
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| conn.write_all(&b)),
                None => conn.write_all(
                    b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    port
}

/// Network boot through QEMU's iPXE ROM: DHCP hands out a script URL, which sets the
/// variables boot.ipxe documents and chains it; boot.ipxe must fetch vmlinuz and initramfs
/// relative to its own URL and pass the agent the API URL, BOOTIF and extra arguments.
#[test]
fn boot_ipxe_network_boots_the_ramdisk() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !qemu_available()
        && missing("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = match build_standin(tmp.path()) {
        Ok(a) => a,
        Err(e) => {
            missing(&format!("the stand-in agent cannot be built: {e}"));
            return;
        }
    };
    let out = tmp.path().join("out");
    if let Err(e) = build_ramdisk(&out, &agent) {
        missing(&format!("no kernel/busybox could be obtained: {e}"));
        return;
    }
    std::fs::write(
        out.join("start.ipxe"),
        "#!ipxe\nset ipa_api_url http://10.0.2.2:6385\n\
         set ipa_extra_args ipa-debug=1 panic=-1\nchain boot.ipxe\n",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let port = serve_dir(out.clone(), stop.clone(), requests.clone());

    // No -kernel: SeaBIOS finds no disk to boot and runs the NIC's iPXE ROM.
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let started = Instant::now();
    let child = Command::new("timeout")
        .arg(QEMU_TIMEOUT_SECS.to_string())
        .args(["qemu-system-x86_64", "-accel", "tcg", "-m", "1024"])
        .args(["-nographic", "-no-reboot", "-boot", "order=n"])
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,bootfile=http://10.0.2.2:{port}/start.ipxe"
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={VIRTIO_MAC}"))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu");
    let out_put = child.wait_with_output().expect("wait qemu");
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let log = String::from_utf8_lossy(&out_put.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out_put.stderr).into_owned();
    let requested = requests.lock().unwrap().clone();
    let fail = |msg: &str| -> ! {
        panic!(
            "{msg}\nrequests: {requested:?}\n--- serial log ---\n{log}\n--- stderr ---\n{stderr}"
        )
    };
    for f in ["/start.ipxe", "/boot.ipxe", "/vmlinuz", "/initramfs"] {
        if !requested.iter().any(|r| r == f) {
            fail(&format!("iPXE never fetched {f}"));
        }
    }
    let Some(cmdline) = log.lines().find(|l| l.contains("STANDIN cmdline=")) else {
        fail("the ramdisk never started the agent")
    };
    for want in [
        "ipa-api-url=http://10.0.2.2:6385",
        "BOOTIF=01-52-54-00-12-34-56",
        "initrd=initramfs",
        "console=ttyS0,115200n8",
        "ipa-debug=1",
    ] {
        if !cmdline.split_whitespace().any(|w| w.ends_with(want)) {
            fail(&format!("kernel command line lacks {want}: {cmdline}"));
        }
    }
    if !log.contains(&format!("{VIRTIO_MAC} 10.0.2.15/24")) {
        fail("the BOOTIF NIC did not get its address in the ramdisk");
    }
    if !out_put.status.success() {
        fail(&format!(
            "QEMU did not power off: {} after {elapsed:?}",
            out_put.status
        ));
    }
    println!(
        "timing (iPXE over HTTP): QEMU start -> powered off {:.1} s",
        elapsed.as_secs_f64()
    );
}
