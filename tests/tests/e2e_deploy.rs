//! End to end: the real `ferric-agent` binary, the fake Ironic + conductor, the image server
//! and a loop device. Needs root and loop devices: FAILS under `CI` when they are missing,
//! skips loudly elsewhere.

use std::time::Duration;

use base64::Engine as _;
use ferric_tests::conductor::{Conductor, ConductorStatus, DeployPlan, Plan};
use ferric_tests::disk_layout::{read_at, read_layout, Table};
use ferric_tests::e2e::{first_difference, report, spawn_agent_for_ironic, RunningAgent};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, RECORDED_MAC};
use ferric_tests::fixtures::{configdrive_b64, configdrive_iso, sha256_hex, test_image, TableKind};
use ferric_tests::image_server::ImageServer;
use ferric_tests::loopdev::LoopDevice;
use serde_json::Value;

/// Per-test deadline for the node to settle (the brief's ~60 s budget, minus start-up).
const SETTLE: Duration = Duration::from_secs(55);
const MIB: u64 = 1 << 20;

/// Fields drop in order: the agent is killed first, the loop device detached last (a device
/// still held open by the agent cannot be detached).
struct Run {
    agent: RunningAgent,
    conductor: Conductor,
    ironic: FakeIronic,
    images: ImageServer,
    dev: LoopDevice,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "device {} (backing {})\n{}",
            self.dev.path().display(),
            self.dev.backing_file().display(),
            report(
                Some(&self.agent),
                Some(&self.ironic),
                Some(&self.conductor),
                Some(&self.images)
            )
        )
    }

    fn settle(&self) -> ConductorStatus {
        match self.conductor.wait_until_settled(SETTLE) {
            Ok(st) => st,
            Err(st) => panic!(
                "node did not reach a final state within {SETTLE:?} (stuck in {:?}, phase {:?}){}",
                st.provision_state,
                st.phase,
                self.report()
            ),
        }
    }
}

/// Starts everything for a deploy of `image` onto a fresh loop device of `disk` bytes.
fn start(
    test: &str,
    disk: u64,
    fill: Option<u8>,
    image: &[u8],
    plan: impl FnOnce(String) -> DeployPlan,
) -> Option<Run> {
    let dev = LoopDevice::create_or_skip(test, disk)?;
    if let Some(b) = fill {
        dev.fill(b).expect("pre-fill loop device");
    }
    let images = ImageServer::start().expect("image server");
    images.add("disk.raw", image.to_vec());
    let ironic = FakeIronic::start(FakeIronicConfig::default()).expect("fake Ironic");
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan(images.url("disk.raw"))));
    let agent = spawn_agent_for_ironic(&ironic, dev.path(), "", &[]);
    Some(Run {
        dev,
        images,
        ironic,
        conductor,
        agent,
    })
}

/// Checks the agent's side of the conversation with Ironic (lookup and heartbeats).
fn assert_wire(run: &Run, token: &str) {
    let reqs = run.ironic.requests();
    let first_lookup = reqs
        .iter()
        .position(|r| r.path == "/v1/lookup")
        .unwrap_or_else(|| panic!("no lookup{}", run.report()));
    assert!(
        reqs[..first_lookup]
            .iter()
            .any(|r| r.method == "GET" && r.path == "/"),
        "the agent must discover the API version (GET /) before looking up{}",
        run.report()
    );
    let lookup = &reqs[first_lookup];
    assert_eq!(
        lookup.header("x-openstack-ironic-api-version"),
        Some("1.62"),
        "lookup microversion is min(server 1.115, 1.62){}",
        run.report()
    );
    let addresses = lookup.query_param("addresses").unwrap_or_default();
    assert_eq!(
        addresses.split(',').next(),
        Some(RECORDED_MAC),
        "BOOTIF's MAC must come first in addresses={addresses}{}",
        run.report()
    );
    let hbs = run.ironic.heartbeat_requests();
    assert!(!hbs.is_empty(), "no heartbeat{}", run.report());
    let callback = format!("127.0.0.1:{}", run.agent.port);
    for hb in &hbs {
        assert_eq!(
            hb.header("x-openstack-ironic-api-version"),
            Some("1.68"),
            "heartbeat microversion is min(server 1.115, 1.68): {}{}",
            hb.summary(),
            run.report()
        );
        let body = hb.json().unwrap_or_else(|| {
            panic!(
                "heartbeat body is not JSON: {}{}",
                hb.summary(),
                run.report()
            )
        });
        // http, or https with the generated certificate sent along (IPA's auto TLS).
        match body["callback_url"].as_str() {
            Some(u) if u == format!("http://{callback}") => {}
            Some(u) if u == format!("https://{callback}") => assert!(
                body["agent_verify_ca"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----")),
                "https callback without a PEM agent_verify_ca: {}",
                hb.summary()
            ),
            other => panic!(
                "callback_url {other:?} is not http(s)://{callback}: {}",
                hb.summary()
            ),
        }
        assert_eq!(
            body["agent_token"],
            Value::String(token.to_string()),
            "{}",
            hb.summary()
        );
        assert!(
            body["agent_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "agent_version missing: {}",
            hb.summary()
        );
        assert_eq!(hb.status, 202, "{}{}", hb.summary(), run.report());
    }
}

/// Finds the config drive: the last partition, starting after the image, holding the ISO.
fn assert_configdrive(run: &Run, image_len: u64) -> u64 {
    let iso = configdrive_iso();
    let layout = read_layout(run.dev.backing_file())
        .unwrap_or_else(|e| panic!("cannot read the partition table: {e}{}", run.report()));
    let cd = layout
        .last_partition()
        .unwrap_or_else(|| panic!("no partition at all: {layout:?}{}", run.report()));
    assert!(
        cd.start >= image_len && cd.size >= iso.len() as u64,
        "config drive partition must follow the image and hold the ISO ({} bytes): {cd:?} in \
         {layout:?}{}",
        iso.len(),
        run.report()
    );
    assert!(
        cd.start + cd.size <= run.dev.size(),
        "{cd:?} beyond the disk{}",
        run.report()
    );
    let on_disk = read_at(run.dev.backing_file(), cd.start, iso.len()).unwrap();
    if let Some(d) = first_difference(&on_disk, &iso) {
        panic!(
            "config-2 partition {cd:?} does not hold the ISO: {d}{}",
            run.report()
        );
    }
    // Independent check of the label with util-linux, when it is installed.
    if let Some(node) = run.dev.partition_node(cd.number) {
        let out = std::process::Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(&node)
            .output()
            .expect("blkid");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "config-2",
            "{}",
            node.display()
        );
    }
    match std::process::Command::new("blkid")
        .args([
            "-p",
            "-o",
            "value",
            "-s",
            "LABEL",
            "-O",
            &cd.start.to_string(),
        ])
        .arg(run.dev.backing_file())
        .output()
    {
        Ok(out) => assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "config-2",
            "blkid at offset {} of the disk{}",
            cd.start,
            run.report()
        ),
        Err(e) => eprintln!("note: blkid not available ({e}); label checked by bytes only"),
    }
    layout.partitions.len() as u64
}

#[test]
fn deploys_mbr_image_with_configdrive_to_active() {
    let img = test_image(TableKind::Mbr, 16 << 20, 0xfe221c);
    let Some(mut run) = start(
        "e2e_deploy::deploys_mbr_image_with_configdrive_to_active",
        160 * MIB,
        None,
        &img.bytes,
        |url| DeployPlan::whole_disk_raw(&url, &img.sha256, Some(configdrive_b64().to_string())),
    ) else {
        return;
    };
    let token = run
        .ironic
        .wait_for_request(SETTLE, |r| r.path == "/v1/lookup" && r.status == 200)
        .and_then(|r| r.response_json())
        .and_then(|j| j["config"]["agent_token"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no successful lookup{}", run.report()));
    let st = run.settle();
    assert_eq!(st.provision_state, "active", "{}", run.report());
    assert_eq!(
        st.command_names(),
        [
            "deploy.get_deploy_steps",
            "deploy.execute_deploy_step",
            "standby.get_partition_uuids",
            "image.install_bootloader",
            "standby.power_off"
        ],
        "{}",
        run.report()
    );
    // With --power-action exit, power_off makes the agent exit 0 after answering.
    match run.agent.process.wait_exit(Duration::from_secs(15)) {
        Some(s) => assert!(
            s.success(),
            "agent exited with {s} after power_off{}",
            run.report()
        ),
        None => panic!("agent still running 15 s after power_off{}", run.report()),
    }
    let uuids = &st.sent("standby.get_partition_uuids")[0];
    assert_eq!(
        uuids.response.as_ref().unwrap()["command_result"]["root uuid"],
        "0x1badb002",
        "whole-disk MBR: root uuid is the disk identifier{}",
        run.report()
    );
    assert_wire(&run, &token);

    // The image is on the disk; only the partition table gained the config-2 entry.
    let disk = read_at(run.dev.backing_file(), 0, img.bytes.len()).unwrap();
    for (what, range) in [
        ("boot code + disk signature", 0..446),
        ("image partition entry", 446..462),
        ("everything after the table", 510..img.bytes.len()),
    ] {
        if let Some(d) = first_difference(&disk[range.clone()], &img.bytes[range.clone()]) {
            panic!(
                "{what} ({range:?}) differs from the image: {d}{}",
                run.report()
            );
        }
    }
    let layout = read_layout(run.dev.backing_file()).unwrap();
    assert_eq!(layout.table, Table::Mbr);
    assert_eq!(layout.disk_id, "0x1badb002");
    assert_eq!(
        assert_configdrive(&run, img.bytes.len() as u64),
        2,
        "{layout:?}"
    );
    eprintln!(
        "timings: first lookup {:?}, first heartbeat {:?}, deploy done {:?}",
        st.timings.first_lookup, st.timings.first_heartbeat, st.timings.done
    );
}

#[test]
fn deploys_gpt_image_and_moves_the_backup_header_to_the_disk_end() {
    let img = test_image(TableKind::Gpt, 16 << 20, 0x6e7);
    let Some(run) = start(
        "e2e_deploy::deploys_gpt_image_and_moves_the_backup_header_to_the_disk_end",
        160 * MIB,
        None,
        &img.bytes,
        |url| DeployPlan::whole_disk_raw(&url, &img.sha256, Some(configdrive_b64().to_string())),
    ) else {
        return;
    };
    let st = run.settle();
    assert_eq!(st.provision_state, "active", "{}", run.report());
    let layout = read_layout(run.dev.backing_file())
        .unwrap_or_else(|e| panic!("GPT unreadable after deploy: {e}{}", run.report()));
    assert_eq!(layout.table, Table::Gpt, "{}", run.report());
    assert_eq!(
        layout.gpt_backup_at_end,
        Some(true),
        "the backup GPT header must be at the disk's last LBA{}",
        run.report()
    );
    let image_layout = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, &img.bytes).unwrap();
        read_layout(&p).unwrap()
    };
    let root = &image_layout.partitions[0];
    assert_eq!(
        layout.partitions.first(),
        Some(root),
        "the image's partition must be kept as is{}",
        run.report()
    );
    let data = read_at(run.dev.backing_file(), root.start, root.size as usize).unwrap();
    let want = &img.bytes[root.start as usize..(root.start + root.size) as usize];
    if let Some(d) = first_difference(&data, want) {
        panic!(
            "root partition data differs from the image: {d}{}",
            run.report()
        );
    }
    assert_eq!(
        assert_configdrive(&run, img.bytes.len() as u64),
        2,
        "{layout:?}"
    );
    let cd = layout.last_partition().unwrap();
    let last_usable = layout.gpt_last_usable_lba.unwrap();
    assert!(
        (cd.start + cd.size) / 512 - 1 <= last_usable,
        "config-2 {cd:?} ends beyond last usable LBA {last_usable}{}",
        run.report()
    );
}

#[test]
fn checksum_mismatch_fails_the_deploy_with_an_actionable_error_and_logs() {
    let img = test_image(TableKind::Mbr, 16 << 20, 0xbad);
    let wrong = sha256_hex(b"this is not the image");
    let Some(run) = start(
        "e2e_deploy::checksum_mismatch_fails_the_deploy_with_an_actionable_error_and_logs",
        64 * MIB,
        Some(0xaa),
        &img.bytes,
        |url| DeployPlan::whole_disk_raw(&url, &wrong, Some(configdrive_b64().to_string())),
    ) else {
        return;
    };
    let st = run.settle();
    assert_eq!(st.provision_state, "deploy failed", "{}", run.report());
    let err = st
        .failed_command_error
        .clone()
        .unwrap_or_else(|| panic!("no command_error recorded{}", run.report()));
    // IPA's deploy extension wraps any step failure in DeploymentError, with details
    // "Error performing deploy_step write_image: <the ImageChecksumError>".
    assert_eq!(err["type"], "DeploymentError", "{err}{}", run.report());
    assert!(
        err["details"]
            .as_str()
            .is_some_and(|d| d.contains("ImageChecksumError")),
        "details should say the checksum did not match: {err}{}",
        run.report()
    );
    let last_error = st.last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains(&wrong),
        "last_error should name the expected checksum so an operator can act: {last_error}{}",
        run.report()
    );
    assert_eq!(
        st.command_names(),
        [
            "deploy.get_deploy_steps",
            "deploy.execute_deploy_step",
            "log.collect_system_logs"
        ],
        "{}",
        run.report()
    );
    let logs = st.system_logs.clone().unwrap_or_else(|| {
        panic!(
            "collect_system_logs returned no system_logs{}",
            run.report()
        )
    });
    let gz = base64::engine::general_purpose::STANDARD
        .decode(logs.trim())
        .unwrap_or_else(|e| panic!("system_logs is not base64: {e}{}", run.report()));
    assert!(
        gz.starts_with(&[0x1f, 0x8b]),
        "system_logs is not gzip{}",
        run.report()
    );
    // No bootable half-image: the first MiB (partition table, boot code) is zeroed.
    let head = read_at(run.dev.backing_file(), 0, MIB as usize).unwrap();
    assert!(
        head.iter().all(|b| *b == 0),
        "first MiB not zeroed after a failed write: {:?}{}",
        first_difference(&head, &vec![0u8; head.len()]),
        run.report()
    );
}
