//! The `poll` extension: what the conductor (or an operator) can read at any time.

use std::sync::Arc;

use serde_json::Value;

use super::{Outcome, Params};
use crate::agent::Agent;
use crate::error::AgentError;

/// `poll.get_hardware_info()`: the inventory in IPA's format.
pub fn get_hardware_info(agent: &Arc<Agent>, _params: Params) -> Outcome {
    let inv = crate::inspect::inventory(&agent.config);
    serde_json::to_value(inv)
        .map_err(|e| AgentError::execution(format!("cannot serialise the inventory: {e}")).into())
}

/// `poll.get_node_info()`: the node as last cached (lookup or a command's `node`).
pub fn get_node_info(agent: &Arc<Agent>, _params: Params) -> Outcome {
    Ok(agent.node().unwrap_or(Value::Null))
}
