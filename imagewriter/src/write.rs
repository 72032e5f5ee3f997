//! The raw image write: hold back the first MiB, stream the rest, verify, then commit.
//!
//! A bricked or half-written disk that still boots is the worst outcome, so the order is fixed:
//! 1. Open the device and check the announced size against it; read the first MiB of the image
//!    into memory and check it is a raw image. The device is untouched so far.
//! 2. Zero the first and the last MiB of the device (stale MBR/GPT and the GPT backup header at
//!    the end, as IPA's `destroy_disk_metadata` does before a write), then write everything after
//!    the first MiB at its offset, hashing as bytes pass. A crash from here on leaves a disk
//!    without a partition table, never a plausible-looking half image.
//! 3. Compare the digest. Only on a match write the held-back first MiB, fsync and ask the kernel
//!    to re-read the partition table.
//!
//! Any failure after the first write wipes the first and last MiB again before returning.
//!
//! # Design
//! The calling thread reads the image through small adaptors composed in [`write_stream`]
//! (length check → hash → progress, see [`crate::io`]); a scoped writer thread (`image-writer`)
//! writes 4 MiB buffers at their offsets, fed by a bounded channel and returning used buffers on
//! a second one (`stream_rest`), so download and disk writes overlap. Memory is bounded (the
//! held-back MiB + three 4 MiB buffers) whatever the image size. The head write, fsync and
//! partition re-read happen on the calling thread after the writer has been joined.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Map, Value};

use crate::checksum::{
    parse_checksum_file, ExpectedDigest, HashAlgo, StreamHasher, CHECKSUM_FILE_LIMIT,
};
use crate::download::{fetch_bytes, open_image, HttpOptions, StreamReadError};
use crate::error::{ImageError, IoContext};
use crate::io::{read_full, sniff, HashingReader, LengthCheckReader, LengthMismatch};
use crate::io::{sniff::ImageFormat, ProgressReader};
use crate::sys;

/// Bytes of the image kept in memory until the checksum matched (and zeroed first on the disk).
pub const HOLD_BACK: u64 = 1024 * 1024;
/// Bytes zeroed at each end of the device by [`wipe_partition_tables`]. GPT needs 34 sectors at
/// the start and 33 at the end (up to 8 KiB + 16 KiB with 4Kn sectors); a MiB covers both, and
/// the MBR, with margin.
pub const WIPE_BYTES: u64 = 1024 * 1024;
/// Write size after the first MiB: large enough for full device bandwidth, small enough to keep
/// memory independent of image size. Offsets stay MiB-aligned (ready for O_DIRECT).
const CHUNK: usize = 4 * 1024 * 1024;
/// Minimum time between two progress callbacks.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Everything needed to fetch and verify one image, parsed from Ironic's `image_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// `image_info.id` (used in IPA's result text).
    pub id: String,
    /// URLs to try in order.
    pub urls: Vec<String>,
    /// The digest the bytes must have.
    pub expected: ExpectedDigest,
    /// HTTP settings: the agent's base options plus image_info's proxies and credentials.
    pub http: HttpOptions,
    /// Declared `disk_format` (`raw`, `qcow2`, or absent).
    pub disk_format: Option<String>,
}

impl ImageSpec {
    /// Parse IPA's `image_info` JSON (PROTOCOL.md §3; IPA `extensions/standby.py`).
    ///
    /// - `id` (string) and `urls` (non-empty list of http(s) URLs) are required.
    /// - `os_hash_algo` + `os_hash_value` win over `checksum` when both are present (they must
    ///   come together). An `os_hash_algo` this agent does not support falls back to `checksum`
    ///   when there is one, as IPA falls back when hashlib lacks the algorithm.
    /// - `checksum` alone: its algorithm is taken from its length (Ironic
    ///   `checksum_utils.get_checksum_and_algo`: 32 → md5, 64 → sha256, 128 → sha512).
    /// - md5 (either way) only when `md5_allowed` (lookup's `agent_md5_checksum_enable`).
    /// - A value that is an http(s) URL is a checksums file: it is fetched (with the image's
    ///   HTTP options, as IPA does) and the line for the image's file name is used; the file
    ///   name is the last path segment of the first URL.
    /// - `image_request_authorization` is the base64 of a full `Authorization` header value
    ///   (Ironic base64-encodes `image_request_authorization_secret`).
    /// - `image_server_auth_strategy: "http_basic"` requires non-empty `image_server_user` and
    ///   `image_server_password`; `proxies` (scheme → URL) and `no_proxy` replace the base's.
    pub fn from_image_info(
        info: &Value,
        md5_allowed: bool,
        base: &HttpOptions,
    ) -> Result<ImageSpec, ImageError> {
        let obj = info.as_object().ok_or_else(|| {
            ImageError::InvalidImageInfo("image_info is not a JSON object".into())
        })?;
        let id = opt_str(obj, "id")?
            .ok_or_else(|| ImageError::InvalidImageInfo("image_info has no 'id'".into()))?
            .to_string();
        let urls = parse_urls(obj)?;
        let disk_format = opt_str(obj, "disk_format")?.map(str::to_string);
        let http = http_options(obj, base)?;
        let expected = expected_digest(obj, &urls[0], md5_allowed, &http)?;
        Ok(ImageSpec {
            id,
            urls,
            expected,
            http,
            disk_format,
        })
    }
}

/// A string field: absent, `null` or `""` → `None`; another type → error.
fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ImageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(ImageError::InvalidImageInfo(format!(
            "'{key}' must be a string, got {}",
            json_type(other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn parse_urls(obj: &Map<String, Value>) -> Result<Vec<String>, ImageError> {
    let list = match obj.get("urls") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(ImageError::InvalidImageInfo(
                "'urls' must be a list with at least one URL".into(),
            ))
        }
        Some(other) => {
            return Err(ImageError::InvalidImageInfo(format!(
                "'urls' must be a list, got {}",
                json_type(other)
            )))
        }
    };
    list.iter()
        .map(|v| match v {
            Value::String(s) if is_http_url(s) && reqwest::Url::parse(s).is_ok() => Ok(s.clone()),
            Value::String(s) => Err(ImageError::InvalidImageInfo(format!(
                "image URL {s:?} is not an http(s) URL"
            ))),
            other => Err(ImageError::InvalidImageInfo(format!(
                "'urls' entries must be strings, got {}",
                json_type(other)
            ))),
        })
        .collect()
}

fn http_options(obj: &Map<String, Value>, base: &HttpOptions) -> Result<HttpOptions, ImageError> {
    let mut http = base.clone();
    match obj.get("proxies") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            http.proxies.clear();
            for (scheme, url) in map {
                match url {
                    Value::String(u) if !u.trim().is_empty() => {
                        http.proxies.insert(scheme.clone(), u.clone());
                    }
                    Value::String(_) | Value::Null => {}
                    other => {
                        return Err(ImageError::InvalidImageInfo(format!(
                            "proxy for {scheme:?} must be a string, got {}",
                            json_type(other)
                        )))
                    }
                }
            }
        }
        Some(other) => {
            return Err(ImageError::InvalidImageInfo(format!(
                "'proxies' must be an object, got {}",
                json_type(other)
            )))
        }
    }
    if let Some(no_proxy) = opt_str(obj, "no_proxy")? {
        http.no_proxy = Some(no_proxy.to_string());
    }
    if let Some(encoded) = opt_str(obj, "image_request_authorization")? {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| {
                ImageError::InvalidImageInfo(format!(
                    "'image_request_authorization' is not base64: {e}"
                ))
            })?;
        let value = String::from_utf8(raw)
            .ok()
            .filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok())
            .ok_or_else(|| {
                ImageError::InvalidImageInfo(
                    "'image_request_authorization' does not decode to a valid header value".into(),
                )
            })?;
        http.authorization = Some(value);
    }
    match opt_str(obj, "image_server_auth_strategy")? {
        Some("http_basic") => {
            let user = opt_str(obj, "image_server_user")?;
            let password = opt_str(obj, "image_server_password")?;
            match (user, password) {
                (Some(u), Some(p)) => http.basic_auth = Some((u.to_string(), p.to_string())),
                _ => {
                    return Err(ImageError::InvalidImageInfo(
                        "image_server_auth_strategy is http_basic but image_server_user or \
                         image_server_password is missing or empty"
                            .into(),
                    ))
                }
            }
        }
        None | Some("noauth") => {}
        // IPA (`_gen_auth_from_image_info_user_pass`) ignores strategies it does not know.
        Some(other) => log::warn!("ignoring unknown image_server_auth_strategy {other:?}"),
    }
    Ok(http)
}

fn expected_digest(
    obj: &Map<String, Value>,
    first_url: &str,
    md5_allowed: bool,
    http: &HttpOptions,
) -> Result<ExpectedDigest, ImageError> {
    let os_algo = opt_str(obj, "os_hash_algo")?;
    let os_value = opt_str(obj, "os_hash_value")?;
    let checksum = match obj.get("checksum") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ImageError::InvalidImageInfo("'checksum' is empty".into()))
        }
        _ => opt_str(obj, "checksum")?,
    };
    match (os_algo, os_value) {
        (Some(algo), Some(value)) => match algo.parse::<HashAlgo>() {
            Ok(algo) => {
                refuse_md5(algo, md5_allowed)?;
                let hex = resolve_checksum(value, first_url, http)?;
                ExpectedDigest::new(algo, &hex)
            }
            Err(e) => match checksum {
                Some(c) => {
                    log::warn!("{e}; falling back to the image's 'checksum'");
                    legacy_checksum(c, first_url, md5_allowed, http)
                }
                None => Err(e),
            },
        },
        (Some(_), None) | (None, Some(_)) => Err(ImageError::InvalidImageInfo(
            "'os_hash_algo' and 'os_hash_value' must be given together".into(),
        )),
        (None, None) => match checksum {
            Some(c) => legacy_checksum(c, first_url, md5_allowed, http),
            None => Err(ImageError::InvalidImageInfo(
                "image_info has no checksum (neither os_hash_algo/os_hash_value nor checksum)"
                    .into(),
            )),
        },
    }
}

fn legacy_checksum(
    value: &str,
    first_url: &str,
    md5_allowed: bool,
    http: &HttpOptions,
) -> Result<ExpectedDigest, ImageError> {
    let hex = resolve_checksum(value, first_url, http)?;
    let algo = HashAlgo::from_hex_len(hex.len()).ok_or_else(|| {
        ImageError::InvalidChecksum(format!(
            "checksum {hex:?} has {} characters, which is no md5/sha256/sha512 length",
            hex.len()
        ))
    })?;
    refuse_md5(algo, md5_allowed)?;
    ExpectedDigest::new(algo, &hex)
}

fn refuse_md5(algo: HashAlgo, md5_allowed: bool) -> Result<(), ImageError> {
    if algo == HashAlgo::Md5 && !md5_allowed {
        return Err(ImageError::InvalidChecksum(
            "the image checksum is md5, which Ironic has disabled \
             (agent_md5_checksum_enable is false)"
                .into(),
        ));
    }
    Ok(())
}

/// A literal digest is returned trimmed; a URL is fetched and parsed as a checksums file.
fn resolve_checksum(
    value: &str,
    first_url: &str,
    http: &HttpOptions,
) -> Result<String, ImageError> {
    let value = value.trim();
    if !is_http_url(value) {
        return Ok(value.to_string());
    }
    let file_name = image_file_name(first_url);
    log::info!("fetching checksums file {value} for {file_name:?}");
    let body = fetch_bytes(value, http, CHECKSUM_FILE_LIMIT)?;
    parse_checksum_file(&String::from_utf8_lossy(&body), &file_name)
}

/// Last path segment of a URL, undecoded (IPA: `os.path.basename(urlparse(url).path)`).
fn image_file_name(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
        })
        .unwrap_or_default()
}

/// Progress of a write, as bytes of the image consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Image bytes received and hashed so far.
    pub bytes_done: u64,
    /// Image size if the server announced it.
    pub bytes_total: Option<u64>,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Image size in bytes (all of it is on the device).
    pub bytes_written: u64,
    /// Algorithm verified.
    pub algo: HashAlgo,
    /// Digest of the bytes written (lowercase hex); equals the expected one.
    pub digest_hex: String,
    /// Wall time from opening the device to the end of the fsync.
    pub elapsed: Duration,
    /// Size of the device in bytes.
    pub device_size: u64,
}

/// Download `spec` and write it raw onto `device`: [`open_image`] + [`write_stream`].
///
/// Only raw images for now: a declared `disk_format` other than `raw` is refused before any
/// network or disk I/O, and bytes that look like another format are refused by the writer.
pub fn write_image(
    spec: &ImageSpec,
    device: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<WriteReport, ImageError> {
    match spec.disk_format.as_deref() {
        None | Some("raw") => {}
        Some(other) => {
            return Err(ImageError::UnsupportedFormat(format!(
                "disk_format {other:?} of image {}: only raw images can be written so far",
                spec.id
            )))
        }
    }
    let stream = open_image(&spec.urls, &spec.http)?;
    let content_length = stream.content_length();
    log::info!(
        "writing image {} from {} ({} bytes) to {}",
        spec.id,
        stream.url(),
        content_length.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        device.display()
    );
    write_stream(stream, content_length, &spec.expected, device, progress)
}

/// Write the raw image read from `src` onto `device` (a block device or, in tests, a regular
/// file), verifying it against `expected`. See the module documentation for the order of
/// operations and what is left on the device on failure.
pub fn write_stream<R: Read>(
    src: R,
    content_length: Option<u64>,
    expected: &ExpectedDigest,
    device: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<WriteReport, ImageError> {
    let started = Instant::now();
    let disk = Disk::open(device)?;
    if let Some(len) = content_length {
        if len > disk.size {
            return Err(ImageError::TooLarge {
                image_bytes: len,
                device_bytes: disk.size,
            });
        }
    }

    let mut hasher = StreamHasher::new(expected.algo);
    let mut reader = ProgressReader::new(
        HashingReader::new(LengthCheckReader::new(src, content_length), &mut hasher),
        content_length,
        progress,
        PROGRESS_INTERVAL,
    );

    // Phase 1: the first MiB into memory. The device is untouched until this succeeds.
    let mut head = vec![0u8; HOLD_BACK as usize];
    let head_len = read_full(&mut reader, &mut head).map_err(read_error)?;
    head.truncate(head_len);
    if head_len as u64 > disk.size {
        return Err(ImageError::TooLarge {
            image_bytes: head_len as u64,
            device_bytes: disk.size,
        });
    }
    let format = sniff::detect(&head);
    if format != ImageFormat::Raw {
        return Err(ImageError::UnsupportedFormat(format!(
            "the image bytes are {format}, not a raw disk image; refusing to write them verbatim"
        )));
    }

    // Phase 2: from the first write on, every failure wipes the partition tables.
    let streamed = disk
        .zero_ends()
        .io_context(|| format!("zeroing the ends of {}", disk.path.display()))
        .and_then(|()| stream_rest(&mut reader, &disk, head_len as u64));
    if streamed.is_ok() {
        reader.finish();
    }
    drop(reader);
    let total = streamed.map_err(|e| disk.fail(e))?;

    // Phase 3: verify, then commit the first MiB.
    let actual = hasher.finalize_hex();
    if !expected.matches(&actual) {
        return Err(disk.fail(ImageError::ChecksumMismatch {
            algo: expected.algo.to_string(),
            expected: expected.hex.clone(),
            actual,
        }));
    }
    disk.write_at(&head, 0)
        .and_then(|()| {
            disk.file
                .sync_all()
                .io_context(|| format!("fsync of {}", disk.path.display()))
        })
        .map_err(|e| disk.fail(e))?;
    disk.reread_partitions();

    let elapsed = started.elapsed();
    log::info!(
        "wrote {total} bytes to {} in {:.1}s ({:.1} MiB/s), {} {actual}",
        disk.path.display(),
        elapsed.as_secs_f64(),
        total as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-3),
        expected.algo,
    );
    Ok(WriteReport {
        bytes_written: total,
        algo: expected.algo,
        digest_hex: actual,
        elapsed,
        device_size: disk.size,
    })
}

/// Write everything after the held-back head; returns the total image size.
///
/// Two stages so the network and the disk work at the same time: this thread reads (through the
/// hashing/progress adaptors) into 4 MiB buffers and hands them over a bounded channel to a
/// scoped writer thread, which `pwrite`s each at its offset and hands the buffer back. At most
/// [`BUFFERS`] buffers exist, so memory stays bounded. Either stage stopping makes the other
/// stop: the writer's error wins, since a read that ended early because the writer was gone is
/// not the cause.
fn stream_rest<R: Read>(src: &mut R, disk: &Disk, head_len: u64) -> Result<u64, ImageError> {
    if head_len < HOLD_BACK {
        // read_full stops short only at the end of the stream.
        return Ok(head_len);
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<Filled>(1);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("image-writer".into())
            .spawn_scoped(scope, move || -> Result<(), ImageError> {
                for Filled { offset, buf, len } in full_rx {
                    disk.write_at(&buf[..len], offset)?;
                    // The reader may already be gone; then the buffer is simply dropped.
                    let _ = empty_tx.send(buf);
                }
                Ok(())
            })
            .map_err(|e| ImageError::io("starting the image writer thread", e))?;
        let read = read_stage(src, disk.size, head_len, full_tx, empty_rx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(ImageError::io(
                "image writer thread",
                std::io::Error::other("panicked"),
            ))
        });
        written.and(read)
    })
}

/// At most this many [`CHUNK`] buffers are alive: one filling, one queued, one writing.
const BUFFERS: usize = 3;

/// A buffer of image bytes for the writer stage.
struct Filled {
    offset: u64,
    buf: Vec<u8>,
    len: usize,
}

/// The read stage of [`stream_rest`]. Owns the channel ends so that returning (for any reason)
/// lets the writer stage finish.
fn read_stage<R: Read>(
    src: &mut R,
    device_size: u64,
    head_len: u64,
    full_tx: mpsc::SyncSender<Filled>,
    empty_rx: mpsc::Receiver<Vec<u8>>,
) -> Result<u64, ImageError> {
    let mut offset = head_len;
    let mut allocated = 0;
    loop {
        let mut buf = match empty_rx.try_recv() {
            Ok(buf) => buf,
            Err(_) if allocated < BUFFERS => {
                allocated += 1;
                vec![0u8; CHUNK]
            }
            Err(_) => match empty_rx.recv() {
                Ok(buf) => buf,
                // The writer stopped (its error is what the caller reports).
                Err(_) => return Ok(offset),
            },
        };
        let len = read_full(src, &mut buf).map_err(read_error)?;
        if len == 0 {
            return Ok(offset);
        }
        let end = offset + len as u64;
        if end > device_size {
            return Err(ImageError::TooLarge {
                image_bytes: end,
                device_bytes: device_size,
            });
        }
        if full_tx.send(Filled { offset, buf, len }).is_err() {
            return Ok(offset);
        }
        offset = end;
        if len < CHUNK {
            return Ok(offset);
        }
    }
}

/// Classify an error from the read side of the pipeline.
fn read_error(e: std::io::Error) -> ImageError {
    if let Some(inner) = e.get_ref() {
        if let Some(s) = inner.downcast_ref::<StreamReadError>() {
            return ImageError::Download {
                url: s.url.clone(),
                reason: s.reason.clone(),
            };
        }
        if let Some(m) = inner.downcast_ref::<LengthMismatch>() {
            return ImageError::LengthMismatch {
                expected: m.expected,
                received: m.received,
            };
        }
    }
    ImageError::io("reading the image stream", e)
}

/// Zero the first and the last [`WIPE_BYTES`] of `device` (MBR, GPT header and the GPT backup at
/// the end), fsync, and ask the kernel to re-read the (now empty) partition table.
pub fn wipe_partition_tables(device: &Path) -> Result<(), ImageError> {
    let disk = Disk::open(device)?;
    disk.zero_ends()
        .io_context(|| format!("zeroing the ends of {}", device.display()))?;
    disk.reread_partitions();
    Ok(())
}

/// The target device, opened write-only.
struct Disk {
    file: File,
    size: u64,
    path: PathBuf,
}

impl Disk {
    fn open(path: &Path) -> Result<Disk, ImageError> {
        // Write-only, no create, no truncate: a missing device must fail, not become a file.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .io_context(|| format!("opening {} for writing", path.display()))?;
        let size = sys::device_size(&file)
            .io_context(|| format!("reading the size of {}", path.display()))?;
        Ok(Disk {
            file,
            size,
            path: path.to_path_buf(),
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        self.file.write_all_at(buf, offset).io_context(|| {
            format!(
                "writing {} bytes at offset {offset} of {}",
                buf.len(),
                self.path.display()
            )
        })
    }

    fn zero_ends(&self) -> std::io::Result<()> {
        let head = WIPE_BYTES.min(self.size);
        let tail_start = self.size.saturating_sub(WIPE_BYTES).max(head);
        let zeros = vec![0u8; WIPE_BYTES as usize];
        self.file.write_all_at(&zeros[..head as usize], 0)?;
        self.file
            .write_all_at(&zeros[..(self.size - tail_start) as usize], tail_start)?;
        self.file.sync_data()
    }

    /// Wipe after a failure in phase 2 or 3; the original error is returned (wrapped when the
    /// wipe fails too, so the caller knows the disk may hold a partial image).
    fn fail(&self, err: ImageError) -> ImageError {
        match self.zero_ends() {
            Ok(()) => {
                log::warn!(
                    "image write to {} failed ({err}); partition tables wiped",
                    self.path.display()
                );
                self.reread_partitions();
                err
            }
            Err(wipe_error) => {
                log::error!(
                    "image write to {} failed ({err}) and wiping it failed too: {wipe_error}",
                    self.path.display()
                );
                ImageError::WipeFailed {
                    error: Box::new(err),
                    wipe_error,
                }
            }
        }
    }

    fn reread_partitions(&self) {
        if let Err(e) = sys::reread_partitions(&self.file) {
            match e.raw_os_error() {
                // Not a partitionable device (or not a block device at all).
                Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                    log::debug!("no partition re-read on {}: {e}", self.path.display())
                }
                _ => log::warn!(
                    "re-reading the partition table of {} failed: {e}",
                    self.path.display()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const MD5_ABC: &str = "900150983cd24fb0d6963f7d28e17f72";

    fn parse(info: Value, md5: bool) -> Result<ImageSpec, ImageError> {
        ImageSpec::from_image_info(&info, md5, &HttpOptions::default())
    }

    #[test]
    fn os_hash_preferred_over_md5() {
        let spec = parse(
            json!({"id": "disk.raw", "urls": ["http://127.0.0.1:8089/disk.raw"],
                   "disk_format": "raw", "container_format": null, "stream_raw_images": true,
                   "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC.to_uppercase(),
                   "checksum": MD5_ABC, "node_uuid": "deac3149"}),
            true,
        )
        .unwrap();
        assert_eq!(spec.id, "disk.raw");
        assert_eq!(
            spec.urls,
            vec!["http://127.0.0.1:8089/disk.raw".to_string()]
        );
        assert_eq!(spec.disk_format.as_deref(), Some("raw"));
        assert_eq!(
            spec.expected,
            ExpectedDigest {
                algo: HashAlgo::Sha256,
                hex: SHA256_ABC.into()
            }
        );
        assert_eq!(spec.http, HttpOptions::default());
    }

    #[test]
    fn md5_only_when_allowed() {
        let info = json!({"id": "x", "urls": ["http://h/x"], "checksum": MD5_ABC});
        let spec = parse(info.clone(), true).unwrap();
        assert_eq!(spec.expected.algo, HashAlgo::Md5);
        let err = parse(info, false).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidChecksum(ref m) if m.contains("md5")),
            "{err}"
        );
        let info = json!({"id": "x", "urls": ["http://h/x"],
                          "os_hash_algo": "md5", "os_hash_value": MD5_ABC});
        assert!(matches!(
            parse(info, false),
            Err(ImageError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn legacy_checksum_algo_by_length() {
        let info = json!({"id": "x", "urls": ["http://h/x"], "checksum": SHA256_ABC});
        assert_eq!(parse(info, false).unwrap().expected.algo, HashAlgo::Sha256);
        let info = json!({"id": "x", "urls": ["http://h/x"], "checksum": "abc123"});
        assert!(matches!(
            parse(info, true),
            Err(ImageError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn unknown_os_hash_algo_falls_back_or_fails() {
        let info = json!({"id": "x", "urls": ["http://h/x"],
                          "os_hash_algo": "sha3_512", "os_hash_value": "00", "checksum": SHA256_ABC});
        assert_eq!(parse(info, false).unwrap().expected.algo, HashAlgo::Sha256);
        let info = json!({"id": "x", "urls": ["http://h/x"],
                          "os_hash_algo": "sha3_512", "os_hash_value": "00"});
        assert!(matches!(
            parse(info, true),
            Err(ImageError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn malformed_digest_is_refused() {
        let info = json!({"id": "x", "urls": ["http://h/x"],
                          "os_hash_algo": "sha512", "os_hash_value": SHA256_ABC});
        assert!(matches!(
            parse(info, true),
            Err(ImageError::InvalidChecksum(_))
        ));
        let info = json!({"id": "x", "urls": ["http://h/x"],
                          "os_hash_algo": "sha256", "os_hash_value": "zz".repeat(32)});
        assert!(matches!(
            parse(info, true),
            Err(ImageError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn missing_or_mistyped_fields() {
        let cases = [
            json!({"id": "x", "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": [], "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": "http://h/x", "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": [42], "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": ["file:///etc/passwd"], "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"urls": ["http://h/x"], "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": ["http://h/x"]}),
            json!({"id": "x", "urls": ["http://h/x"], "os_hash_algo": "sha256"}),
            json!({"id": "x", "urls": ["http://h/x"], "os_hash_value": SHA256_ABC}),
            json!({"id": "x", "urls": ["http://h/x"], "checksum": ""}),
            json!({"id": "x", "urls": ["http://h/x"], "checksum": {"not": "a string"}}),
            json!({"id": "x", "urls": ["http://h/x"], "checksum": SHA256_ABC, "proxies": "p"}),
            json!({"id": "x", "urls": ["http://h/x"], "checksum": SHA256_ABC, "disk_format": 3}),
            json!(["not", "an", "object"]),
        ];
        for info in cases {
            let err = parse(info.clone(), true).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidImageInfo(_)),
                "{info}: expected InvalidImageInfo, got {err:?}"
            );
        }
    }

    #[test]
    fn credentials_and_proxies() {
        let info = json!({
            "id": "x", "urls": ["https://h/x"], "os_hash_algo": "sha256", "os_hash_value": SHA256_ABC,
            // Ironic: base64 of image_request_authorization_secret ("Bearer f00").
            "image_request_authorization": "QmVhcmVyIGYwMA==",
            "image_server_auth_strategy": "http_basic",
            "image_server_user": "SpongeBob", "image_server_password": "SquarePants",
            "proxies": {"http": "spam.ni", "https": "https://spam.ni"},
            "no_proxy": ".eggs.com",
        });
        let base = HttpOptions {
            retries: 2,
            ..HttpOptions::default()
        };
        let spec = ImageSpec::from_image_info(&info, false, &base).unwrap();
        assert_eq!(spec.http.authorization.as_deref(), Some("Bearer f00"));
        assert_eq!(
            spec.http.basic_auth,
            Some(("SpongeBob".to_string(), "SquarePants".to_string()))
        );
        assert_eq!(
            spec.http.proxies.get("http").map(String::as_str),
            Some("spam.ni")
        );
        assert_eq!(
            spec.http.proxies.get("https").map(String::as_str),
            Some("https://spam.ni")
        );
        assert_eq!(spec.http.no_proxy.as_deref(), Some(".eggs.com"));
        assert_eq!(spec.http.retries, 2, "base options are kept");

        let mut bad = info.clone();
        bad["image_server_password"] = json!("");
        assert!(matches!(
            ImageSpec::from_image_info(&bad, false, &base),
            Err(ImageError::InvalidImageInfo(_))
        ));
        let mut bad = info;
        bad["image_request_authorization"] = json!("***not base64***");
        assert!(matches!(
            ImageSpec::from_image_info(&bad, false, &base),
            Err(ImageError::InvalidImageInfo(_))
        ));
    }

    #[test]
    fn writer_stage_failure_stops_the_reader_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 64 << 20]).unwrap();
        // Opened read-only: every pwrite of the writer stage fails with EBADF.
        let disk = Disk {
            file: File::open(&path).unwrap(),
            size: 64 << 20,
            path: path.clone(),
        };
        let reads = std::cell::Cell::new(0usize);
        let mut src = std::io::repeat(7).take(40 << 20).inspect_reads(&reads);
        let err = stream_rest(&mut src, &disk, HOLD_BACK).unwrap_err();
        match err {
            ImageError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::EBADF))
            }
            other => panic!("expected the writer's Io error, got {other:?}"),
        }
        // The reader stopped soon after the writer failed instead of draining 40 MiB.
        assert!(reads.get() < 40 << 20, "read {} bytes", reads.get());
    }

    /// Counts the bytes read through it.
    struct Counted<'c, R> {
        inner: R,
        count: &'c std::cell::Cell<usize>,
    }

    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count.set(self.count.get() + n);
            Ok(n)
        }
    }

    trait InspectReads: Read + Sized {
        fn inspect_reads(self, count: &std::cell::Cell<usize>) -> Counted<'_, Self> {
            Counted { inner: self, count }
        }
    }

    impl<R: Read> InspectReads for R {}

    #[test]
    fn file_name_is_last_path_segment() {
        assert_eq!(image_file_name("http://h/a/b/disk.img?x=1#f"), "disk.img");
        assert_eq!(image_file_name("http://h/"), "");
    }
}
