//! IPA's error vocabulary, at the edge (STYLE.md pattern 5): library crates return typed
//! errors, and this module translates them once into what the conductor reads.
//!
//! A command error serialises as IPA's `RESTError`: `{"type", "code", "message", "details"}`
//! (ironic_python_agent/errors.py). An HTTP-level error serialises as WSME's fault body:
//! `{"faultcode": "Client"|"Server", "faultstring": "<message>: <details>"}`
//! (ironic_python_agent/api/app.py `format_exception`). Ironic stores `details` of a failed
//! command in the node's `last_error`, so `details` must be a sentence an operator can act on.

use serde::Serialize;
use serde_json::{json, Value};

/// A command or API error in IPA's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentError {
    /// IPA's exception class name, e.g. `ImageChecksumError`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status IPA associates with the error.
    pub code: u16,
    /// The class's fixed message.
    pub message: String,
    /// What happened, for the operator.
    pub details: String,
}

impl AgentError {
    /// A new error of class `kind`.
    pub fn new(kind: &str, code: u16, message: &str, details: impl Into<String>) -> AgentError {
        AgentError {
            kind: kind.to_string(),
            code,
            message: message.to_string(),
            details: details.into(),
        }
    }

    /// `CommandExecutionError` (500): the generic failure of a command.
    pub fn execution(details: impl Into<String>) -> AgentError {
        Self::new(
            "CommandExecutionError",
            500,
            "Command execution failed",
            details,
        )
    }

    /// `InvalidCommandError` (400): malformed or unknown command name.
    pub fn invalid_command(details: impl Into<String>) -> AgentError {
        Self::new("InvalidCommandError", 400, "Invalid command", details)
    }

    /// `InvalidCommandParamsError` (400): parameters that cannot be used.
    pub fn invalid_params(details: impl Into<String>) -> AgentError {
        Self::new(
            "InvalidCommandParamsError",
            400,
            "Invalid command parameters",
            details,
        )
    }

    /// `InvalidContentError` (400): a body that cannot be parsed.
    pub fn invalid_content(details: impl Into<String>) -> AgentError {
        Self::new("InvalidContentError", 400, "Invalid request body", details)
    }

    /// `RequestedObjectNotFoundError` (404).
    pub fn not_found(what: &str, id: &str) -> AgentError {
        Self::new(
            "RequestedObjectNotFoundError",
            404,
            "Not found",
            format!("{what} with id {id} not found."),
        )
    }

    /// `AgentIsBusy` (409).
    pub fn busy(running_command: &str) -> AgentError {
        Self::new(
            "AgentIsBusy",
            409,
            "Agent is busy",
            format!("executing command {running_command}"),
        )
    }

    /// `VersionMismatch` (409): the conductor computed steps against other managers.
    pub fn version_mismatch(agent: &Value, node: &Value) -> AgentError {
        Self::new(
            "VersionMismatch",
            409,
            "Hardware managers version mismatch, reload agent with correct version",
            format!("Current versions: {agent}, versions used by ironic: {node}"),
        )
    }

    /// `DeviceNotFound` (404): no disk to deploy onto.
    pub fn device_not_found(details: impl Into<String>) -> AgentError {
        Self::new(
            "DeviceNotFound",
            404,
            "Error finding the disk or partition device to deploy the image onto",
            details,
        )
    }

    /// `HardwareManagerMethodNotFound` (500): an unknown step.
    pub fn method_not_found(method: &str) -> AgentError {
        Self::new(
            "HardwareManagerMethodNotFound",
            500,
            "No HardwareManager found to handle method",
            format!("Could not find method: {method}"),
        )
    }

    /// The WSME fault body for an HTTP error response.
    pub fn fault_body(&self) -> Value {
        json!({
            "faultcode": if self.code >= 500 { "Server" } else { "Client" },
            "faultstring": self.to_string(),
        })
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.message, self.details)
    }
}

impl std::error::Error for AgentError {}

impl From<ferric_imagewriter::ImageError> for AgentError {
    fn from(e: ferric_imagewriter::ImageError) -> AgentError {
        image_error(None, e)
    }
}

/// Translate an image error, naming the image when known.
pub fn image_error(image_id: Option<&str>, e: ferric_imagewriter::ImageError) -> AgentError {
    use ferric_imagewriter::ImageError as E;
    let id = image_id.unwrap_or("(unknown)");
    match e {
        E::ChecksumMismatch {
            algo,
            expected,
            actual,
        } => AgentError::new(
            "ImageChecksumError",
            500,
            "Error verifying image checksum",
            format!(
                "Image failed to verify against checksum. image ID: {id}; algorithm: {algo}; \
                 image checksum: {expected}; verification checksum: {actual}. The device's \
                 partition tables were wiped so that no partial image can boot."
            ),
        ),
        E::Download { .. } | E::DownloadAll { .. } => AgentError::new(
            "ImageDownloadError",
            500,
            "Error downloading image",
            format!("Download of image {id} failed: {e}"),
        ),
        // IPA raises InvalidImage for images that fail validation (format checks, qemu-img's
        // safety checks) and for images larger than the device.
        E::TooLarge { .. } | E::InvalidImage(_) | E::UnsupportedFormat(_) => AgentError::new(
            "InvalidImage",
            500,
            "The provided image is not valid for use",
            format!("Image {id} cannot be written: {e}"),
        ),
        E::InvalidChecksum(_) | E::InvalidImageInfo(_) => AgentError::new(
            "InvalidCommandParamsError",
            400,
            "Invalid command parameters",
            format!("image {id}: {e}"),
        ),
        other => AgentError::new(
            "ImageWriteError",
            500,
            "Error writing image to device",
            format!("Writing image {id} failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_ipa_rest_error() {
        let e = AgentError::busy("execute_deploy_step");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "AgentIsBusy", "code": 409, "message": "Agent is busy",
                   "details": "executing command execute_deploy_step"})
        );
        assert_eq!(
            e.fault_body(),
            json!({"faultcode": "Client",
                   "faultstring": "Agent is busy: executing command execute_deploy_step"})
        );
        assert_eq!(
            AgentError::execution("boom").fault_body()["faultcode"],
            json!("Server")
        );
    }

    #[test]
    fn not_found_matches_ipa_wording() {
        assert_eq!(
            AgentError::not_found("Extension", "nope").to_string(),
            "Not found: Extension with id nope not found."
        );
    }

    #[test]
    fn checksum_mismatch_maps_to_image_checksum_error() {
        let e = image_error(
            Some("disk.raw"),
            ferric_imagewriter::ImageError::ChecksumMismatch {
                algo: "sha256".into(),
                expected: "aa".into(),
                actual: "bb".into(),
            },
        );
        assert_eq!(e.kind, "ImageChecksumError");
        assert!(
            e.details.contains("disk.raw") && e.details.contains("aa") && e.details.contains("bb")
        );
    }

    #[test]
    fn refused_images_map_to_invalid_image() {
        use ferric_imagewriter::ImageError as E;
        for err in [
            E::InvalidImage("qcow2 with a backing file".into()),
            E::UnsupportedFormat("vmdk".into()),
            E::TooLarge {
                image_bytes: 2,
                device_bytes: 1,
            },
        ] {
            let e = image_error(Some("img"), err);
            assert_eq!((e.kind.as_str(), e.code), ("InvalidImage", 500), "{e}");
            assert!(
                e.details.starts_with("Image img cannot be written: "),
                "{e}"
            );
        }
        let e = image_error(None, E::io("writing /dev/x", std::io::Error::other("EIO")));
        assert_eq!(e.kind, "ImageWriteError");
    }
}
