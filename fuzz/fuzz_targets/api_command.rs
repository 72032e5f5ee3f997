//! The JSON body of `POST /v1/commands` without HTTP: the checks `api::handle` makes (a JSON
//! object with a string `name` and an object `params`), then `Runner::execute` on a fresh
//! standalone agent, waiting for the command to end. Any panic is a bug, including one the
//! runner would catch and turn into a FAILED command (libFuzzer's panic hook aborts first).
//!
//! Safety: the fuzzer must never run a command that writes a disk, downloads, syncs or ends
//! the process. Only these names run as they are:
//! - the read-only commands in [`SAFE`];
//! - `deploy.execute_deploy_step` unless its step is `write_image` (any other step name is
//!   refused by the agent; the validator and the version check are what is fuzzed);
//! - names that cannot resolve to a command: no `.`, an extension that is no IPA extension,
//!   or a command name with a character no IPA command has (so the error paths are fuzzed).
//!
//! Everything else is skipped. The agent runs outside a ramdisk with no install device, so
//! its own device guard would refuse disk writes anyway; this list keeps the fuzzer from even
//! trying, and stays safe when new commands are registered.
//!
//! Input: a request body (one JSON object), or a JSON list of up to 4 bodies run in order
//! without waiting in between (the agent's "one command at a time" rule, 409).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferric_agent::agent::Agent;
use ferric_agent::commands::Status;
use ferric_agent::config::{Cli, Config, KernelParams};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Commands that only read agent state.
const SAFE: &[&str] = &[
    "deploy.get_deploy_steps",
    "standby.get_partition_uuids",
    "image.install_bootloader",
    "poll.get_node_info",
    "poll.get_hardware_info",
];

/// Extensions IPA has or had (ironic_python_agent/extensions/): a name under one of them may
/// become a real command in Ferric one day.
const IPA_EXTENSIONS: &[&str] = &[
    "standby", "deploy", "image", "log", "poll", "clean", "service", "system", "rescue", "flow",
    "iscsi", "fake",
];

fn allowed(name: &str, params: &Map<String, Value>) -> bool {
    if SAFE.contains(&name) {
        return true;
    }
    if name == "deploy.execute_deploy_step" {
        let step = params.get("step").and_then(|s| s.get("step"));
        return step != Some(&Value::String("write_image".into()));
    }
    let Some((extension, command)) = name.split_once('.') else {
        return true;
    };
    if !IPA_EXTENSIONS.contains(&extension) {
        return true;
    }
    command
        .chars()
        .any(|c| !(c.is_ascii_lowercase() || c == '_'))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn fresh_agent() -> Arc<Agent> {
    let cli = Cli {
        standalone: true,
        agent_token: Some("t".into()),
        // Nothing below this root exists: inventory reads fail fast instead of reading the
        // host's sysfs.
        sys_root: Some("/nonexistent/ferric-fuzz".into()),
        ..Default::default()
    };
    let config = Config::resolve(&cli, KernelParams::default()).expect("fixed config resolves");
    Arc::new(Agent::new(config, false))
}

/// The checks `api::run_command` makes before the token: `name` a string, `params` an object.
fn command_of(body: &Value) -> Option<(String, Map<String, Value>)> {
    match (
        body.get("name").and_then(Value::as_str),
        body.get("params").and_then(Value::as_object),
    ) {
        (Some(n), Some(p)) => Some((n.to_string(), p.clone())),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let bodies: Vec<&Value> = match &parsed {
        Value::Array(list) => list.iter().take(4).collect(),
        other => vec![other],
    };
    let commands: Vec<(String, Map<String, Value>)> =
        bodies.into_iter().filter_map(command_of).collect();
    if commands.is_empty() || !commands.iter().all(|(n, p)| allowed(n, p)) {
        return;
    }
    let agent = fresh_agent();
    runtime().block_on(async {
        let mut entries = Vec::new();
        for (name, params) in commands {
            match agent.runner.execute(&agent, &name, params).await {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    // HTTP-level errors carry a 4xx/5xx code and serialise as IPA errors.
                    assert!((400..600).contains(&e.code), "{e:?}");
                    let _ = serde_json::to_value(&e).expect("error serialises");
                }
            }
        }
        for entry in entries {
            tokio::time::timeout(Duration::from_secs(10), entry.wait())
                .await
                .expect("a command did not finish within 10 s");
            let snap = entry.snapshot();
            assert_ne!(snap.command_status, Status::Running);
            let _ = serde_json::to_value(&snap).expect("result serialises");
        }
    });
    let _ = serde_json::to_value(agent.runner.list()).expect("history serialises");
});
