//! The `standby` extension: writing images, partition UUIDs, sync and power.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use ferric_imagewriter::{configdrive, download, partition, write};
use serde_json::{json, Value};

use super::{text_result, Outcome, Params};
use crate::agent::{Agent, DeployState};
use crate::devices;
use crate::error::{image_error, AgentError};

/// `image_info` must at least be an object with a non-empty `urls` list: reject anything
/// else with a 400 before a thread starts (IPA's `_validate_image_info`).
pub fn validate_prepare_image(_agent: &Arc<Agent>, params: &Params) -> Result<(), AgentError> {
    validate_image_info(params.get("image_info"))
}

/// Shared by prepare_image and the write_image deploy step.
pub fn validate_image_info(info: Option<&Value>) -> Result<(), AgentError> {
    let info = info
        .and_then(Value::as_object)
        .ok_or_else(|| AgentError::invalid_params("image_info must be a JSON object"))?;
    match info.get("urls").and_then(Value::as_array) {
        Some(urls) if !urls.is_empty() && urls.iter().all(Value::is_string) => {}
        _ => {
            return Err(AgentError::invalid_params(
                "image_info.urls must be a non-empty list of URLs",
            ))
        }
    }
    if !info.get("id").is_some_and(Value::is_string) {
        return Err(AgentError::invalid_params("image_info.id must be a string"));
    }
    Ok(())
}

/// HTTP options for image and config drive downloads, from the agent's configuration.
fn http_options(agent: &Agent) -> download::HttpOptions {
    let mut h = download::HttpOptions {
        insecure: agent.config.insecure,
        ..Default::default()
    };
    if let Some(r) = agent.config.image_download_retries {
        h.retries = r;
    }
    if let Some(i) = agent.config.image_download_retry_interval {
        h.retry_interval = i;
    }
    h
}

/// `standby.prepare_image(image_info, configdrive=None)`.
pub fn prepare_image(agent: &Arc<Agent>, params: Params) -> Outcome {
    let info = params.get("image_info").cloned().unwrap_or(Value::Null);
    let text = write_image_from_params(agent, &info, params.get("configdrive"))?;
    Ok(text_result("prepare_image", &text))
}

/// `standby.cache_image(image_info, force=False)`: the image without a config drive.
pub fn cache_image(agent: &Arc<Agent>, params: Params) -> Outcome {
    let info = params.get("image_info").cloned().unwrap_or(Value::Null);
    let text = write_image_from_params(agent, &info, None)?;
    Ok(text_result("cache_image", &text))
}

fn image_id(info: &Value) -> String {
    info.get("id")
        .and_then(Value::as_str)
        .unwrap_or("(no id)")
        .to_string()
}

/// Write an image (and config drive) to the install device; returns IPA's result text
/// `image (<id>) written to device <dev> root_uuid=<uuid>`.
///
/// Order matters for safety: everything that can be checked without touching the disk
/// (device choice, guard, in-use, checksum resolution, config drive decoding) is checked
/// first; the image writer then refuses an image larger than the device before writing.
pub fn write_image_from_params(
    agent: &Arc<Agent>,
    info: &Value,
    configdrive: Option<&Value>,
) -> Result<String, AgentError> {
    validate_image_info(Some(info))?;
    let id = image_id(info);
    if info.get("image_type").and_then(Value::as_str) == Some("partition") {
        return Err(AgentError::new(
            "InvalidImage",
            500,
            "The provided image is not valid for use",
            format!(
                "image {id} is a partition image; Ferric writes whole-disk images only so far \
                 (set the image's image_type to whole-disk, or deploy with IPA)"
            ),
        ));
    }
    let node = agent.node();
    let dev = devices::select_install_device(&agent.config, node.as_ref())?;
    agent.guard.check(&dev)?;
    devices::check_not_in_use(&agent.config, &dev)?;

    let http = http_options(agent);
    let mut spec = write::ImageSpec::from_image_info(info, agent.md5_allowed(), &http)
        .map_err(|e| image_error(Some(&id), e))?;
    // Ironic bug 2071740: the conductor tells which formats it allows; the writer checks
    // the format found in the bytes against it.
    spec.permitted_formats = agent.lookup_config().and_then(|c| {
        c.get("permitted_image_formats")?.as_array().map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
    });

    let iso = match configdrive {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            let fetch = |url: &str| {
                download::fetch_bytes(url, &http, configdrive::MAX_ENCODED_BYTES)
                    .map_err(|e| e.to_string())
            };
            Some(configdrive::decode(s, &fetch).map_err(|e| {
                AgentError::invalid_params(format!("config drive for image {id}: {e}"))
            })?)
        }
        Some(other) => {
            return Err(AgentError::invalid_params(format!(
                "config drive must be a base64 string or an http(s) URL, got {}",
                json_kind(other)
            )))
        }
    };

    log::info!("writing image {id} to {}", dev.display());
    let progress = |p: write::Progress| {
        log::info!(
            "image {id}: {} MiB downloaded{} at {:.1} MiB/s",
            p.bytes_done >> 20,
            p.bytes_total
                .map(|t| format!(" of {} MiB", t >> 20))
                .unwrap_or_default(),
            p.rate_bytes_per_sec as f64 / 1048576.0
        );
        agent.runner.set_progress(serde_json::json!({
            "image": id,
            "device": dev.display().to_string(),
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "rate_bytes_per_sec": p.rate_bytes_per_sec,
        }));
    };
    let report =
        write::write_image(&spec, &dev, &progress).map_err(|e| image_error(Some(&id), e))?;
    log::info!(
        "image {id}: {} bytes written to {} in {:.1}s, {} verified",
        report.bytes_written,
        dev.display(),
        report.elapsed.as_secs_f64(),
        report.digest_hex
    );

    if let Some(iso) = iso {
        let r = configdrive::write_config_drive(&dev, &iso).map_err(|e| {
            AgentError::new(
                "InstanceDeployFailure",
                500,
                "Failed to write the config drive",
                format!("config drive on {}: {e}", dev.display()),
            )
        })?;
        log::info!(
            "config drive ({} bytes) written to partition {} of {} at offset {}{}",
            iso.len(),
            r.partition_number,
            dev.display(),
            r.offset,
            if r.created {
                " (new partition)"
            } else {
                " (existing partition)"
            }
        );
    }

    let root_uuid = disk_identifier(&dev)?;
    *agent.deploy.lock().unwrap_or_else(|p| p.into_inner()) = DeployState {
        device: Some(dev.clone()),
        root_uuid: Some(root_uuid.clone()),
        whole_disk: true,
    };
    Ok(format!(
        "image ({id}) written to device {} root_uuid={root_uuid}",
        dev.display()
    ))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn disk_identifier(dev: &Path) -> Result<String, AgentError> {
    let f = File::open(dev).map_err(|e| {
        AgentError::execution(format!(
            "cannot reopen {} after writing: {e}",
            dev.display()
        ))
    })?;
    partition::disk_identifier(&f).map_err(|e| {
        AgentError::execution(format!(
            "cannot read the disk identifier of {}: {e}",
            dev.display()
        ))
    })
}

/// `standby.get_partition_uuids()`: `{"root uuid": …}` for the image written in this boot.
pub fn get_partition_uuids(agent: &Arc<Agent>, _params: Params) -> Outcome {
    let state = agent
        .deploy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(match state.root_uuid {
        Some(u) => json!({ "root uuid": u }),
        None => json!({}),
    })
}

/// `standby.sync()`: flush every buffer to the disks.
pub fn sync(_agent: &Arc<Agent>, _params: Params) -> Outcome {
    nix::unistd::sync();
    Ok(Value::Null)
}

/// `standby.power_off()`.
pub fn power_off(agent: &Arc<Agent>, _params: Params) -> Outcome {
    let intent = crate::power::Intent::PowerOff;
    crate::power::schedule(agent.power_action(intent), intent);
    Ok(Value::Null)
}

/// `standby.run_image()`: reboot into the written image.
pub fn run_image(agent: &Arc<Agent>, _params: Params) -> Outcome {
    let intent = crate::power::Intent::Reboot;
    crate::power::schedule(agent.power_action(intent), intent);
    Ok(Value::Null)
}
