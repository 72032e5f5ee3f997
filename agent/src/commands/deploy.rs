//! The `deploy` extension: deploy steps (IPA `extensions/deploy.py`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Failure, Outcome, Params};
use crate::agent::Agent;
use crate::error::AgentError;

/// The hardware manager name and version reported with steps. Ironic stores the version
/// and sends it back as `deploy_version`/`clean_version`; a difference means the steps it
/// computed may not match this agent.
pub const MANAGER: &str = "GenericHardwareManager";
/// See [`MANAGER`].
pub const MANAGER_VERSION_KEY: &str = "generic_hardware_manager";
/// See [`MANAGER`].
pub const MANAGER_VERSION: &str = "1.2";

/// `hardware_manager_version` as reported to Ironic.
pub fn manager_versions() -> Value {
    json!({ MANAGER_VERSION_KEY: MANAGER_VERSION })
}

fn cache_node(agent: &Agent, params: &Params) {
    if let Some(n) = params.get("node") {
        agent.set_node(n.clone());
    }
}

/// `deploy.get_deploy_steps(node, ports)`: only steps this agent really implements.
pub fn get_deploy_steps(agent: &Arc<Agent>, params: Params) -> Outcome {
    cache_node(agent, &params);
    Ok(json!({
        "deploy_steps": {
            MANAGER: [
                {"step": "write_image", "priority": 0, "interface": "deploy",
                 "reboot_requested": false},
            ]
        },
        "hardware_manager_version": manager_versions(),
    }))
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

/// `deploy.execute_deploy_step(step, node, ports, deploy_version)`.
///
/// The result echoes the step exactly as received: the conductor compares it with the step
/// it sent and waits forever on a difference.
pub fn execute_deploy_step(agent: &Arc<Agent>, params: Params) -> Outcome {
    cache_node(agent, &params);
    let step = params.get("step").cloned().unwrap_or(Value::Null);
    let name = step.get("step").and_then(Value::as_str).unwrap_or("");
    if let Some(v) = params.get("deploy_version").filter(|v| !v.is_null()) {
        if v != &manager_versions() {
            return Err(Failure::Error(AgentError::version_mismatch(
                &manager_versions(),
                v,
            )));
        }
    }
    let args = step.get("args").cloned().unwrap_or_else(|| json!({}));
    let result = match name {
        "write_image" => {
            let info = args.get("image_info").cloned().unwrap_or(Value::Null);
            crate::commands::write_image_from_params(agent, &info, args.get("configdrive"))
                .map(|text| json!({ "result": format!("prepare_image: {text}") }))
        }
        other => Err(AgentError::method_not_found(other)),
    };
    match result {
        Ok(r) => Ok(json!({ "deploy_result": r, "deploy_step": step })),
        // IPA wraps every step failure as DeploymentError; keep the cause's class visible.
        Err(e) => Err(Failure::Error(AgentError::new(
            "DeploymentError",
            500,
            "Deploy step failed",
            format!("Error performing deploy_step {name}: {}: {e}", e.kind),
        ))),
    }
}
