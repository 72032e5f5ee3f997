//! Test support for Ferric: a faithful fake Ironic (API + conductor), an image server with fault
//! injection, helpers to run the real `ferric-agent` binary, loop devices and deterministic
//! fixtures.
//!
//! Everything here talks HTTP on 127.0.0.1 only and touches no block device it did not create.
//! The suites in `tests/tests/` use it, and so do the QEMU test and the demo (through the
//! `fake-conductor` binary).
//!
//! # Design
//! Each server (fake Ironic, image server) owns one OS thread running a current-thread tokio
//! runtime, so synchronous tests can start, inspect and drop them without being async
//! themselves. The conductor is a plain thread with a blocking HTTP client, fed heartbeats by
//! the fake Ironic through an `mpsc` channel; while it works on one heartbeat, further ones are
//! dropped, exactly like Ironic drops heartbeats for a locked node.

#![forbid(unsafe_code)]
// `conductor::node_dict` is one large `json!` literal mirroring the recorded node.
#![recursion_limit = "256"]

pub mod agent_process;
pub mod conductor;
pub mod disk_layout;
pub mod e2e;
pub mod fake_ironic;
pub mod fixtures;
pub mod hostile;
pub mod image_server;
pub mod loopdev;
pub mod qemu;
pub mod recordings;
mod server;
pub mod util;
