//! Runner semantics: busy, panics, errors, history shape.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::{Cli, Config};

/// test.sleep(ms): an async command that takes a while.
pub fn sleep(_agent: &Arc<Agent>, params: Params) -> Outcome {
    let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(200);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(json!({"slept_ms": ms}))
}

/// test.panic: a command with a bug.
pub fn panic(_agent: &Arc<Agent>, _params: Params) -> Outcome {
    panic!("deliberate test panic");
}

fn agent() -> Arc<Agent> {
    let cli = Cli {
        standalone: true,
        agent_token: Some("tok".into()),
        ..Default::default()
    };
    Arc::new(Agent::new(
        Config::resolve(&cli, Default::default()).unwrap(),
        false,
    ))
}

fn params(v: Value) -> Params {
    v.as_object().cloned().unwrap()
}

#[tokio::test]
async fn name_errors_map_to_ipa_statuses() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "nodot", Params::new())
        .await
        .err()
        .unwrap();
    assert_eq!((e.code, e.kind.as_str()), (400, "InvalidCommandError"));
    assert_eq!(
        e.details,
        "Command name must be of the form <extension>.<name>"
    );
    let e = a
        .runner
        .execute(&a, "nope.x", Params::new())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, 404);
    assert_eq!(
        e.to_string(),
        "Not found: Extension with id nope not found."
    );
    let e = a
        .runner
        .execute(&a, "standby.nope", Params::new())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, 400);
    assert_eq!(e.to_string(), "Invalid command: Unknown command: nope");
    assert!(
        a.runner.list().is_empty(),
        "rejected commands leave no history"
    );
}

#[tokio::test]
async fn second_command_while_one_runs_is_busy_then_accepted() {
    let a = agent();
    let first = a
        .runner
        .execute(&a, "test.sleep", params(json!({"ms": 300})))
        .await
        .unwrap();
    assert_eq!(first.snapshot().command_status, Status::Running);
    let e = a
        .runner
        .execute(&a, "standby.sync", Params::new())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, 409);
    assert_eq!(e.to_string(), "Agent is busy: executing command sleep");
    first.wait().await;
    let s = first.snapshot();
    assert_eq!(s.command_status, Status::Succeeded);
    assert_eq!(s.command_result, Some(json!({"slept_ms": 300})));
    let second = a
        .runner
        .execute(&a, "standby.sync", Params::new())
        .await
        .unwrap();
    assert_eq!(second.snapshot().command_status, Status::Succeeded);
    assert_eq!(a.runner.list().len(), 2);
}

#[tokio::test]
async fn a_panic_becomes_failed_and_the_agent_lives_on() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "test.panic", Params::new())
        .await
        .unwrap();
    e.wait().await;
    let s = e.snapshot();
    assert_eq!(s.command_status, Status::Failed);
    let err = s.command_error.unwrap();
    assert_eq!(err.kind, "CommandExecutionError");
    assert!(
        err.details.contains("deliberate test panic"),
        "{}",
        err.details
    );
    let e = a
        .runner
        .execute(&a, "test.sync_panic", Params::new())
        .await
        .unwrap();
    assert_eq!(e.snapshot().command_status, Status::Failed);
    // Still usable afterwards.
    let ok = a
        .runner
        .execute(&a, "standby.sync", Params::new())
        .await
        .unwrap();
    assert_eq!(ok.snapshot().command_status, Status::Succeeded);
}

#[tokio::test]
async fn async_completion_forces_a_heartbeat() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "test.sleep", params(json!({"ms": 10})))
        .await
        .unwrap();
    e.wait().await;
    tokio::time::timeout(Duration::from_secs(5), a.force_heartbeat.notified())
        .await
        .expect("a finished async command notifies the heartbeater");
}

#[test]
fn result_serialises_without_command_params() {
    let r = CommandResult {
        id: "18864dbd-bf26-4e05-85a6-1d087179ce2a".into(),
        command_name: "get_partition_uuids".into(),
        command_status: Status::Succeeded,
        command_error: None,
        command_result: Some(json!({"root uuid": "0x1badb002"})),
        command_progress: None,
    };
    // Byte-for-byte the shape in recordings/01-deploy.jsonl.
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"id":"18864dbd-bf26-4e05-85a6-1d087179ce2a","command_name":"get_partition_uuids","command_status":"SUCCEEDED","command_error":null,"command_result":{"root uuid":"0x1badb002"}}"#
    );
    let f = CommandResult {
        command_status: Status::Failed,
        command_error: Some(AgentError::execution("x")),
        command_result: None,
        ..r
    };
    assert_eq!(
        serde_json::to_value(&f).unwrap()["command_error"],
        json!({"type": "CommandExecutionError", "code": 500,
               "message": "Command execution failed", "details": "x"})
    );
}

#[tokio::test]
async fn deploy_steps_and_step_echo() {
    let a = agent();
    let e = a
        .runner
        .execute(
            &a,
            "deploy.get_deploy_steps",
            params(json!({"node": {"uuid": "n1"}, "ports": []})),
        )
        .await
        .unwrap();
    let r = e.snapshot().command_result.unwrap();
    assert_eq!(
        r["hardware_manager_version"],
        json!({"generic_hardware_manager": "1.2"})
    );
    let steps = r["deploy_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap();
    assert!(steps
        .iter()
        .any(|s| s["step"] == "write_image" && s["interface"] == "deploy"));
    assert_eq!(a.node().unwrap()["uuid"], "n1", "the node is cached");

    // An unknown step fails, naming the step, and the conductor's step is echoed nowhere.
    let step = json!({"interface": "deploy", "step": "frobnicate", "args": {}});
    let e = a
        .runner
        .execute(
            &a,
            "deploy.execute_deploy_step",
            params(json!({"step": step})),
        )
        .await
        .unwrap();
    e.wait().await;
    let s = e.snapshot();
    assert_eq!(s.command_status, Status::Failed);
    let err = s.command_error.unwrap();
    assert_eq!(err.kind, "DeploymentError");
    assert!(err.details.contains("frobnicate"), "{}", err.details);

    // A step that is not an object is a 400 before anything runs.
    let e = a
        .runner
        .execute(
            &a,
            "deploy.execute_deploy_step",
            params(json!({"step": "write_image"})),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, 400);

    // A different hardware manager version fails with VersionMismatch.
    let e = a
        .runner
        .execute(
            &a,
            "deploy.execute_deploy_step",
            params(
                json!({"step": {"step": "write_image", "interface": "deploy", "args": {}},
                          "deploy_version": {"generic_hardware_manager": "0.9"}}),
            ),
        )
        .await
        .unwrap();
    e.wait().await;
    assert_eq!(e.snapshot().command_error.unwrap().kind, "VersionMismatch");
}

#[tokio::test]
async fn prepare_image_validates_image_info_up_front() {
    let a = agent();
    for bad in [
        json!({}),
        json!({"image_info": "x"}),
        json!({"image_info": {"id": "i", "urls": []}}),
    ] {
        let e = a
            .runner
            .execute(&a, "standby.prepare_image", params(bad.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(
            (e.code, e.kind.as_str()),
            (400, "InvalidCommandParamsError"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn partition_uuids_empty_before_a_deploy_and_bootloader_says_why() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "standby.get_partition_uuids", Params::new())
        .await
        .unwrap();
    assert_eq!(e.snapshot().command_result, Some(json!({})));
    let e = a
        .runner
        .execute(
            &a,
            "image.install_bootloader",
            params(json!({"root_uuid": "0x1", "target_boot_mode": "uefi"})),
        )
        .await
        .unwrap();
    e.wait().await;
    let r = e.snapshot().command_result.unwrap();
    let text = r["result"].as_str().unwrap();
    assert!(
        text.starts_with("install_bootloader: ") && text.contains("untouched"),
        "{text}"
    );
}

#[tokio::test]
async fn collect_system_logs_is_a_tar_gz_without_the_token() {
    crate::logging::init(false, None);
    let a = agent();
    a.set_token("super-secret-token-123");
    log::info!("the token is super-secret-token-123");
    let e = a
        .runner
        .execute(&a, "log.collect_system_logs", Params::new())
        .await
        .unwrap();
    let r = e.snapshot().command_result.unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r["system_logs"].as_str().unwrap())
        .unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let mut names = Vec::new();
    let mut all = String::new();
    for f in ar.entries().unwrap() {
        let mut f = f.unwrap();
        names.push(f.path().unwrap().display().to_string());
        std::io::Read::read_to_string(&mut f, &mut all).unwrap();
    }
    assert!(
        names.contains(&"ferric-agent.log".to_string()) && names.contains(&"dmesg".to_string()),
        "{names:?}"
    );
    assert!(
        all.contains("the token is ***"),
        "log line kept, token scrubbed"
    );
    assert!(!all.contains("super-secret-token-123"));
}

#[tokio::test]
async fn hardware_info_is_ipa_inventory() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "poll.get_hardware_info", Params::new())
        .await
        .unwrap();
    let s = e.snapshot();
    assert_eq!(s.command_status, Status::Succeeded);
    let inv = s.command_result.unwrap();
    for key in [
        "interfaces",
        "cpu",
        "disks",
        "memory",
        "system_vendor",
        "boot",
        "hostname",
    ] {
        assert!(inv.get(key).is_some(), "inventory lacks {key}: {inv}");
    }
    assert!(inv["cpu"]["count"].as_u64().unwrap() >= 1);
    assert!(inv["memory"]["total"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn progress_shows_while_running_and_goes_away() {
    let a = agent();
    let e = a
        .runner
        .execute(&a, "test.sleep", params(json!({"ms": 300})))
        .await
        .unwrap();
    a.runner.set_progress(json!({"bytes_done": 5}));
    let listed = serde_json::to_value(a.runner.list()).unwrap();
    assert_eq!(listed[0]["command_progress"], json!({"bytes_done": 5}));
    e.wait().await;
    let listed = serde_json::to_value(a.runner.list()).unwrap();
    assert!(listed[0].get("command_progress").is_none(), "{listed}");
}

#[tokio::test]
async fn clean_steps_and_clean_version_mismatch() {
    let a = agent();
    let e = a
        .runner
        .execute(
            &a,
            "clean.get_clean_steps",
            params(json!({"node": {"uuid": "n"}, "ports": []})),
        )
        .await
        .unwrap();
    let r = e.snapshot().command_result.unwrap();
    let steps = r["clean_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap();
    let prio = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .map(|s| s["priority"].clone())
    };
    assert_eq!(prio("erase_devices_metadata"), Some(json!(99)));
    assert_eq!(prio("erase_devices"), Some(json!(10)));
    assert_eq!(
        r["hardware_manager_version"],
        json!({"generic_hardware_manager": "1.2"})
    );

    let step = json!({"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
                      "reboot_requested": false, "abortable": true, "requires_ramdisk": true});
    let e = a
        .runner
        .execute(
            &a,
            "clean.execute_clean_step",
            params(json!({"step": step, "node": {"uuid": "n"}, "ports": [],
                          "clean_version": {"generic_hardware_manager": "0.1"}})),
        )
        .await
        .unwrap();
    e.wait().await;
    let s = e.snapshot();
    assert_eq!(s.command_status, Status::CleanVersionMismatch);
    assert_eq!(s.command_error.unwrap().kind, "VersionMismatch");

    // The deploy step list still carries write_image next to the manager's own steps.
    let e = a
        .runner
        .execute(
            &a,
            "deploy.get_deploy_steps",
            params(json!({"node": {}, "ports": []})),
        )
        .await
        .unwrap();
    let r = e.snapshot().command_result.unwrap();
    let names: Vec<_> = r["deploy_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"write_image".to_string())
            && names.contains(&"erase_devices_metadata".to_string()),
        "{names:?}"
    );
}

#[test]
fn flag_params_accept_ironic_spellings() {
    let p = |v: Value| {
        let mut m = Params::new();
        m.insert("ignore_bootloader_failure".into(), v);
        m
    };
    let key = "ignore_bootloader_failure";
    assert!(flag_param(&p(Value::Bool(true)), key));
    assert!(flag_param(&p(Value::String("True".into())), key));
    assert!(!flag_param(&p(Value::Bool(false)), key));
    assert!(!flag_param(&Params::new(), key));
}
