//! The `rescue` and `system` extensions: the two commands after which the agent stops
//! serving (IPA `extensions/rescue.py`, `extensions/system.py`).
//!
//! - `rescue.finalize_rescue(rescue_password, hashed)`: the password hash goes to
//!   `/etc/ipa-rescue-config/ipa-rescue-password` and the marker `/etc/.rescued` is created,
//!   as IPA does; then the API closes and the agent ends. The ramdisk's `/init` sees the
//!   marker, creates the `rescue` user with that hash, renews DHCP (Ironic has moved the
//!   node to the rescuing network) and offers logins on the consoles.
//! - `system.lockdown()`: the API closes, heartbeats stop, and in the ramdisk every network
//!   interface goes down; the agent idles until the machine is powered off (Ironic uses it
//!   for nodes with `disable_power_off`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{flag_param, Outcome, Params};
use crate::agent::{Agent, Handover};
use crate::error::AgentError;

/// Where IPA's ramdisk looks for the hash (relative to the root).
const PASSWORD_FILE: &str = "etc/ipa-rescue-config/ipa-rescue-password";
/// IPA's marker that the machine was handed to the rescue user.
const RESCUED_MARKER: &str = "etc/.rescued";

/// The root the rescue files go under: `--rescue-root`, or `/` in the ramdisk. Outside the
/// ramdisk they would create a login on the machine the agent happens to run on: refused.
fn rescue_root(agent: &Agent) -> Result<PathBuf, AgentError> {
    match (&agent.config.rescue_root, agent.in_ramdisk) {
        (Some(r), _) => Ok(r.clone()),
        (None, true) => Ok(PathBuf::from("/")),
        (None, false) => Err(AgentError::execution(
            "not in the ramdisk: finalize_rescue would create a rescue login on this machine \
             (use --rescue-root DIR in tests)",
        )),
    }
}

/// A password must be there.
fn validate_finalize_rescue(params: &Params) -> Result<(), AgentError> {
    match params.get("rescue_password") {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        _ => Err(AgentError::invalid_params(
            "rescue_password must be a non-empty string",
        )),
    }
}

/// The crypt(3) string to store: Ironic's hash as is (it sends `hashed: true`), or a
/// SHA-256 crypt of a clear password (IPA's `crypt_mksalt('SHA-256')`).
fn password_hash(params: &Params) -> Result<String, AgentError> {
    validate_finalize_rescue(params)?;
    let password = params["rescue_password"].as_str().unwrap_or_default();
    if flag_param(params, "hashed") {
        if password.contains(['\n', ':']) {
            return Err(AgentError::invalid_params(
                "the hashed rescue password holds a newline or a colon",
            ));
        }
        return Ok(password.to_owned());
    }
    let p = sha_crypt::Sha256Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| AgentError::execution(format!("SHA-256 crypt parameters: {e:?}")))?;
    sha_crypt::sha256_simple(password, &p)
        .map_err(|e| AgentError::execution(format!("hashing the rescue password: {e:?}")))
}

fn write_rescue_files(root: &Path, hash: &str) -> Result<(), AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = root.join(PASSWORD_FILE);
    let fail = |what: &str, e: std::io::Error| {
        AgentError::execution(format!(
            "Rescue Operation failed when writing the hashed rescue password to the password \
             file. Error {what}: {e}"
        ))
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| fail(&file.display().to_string(), e))?;
    std::io::Write::write_all(&mut f, hash.as_bytes())
        .map_err(|e| fail(&file.display().to_string(), e))?;
    if let Err(e) = std::fs::write(root.join(RESCUED_MARKER), b"") {
        log::warn!("Failed to create rescue state file marker: {e}");
    }
    Ok(())
}

/// `rescue.finalize_rescue(rescue_password, hashed)` (sync).
pub fn finalize_rescue(agent: &Arc<Agent>, params: Params) -> Outcome {
    let hash = password_hash(&params)?;
    let root = rescue_root(agent)?;
    write_rescue_files(&root, &hash)?;
    log::info!(
        "rescue password stored in {}; the API closes and the agent ends",
        root.join(PASSWORD_FILE).display()
    );
    agent.hand_over(Handover::Rescue);
    Ok(Value::Null)
}

/// `system.lockdown()` (sync).
pub fn lockdown(agent: &Arc<Agent>, _params: Params) -> Outcome {
    nix::unistd::sync();
    log::info!("lockdown: the API closes and heartbeats stop");
    agent.hand_over(Handover::Lockdown);
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Params {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn hashed_passwords_are_stored_as_sent_and_clear_ones_hashed() {
        let h = "$5$abcdefgh$0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
        assert_eq!(
            password_hash(&params(
                serde_json::json!({"rescue_password": h, "hashed": true})
            ))
            .unwrap(),
            h
        );
        let clear =
            password_hash(&params(serde_json::json!({"rescue_password": "s3cret"}))).unwrap();
        assert!(clear.starts_with("$5$"), "{clear}");
        assert!(sha_crypt::sha256_check("s3cret", &clear).is_ok(), "{clear}");
        assert!(sha_crypt::sha256_check("wrong", &clear).is_err());
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"rescue_password": ""}),
            serde_json::json!({"rescue_password": 5}),
            serde_json::json!({"rescue_password": "a:b", "hashed": "True"}),
        ] {
            assert!(password_hash(&params(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_written_where_ipa_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        write_rescue_files(dir.path(), "$5$x$y").unwrap();
        let f = dir.path().join(PASSWORD_FILE);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "$5$x$y");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(dir.path().join(RESCUED_MARKER).exists());
    }
}
