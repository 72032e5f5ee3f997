//! Loads the recorded real-conductor conversations (`shared/recordings/*.jsonl`), used as
//! golden inputs for the fake conductor's own tests and for parsing checks.
//!
//! Location: `$FERRIC_RECORDINGS` if set, else `<workspace>/../shared/recordings` (CI runs in
//! a fresh clone with `shared/` beside it).

use std::path::PathBuf;

use serde_json::Value;

/// One recorded HTTP exchange.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// `agent->ironic` or `ironic->agent`.
    pub dir: String,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query parameters (object), or `Null`.
    pub query: Value,
    /// Request headers (object), or `Null`.
    pub req_headers: Value,
    /// Request body (decoded JSON), or `Null`.
    pub body: Value,
    /// Response status.
    pub status: u16,
    /// Response headers (object), or `Null`.
    pub resp_headers: Value,
    /// Response body (decoded JSON), or `Null`.
    pub response: Value,
}

impl Exchange {
    /// True for requests the agent made to Ironic.
    pub fn from_agent(&self) -> bool {
        self.dir == "agent->ironic"
    }

    /// The command name of an `ironic->agent` POST, if any.
    pub fn command_name(&self) -> Option<&str> {
        self.body.get("name").and_then(Value::as_str)
    }
}

/// The recordings directory.
pub fn dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRIC_RECORDINGS") {
        return PathBuf::from(p);
    }
    crate::agent_process::workspace_root()
        .join("..")
        .join("shared")
        .join("recordings")
}

/// Loads `name` (e.g. `01-deploy.jsonl`). Panics with the path when it cannot be read: the
/// recordings are required golden inputs.
pub fn load(name: &str) -> Vec<Exchange> {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read recording {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: bad JSON: {e}", path.display(), i + 1));
            let decode = |x: &Value| match x {
                Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| x.clone()),
                other => other.clone(),
            };
            Exchange {
                dir: v["dir"].as_str().unwrap_or_default().to_string(),
                method: v["method"].as_str().unwrap_or_default().to_string(),
                path: v["path"].as_str().unwrap_or_default().to_string(),
                query: v["query"].clone(),
                req_headers: v["req_headers"].clone(),
                body: decode(&v["body"]),
                status: v["status"].as_u64().unwrap_or(0) as u16,
                resp_headers: v["resp_headers"].clone(),
                response: decode(&v["response"]),
            }
        })
        .collect()
}
