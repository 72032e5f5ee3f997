//! The whole product in a virtual machine: the real ramdisk (Debian kernel, busybox init, the
//! static musl `ferric-agent`) boots in QEMU (TCG), finds the fake Ironic on the host through
//! user-mode networking, is driven through a whole-disk deploy by the fake conductor, writes
//! a generated GPT image and the recorded config drive to its virtio disk, and powers the VM
//! off on `standby.power_off`. The disk file is then checked byte by byte.
//!
//! Network: the guest reaches the host's 127.0.0.1 as 10.0.2.2 (slirp gateway), so the API
//! URL and the image URL use 10.0.2.2 while every server listens on 127.0.0.1 only; the
//! conductor reaches the agent through `hostfwd=tcp:127.0.0.1:P-:9999`, which is why the
//! agent advertises `127.0.0.1:P` (and its auto-TLS certificate names 127.0.0.1).
//!
//! Needs qemu-system-x86_64, the x86_64-unknown-linux-musl target with musl-gcc, and Debian's
//! archive for the kernel (or `target/ramdisk-cache`). FAILS when `CI` is set and one is
//! missing (CI installs them with scripts/lib.sh); skips loudly otherwise.
//!
//! Prints (targets are reported, never asserted: the machine is shared and TCG is slow):
//! power-on → first lookup, → first heartbeat, deploy time, power-off time, kernel and
//! initramfs sizes (target ≤ 24 MiB together), agent size (target ≤ 8 MiB), load average.
//! `FERRIC_QEMU_ECHO=1` echoes the VM's console while it runs.

use std::time::{Duration, Instant};

use ferric_tests::conductor::{Conductor, DeployPlan, Plan};
use ferric_tests::e2e::BOOTIF;
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, RECORDED_MAC};
use ferric_tests::fixtures::{configdrive_b64, configdrive_iso, test_image, TableKind};
use ferric_tests::image_server::ImageServer;
use ferric_tests::qemu::{
    build_musl_agent, build_ramdisk, load_average, missing_prerequisites, target_dir,
    verify_whole_disk_deploy, Vm, VmConfig,
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

#[test]
fn ramdisk_in_qemu_deploys_a_whole_disk_image_and_powers_off() {
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

    let (agent, agent_build) =
        build_musl_agent(&work.path().join("agent-build.log"), BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("building the static agent failed: {e}"));
    let ramdisk = match build_ramdisk(
        &work.path().join("ramdisk"),
        &agent,
        &work.path().join("ramdisk-build.log"),
        BUILD_TIMEOUT,
    ) {
        Ok(r) => r,
        Err(e) => {
            // Most likely no Debian archive for the kernel: a facility, not a bug here.
            skip(&format!("cannot build the ramdisk: {e}"));
            return;
        }
    };

    let image = test_image(TableKind::Gpt, IMAGE_SIZE, 0x9e3_0001);
    let image_file = work.path().join("image.raw");
    std::fs::write(&image_file, &image.bytes).expect("write the image file");
    let iso = configdrive_iso();
    let images = ImageServer::start().expect("image server on 127.0.0.1");
    images.add("disk.raw", image.bytes.clone());
    let image_url = format!("http://10.0.2.2:{}/disk.raw", images.addr().port());
    let ironic = FakeIronic::start(FakeIronicConfig {
        macs: vec![RECORDED_MAC.to_string()],
        ..Default::default()
    })
    .expect("fake Ironic on 127.0.0.1");
    let plan = DeployPlan::whole_disk_raw(
        &image_url,
        &image.sha256,
        Some(configdrive_b64().to_string()),
    );
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan));

    let disk = work.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("create the sparse disk file");
    let agent_port = free_local_port();
    let append = format!(
        "console=ttyS0 panic=-1 ipa-api-url=http://10.0.2.2:{} ipa-advertise-host=127.0.0.1 \
         ipa-advertise-port={agent_port} {BOOTIF}",
        ironic.addr().port()
    );
    let mut vm = Vm::start(&VmConfig {
        vmlinuz: ramdisk.vmlinuz.clone(),
        initramfs: ramdisk.initramfs.clone(),
        append: append.clone(),
        disk: disk.clone(),
        mac: RECORDED_MAC.to_string(),
        agent_port,
        memory_mib: 1024,
        echo_prefix: std::env::var_os("FERRIC_QEMU_ECHO").map(|_| "vm | ".to_string()),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Conductor times count from the fake Ironic's start; the VM's from its power-on.
    let offset = vm.started_at().duration_since(ironic.started_at());
    let since_power_on = |d: Duration| d.saturating_sub(offset);

    let serial_file = target.join("qemu_deploy-serial.log");
    let fail = |vm: &mut Vm, what: &str| -> ! {
        vm.kill();
        let _ = std::fs::write(&serial_file, vm.serial_log());
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
                &mut vm,
                &format!(
                    "QEMU exited ({exit}) {} after power-on with the node in '{}'",
                    secs(at),
                    st.provision_state
                ),
            );
        }
        if Instant::now() >= deadline {
            fail(
                &mut vm,
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
            &mut vm,
            &format!(
                "deploy failed: {}",
                status.last_error.clone().unwrap_or_default()
            ),
        );
    }

    // standby.power_off must take the VM down by itself.
    let Some((exit, exited_at)) = vm.wait_exit(POWER_OFF_DEADLINE) else {
        fail(
            &mut vm,
            &format!(
                "the node is active but QEMU is still running {} after standby.power_off",
                secs(POWER_OFF_DEADLINE)
            ),
        )
    };
    std::fs::write(&serial_file, vm.serial_log()).expect("write the serial log");
    if !exit.success() {
        fail(&mut vm, &format!("QEMU exited with {exit}"));
    }
    // -no-reboot turns a panic (panic=-1) or a reboot into an exit too: insist on a power-off.
    if vm.find("reboot: Power down").is_none() {
        fail(
            &mut vm,
            "QEMU exited but the kernel never printed 'reboot: Power down'",
        );
    }
    if vm.find("Kernel panic").is_some() {
        fail(&mut vm, "the guest kernel panicked");
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

/// The agent's own lines about the deploy, for the reader of the test output.
fn print_agent_lines(vm: &Vm) {
    for needle in [
        "looking up the node",
        "callback URL",
        "bytes written to",
        "GPT backup moved",
        "config drive (",
        "disks synced",
    ] {
        if let Some((t, line)) = vm.find(needle) {
            println!("  vm [{:6.1}s] {}", t.as_secs_f64(), line.trim());
        }
    }
}
