//! The crate's one error type.
//!
//! Every variant carries the facts the agent needs to build IPA's error body (`type`, `message`,
//! `details`) without parsing strings: the agent maps [`ImageError::ChecksumMismatch`] to
//! `ImageChecksumError`, the download variants to `ImageDownloadError`, the image-info variants
//! to `InvalidCommandParamsError`, refused images (format, size) to `InvalidImage` and the rest
//! to `ImageWriteError`.

use std::fmt;
use std::io;

/// Everything that can go wrong while fetching, verifying or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The digest of the streamed bytes differs from the one Ironic gave us. The disk's partition
    /// tables were wiped before this was returned.
    #[error("image checksum mismatch: expected {algo} {expected}, computed {actual}")]
    ChecksumMismatch {
        /// Hash algorithm name (`md5`, `sha256`, `sha512`).
        algo: String,
        /// Digest Ironic asked for (lowercase hex).
        expected: String,
        /// Digest of the bytes received (lowercase hex).
        actual: String,
    },

    /// One URL could not be fetched (after its retries).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL that failed.
        url: String,
        /// What went wrong (status code, timeout, connection error…).
        reason: String,
    },

    /// Every URL of the image failed; one line per URL, in the order tried.
    #[error("image download failed for every URL:\n {}", attempts.join("\n "))]
    DownloadAll {
        /// `"<url>: <reason>"`, one per URL tried.
        attempts: Vec<String>,
    },

    /// A response body was larger than the caller allows (checksum files, config drives).
    #[error("response from {url} exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The URL fetched.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// The image does not fit the device. When detected from Content-Length nothing was written;
    /// when detected while streaming, `image_bytes` is the count received so far (the image is at
    /// least that large) and the partition tables were wiped.
    #[error("image of {image_bytes} bytes does not fit the device of {device_bytes} bytes")]
    TooLarge {
        /// Image size in bytes (or a lower bound of it, see above).
        image_bytes: u64,
        /// Device size in bytes.
        device_bytes: u64,
    },

    /// The server announced a Content-Length that the body did not honour.
    #[error(
        "image stream length mismatch: server announced {expected} bytes, received {received}"
    )]
    LengthMismatch {
        /// Content-Length announced by the server.
        expected: u64,
        /// Bytes actually received.
        received: u64,
    },

    /// The image bytes are not a raw disk image (the raw writer refuses to write a qcow2, a
    /// compressed stream, etc. verbatim), or the declared `disk_format` is not supported yet.
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),

    /// The image's bytes were refused: their real format is not the declared `disk_format` or
    /// not in lookup's `permitted_image_formats` (Ironic bug 2071740), a qcow2 needs something
    /// outside itself (backing file, external data file, encryption key), or the content is
    /// corrupt (bad compressed stream, trailing garbage, qcow2 tables pointing nowhere). The
    /// agent reports it as IPA's `InvalidImage`.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// A checksum that cannot be used: malformed hex, a checksum file without a line for the
    /// image, md5 while md5 is disabled, an unknown algorithm…
    #[error("invalid checksum: {0}")]
    InvalidChecksum(String),

    /// `image_info` is missing a field or has one of the wrong type.
    #[error("invalid image_info: {0}")]
    InvalidImageInfo(String),

    /// The HTTP client could not be built (unreadable CA file, no usable certificate…).
    #[error("HTTP client setup failed: {0}")]
    HttpClient(String),

    /// An I/O error on the device or a local file.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing (names the path where there is one).
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Writing failed and the clean-up wipe of the partition tables failed too: the device may
    /// hold a partial image. `error` is the original failure.
    #[error("{error}; additionally wiping the partition tables failed: {wipe_error}")]
    WipeFailed {
        /// The failure that triggered the wipe.
        error: Box<ImageError>,
        /// Why the wipe failed.
        wipe_error: io::Error,
    },
}

impl ImageError {
    /// Shorthand for [`ImageError::Io`].
    pub fn io(context: impl fmt::Display, source: io::Error) -> Self {
        ImageError::Io {
            context: context.to_string(),
            source,
        }
    }
}

/// Adds a context message to `io::Result`s, turning them into [`ImageError::Io`].
pub trait IoContext<T> {
    /// Map the error to [`ImageError::Io`] with `context` (evaluated only on error).
    fn io_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::io(context(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_facts() {
        let e = ImageError::ChecksumMismatch {
            algo: "sha256".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(
            e.to_string(),
            "image checksum mismatch: expected sha256 aa, computed bb"
        );
        let e = ImageError::DownloadAll {
            attempts: vec![
                "http://a/x: HTTP 404".into(),
                "http://b/x: timed out".into(),
            ],
        };
        assert_eq!(
            e.to_string(),
            "image download failed for every URL:\n http://a/x: HTTP 404\n http://b/x: timed out"
        );
        let r: io::Result<()> = Err(io::Error::from(io::ErrorKind::NotFound));
        let e = r.io_context(|| "opening /dev/x").unwrap_err();
        assert!(e.to_string().starts_with("opening /dev/x: "), "{e}");
    }
}
