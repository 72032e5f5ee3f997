//! The agent's shared state: configuration, what lookup told us, the token, the command
//! history, and the facts commands leave behind for later commands (which device the image
//! went to, its root UUID).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::Notify;

use crate::commands::Runner;
use crate::config::{Config, PowerAction};
use crate::devices::DeviceGuard;

/// What the last image write left behind.
#[derive(Debug, Clone, Default)]
pub struct DeployState {
    /// The device written.
    pub device: Option<PathBuf>,
    /// `root uuid` for get_partition_uuids (whole-disk: the disk identifier).
    pub root_uuid: Option<String>,
    /// True for a whole-disk image (it carries its own bootloader).
    pub whole_disk: bool,
}

/// Why the agent stops serving its API for good (IPA's `serve_api = False`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// `rescue.finalize_rescue`: the rescue user takes over; the agent process ends.
    Rescue,
    /// `system.lockdown`: nobody may reach the agent any more; it idles until power-off.
    Lockdown,
}

/// The agent.
pub struct Agent {
    /// Resolved configuration.
    pub config: Config,
    /// Start time, seconds since the epoch (for /v1/status).
    pub started_at: f64,
    /// True when running inside the Ferric ramdisk (see [`crate::devices::in_ramdisk`]).
    pub in_ramdisk: bool,
    /// `--power-action`, when given.
    pub forced_power_action: Option<PowerAction>,
    /// Which block devices may be touched.
    pub guard: DeviceGuard,
    /// Command execution and history.
    pub runner: Runner,
    token: RwLock<Option<String>>,
    node: RwLock<Option<Value>>,
    lookup_config: RwLock<Option<Value>>,
    /// Facts left by the image write.
    pub deploy: Mutex<DeployState>,
    /// Signalled when an async command finished: the heartbeater sends one at once.
    pub force_heartbeat: Notify,
    /// The hardware managers: steps, versions, cleaning.
    pub managers: ferric_hardware::Managers,
    /// The API's TLS, when it serves HTTPS (lookup's tls_min_version is applied to it).
    pub server_tls: OnceLock<Arc<crate::tls::ServerTls>>,
    /// Set once, by rescue or lockdown: the API closes (after answering the requests in
    /// flight) and heartbeats stop.
    pub handover: tokio::sync::watch::Sender<Option<Handover>>,
}

impl Agent {
    /// A new agent with the given configuration.
    pub fn new(config: Config, in_ramdisk: bool) -> Agent {
        let guard = DeviceGuard::new(in_ramdisk, &config);
        let token = config.agent_token.clone();
        if let Some(t) = &token {
            crate::logging::redact(t);
        }
        Agent {
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            in_ramdisk,
            forced_power_action: config.power_action,
            guard,
            runner: Runner::new(),
            token: RwLock::new(token),
            node: RwLock::new(None),
            lookup_config: RwLock::new(None),
            deploy: Mutex::new(DeployState::default()),
            force_heartbeat: Notify::new(),
            server_tls: OnceLock::new(),
            handover: tokio::sync::watch::Sender::new(None),
            managers: ferric_hardware::Managers::generic(&config.sys_root),
            config,
        }
    }

    /// Stop serving for good (the first reason given wins).
    pub fn hand_over(&self, why: Handover) {
        self.handover.send_if_modified(|h| {
            if h.is_some() {
                return false;
            }
            *h = Some(why);
            true
        });
    }

    /// Resolves when [`Agent::hand_over`] was called, with the reason.
    pub async fn handed_over(&self) -> Handover {
        let mut rx = self.handover.subscribe();
        loop {
            if let Some(h) = *rx.borrow_and_update() {
                return h;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The token in force, if any.
    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keep a token. A masked one (`******`) never replaces a clear one (PROTOCOL.md §1).
    pub fn set_token(&self, token: &str) {
        if token.is_empty() || token.chars().all(|c| c == '*') {
            return;
        }
        crate::logging::redact(token);
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
    }

    /// Constant-time token check; no token configured means no command is accepted.
    pub fn validate_token(&self, presented: Option<&str>) -> bool {
        let Some(expected) = self.token() else {
            return false;
        };
        let Some(presented) = presented else {
            return false;
        };
        constant_time_eq(expected.as_bytes(), presented.as_bytes())
    }

    /// The node as last seen (lookup, or a command's `node` parameter).
    pub fn node(&self) -> Option<Value> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cache the node (IPA's `cache_node`): later commands read root device hints from it.
    pub fn set_node(&self, node: Value) {
        if node.is_object() {
            *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node);
        }
    }

    /// What a power command does here.
    pub fn power_action(&self, intent: crate::power::Intent) -> PowerAction {
        crate::power::resolve(self.forced_power_action, self.in_ramdisk, intent)
    }

    /// Lookup's `config`.
    pub fn lookup_config(&self) -> Option<Value> {
        self.lookup_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keep lookup's `config`.
    pub fn set_lookup_config(&self, config: Value) {
        *self
            .lookup_config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(config);
    }

    /// Whether md5 `checksum` may verify an image: lookup's `agent_md5_checksum_enable`;
    /// conductors older than that option did not send it and allowed md5.
    pub fn md5_allowed(&self) -> bool {
        self.lookup_config()
            .and_then(|c| c.get("agent_md5_checksum_enable").and_then(Value::as_bool))
            .unwrap_or(true)
    }
}

/// Compare without an early exit, so response timing does not reveal a prefix of the token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (tokens have a fixed length); only the bytes are.
    let mut diff: u8 = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(&[0u8; 256], &[0u8; 512]));
    }
}
