//! The `log` extension: `collect_system_logs`, which the conductor calls after a failure
//! and stores (IPA `extensions/log.py`). A gzipped tar, base64 encoded, with the agent's
//! log, the kernel log and a few facts; the agent token is scrubbed from all of it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use base64::Engine;
use flate2::write::GzEncoder;
use serde_json::json;

use super::{Outcome, Params};
use crate::agent::Agent;
use crate::error::AgentError;
use crate::logging::scrub;

/// At most this much of the kernel log.
const KMSG_MAX: usize = 4 * 1024 * 1024;

/// Read the kernel ring buffer through /dev/kmsg without blocking: one record per read,
/// until EAGAIN says there is no more.
fn kernel_log() -> String {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    {
        Ok(f) => f,
        Err(e) => return format!("(cannot open /dev/kmsg: {e})\n"),
    };
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // "<prio>,<seq>,<usec>,<flags>;<text>" — keep time and text.
                let rec = String::from_utf8_lossy(&buf[..n]);
                let (head, text) = rec.split_once(';').unwrap_or(("", &rec));
                let usec: u64 = head
                    .split(',')
                    .nth(2)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let text = text.lines().next().unwrap_or("");
                out.push_str(&format!(
                    "[{:>5}.{:06}] {text}\n",
                    usec / 1_000_000,
                    usec % 1_000_000
                ));
                if out.len() > KMSG_MAX {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten while reading; go on from the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => {
                out.push_str(&format!("(read error: {e})\n"));
                break;
            }
        }
    }
    out
}

fn add(tar: &mut tar::Builder<GzEncoder<Vec<u8>>>, name: &str, data: &str) -> std::io::Result<()> {
    let data = scrub(data);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_cksum();
    tar.append_data(&mut h, name, data.as_bytes())
}

/// The tar.gz. Without an agent (inspection runs before one is fully set up) the command
/// history is left out.
fn build(agent: Option<&Agent>) -> std::io::Result<Vec<u8>> {
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    add(&mut tar, "ferric-agent.log", &crate::logging::snapshot())?;
    add(&mut tar, "dmesg", &kernel_log())?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| format!("({p}: {e})\n"));
    let cmdline = match agent {
        // What the agent was configured with (a --cmdline-file in tests), not the host's.
        Some(a) => a
            .config
            .kernel
            .0
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => read("/proc/cmdline"),
    };
    add(&mut tar, "cmdline", &cmdline)?;
    add(&mut tar, "mounts", &read("/proc/self/mounts"))?;
    add(&mut tar, "meminfo", &read("/proc/meminfo"))?;
    let root = agent
        .map(|a| a.config.sys_root.clone())
        .unwrap_or_else(|| "/".into());
    let devices = match ferric_hardware::list_block_devices(&root) {
        Ok(d) => serde_json::to_string_pretty(&d).unwrap_or_default(),
        Err(e) => format!("({e})"),
    };
    add(&mut tar, "block-devices.json", &devices)?;
    // Names, statuses and errors only: results echo steps whose arguments may hold image
    // server credentials.
    let history = agent.map(|a| a.runner.list()).unwrap_or_default();
    let commands: String = history
        .iter()
        .map(|c| {
            format!(
                "{} {} {:?} {}\n",
                c.id,
                c.command_name,
                c.command_status,
                c.command_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    add(&mut tar, "commands.txt", &commands)?;
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// `log.collect_system_logs()` → `{"system_logs": "<base64 tar.gz>"}`.
pub fn collect_system_logs(agent: &Arc<Agent>, _params: Params) -> Outcome {
    let bytes = build(Some(agent))
        .map_err(|e| AgentError::execution(format!("cannot build the log archive: {e}")))?;
    Ok(json!({ "system_logs": base64::engine::general_purpose::STANDARD.encode(bytes) }))
}

/// The logs collector of inspection: the same archive, base64, `None` on failure.
pub fn collect_logs_base64() -> Option<String> {
    build(None)
        .ok()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}
