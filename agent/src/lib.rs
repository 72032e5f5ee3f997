//! Ferric's agent: the in-band deploy agent an Ironic conductor drives over HTTP.
//!
//! - [`config`]: kernel parameters and flags → [`config::Config`].
//! - [`ironic`], [`heartbeat`]: lookup and heartbeats (agent → Ironic); [`inspect`]:
//!   inspection data posted before lookup.
//! - [`api`]: the REST API (Ironic → agent).
//! - [`commands`]: IPA's extensions and commands.
//! - [`devices`]: install device choice and the guard that keeps the agent off disks it
//!   was not given.
//! - [`tls`]: the API over HTTPS (IPA's auto TLS).
//! - [`power`], [`logging`], [`error`]: the rest.

pub mod agent;
pub mod api;
pub mod commands;
pub mod config;
pub mod devices;
pub mod error;
pub mod heartbeat;
pub mod inspect;
pub mod ironic;
pub mod logging;
pub mod power;
pub mod tls;

/// The version reported to Ironic in heartbeats and `/v1/status`. Ironic stores it and
/// shows it to operators; the IPA-like numeric prefix keeps any version comparison on the
/// conductor side working as it does for IPA 11.1, the release whose behaviour Ferric
/// follows.
pub const AGENT_VERSION: &str = concat!("11.1.0.ferric-", env!("CARGO_PKG_VERSION"));
