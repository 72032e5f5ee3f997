//! End to end, no root needed: the real agent in `--standalone --agent-token T` mode, its REST
//! API probed directly, images from the fault-injecting image server, and a regular temp file
//! as install device (`FERRIC_TEST_INSTALL_DEVICE=loop` uses a loop device instead).

use std::collections::BTreeSet;
use std::time::Duration;

use ferric_tests::conductor::DeployPlan;
use ferric_tests::disk_layout::{read_at, read_layout};
use ferric_tests::e2e::{
    first_difference, report, short, spawn_standalone, RunningAgent, TestDisk,
};
use ferric_tests::fixtures::{configdrive_b64, configdrive_iso, sha256_hex, test_image, TableKind};
use ferric_tests::image_server::{Fault, ImageServer};
use serde_json::{json, Value};

const TOKEN: &str = "ferric-test-token-0123456789abcdefghijklmnopq";
const MIB: usize = 1 << 20;
const DONE: Duration = Duration::from_secs(45);

fn standalone(test: &str, disk_size: u64) -> Option<(RunningAgent, TestDisk)> {
    let disk = TestDisk::create(test, disk_size)?;
    let agent = spawn_standalone(TOKEN, &disk.path(), &[]);
    Some((agent, disk))
}

fn prepare_params(url: &str, sha256: &str, configdrive: Option<String>) -> Value {
    let plan = DeployPlan::whole_disk_raw(url, sha256, configdrive.clone());
    json!({"image_info": plan.image_info("standalone"), "configdrive": configdrive})
}

fn unauthorized() -> Value {
    json!({"faultcode": "Client", "faultstring": "401 Unauthorized: Token invalid."})
}

#[test]
fn commands_require_the_agent_token() {
    let Some((agent, _disk)) = standalone("e2e_api::token", 8 << 20) else {
        return;
    };
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, None);
    let st = api.get("/v1/status", None);
    assert_eq!(st.status, 200, "{st:?}{}", rep());
    assert!(st.body["started_at"].is_number(), "{st:?}");
    assert!(st.body["version"].is_string(), "{st:?}");
    for token in [None, Some("wrong")] {
        let r = api.get("/v1/commands/", token);
        assert_eq!(
            (r.status, &r.body),
            (401, &unauthorized()),
            "GET token={token:?}{}",
            rep()
        );
        let r = api.command("standby.sync", json!({}), true, token);
        assert_eq!(
            (r.status, &r.body),
            (401, &unauthorized()),
            "POST token={token:?}{}",
            rep()
        );
    }
    let r = api.get("/v1/commands/", Some(TOKEN));
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"commands": []})),
        "{}",
        rep()
    );
}

#[test]
fn malformed_bodies_get_400_with_a_json_faultstring() {
    let Some((agent, _disk)) = standalone("e2e_api::malformed", 8 << 20) else {
        return;
    };
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, None);
    for body in [
        &b"{not json"[..],
        &br#"{"params": {}}"#[..],
        &br#"{"name": "standby.sync"}"#[..],
        &br#"{"name": "standby.sync", "params": []}"#[..],
        &br#"[1, 2]"#[..],
    ] {
        let r = api.post_raw(body, true, Some(TOKEN));
        assert_eq!(
            r.status,
            400,
            "{} -> {r:?}{}",
            String::from_utf8_lossy(body),
            rep()
        );
        assert!(r.faultstring().is_some(), "no string faultstring: {r:?}");
    }
    assert_eq!(
        api.commands(TOKEN),
        Vec::<Value>::new(),
        "rejected bodies left results"
    );
}

#[test]
fn unknown_extensions_and_commands_are_rejected_like_ipa() {
    let Some((agent, _disk)) = standalone("e2e_api::unknown", 8 << 20) else {
        return;
    };
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, None);
    // IPA: RequestedObjectNotFoundError -> 404 "Not found: Extension with id nosuch not found."
    let r = api.command("nosuch.command", json!({}), true, Some(TOKEN));
    assert_eq!(r.status, 404, "{r:?}{}", rep());
    assert!(
        r.faultstring().is_some_and(|f| f.contains("nosuch")),
        "{r:?}"
    );
    // IPA: InvalidCommandError -> 400 "Invalid command: Unknown command: standby.nosuch";
    // PROTOCOL.md calls both "404-style", so either status is accepted here.
    let r = api.command("standby.nosuch", json!({}), true, Some(TOKEN));
    assert!(r.status == 400 || r.status == 404, "{r:?}{}", rep());
    assert!(
        r.faultstring().is_some_and(|f| f.contains("nosuch")),
        "{r:?}"
    );
    assert_eq!(api.commands(TOKEN), Vec::<Value>::new());
}

#[test]
fn a_second_command_while_one_runs_gets_409_and_results_have_no_params() {
    let Some((agent, _disk)) = standalone("e2e_api::busy", 64 << 20) else {
        return;
    };
    let images = ImageServer::start().unwrap();
    let img = test_image(TableKind::Mbr, 16 << 20, 9);
    images.add("disk.raw", img.bytes.clone());
    images.set_fault("disk.raw", Fault::StallAfter(MIB as u64));
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, Some(&images));
    let r = api.command(
        "standby.prepare_image",
        prepare_params(&images.url("disk.raw"), &img.sha256, None),
        false,
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{r:?}{}", rep());
    assert_eq!(r.body["command_status"], "RUNNING", "{r:?}{}", rep());
    assert_eq!(r.body["command_name"], "prepare_image", "{r:?}");
    // Make sure the download really is in progress (stalled) before asking again.
    ferric_tests::util::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        images
            .requests()
            .iter()
            .any(|q| q.bytes_sent > 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the agent never started downloading{}", rep()));
    for (name, wait) in [
        ("standby.get_partition_uuids", true),
        ("standby.prepare_image", false),
    ] {
        let params = if name == "standby.prepare_image" {
            prepare_params(&images.url("disk.raw"), &img.sha256, None)
        } else {
            json!({})
        };
        let r = api.command(name, params, wait, Some(TOKEN));
        assert_eq!(r.status, 409, "{name} while busy: {r:?}{}", rep());
        let f = r.faultstring().unwrap_or_default();
        assert!(
            f.starts_with("Agent is busy") && f.contains("prepare_image"),
            "faultstring should be IPA's 'Agent is busy: executing command prepare_image': {f}"
        );
    }
    let list = api.commands(TOKEN);
    assert_eq!(
        list.len(),
        1,
        "busy answers must not create results: {}",
        short(&json!(list))
    );
    let allowed: BTreeSet<&str> = [
        "id",
        "command_name",
        "command_status",
        "command_error",
        "command_result",
    ]
    .into();
    for c in &list {
        let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(
            !keys.contains("command_params"),
            "command_params leaked: {}",
            short(c)
        );
        assert_eq!(keys, allowed, "result keys: {}", short(c));
    }
    assert_eq!(list[0]["command_status"], "RUNNING");
    let one = api.get(
        &format!("/v1/commands/{}", list[0]["id"].as_str().unwrap()),
        Some(TOKEN),
    );
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.body["id"], list[0]["id"]);
}

#[test]
fn bad_checksum_fails_with_image_checksum_error_and_zeroes_the_disk_edges() {
    let Some((agent, disk)) = standalone("e2e_api::checksum", 64 << 20) else {
        return;
    };
    disk.fill(0xaa);
    let images = ImageServer::start().unwrap();
    let img = test_image(TableKind::Mbr, 16 << 20, 10);
    images.add("disk.raw", img.bytes.clone());
    let wrong = sha256_hex(b"definitely not the image");
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, Some(&images));
    let r = api.command(
        "standby.prepare_image",
        prepare_params(&images.url("disk.raw"), &wrong, None),
        false,
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{r:?}{}", rep());
    let done = api
        .wait_done(TOKEN, "prepare_image", DONE)
        .unwrap_or_else(|| panic!("prepare_image still RUNNING after {DONE:?}{}", rep()));
    assert_eq!(
        done["command_status"],
        "FAILED",
        "{}{}",
        short(&done),
        rep()
    );
    assert_eq!(
        done["command_error"]["type"],
        "ImageChecksumError",
        "{}",
        short(&done)
    );
    let details = done["command_error"]["details"]
        .as_str()
        .unwrap_or_default();
    assert!(
        details.contains(&wrong),
        "details should name the expected checksum: {details}"
    );
    let bytes = disk.read_all();
    let zeros = vec![0u8; MIB];
    for (what, range) in [("first", 0..MIB), ("last", bytes.len() - MIB..bytes.len())] {
        if let Some(d) = first_difference(&bytes[range], &zeros) {
            panic!(
                "{what} MiB not zeroed after a checksum failure: {d}{}",
                rep()
            );
        }
    }
}

#[test]
fn an_image_larger_than_the_device_fails_and_leaves_it_untouched() {
    let Some((agent, disk)) = standalone("e2e_api::too_big", 8 << 20) else {
        return;
    };
    disk.fill(0xaa);
    let images = ImageServer::start().unwrap();
    let img = test_image(TableKind::Mbr, 16 << 20, 11);
    images.add("disk.raw", img.bytes.clone());
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, Some(&images));
    let r = api.command(
        "standby.prepare_image",
        prepare_params(&images.url("disk.raw"), &img.sha256, None),
        false,
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{r:?}{}", rep());
    let done = api
        .wait_done(TOKEN, "prepare_image", DONE)
        .unwrap_or_else(|| panic!("prepare_image still RUNNING after {DONE:?}{}", rep()));
    assert_eq!(
        done["command_status"],
        "FAILED",
        "{}{}",
        short(&done),
        rep()
    );
    assert!(
        done["command_error"]["details"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "an operator needs details: {}",
        short(&done)
    );
    let bytes = disk.read_all();
    if let Some(d) = first_difference(&bytes, &vec![0xaa; bytes.len()]) {
        panic!(
            "device was modified although the image cannot fit: {d}{}",
            rep()
        );
    }
}

#[test]
fn prepare_image_writes_the_image_and_the_config_drive() {
    let Some((agent, disk)) = standalone("e2e_api::prepare_image", 160 << 20) else {
        return;
    };
    let images = ImageServer::start().unwrap();
    let img = test_image(TableKind::Mbr, 16 << 20, 12);
    images.add("disk.raw", img.bytes.clone());
    let api = agent.api();
    let rep = || report(Some(&agent), None, None, Some(&images));
    let r = api.command(
        "standby.prepare_image",
        prepare_params(
            &images.url("disk.raw"),
            &img.sha256,
            Some(configdrive_b64().into()),
        ),
        false,
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{r:?}{}", rep());
    let done = api
        .wait_done(TOKEN, "prepare_image", DONE)
        .unwrap_or_else(|| panic!("prepare_image still RUNNING after {DONE:?}{}", rep()));
    assert_eq!(
        done["command_status"],
        "SUCCEEDED",
        "{}{}",
        short(&done),
        rep()
    );
    let result = done["command_result"]["result"]
        .as_str()
        .unwrap_or_default();
    assert!(
        result.starts_with("prepare_image: image (disk.raw) written to device"),
        "IPA's result text expected: {result}"
    );
    let path = disk.path();
    let bytes = read_at(&path, 0, img.bytes.len()).unwrap();
    for range in [0..446, 446..462, 510..img.bytes.len()] {
        if let Some(d) = first_difference(&bytes[range.clone()], &img.bytes[range.clone()]) {
            panic!("image bytes {range:?} differ: {d}{}", rep());
        }
    }
    let layout = read_layout(&path).unwrap();
    let cd = layout.last_partition().unwrap();
    let iso = configdrive_iso();
    assert!(cd.start >= img.bytes.len() as u64, "{layout:?}{}", rep());
    let on_disk = read_at(&path, cd.start, iso.len()).unwrap();
    if let Some(d) = first_difference(&on_disk, &iso) {
        panic!(
            "config drive partition {cd:?} does not hold the ISO: {d}{}",
            rep()
        );
    }
    let uuids = api.command("standby.get_partition_uuids", json!({}), true, Some(TOKEN));
    assert_eq!(uuids.status, 200, "{uuids:?}");
    assert_eq!(
        uuids.body["command_result"]["root uuid"], "0x1badb002",
        "{uuids:?}"
    );
}
