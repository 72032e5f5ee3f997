//! The image write: hold back the first MiB, stream the rest, verify, then commit.
//!
//! A bricked or half-written disk that still boots is the worst outcome, so the order is fixed:
//! 1. Open the device; read the first MiB of the download and tell the format from the bytes
//!    ([`crate::format`]): raw, qcow2, or either inside gzip/zstd. Refuse what is not the
//!    declared `disk_format` or not permitted, and what does not fit the device (Content-Length
//!    of a raw image, virtual size of a qcow2). The device is untouched so far.
//! 2. Zero the first and the last MiB of the device (stale MBR/GPT and the GPT backup header at
//!    the end, as IPA's `destroy_disk_metadata` does before a write), then write everything but
//!    the first MiB of the image (of the guest disk for a qcow2) at its offset, hashing the
//!    downloaded bytes as they pass. A crash from here on leaves a disk without a partition table,
//!    never a plausible-looking half image.
//! 3. Compare the digest. Only on a match write the held-back first MiB, fsync and ask the kernel
//!    to re-read the partition table.
//!
//! Any failure after the first write wipes the first and last MiB again before returning.
//! Ranges known to be zero (qcow2 unallocated/zero clusters, aligned all-zero blocks of raw
//! data) are zeroed with BLKZEROOUT instead of written, so the device reads back exactly the
//! image (raw) or `qemu-img convert -O raw` of it (qcow2) over the image's length.
//!
//! The stages and their channels are described in [`crate::pipeline`]; memory is bounded (a few
//! MiB of buffers plus qcow2 tables in flight) whatever the image size.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Map, Value};

use crate::checksum::{
    parse_checksum_file, ExpectedDigest, HashAlgo, StreamHasher, CHECKSUM_FILE_LIMIT,
};
use crate::download::{fetch_bytes, open_image, HttpOptions, StreamReadError};
use crate::error::ImageError;
use crate::format::{self, Detected};
use crate::io::decompress::{decompress, DecompressError};
use crate::io::sniff::{self, ImageFormat};
use crate::io::{read_full, LengthCheckReader, LengthMismatch, ProgressReader, RangeSource};
use crate::pipeline::{
    run_writer, Chunk, ChunkResult, ChunkSource, Disk, Pool, Sink, WriteOp, CHUNK, DEPTH,
};
use crate::qcow2::Qcow2Stream;

pub use crate::pipeline::{HOLD_BACK, WIPE_BYTES};

/// Minimum time between two progress callbacks ("at most every few seconds": the agent logs
/// each one).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Lookup's `config.permitted_image_formats` (IPA's `[DEFAULT]permitted_image_formats`,
    /// default `raw, gpt, qcow2, iso`); `None` when Ironic sent none. Not part of `image_info`:
    /// [`ImageSpec::from_image_info`] leaves it `None` and the agent sets it.
    pub permitted_formats: Option<Vec<String>>,
    /// A second digest to verify in parallel with `expected` (for instance the legacy md5
    /// `checksum` Glance also records, when an operator wants both). IPA verifies one; so does
    /// [`ImageSpec::from_image_info`], which leaves this `None`.
    pub also_verify: Option<ExpectedDigest>,
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
            permitted_formats: None,
            also_verify: None,
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

/// Progress of a write, as bytes of the download consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes downloaded (and hashed) so far.
    pub bytes_done: u64,
    /// Download size if the server announced it.
    pub bytes_total: Option<u64>,
    /// Download rate since the previous report (the average over the whole transfer in the
    /// final report), bytes per second.
    pub rate_bytes_per_sec: u64,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Size of the image on the device: the raw image's length, or the qcow2's virtual size.
    pub bytes_written: u64,
    /// Algorithm verified.
    pub algo: HashAlgo,
    /// Digest of the downloaded bytes (lowercase hex); equals the expected one.
    pub digest_hex: String,
    /// Wall time from opening the device to the end of the fsync.
    pub elapsed: Duration,
    /// Size of the device in bytes.
    pub device_size: u64,
    /// What the bytes were: `raw`, `gpt`, `qcow2`, `gzip+raw`, `zstd+qcow2`, …
    pub format: String,
    /// Bytes downloaded (the file the digest covers).
    pub bytes_downloaded: u64,
    /// Bytes zeroed without writing buffers (BLKZEROOUT, hole punching).
    pub bytes_zeroed: u64,
    /// Bytes fetched a second time with range requests (qcow2 metadata after data).
    pub bytes_reread: u64,
    /// Whether data went to the device with O_DIRECT.
    pub direct_io: bool,
    /// The second digest verified (`StreamOptions::also`), if one was asked.
    pub also_digest_hex: Option<String>,
}

/// How [`write_stream_with`] treats a stream.
#[derive(Clone, Copy)]
pub struct StreamOptions<'a> {
    /// Content-Length announced by the server: the stream must have exactly this many bytes.
    pub content_length: Option<u64>,
    /// The digest the downloaded bytes must have.
    pub expected: &'a ExpectedDigest,
    /// Declared `disk_format` (`raw`, `qcow2`); `None` accepts either.
    pub disk_format: Option<&'a str>,
    /// Lookup's `permitted_image_formats`; `None`: no restriction beyond what Ferric can write.
    pub permitted_formats: Option<&'a [String]>,
    /// Random access to the same file, for qcow2 images whose tables follow their data.
    pub ranges: Option<&'a dyn RangeSource>,
    /// A second digest to verify, computed in parallel with the first.
    pub also: Option<&'a ExpectedDigest>,
}

/// Download `spec` and write it onto `device`: [`open_image`] + [`write_stream_with`], with
/// range requests on the same URL for qcow2 layouts that need them.
///
/// A declared `disk_format` other than `raw`/`qcow2` is refused before any network or disk I/O.
pub fn write_image(
    spec: &ImageSpec,
    device: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<WriteReport, ImageError> {
    check_declared(spec.disk_format.as_deref())?;
    let stream = open_image(&spec.urls, &spec.http)?;
    let content_length = stream.content_length();
    let ranges = stream.range_source();
    log::info!(
        "writing image {} from {} ({} bytes) to {}",
        spec.id,
        stream.url(),
        content_length.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        device.display()
    );
    let opts = StreamOptions {
        content_length,
        expected: &spec.expected,
        disk_format: spec.disk_format.as_deref(),
        permitted_formats: spec.permitted_formats.as_deref(),
        ranges: Some(&ranges),
        also: spec.also_verify.as_ref(),
    };
    write_stream_with(stream, &opts, device, progress)
}

fn check_declared(declared: Option<&str>) -> Result<(), ImageError> {
    match declared.map(|d| d.trim().to_ascii_lowercase()).as_deref() {
        None | Some("raw") | Some("qcow2") => Ok(()),
        Some(other) => Err(ImageError::UnsupportedFormat(format!(
            "disk_format {other:?}: Ferric writes raw and qcow2 images only"
        ))),
    }
}

/// Write the raw image read from `src` onto `device` (a block device or, in tests, a regular
/// file), verifying it against `expected`: [`write_stream_with`] with `disk_format` `raw` (a
/// gzip/zstd-compressed raw image is accepted too).
pub fn write_stream<R: Read + Send>(
    src: R,
    content_length: Option<u64>,
    expected: &ExpectedDigest,
    device: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<WriteReport, ImageError> {
    let opts = StreamOptions {
        content_length,
        expected,
        disk_format: Some("raw"),
        permitted_formats: None,
        ranges: None,
        also: None,
    };
    write_stream_with(src, &opts, device, progress)
}

/// Write the image read from `src` onto `device`. See the module documentation for the order of
/// operations and what is left on the device on failure.
pub fn write_stream_with<R: Read + Send>(
    src: R,
    opts: &StreamOptions<'_>,
    device: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<WriteReport, ImageError> {
    let started = Instant::now();
    check_declared(opts.disk_format)?;
    let disk = Disk::open(device)?;
    write_on(disk, src, opts, progress, started)
}

/// [`write_stream_with`] on an open [`Disk`].
fn write_on<R: Read + Send>(
    disk: Disk,
    src: R,
    opts: &StreamOptions<'_>,
    progress: &(dyn Fn(Progress) + Sync),
    started: Instant,
) -> Result<WriteReport, ImageError> {
    let pool = Pool::new(4 * DEPTH + 4);
    let algo = opts.expected.algo;
    // One hasher thread per digest: two digests cost no wall time on two cores.
    let wanted: Vec<&ExpectedDigest> = std::iter::once(opts.expected).chain(opts.also).collect();
    let (hash_txs, hash_rxs): (Vec<_>, Vec<_>) = wanted
        .iter()
        .map(|_| mpsc::sync_channel::<Chunk>(DEPTH))
        .unzip();
    let (conv_tx, conv_rx) = mpsc::sync_channel::<ChunkResult>(DEPTH);
    let (op_tx, op_rx) = mpsc::sync_channel::<WriteOp>(DEPTH);

    let outcome = std::thread::scope(|scope| {
        let spawn_err = |e| ImageError::io("starting an image pipeline thread", e);
        let pool_dl = pool.clone();
        let content_length = opts.content_length;
        let download = std::thread::Builder::new()
            .name("image-download".into())
            .spawn_scoped(scope, move || {
                download_stage(src, content_length, progress, &pool_dl, hash_txs, conv_tx)
            })
            .map_err(spawn_err)?;
        let mut hashers = Vec::new();
        for (i, (rx, want)) in hash_rxs.into_iter().zip(&wanted).enumerate() {
            let algo = want.algo;
            let h = std::thread::Builder::new()
                .name(format!("image-hash-{i}"))
                .spawn_scoped(scope, move || {
                    let mut h = StreamHasher::new(algo);
                    for chunk in rx {
                        h.update(chunk.bytes());
                    }
                    h.finalize_hex()
                })
                .map_err(spawn_err)?;
            hashers.push(h);
        }
        let disk_ref = &disk;
        let writer = std::thread::Builder::new()
            .name("image-writer".into())
            .spawn_scoped(scope, move || run_writer(disk_ref, op_rx))
            .map_err(spawn_err)?;

        let mut sink = Sink::new(op_tx, pool.clone(), &disk);
        let mut source = ChunkSource::new(conv_rx);
        let converted = convert(&mut source, &mut sink, opts);
        // Closing our end stops the download stage if it is still going (on failure).
        drop(source);
        let mut committed = sink.committed();
        let finished = converted.and_then(|c| {
            committed = true;
            sink.finish().map(|(head, end)| (c, head, end))
        });
        // (On failure `sink` was dropped by `and_then` not running `finish`; either way the
        // writer's channel is closed now.)
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(panicked("image writer")));
        let downloaded = download.join().map_err(|_| panicked("image download"));
        let digest: Result<Vec<String>, ImageError> = hashers
            .into_iter()
            .map(|h| h.join().map_err(|_| panicked("image hash")))
            .collect();
        let result = match (finished, written) {
            // The writer's error is the cause when it stopped first (the converter then only
            // saw a closed channel).
            (_, Err(w)) => Err(w),
            (Err(e), Ok(_)) => Err(e),
            (Ok(done), Ok(stats)) => downloaded.and_then(|n| digest.map(|d| (done, stats, n, d))),
        };
        Ok::<_, ImageError>((result, committed))
    });
    let (result, committed) = match outcome {
        Ok(pair) => pair,
        Err(e) => (Err(e), false),
    };
    let fail = |e: ImageError| if committed { disk.fail(e) } else { e };
    let ((conv, head, end), stats, downloaded, mut actuals) = result.map_err(fail)?;

    // Phase 3: verify, then commit the first MiB.
    for (want, got) in wanted.iter().zip(&actuals) {
        if !want.matches(got) {
            return Err(disk.fail(ImageError::ChecksumMismatch {
                algo: want.algo.to_string(),
                expected: want.hex.clone(),
                actual: got.clone(),
            }));
        }
    }
    let also_digest_hex = actuals.get(1).cloned();
    let actual = actuals.swap_remove(0);
    disk.write_at(&head, 0)
        .and_then(|()| {
            disk.file
                .sync_all()
                .map_err(|e| ImageError::io(format!("fsync of {}", disk.path.display()), e))
        })
        .map_err(|e| disk.fail(e))?;
    disk.reread_partitions();

    let elapsed = started.elapsed();
    log::info!(
        "wrote {} image of {end} bytes ({downloaded} downloaded, {} zeroed{}) to {} in {:.1}s \
         ({:.1} MiB/s), {algo} {actual}",
        conv.detected.describe(),
        stats.zeroed_bytes,
        if conv.reread > 0 {
            format!(", {} re-read", conv.reread)
        } else {
            String::new()
        },
        disk.path.display(),
        elapsed.as_secs_f64(),
        downloaded as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-3),
    );
    Ok(WriteReport {
        bytes_written: end,
        algo,
        digest_hex: actual,
        elapsed,
        device_size: disk.size,
        format: conv.detected.describe(),
        bytes_downloaded: downloaded,
        bytes_zeroed: stats.zeroed_bytes,
        bytes_reread: conv.reread,
        direct_io: stats.direct,
        also_digest_hex,
    })
}

fn panicked(stage: &str) -> ImageError {
    ImageError::io(stage, std::io::Error::other("thread panicked"))
}

/// The download stage: read `src` (length-checked, with progress) into chunks for the hasher
/// and the converter. Returns the byte count; errors go to the converter, which reports them.
fn download_stage<R: Read>(
    src: R,
    content_length: Option<u64>,
    progress: &(dyn Fn(Progress) + Sync),
    pool: &std::sync::Arc<Pool>,
    hash_txs: Vec<mpsc::SyncSender<Chunk>>,
    conv_tx: mpsc::SyncSender<ChunkResult>,
) -> u64 {
    let mut reader = ProgressReader::new(
        LengthCheckReader::new(src, content_length),
        content_length,
        progress,
        PROGRESS_INTERVAL,
    );
    loop {
        let mut b = pool.builder();
        let n = match read_full(&mut reader, b.spare()) {
            Ok(n) => n,
            Err(e) => {
                let _ = conv_tx.send(Err(read_error(e)));
                return reader.bytes_done();
            }
        };
        if n > 0 {
            b.set_len(n);
            let chunk = b.freeze();
            for tx in &hash_txs {
                if tx.send(chunk.share()).is_err() {
                    let _ = conv_tx.send(Err(panicked("image hash")));
                    return reader.bytes_done();
                }
            }
            if conv_tx.send(Ok(chunk)).is_err() {
                // The converter stopped; its error is the one reported.
                return reader.bytes_done();
            }
        }
        // read_full stops short only at the end of the stream.
        if n < CHUNK {
            reader.finish();
            return reader.bytes_done();
        }
    }
}

/// What the converter found.
struct Converted {
    detected: Detected,
    reread: u64,
}

/// The converter stage: detect, vet, and turn the download into writes on `sink`.
fn convert(
    source: &mut ChunkSource,
    sink: &mut Sink<'_>,
    opts: &StreamOptions<'_>,
) -> Result<Converted, ImageError> {
    let Some((first, _)) = source.next_chunk()? else {
        let detected = Detected::from_head(None, &[]);
        format::check(&detected, opts.disk_format, opts.permitted_formats)?;
        return Ok(Converted {
            detected,
            reread: 0,
        });
    };
    let outer = sniff::detect(first.bytes());
    if format::is_container(outer) {
        source.unread(first, 0);
        return convert_container(outer, source, sink, opts);
    }
    let detected = Detected::from_head(None, first.bytes());
    format::check(&detected, opts.disk_format, opts.permitted_formats)?;
    let mut reread = 0;
    match detected.inner {
        ImageFormat::Qcow2 => {
            let mut q = Qcow2Stream::new(opts.ranges);
            q.feed_chunk(&first, 0, sink)?;
            drop(first);
            while let Some((chunk, from)) = source.next_chunk()? {
                q.feed_chunk(&chunk, from, sink)?;
            }
            reread = q.finish(sink)?;
        }
        _ => {
            if let Some(len) = opts.content_length {
                if len > sink.device_size() {
                    return Err(ImageError::TooLarge {
                        image_bytes: len,
                        device_bytes: sink.device_size(),
                    });
                }
            }
            let mut offset = 0u64;
            let mut next = Some((first, 0));
            while let Some((chunk, from)) = next {
                let len = (chunk.bytes().len() - from) as u64;
                sink.write_chunk(offset, chunk, from)?;
                offset += len;
                next = source.next_chunk()?;
            }
        }
    }
    Ok(Converted { detected, reread })
}

/// gzip/zstd around a raw or qcow2 image.
fn convert_container(
    container: ImageFormat,
    source: &mut ChunkSource,
    sink: &mut Sink<'_>,
    opts: &StreamOptions<'_>,
) -> Result<Converted, ImageError> {
    // A compressed stream that produces (almost) nothing must not be read forever: gzip and
    // zstd add at most a few bytes per 64 KiB block even to incompressible data, so a valid
    // stream for this device is never larger than this.
    let limit = sink.device_size() + sink.device_size() / 64 + (16 << 20);
    let mut limited = Limited {
        inner: source,
        left: limit,
    };
    let mut inner = Inner {
        sink,
        opts,
        container,
        state: InnerState::Sniff(Vec::with_capacity(HOLD_BACK as usize)),
        offset: 0,
        error: None,
        detected: None,
    };
    match decompress(container, &mut limited, &mut inner) {
        Ok(_) => {}
        Err(DecompressError::Sink(e)) => {
            return Err(inner
                .error
                .take()
                .unwrap_or_else(|| ImageError::io("writing the decompressed image", e)))
        }
        Err(DecompressError::Source(_)) if limited.left == 0 => {
            return Err(ImageError::InvalidImage(format!(
                "the {container} stream is larger than {limit} bytes, more than any valid \
                 {container} of an image fitting the device"
            )))
        }
        Err(DecompressError::Source(e)) => {
            return Err(limited.inner.error.take().unwrap_or_else(|| read_error(e)))
        }
        Err(DecompressError::Corrupt(m)) => {
            return Err(ImageError::InvalidImage(format!(
                "{m} (the digest is checked only at the end; the bytes are not a valid {container})"
            )))
        }
    }
    inner.finish()
}

/// Fails once more than `left` bytes were read.
struct Limited<'s> {
    inner: &'s mut ChunkSource,
    left: u64,
}

impl Read for Limited<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.left = 0;
            return Err(std::io::Error::other("compressed stream too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

enum InnerState<'r> {
    /// Collecting the first MiB of decompressed bytes to tell the format.
    Sniff(Vec<u8>),
    Raw,
    Qcow2(Box<Qcow2Stream<'r>>),
}

/// The decompressor's output: sniffs the inner format, then writes raw bytes or feeds qcow2.
struct Inner<'a, 'd> {
    sink: &'a mut Sink<'d>,
    opts: &'a StreamOptions<'a>,
    container: ImageFormat,
    state: InnerState<'a>,
    offset: u64,
    error: Option<ImageError>,
    detected: Option<Detected>,
}

impl Inner<'_, '_> {
    fn take(&mut self, data: &[u8]) -> Result<(), ImageError> {
        match &mut self.state {
            InnerState::Sniff(buf) => {
                buf.extend_from_slice(data);
                if buf.len() as u64 >= HOLD_BACK {
                    self.decide()?;
                }
                Ok(())
            }
            InnerState::Raw => {
                self.sink.write(self.offset, data)?;
                self.offset += data.len() as u64;
                Ok(())
            }
            InnerState::Qcow2(q) => q.feed(data, self.sink),
        }
    }

    fn decide(&mut self) -> Result<(), ImageError> {
        let InnerState::Sniff(buf) = std::mem::replace(&mut self.state, InnerState::Raw) else {
            return Ok(());
        };
        let detected = Detected::from_head(Some(self.container), &buf);
        format::check(
            &detected,
            self.opts.disk_format,
            self.opts.permitted_formats,
        )?;
        self.detected = Some(detected);
        if detected.inner == ImageFormat::Qcow2 {
            // No range requests into a decompressed stream.
            let mut q = Box::new(Qcow2Stream::new(None));
            q.feed(&buf, self.sink)?;
            self.state = InnerState::Qcow2(q);
            Ok(())
        } else {
            self.state = InnerState::Raw;
            self.take(&buf)
        }
    }

    fn finish(mut self) -> Result<Converted, ImageError> {
        if matches!(self.state, InnerState::Sniff(_)) {
            self.decide()?;
        }
        if let InnerState::Qcow2(q) = std::mem::replace(&mut self.state, InnerState::Raw) {
            q.finish(self.sink)?;
        }
        Ok(Converted {
            detected: self.detected.expect("decided above"),
            reread: 0,
        })
    }
}

impl std::io::Write for Inner<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.error.is_some() {
            return Err(std::io::Error::other("image conversion failed"));
        }
        match self.take(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(std::io::Error::other(msg))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        .map_err(|e| ImageError::io(format!("zeroing the ends of {}", device.display()), e))?;
    disk.reread_partitions();
    Ok(())
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
        let counted = std::sync::atomic::AtomicUsize::new(0);
        let src = Counted {
            inner: std::io::repeat(7).take(40 << 20),
            count: &counted,
        };
        let expected = ExpectedDigest::new(HashAlgo::Sha256, &"0".repeat(64)).unwrap();
        // The image is larger than the disk: the converter fails mid-stream.
        std::fs::write(&path, vec![0u8; 8 << 20]).unwrap();
        let err = write_stream(src, None, &expected, &path, &|_| {}).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { device_bytes, .. } if device_bytes == 8 << 20),
            "{err:?}"
        );
        // The download stopped soon after the converter failed instead of draining 40 MiB.
        let read = counted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(read < 40 << 20, "read {read} bytes");
    }

    #[test]
    fn device_write_errors_stop_the_pipeline_and_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xAAu8; 64 << 20]).unwrap();
        // Buffered handle writable (ends can be zeroed), "direct" handle read-only: every data
        // write of the writer stage fails with EBADF, as a dying disk would with EIO.
        let rw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let ro = std::fs::File::open(&path).unwrap();
        let disk = Disk::from_files(rw, Some(ro), &path);
        let counted = std::sync::atomic::AtomicUsize::new(0);
        let src = Counted {
            inner: std::io::repeat(7).take(40 << 20),
            count: &counted,
        };
        let expected = ExpectedDigest::new(HashAlgo::Sha256, &"0".repeat(64)).unwrap();
        let opts = StreamOptions {
            content_length: None,
            expected: &expected,
            disk_format: Some("raw"),
            permitted_formats: None,
            ranges: None,
            also: None,
        };
        let err = write_on(disk, src, &opts, &|_| {}, Instant::now()).unwrap_err();
        match err {
            ImageError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EBADF)),
            other => panic!("expected the writer's Io error, got {other:?}"),
        }
        let read = counted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            read < 40 << 20,
            "the download went on after the writer died: {read}"
        );
        let d = std::fs::read(&path).unwrap();
        assert!(d[..1 << 20].iter().all(|&b| b == 0), "first MiB not wiped");
        assert!(
            d[(63 << 20)..].iter().all(|&b| b == 0),
            "last MiB not wiped"
        );
    }

    /// Counts the bytes read through it.
    struct Counted<'c, R> {
        inner: R,
        count: &'c std::sync::atomic::AtomicUsize,
    }

    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        }
    }

    #[test]
    fn file_name_is_last_path_segment() {
        assert_eq!(image_file_name("http://h/a/b/disk.img?x=1#f"), "disk.img");
        assert_eq!(image_file_name("http://h/"), "");
    }
}
