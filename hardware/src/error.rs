//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Errors from reading hardware facts out of sysfs/procfs.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A file or directory that must exist could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path that failed (under the configured root).
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file was read but its content is not what the kernel writes there.
    #[error("unexpected content in {path}: {content:?}")]
    Parse {
        /// The path whose content was rejected.
        path: PathBuf,
        /// The offending content (truncated to 200 bytes).
        content: String,
    },
    /// The named block device has no entry in `sys/class/block`.
    #[error("block device {device} not found (no {sysfs_path})")]
    DeviceNotFound {
        /// The device as asked for, e.g. `/dev/sdz`.
        device: String,
        /// The sysfs directory that was looked for.
        sysfs_path: PathBuf,
    },
    /// The named block device is a partition, where a whole device was required.
    #[error("{device} is a partition, not a whole block device")]
    IsPartition {
        /// The device as asked for, e.g. `/dev/sda1`.
        device: String,
    },
}

impl HardwareError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        HardwareError::Read {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, content: &str) -> Self {
        let mut content = content.to_string();
        if content.len() > 200 {
            let mut cut = 200;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
        }
        HardwareError::Parse {
            path: path.into(),
            content,
        }
    }
}
