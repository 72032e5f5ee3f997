//! Deploy, clean and service steps (IPA `extensions/deploy.py`, `clean.py`,
//! `service.py`): the three extensions share one shape. Steps come from the hardware
//! manager registry (`ferric_hardware::Managers`); `write_image` is the agent's own deploy
//! step, since it needs the image writer and the agent's state.

use std::sync::Arc;

use ferric_hardware::{self as hw, DeviceFilter, StepContext, StepKind};
use serde_json::{json, Map, Value};

use super::{Failure, Outcome, Params};
use crate::agent::Agent;
use crate::error::AgentError;

/// The manager that lists `write_image`, as IPA's generic manager does.
const WRITE_IMAGE_MANAGER: &str = "GenericHardwareManager";

fn cache_node(agent: &Agent, params: &Params) {
    if let Some(n) = params.get("node").filter(|n| n.is_object()) {
        agent.set_node(n.clone());
    }
}

fn node_and_ports(agent: &Agent, params: &Params) -> (Value, Value) {
    let node = params
        .get("node")
        .filter(|n| n.is_object())
        .cloned()
        .or_else(|| agent.node())
        .unwrap_or_else(|| json!({}));
    let ports = params.get("ports").cloned().unwrap_or_else(|| json!([]));
    (node, ports)
}

/// The devices steps may touch: every disk in the ramdisk; outside it only the devices
/// named with --install-device/--allow-device.
fn filter(agent: &Agent) -> DeviceFilter<'_> {
    if agent.in_ramdisk {
        DeviceFilter::all_disks()
    } else {
        DeviceFilter::only(agent.guard.allowed())
    }
}

/// `get_{deploy,clean,service}_steps(node, ports)`.
pub fn get_steps(agent: &Arc<Agent>, kind: StepKind, params: Params) -> Outcome {
    cache_node(agent, &params);
    let (node, ports) = node_and_ports(agent, &params);
    let ctx = StepContext::new(&agent.config.sys_root, &node, &ports, filter(agent));
    let mut answer = agent.managers.steps_response(kind, &ctx);
    if kind == StepKind::Deploy {
        let list = answer
            .pointer_mut(&format!("/{}", kind.steps_key()))
            .and_then(Value::as_object_mut)
            .map(|m| {
                m.entry(WRITE_IMAGE_MANAGER)
                    .or_insert_with(|| Value::Array(Vec::new()))
            })
            .and_then(Value::as_array_mut);
        if let Some(list) = list {
            if !list.iter().any(|s| s["step"] == "write_image") {
                list.push(
                    json!({"step": "write_image", "priority": 0, "interface": "deploy",
                                 "reboot_requested": false}),
                );
            }
        }
    }
    Ok(answer)
}

/// Reject a step that is not an object with a `step` name (400 before the thread starts).
pub fn validate_step(_agent: &Arc<Agent>, params: &Params) -> Result<(), AgentError> {
    match params.get("step") {
        Some(Value::Object(s)) if s.get("step").is_some_and(Value::is_string) => Ok(()),
        _ => Err(AgentError::invalid_params(
            "step must be an object with a 'step' name",
        )),
    }
}

fn wrap(kind: StepKind, name: &str, cause_type: &str, cause: &str) -> AgentError {
    let (ty, msg, what) = match kind {
        StepKind::Deploy => ("DeploymentError", "Deploy step failed", "deploy_step"),
        StepKind::Clean => ("CleaningError", "Clean step failed", "clean_step"),
        StepKind::Service => ("ServicingError", "Service step failed", "service_step"),
    };
    // IPA wraps every step failure this way; the cause's class stays visible.
    AgentError::new(
        ty,
        500,
        msg,
        format!("Error performing {what} {name}: {cause_type}: {cause}"),
    )
}

/// `execute_{deploy,clean,service}_step(step, node, ports, <kind>_version)`.
///
/// The result echoes the step exactly as received: the conductor compares it with the step
/// it sent and waits forever on a difference.
pub fn execute_step(agent: &Arc<Agent>, kind: StepKind, params: Params) -> Outcome {
    cache_node(agent, &params);
    let step = params.get("step").cloned().unwrap_or(Value::Null);
    let name = step
        .get("step")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let provided = params.get(kind.version_param()).filter(|v| !v.is_null());
    if let Err(m) = agent.managers.check_versions(provided) {
        let e = AgentError::version_mismatch(&m.agent, &m.node);
        // IPA: a clean step gets CLEAN_VERSION_MISMATCH (the conductor restarts cleaning);
        // deploy and service steps simply fail.
        return Err(if kind == StepKind::Clean {
            Failure::VersionMismatch(e)
        } else {
            Failure::Error(e)
        });
    }
    let args = step.get("args").cloned().unwrap_or_else(|| json!({}));
    if kind == StepKind::Deploy && name == "write_image" {
        let info = args.get("image_info").cloned().unwrap_or(Value::Null);
        return match super::write_image_from_params(agent, &info, args.get("configdrive")) {
            Ok(text) => Ok(json!({
                kind.result_key(): {"result": format!("prepare_image: {text}")},
                kind.step_key(): step,
            })),
            Err(e) => Err(wrap(kind, &name, &e.kind, &e.to_string()).into()),
        };
    }
    let (node, ports) = node_and_ports(agent, &params);
    let progress = |p: &hw::Progress<'_>| {
        agent.runner.set_progress(json!({
            "device": p.device,
            "operation": format!("{:?}", p.operation),
            "pass": p.pass,
            "passes": p.passes,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
        }));
    };
    let ctx = StepContext::new(&agent.config.sys_root, &node, &ports, filter(agent))
        .with_progress(&progress);
    match agent.managers.execute_step(&step, &ctx) {
        Ok(v) => {
            let mut out = Map::new();
            out.insert(kind.result_key().into(), v);
            out.insert(kind.step_key().into(), step);
            Ok(Value::Object(out))
        }
        Err(e) => Err(wrap(kind, &name, e.ipa_type(), &e.to_string()).into()),
    }
}

/// Registry adapters.
pub fn get_deploy_steps(a: &Arc<Agent>, p: Params) -> Outcome {
    get_steps(a, StepKind::Deploy, p)
}
/// See [`get_steps`].
pub fn get_clean_steps(a: &Arc<Agent>, p: Params) -> Outcome {
    get_steps(a, StepKind::Clean, p)
}
/// See [`get_steps`].
pub fn get_service_steps(a: &Arc<Agent>, p: Params) -> Outcome {
    get_steps(a, StepKind::Service, p)
}
/// See [`execute_step`].
pub fn execute_deploy_step(a: &Arc<Agent>, p: Params) -> Outcome {
    execute_step(a, StepKind::Deploy, p)
}
/// See [`execute_step`].
pub fn execute_clean_step(a: &Arc<Agent>, p: Params) -> Outcome {
    execute_step(a, StepKind::Clean, p)
}
/// See [`execute_step`].
pub fn execute_service_step(a: &Arc<Agent>, p: Params) -> Outcome {
    execute_step(a, StepKind::Service, p)
}
