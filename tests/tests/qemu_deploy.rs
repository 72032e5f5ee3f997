//! The whole product in a virtual machine: the real ramdisk (Debian kernel, busybox init, the
//! static musl `ferric-agent`) boots in QEMU (TCG), finds the fake Ironic on the host through
//! user-mode networking, is driven through a whole-disk deploy by the fake conductor, writes
//! a generated GPT image and the recorded config drive to its virtio disk (chosen by a `by_path`
//! root device hint, which the agent resolves from sysfs: the ramdisk has no udev), and powers the VM
//! off on `standby.power_off`. The disk file is then checked byte by byte. A second test
//! boots the same ramdisk under UEFI firmware (OVMF) and checks, by powering the VM on again,
//! that the firmware starts the boot entry `image.install_bootloader` added to its NVRAM.
//!
//! Network: the guest reaches the host's 127.0.0.1 as 10.0.2.2 (slirp gateway), so the API
//! URL and the image URL use 10.0.2.2 while every server listens on 127.0.0.1 only; the
//! conductor reaches the agent through `hostfwd=tcp:127.0.0.1:P-:9999`, which is why the
//! agent advertises `127.0.0.1:P` (and its auto-TLS certificate names 127.0.0.1).
//!
//! Needs qemu-system-x86_64, the x86_64-unknown-linux-musl target with musl-gcc, OVMF for the
//! UEFI test, and Debian's archive for the kernel (or `target/ramdisk-cache`). FAILS when `CI` is set and one is
//! missing (CI installs them with scripts/lib.sh); skips loudly otherwise.
//!
//! Prints (targets are reported, never asserted: the machine is shared and TCG is slow):
//! power-on → first lookup, → first heartbeat, deploy time, power-off time, kernel and
//! initramfs sizes (target ≤ 24 MiB together), agent size (target ≤ 8 MiB), load average.
//! `FERRIC_QEMU_ECHO=1` echoes the VM's console while it runs.

use std::path::Path;
use std::time::{Duration, Instant};

use ferric_tests::conductor::{Conductor, ConductorStatus, DeployPlan, Plan};
use ferric_tests::e2e::{AgentApi, BOOTIF};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, RECORDED_MAC};
use ferric_tests::fixtures::{
    configdrive_b64, configdrive_iso, sha256_hex, test_image, uefi_disk_image, TableKind, ESP_UUID,
};
use ferric_tests::image_server::ImageServer;
use ferric_tests::qemu::{
    build_musl_agent, build_ramdisk, load_average, missing_prerequisites, target_dir,
    verify_whole_disk_deploy, Ramdisk, Uefi, Vm, VmConfig, DISK_BY_PATH,
};
use ferric_tests::util::{free_local_port, in_ci, skip_or_fail};

const TEST: &str = "qemu_deploy";
/// The VM's disk: a sparse file. Without root device hints the agent applies IPA's rule
/// (smallest non-removable disk of at least 4 GiB), so it must be larger than 4 GiB.
const DISK_SIZE: u64 = 5 << 30;
/// The generated whole-disk image.
const IMAGE_SIZE: usize = 128 << 20;
/// Builds (musl agent, ramdisk-build) are bounded too; a cold musl release build with fat LTO
/// takes several minutes on a loaded 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Power-on → node `active` (boot, DHCP, lookup, deploy under TCG).
const DEPLOY_DEADLINE: Duration = Duration::from_secs(480);
/// `standby.power_off` sent → QEMU gone by itself.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(90);
const MIB: f64 = 1024.0 * 1024.0;

/// The CI rule (fail under `CI`), and a skip notice written past libtest's output capture
/// so that a skipped VM test is seen even without `--nocapture`.
fn skip(why: &str) -> bool {
    use std::io::Write as _;
    if !in_ci() {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPING {TEST}: {why} (this would FAIL under CI=true) !!!!!!!!\n"
        );
    }
    skip_or_fail(TEST, why)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// One VM at a time: two TCG guests on two cores would only slow each other past their
/// deadlines.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The static agent and the ramdisk around it (skipped or failed by the CI rule when the
/// kernel cannot be fetched), with the agent's build time.
fn build(work: &Path) -> Option<(std::path::PathBuf, Duration, Ramdisk)> {
    let (agent, agent_build) = build_musl_agent(&work.join("agent-build.log"), BUILD_TIMEOUT)
        .unwrap_or_else(|e| panic!("building the static agent failed: {e}"));
    match build_ramdisk(
        &work.join("ramdisk"),
        &agent,
        &work.join("ramdisk-build.log"),
        BUILD_TIMEOUT,
    ) {
        Ok(r) => Some((agent, agent_build, r)),
        Err(e) => {
            // Most likely no Debian archive for the kernel: a facility, not a bug here.
            skip(&format!("cannot build the ramdisk: {e}"));
            None
        }
    }
}

/// A ramdisk VM booted against `ironic`: its sparse [`DISK_SIZE`] disk in `work`, the kernel
/// command line (with `extra_append`) and the host port its agent API is forwarded from.
struct Booted {
    vm: Vm,
    append: String,
    disk: std::path::PathBuf,
    agent_port: u16,
}

fn boot_ramdisk(
    ramdisk: &Ramdisk,
    ironic: &FakeIronic,
    work: &Path,
    extra_append: &str,
    memory_mib: u32,
    uefi: Option<Uefi>,
) -> Booted {
    let disk = work.join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("create the sparse disk file");
    let agent_port = free_local_port();
    let append = format!(
        "console=ttyS0 panic=-1 ipa-api-url=http://10.0.2.2:{} ipa-advertise-host=127.0.0.1 \
         ipa-advertise-port={agent_port} {extra_append}{BOOTIF}",
        ironic.addr().port()
    );
    let vm = Vm::start(&VmConfig {
        vmlinuz: ramdisk.vmlinuz.clone(),
        initramfs: ramdisk.initramfs.clone(),
        append: append.clone(),
        disk: disk.clone(),
        mac: RECORDED_MAC.to_string(),
        agent_port,
        memory_mib,
        echo_prefix: echo(),
        uefi,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Booted {
        vm,
        append,
        disk,
        agent_port,
    }
}

#[test]
fn ramdisk_in_qemu_deploys_a_whole_disk_image_and_powers_off() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let prebuilt = std::env::var_os("FERRIC_AGENT_BIN").is_some();
    let missing = missing_prerequisites(!prebuilt);
    if !missing.is_empty() && skip(&format!("missing: {}", missing.join("; "))) {
        return;
    }
    let load_before = load_average();
    let target = target_dir();
    std::fs::create_dir_all(&target).expect("create the target directory");
    // The disk file is sparse and large: keep it next to the build output, not in /tmp.
    let work = tempfile::Builder::new()
        .prefix("qemu-deploy-")
        .tempdir_in(&target)
        .expect("work directory");

    let Some((agent, agent_build, ramdisk)) = build(work.path()) else {
        return;
    };

    let image = test_image(TableKind::Gpt, IMAGE_SIZE, 0x9e3_0001);
    let image_file = work.path().join("image.raw");
    std::fs::write(&image_file, &image.bytes).expect("write the image file");
    let iso = configdrive_iso();
    let images = ImageServer::start().expect("image server on 127.0.0.1");
    images.add("disk.raw", image.bytes.clone());
    let image_url = format!("http://10.0.2.2:{}/disk.raw", images.addr().port());
    // The install disk is chosen by a by_path root device hint: the ramdisk has no udev, so
    // this only matches when the agent composes udev's name from sysfs itself.
    let defaults = FakeIronicConfig::default();
    let mut properties = defaults.properties.clone();
    properties["root_device"] = serde_json::json!({ "by_path": DISK_BY_PATH });
    let ironic = FakeIronic::start(FakeIronicConfig {
        macs: vec![RECORDED_MAC.to_string()],
        properties,
        ..defaults
    })
    .expect("fake Ironic on 127.0.0.1");
    let plan = DeployPlan::whole_disk_raw(
        &image_url,
        &image.sha256,
        Some(configdrive_b64().to_string()),
    );
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan));

    let Booted {
        mut vm,
        append,
        disk,
        ..
    } = boot_ramdisk(&ramdisk, &ironic, work.path(), "", 1024, None);
    // Conductor times count from the fake Ironic's start; the VM's from its power-on.
    let offset = vm.started_at().duration_since(ironic.started_at());
    let since_power_on = |d: Duration| d.saturating_sub(offset);

    let serial_file = target.join("qemu_deploy-serial.log");
    let (status, exited_at) =
        deploy_and_power_off(&mut vm, &conductor, &ironic, &images, &append, &serial_file);
    let fail = |vm: &mut Vm, what: &str| -> ! {
        fail_vm(
            vm,
            what,
            &conductor,
            &ironic,
            &images,
            &append,
            &serial_file,
        )
    };

    let chosen = vm.find("chosen by root device hints").map(|(_, l)| l);
    if !chosen
        .as_deref()
        .is_some_and(|l| l.contains("install device /dev/vda") && l.contains(DISK_BY_PATH))
    {
        fail(
            &mut vm,
            &format!("the install disk was not chosen by the by_path hint: {chosen:?}"),
        );
    }
    let written = match verify_whole_disk_deploy(&disk, &image_file, &image.bytes, &iso) {
        Ok(w) => w,
        Err(e) => fail(&mut vm, &format!("the disk does not hold the deploy: {e}")),
    };

    let t = status.timings.clone();
    let lookup = t.first_lookup.map(since_power_on);
    let heartbeat = t.first_heartbeat.map(since_power_on);
    let power_off_sent = status
        .sent("standby.power_off")
        .first()
        .map(|c| since_power_on(c.at));
    let (kernel_size, initramfs_size) = ramdisk.sizes();
    let agent_size = std::fs::metadata(&agent).map(|m| m.len()).unwrap_or(0);
    let opt = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "?".into());
    let span =
        |a: Option<Duration>, b: Option<Duration>| opt(a.zip(b).map(|(a, b)| b.saturating_sub(a)));
    println!("\n==== ferric ramdisk in QEMU (TCG): whole-disk deploy ====");
    println!(
        "builds: musl agent {} (cargo; a no-op when up to date), ramdisk {}",
        secs(agent_build),
        secs(ramdisk.build_time)
    );
    println!("power-on -> first lookup      {}", opt(lookup));
    let at = |needle: &str| vm.find(needle).map(|(t, _)| t);
    println!(
        "  boot: kernel running {} (the xz kernel is decompressed under TCG), /init {}, \
         agent started {}, API listening {}",
        opt(at("Linux version")),
        opt(at("Run /init as init process")),
        opt(at("starting /usr/bin/ferric-agent")),
        opt(at("ferric-agent listening on"))
    );
    println!(
        "power-on -> first heartbeat   {}   (target <= 10 s under TCG)",
        opt(heartbeat)
    );
    println!(
        "deploy: first command -> active {} (write_image sent -> seen done {})",
        span(t.started, t.done),
        span(t.main_step_sent, t.main_step_done)
    );
    println!(
        "standby.power_off sent -> QEMU exited {}   (power-on -> off {})",
        opt(power_off_sent.map(|p| exited_at.saturating_sub(p))),
        secs(exited_at)
    );
    println!(
        "kernel {} bytes + initramfs {} bytes = {:.1} MiB   (target <= 24 MiB)",
        kernel_size,
        initramfs_size,
        (kernel_size + initramfs_size) as f64 / MIB
    );
    println!(
        "agent binary {} bytes = {:.1} MiB   (target <= 8 MiB)",
        agent_size,
        agent_size as f64 / MIB
    );
    println!(
        "disk: {} MiB image at 0, config-2 partition #{} at byte {} ({} bytes), backup GPT \
         at the end of the {} GiB disk",
        IMAGE_SIZE >> 20,
        written.config_drive.number,
        written.config_drive.start,
        written.config_drive.size,
        DISK_SIZE >> 30
    );
    println!(
        "load average before {load_before}, after {} (2 cores, shared machine)",
        load_average()
    );
    println!("serial console log: {}", serial_file.display());
    print_agent_lines(&vm);
}

/// The same ramdisk booted by UEFI firmware (OVMF): Ironic's UEFI deploy ends with
/// `image.install_bootloader`, for which the agent adds the image's loader to the firmware's
/// NVRAM through efivarfs. The proof is the firmware's own: a second power-on of the VM,
/// without a kernel, must show OVMF's boot manager loading and starting that entry, found
/// through the partition GUID on the deployed disk. The loader is the ramdisk's kernel (an
/// EFI application), named `\EFI\debian\shimx64.efi` by a shim-style BOOTX64.CSV.
#[test]
fn ramdisk_under_uefi_firmware_adds_a_boot_entry_the_firmware_starts() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let prebuilt = std::env::var_os("FERRIC_AGENT_BIN").is_some();
    let mut missing = missing_prerequisites(!prebuilt);
    let target = target_dir();
    std::fs::create_dir_all(&target).expect("create the target directory");
    let work = tempfile::Builder::new()
        .prefix("qemu-uefi-")
        .tempdir_in(&target)
        .expect("work directory");
    let uefi = Uefi::fresh(&work.path().join("OVMF_VARS.fd"));
    if uefi.is_none() {
        missing.push("OVMF (Debian package ovmf)".into());
    }
    if !missing.is_empty() && skip(&format!("missing: {}", missing.join("; "))) {
        return;
    }
    let uefi = uefi.expect("checked above");
    let Some((_agent, _, ramdisk)) = build(work.path()) else {
        return;
    };
    let kernel = std::fs::read(&ramdisk.vmlinuz).expect("read vmlinuz");
    let image = uefi_disk_image(work.path(), &kernel);
    let images = ImageServer::start().expect("image server on 127.0.0.1");
    images.add("uefi.raw", image.clone());
    let image_url = format!("http://10.0.2.2:{}/uefi.raw", images.addr().port());
    let ironic = FakeIronic::start(FakeIronicConfig {
        macs: vec![RECORDED_MAC.to_string()],
        ..Default::default()
    })
    .expect("fake Ironic on 127.0.0.1");
    // The plan's boot mode is uefi: the conductor sends image.install_bootloader.
    let plan = DeployPlan::whole_disk_raw(&image_url, &sha256_hex(&image), None);
    assert_eq!(plan.boot_mode, "uefi");
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan));
    let Booted {
        mut vm,
        append,
        disk,
        ..
    } = boot_ramdisk(&ramdisk, &ironic, work.path(), "", 1024, Some(uefi.clone()));
    let serial_file = target.join("qemu_uefi-serial.log");
    let (status, _) =
        deploy_and_power_off(&mut vm, &conductor, &ironic, &images, &append, &serial_file);
    let entry_line = vm.find("added boot entry").map(|(_, l)| l);
    let Some(entry_line) = entry_line else {
        fail_vm(
            &mut vm,
            "the agent logged no 'added boot entry' line for install_bootloader",
            &conductor,
            &ironic,
            &images,
            &append,
            &serial_file,
        );
    };
    assert_eq!(status.sent("image.install_bootloader").len(), 1);

    // Second power-on: firmware only. OVMF prints `BdsDxe: loading Boot000N "debian" from
    // HD(1,GPT,<ESP GUID>,0x800,0x8000)/\EFI\debian\shimx64.efi`, then `starting`.
    let mut fw = Vm::boot_firmware(&uefi, &disk, 512, echo()).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let started = loop {
        if let Some((t, l)) = fw.find("BdsDxe: starting") {
            if l.contains("\"debian\"") {
                break Some((t, l));
            }
        }
        if fw.try_exit().is_some() || Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    fw.kill();
    let fw_log = fw.serial_log();
    let _ = std::fs::write(target.join("qemu_uefi-firmware.log"), &fw_log);
    let Some((t, line)) = started else {
        panic!(
            "the firmware did not start the \"debian\" entry within 180 s (agent: {entry_line})\n\
             ---- firmware console ----\n{}",
            fw.serial_tail(60)
        );
    };
    let upper = line.to_ascii_uppercase();
    assert!(
        upper.contains(&format!("HD(1,GPT,{}", ESP_UUID.to_ascii_uppercase()))
            && upper.contains("\\EFI\\DEBIAN\\SHIMX64.EFI"),
        "the firmware started something else: {line}"
    );
    // It must come first: nothing was tried before it.
    let first_try = fw_log
        .lines()
        .find(|l| l.contains("BdsDxe: loading") || l.contains("BdsDxe: failed"))
        .unwrap_or_default();
    assert!(
        first_try.contains("\"debian\""),
        "the new entry is not first in BootOrder; the firmware tried first: {first_try}"
    );
    println!("\n==== ferric ramdisk under UEFI firmware (OVMF, TCG) ====");
    println!("agent: {}", entry_line.trim());
    println!(
        "firmware, second power-on at {:.1} s: {}",
        t.as_secs_f64(),
        line.trim()
    );
}

/// Ironic's rescue, in the real ramdisk: after `rescue.finalize_rescue` (with the hash Ironic
/// sends) the agent ends, `/init` creates the `rescue` user from the stored hash, restarts
/// DHCP and offers a login on the serial console, where this test logs in with the password
/// and runs a command.
#[test]
fn ramdisk_in_qemu_hands_the_console_to_the_rescue_user() {
    const PASSWORD: &str = "Ferric-rescue-9";
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let prebuilt = std::env::var_os("FERRIC_AGENT_BIN").is_some();
    let missing = missing_prerequisites(!prebuilt);
    if !missing.is_empty() && skip(&format!("missing: {}", missing.join("; "))) {
        return;
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).expect("create the target directory");
    let work = tempfile::Builder::new()
        .prefix("qemu-rescue-")
        .tempdir_in(&target)
        .expect("work directory");
    let Some((_agent, _, ramdisk)) = build(work.path()) else {
        return;
    };
    let ironic = FakeIronic::start(FakeIronicConfig {
        macs: vec![RECORDED_MAC.to_string()],
        ..Default::default()
    })
    .expect("fake Ironic on 127.0.0.1");
    let Booted {
        mut vm,
        append,
        agent_port,
        ..
    } = boot_ramdisk(
        &ramdisk,
        &ironic,
        work.path(),
        "ipa-enable-auto-tls=0 ",
        512,
        None,
    );
    let serial_file = target.join("qemu_rescue-serial.log");
    let fail = |vm: &mut Vm, what: &str| -> ! {
        vm.kill();
        let _ = std::fs::write(&serial_file, vm.serial_log());
        panic!(
            "{what}\nkernel command line: {append}\n---- fake Ironic requests ----\n{}\n\
             ---- VM serial console (last 80 lines; all in {}) ----\n{}",
            ironic.dump_requests(),
            serial_file.display(),
            vm.serial_tail(80)
        )
    };

    let deadline = Instant::now() + DEPLOY_DEADLINE;
    let token = loop {
        if !ironic.heartbeats().is_empty() {
            if let Some(t) = ironic.node().token {
                break t;
            }
        }
        if Instant::now() >= deadline || vm.try_exit().is_some() {
            fail(&mut vm, "no heartbeat from the ramdisk");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // What Ironic sends: a SHA-512 crypt(3) hash of the rescue password, hashed=true.
    let salt = "ferricrs";
    let hash = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, PASSWORD])
        .output()
        .expect("openssl (scripts/lib.sh installs it)");
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("$6$ferricrs$"), "{hash}");
    let api = AgentApi::new(&format!("http://127.0.0.1:{agent_port}"));
    let r = api.command(
        "rescue.finalize_rescue",
        serde_json::json!({"rescue_password": hash, "hashed": true}),
        true,
        Some(&token),
    );
    if r.body["command_status"] != "SUCCEEDED" {
        fail(&mut vm, &format!("finalize_rescue: {r:?}"));
    }
    let sent_at = vm.started_at().elapsed();
    let login_wait = Duration::from_secs(120);
    if !vm.wait_for("log in as 'rescue'", login_wait) {
        fail(&mut vm, "init did not hand the machine to the rescue user");
    }
    if !vm.wait_for("login: ", login_wait) {
        fail(&mut vm, "no login prompt on the serial console");
    }
    vm.type_text("rescue\n").unwrap_or_else(|e| panic!("{e}"));
    if !vm.wait_for("Password: ", login_wait) {
        fail(&mut vm, "no password prompt after the user name");
    }
    vm.type_text(&format!("{PASSWORD}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The shell's answer: computed, so the echoed command line cannot match it.
    std::thread::sleep(Duration::from_secs(2));
    vm.type_text("echo RESCUED-$((6*7)) user=$LOGNAME uid=$(id -u) $(test -e /etc/.rescued && echo marker)\n")
        .unwrap_or_else(|e| panic!("{e}"));
    if !vm.wait_for("RESCUED-42 user=rescue uid=0 marker", login_wait) {
        fail(
            &mut vm,
            "logging in as rescue with the password did not give a shell",
        );
    }
    let logged_in = vm.started_at().elapsed();
    // The agent is gone: it is not restarted after finalize_rescue.
    let restarts = vm
        .lines()
        .iter()
        .filter(|(t, l)| *t > sent_at && l.contains("starting /usr/bin/ferric-agent"))
        .count();
    if restarts != 0 {
        fail(&mut vm, "init restarted the agent after finalize_rescue");
    }
    vm.kill();
    let _ = std::fs::write(&serial_file, vm.serial_log());
    println!("\n==== ferric ramdisk in QEMU (TCG): rescue ====");
    println!(
        "finalize_rescue answered at {}, logged in as rescue on ttyS0 at {}",
        secs(sent_at),
        secs(logged_in)
    );
}

fn echo() -> Option<String> {
    std::env::var_os("FERRIC_QEMU_ECHO").map(|_| "vm | ".to_string())
}

/// Kills the VM, saves its console to `serial_file` and panics with everything an engineer
/// needs: the conductor's view, the servers' requests and the console's tail.
fn fail_vm(
    vm: &mut Vm,
    what: &str,
    conductor: &Conductor,
    ironic: &FakeIronic,
    images: &ImageServer,
    append: &str,
    serial_file: &Path,
) -> ! {
    vm.kill();
    let _ = std::fs::write(serial_file, vm.serial_log());
    panic!(
        "{what}\nkernel command line: {append}\n{}\n---- image server ----\n{}\n\
         ---- fake Ironic requests ----\n{}\n---- VM serial console (last 150 lines; \
         all in {}) ----\n{}",
        conductor.status().describe(),
        images.dump_requests(),
        ironic.dump_requests(),
        serial_file.display(),
        vm.serial_tail(150)
    )
}

/// Waits (bounded) for the booted VM to be deployed to `active` and for `standby.power_off`
/// to take it down by itself; panics with a full report otherwise. Returns the final status
/// and when QEMU exited (since power-on).
fn deploy_and_power_off(
    vm: &mut Vm,
    conductor: &Conductor,
    ironic: &FakeIronic,
    images: &ImageServer,
    append: &str,
    serial_file: &Path,
) -> (ConductorStatus, Duration) {
    let fail = |vm: &mut Vm, what: &str| -> ! {
        fail_vm(vm, what, conductor, ironic, images, append, serial_file)
    };

    // Boot, lookup, heartbeats and the deploy, bounded.
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    let status = loop {
        let st = conductor.status();
        if st.provision_state == "active" || st.provision_state == "deploy failed" {
            break st;
        }
        if let Some((exit, at)) = vm.try_exit() {
            fail(
                vm,
                &format!(
                    "QEMU exited ({exit}) {} after power-on with the node in '{}'",
                    secs(at),
                    st.provision_state
                ),
            );
        }
        if Instant::now() >= deadline {
            fail(
                vm,
                &format!(
                    "node not active {} after power-on (state '{}', phase '{}')",
                    secs(DEPLOY_DEADLINE),
                    st.provision_state,
                    st.phase
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.provision_state != "active" {
        fail(
            vm,
            &format!(
                "deploy failed: {}",
                status.last_error.clone().unwrap_or_default()
            ),
        );
    }

    // standby.power_off must take the VM down by itself.
    let Some((exit, exited_at)) = vm.wait_exit(POWER_OFF_DEADLINE) else {
        fail(
            vm,
            &format!(
                "the node is active but QEMU is still running {} after standby.power_off",
                secs(POWER_OFF_DEADLINE)
            ),
        )
    };
    std::fs::write(serial_file, vm.serial_log()).expect("write the serial log");
    if !exit.success() {
        fail(vm, &format!("QEMU exited with {exit}"));
    }
    // -no-reboot turns a panic (panic=-1) or a reboot into an exit too: insist on a power-off.
    if vm.find("reboot: Power down").is_none() {
        fail(
            vm,
            "QEMU exited but the kernel never printed 'reboot: Power down'",
        );
    }
    if vm.find("Kernel panic").is_some() {
        fail(vm, "the guest kernel panicked");
    }

    (status, exited_at)
}

/// The agent's own lines about the deploy, for the reader of the test output.
fn print_agent_lines(vm: &Vm) {
    for needle in [
        "looking up the node",
        "callback URL",
        "bytes written to",
        "GPT backup moved",
        "config drive (",
        "disks synced",
        "chosen by root device hints",
    ] {
        if let Some((t, line)) = vm.find(needle) {
            println!("  vm [{:6.1}s] {}", t.as_secs_f64(), line.trim());
        }
    }
}
