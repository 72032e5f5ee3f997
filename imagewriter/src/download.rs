//! HTTP(S) fetching of images, checksum files and config drives.
//!
//! One blocking `reqwest` client per operation, built by [`http_client`] from [`HttpOptions`]
//! (which the agent fills from kernel parameters and `image_info`). TLS is rustls with the ring
//! provider; roots come from the configured CA file or the system bundle.
//!
//! Liveness is bounded everywhere: a connect timeout, and a read timeout that applies to the wait
//! for the response head and to every read of the body (reqwest's blocking client applies its
//! `timeout` per operation, not to the whole transfer, so a long image download is not cut off
//! while a stalled server is). Opening a URL is retried on connection errors, timeouts and 5xx,
//! never on 4xx, as IPA does (`standby._download_with_proxy`).
//!
//! Beyond IPA: an image download that drops mid-body resumes with `Range` + `If-Range` when the
//! server gave a length and a validator (see [`ImageStream`]), and [`HttpRanges`] re-reads byte
//! ranges of the same file for qcow2 images whose tables follow their data.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ImageError;

/// The system CA bundle used when no `ca_file` is given (Debian/Ubuntu/Alpine layout, which is
/// what the ramdisk ships).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to talk HTTP(S) to image servers.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Accept any server certificate (`ipa-insecure`).
    pub insecure: bool,
    /// PEM file of trusted CAs (IPA `[DEFAULT]cafile`); `None` → [`SYSTEM_CA_BUNDLE`].
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the response head (which includes connecting, so it also caps the
    /// connect phase) and for each read of the body. Not a deadline for the whole transfer:
    /// a server that keeps sending, however slowly, is not cut off (IPA behaves the same).
    pub read_timeout: Duration,
    /// Extra attempts per URL after the first on connection errors, timeouts and 5xx.
    pub retries: u32,
    /// Pause between two attempts on the same URL.
    pub retry_interval: Duration,
    /// `image_info.proxies`: scheme (`http`, `https`, `all`) → proxy URL. Environment proxy
    /// variables are ignored: Ironic passes proxies explicitly.
    pub proxies: BTreeMap<String, String>,
    /// `image_info.no_proxy`: comma-separated hosts/domains/CIDRs that bypass the proxies.
    pub no_proxy: Option<String>,
    /// Full value of the `Authorization` header (`image_request_authorization`, base64-decoded).
    pub authorization: Option<String>,
    /// HTTP basic credentials (`image_server_auth_strategy == "http_basic"`).
    pub basic_auth: Option<(String, String)>,
}

impl Default for HttpOptions {
    /// IPA's defaults (`ironic_python_agent/config.py`):
    /// `ipa-image-download-connection-timeout` = 60 s (IPA hands that one value to `requests` as
    /// `timeout=`, which is both the connect and the read timeout),
    /// `ipa-image-download-connection-retries` = 9,
    /// `ipa-image-download-connection-retry-interval` = 10 s.
    fn default() -> Self {
        HttpOptions {
            insecure: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            retries: 9,
            retry_interval: Duration::from_secs(10),
            proxies: BTreeMap::new(),
            no_proxy: None,
            authorization: None,
            basic_auth: None,
        }
    }
}

impl fmt::Debug for HttpOptions {
    // Hand-written so credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOptions")
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retries", &self.retries)
            .field("retry_interval", &self.retry_interval)
            .field("proxies", &self.proxies)
            .field("no_proxy", &self.no_proxy)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .finish()
    }
}

/// Build the blocking client every fetch of this crate (and the agent's other fetches) uses.
pub fn http_client(opts: &HttpOptions) -> Result<Client, ImageError> {
    let tls = tls_config(opts)?;
    let mut builder = Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(opts.connect_timeout)
        // Blocking reqwest: applies to the wait for the head and to each body read separately.
        .timeout(opts.read_timeout)
        .user_agent(concat!("ferric-imagewriter/", env!("CARGO_PKG_VERSION")));
    if opts.proxies.is_empty() {
        builder = builder.no_proxy();
    }
    let no_proxy = opts
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    for (scheme, url) in &opts.proxies {
        let proxy = match scheme.as_str() {
            "http" => reqwest::Proxy::http(url.as_str()),
            "https" => reqwest::Proxy::https(url.as_str()),
            "all" => reqwest::Proxy::all(url.as_str()),
            other => {
                return Err(ImageError::HttpClient(format!(
                    "proxy for unknown scheme {other:?} (expected http, https or all)"
                )))
            }
        }
        .map_err(|e| ImageError::HttpClient(format!("invalid {scheme} proxy {url:?}: {e}")))?;
        builder = builder.proxy(proxy.no_proxy(no_proxy.clone()));
    }
    builder
        .build()
        .map_err(|e| ImageError::HttpClient(error_chain(&e)))
}

/// The rustls (ring) client configuration behind [`http_client`]: roots from `ca_file` or the
/// system bundle, or no verification with `insecure`. Public so the agent builds its async
/// Ironic client on the same trust decisions.
pub fn tls_config(opts: &HttpOptions) -> Result<rustls::ClientConfig, ImageError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ImageError::HttpClient(format!("TLS protocol versions: {e}")))?;
    let config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(root_store(opts)?)
            .with_no_client_auth()
    };
    Ok(config)
}

fn root_store(opts: &HttpOptions) -> Result<RootCertStore, ImageError> {
    let mut roots = RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            // An operator-supplied CA file that yields nothing usable is a configuration error:
            // say so now rather than failing every HTTPS fetch with "unknown issuer".
            let pem = std::fs::read(path).map_err(|e| {
                ImageError::HttpClient(format!("reading CA file {}: {e}", path.display()))
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ImageError::HttpClient(format!("parsing CA file {}: {e}", path.display()))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ImageError::HttpClient(format!(
                    "CA file {} holds no usable certificate",
                    path.display()
                )));
            }
        }
        None => match std::fs::read(SYSTEM_CA_BUNDLE) {
            Ok(pem) => {
                // A distribution bundle may hold a certificate webpki cannot parse; skip it.
                let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
                roots.add_parsable_certificates(certs);
            }
            Err(e) => log::warn!(
                "no CA file configured and {SYSTEM_CA_BUNDLE} unreadable ({e}): \
                 HTTPS downloads will fail certificate verification"
            ),
        },
    }
    Ok(roots)
}

/// `ipa-insecure`: accept any certificate for any name, but still check that the handshake is
/// signed by the key in the certificate presented (what `requests` with `verify=False` does too).
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A reqwest error with its source chain ("error sending request: … : connection refused").
/// Flatten an error and its sources into one line (reqwest hides the root cause, such as
/// "connection refused" or a certificate error, in its source chain).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

fn describe_send_error(e: &reqwest::Error, opts: &HttpOptions) -> String {
    if e.is_timeout() {
        format!(
            "timed out (connect timeout {:?}, read timeout {:?}): {}",
            opts.connect_timeout,
            opts.read_timeout,
            error_chain(e)
        )
    } else {
        error_chain(e)
    }
}

/// Outcome of one attempt on one URL.
enum Attempt {
    Ok(Response),
    Retryable(String),
    Fatal(String),
}

/// A GET of `url` with the configured credentials.
fn request(
    client: &Client,
    url: &str,
    opts: &HttpOptions,
) -> Result<reqwest::blocking::RequestBuilder, String> {
    let mut req = client.get(url);
    if let Some((user, password)) = &opts.basic_auth {
        req = req.basic_auth(user, Some(password));
    }
    if let Some(auth) = &opts.authorization {
        let mut v = HeaderValue::from_str(auth)
            .map_err(|_| "authorization value is not a valid HTTP header".to_string())?;
        v.set_sensitive(true);
        req = req.header(AUTHORIZATION, v);
    }
    Ok(req)
}

fn attempt(client: &Client, url: &str, opts: &HttpOptions) -> Attempt {
    let req = match request(client, url, opts) {
        Ok(r) => r,
        Err(reason) => return Attempt::Fatal(reason),
    };
    let resp = match req.send() {
        Ok(r) => r,
        Err(e) => return Attempt::Retryable(describe_send_error(&e, opts)),
    };
    let status = resp.status();
    // IPA accepts exactly 200 (standby._download_with_proxy).
    if status == reqwest::StatusCode::OK {
        return Attempt::Ok(resp);
    }
    let reason = format!("HTTP status {status}{}", error_body_excerpt(resp));
    // IPA retries 5xx and connection errors, never 4xx ("do not retry 4xx status codes").
    if status.is_server_error() {
        Attempt::Retryable(reason)
    } else {
        Attempt::Fatal(reason)
    }
}

/// First bytes of an error response's body, for the message (IPA includes the body too). Read
/// bounded: a hostile server could send an endless error page.
fn error_body_excerpt(resp: Response) -> String {
    let mut buf = Vec::with_capacity(256);
    if resp.take(256).read_to_end(&mut buf).is_err() || buf.is_empty() {
        return String::new();
    }
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(", body: {:?}", text.trim())
}

/// GET `url` with IPA's retry policy. On failure returns the reason of the last attempt.
fn get_with_retries(client: &Client, url: &str, opts: &HttpOptions) -> Result<Response, String> {
    let attempts = opts.retries.saturating_add(1);
    let mut n = 0;
    loop {
        n += 1;
        match attempt(client, url, opts) {
            Attempt::Ok(resp) => return Ok(resp),
            Attempt::Fatal(reason) => return Err(reason),
            Attempt::Retryable(reason) if n >= attempts => {
                return Err(if attempts > 1 {
                    format!("{reason} (after {attempts} attempts)")
                } else {
                    reason
                })
            }
            Attempt::Retryable(reason) => {
                // A fixed pause, as IPA's `image_download_connection_retry_interval` means.
                log::warn!(
                    "GET {url} failed (attempt {n}/{attempts}): {reason}; retrying in {:?}",
                    opts.retry_interval
                );
                std::thread::sleep(opts.retry_interval);
            }
        }
    }
}

/// Fetch a small document (checksum file, config drive) into memory, refusing bodies over
/// `limit` bytes (by Content-Length up front, and while reading for chunked bodies).
pub fn fetch_bytes(url: &str, opts: &HttpOptions, limit: u64) -> Result<Vec<u8>, ImageError> {
    let client = http_client(opts)?;
    let resp = get_with_retries(&client, url, opts).map_err(|reason| ImageError::Download {
        url: url.to_string(),
        reason,
    })?;
    if resp.content_length().is_some_and(|len| len > limit) {
        return Err(ImageError::ResponseTooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut body = Vec::new();
    resp.take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| ImageError::Download {
            url: url.to_string(),
            reason: describe_read_error(&e, opts),
        })?;
    if body.len() as u64 > limit {
        return Err(ImageError::ResponseTooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(body)
}

/// Open the first of `urls` that answers 200, trying them in order, each with IPA's retries.
/// Fails with [`ImageError::DownloadAll`] listing every URL and why it failed.
pub fn open_image(urls: &[String], opts: &HttpOptions) -> Result<ImageStream, ImageError> {
    if urls.is_empty() {
        return Err(ImageError::InvalidImageInfo("no image URL given".into()));
    }
    let client = http_client(opts)?;
    let started = Instant::now();
    let mut attempts = Vec::new();
    for url in urls {
        log::info!("downloading image from {url}");
        match get_with_retries(&client, url, opts) {
            Ok(resp) => {
                let validator = Validator::of(&resp);
                return Ok(ImageStream {
                    content_length: resp.content_length(),
                    url: url.clone(),
                    client: client.clone(),
                    opts: opts.clone(),
                    validator,
                    pos: 0,
                    resumes: 0,
                    resp,
                });
            }
            Err(reason) => {
                log::warn!(
                    "image URL {url} failed after {:.1}s: {reason}",
                    started.elapsed().as_secs_f64()
                );
                attempts.push(format!("{url}: {reason}"));
            }
        }
    }
    Err(ImageError::DownloadAll { attempts })
}

/// The validator that ties a resumed or ranged request to the same file (RFC 9110 §13.1.5):
/// a strong ETag, else Last-Modified. Weak ETags cannot be used with If-Range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator(String);

impl Validator {
    fn of(resp: &Response) -> Option<Validator> {
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        header(reqwest::header::ETAG)
            .filter(|e| !e.starts_with("W/"))
            .or_else(|| header(reqwest::header::LAST_MODIFIED))
            .map(|v| Validator(v.to_string()))
    }
}

/// An open image download: the body of a 200 response.
///
/// When the connection drops (reset, early close, read timeout) the download resumes where it
/// stopped with `Range: bytes=N-` and `If-Range: <validator>`, at most `retries` times per stream
/// with a growing pause: only when the server announced a Content-Length and a validator, and
/// only if it answers 206 for exactly the missing bytes of a file of the same length. A 200 means
/// the file changed (If-Range failed) or ranges are unsupported, and the read fails: bytes
/// already hashed and written cannot be mixed with another file's.
///
/// Read errors carry a [`StreamReadError`] (URL + reason) inside the `io::Error`, so the writer
/// can report them as [`ImageError::Download`] rather than as a device error.
pub struct ImageStream {
    resp: Response,
    url: String,
    content_length: Option<u64>,
    client: Client,
    opts: HttpOptions,
    validator: Option<Validator>,
    pos: u64,
    resumes: u32,
}

impl ImageStream {
    /// Content-Length announced by the server, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The URL this stream comes from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many times the download was resumed so far.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// Range requests on the same URL, tied to this file by its validator.
    pub fn range_source(&self) -> HttpRanges {
        HttpRanges {
            client: self.client.clone(),
            opts: self.opts.clone(),
            url: self.url.clone(),
            validator: self.validator.clone(),
        }
    }

    fn wrap(&self, kind: io::ErrorKind, reason: String) -> io::Error {
        io::Error::new(
            kind,
            StreamReadError {
                url: self.url.clone(),
                reason,
            },
        )
    }

    fn describe(&self, e: &io::Error) -> String {
        if is_timeout(e) {
            format!(
                "no data for {:?} (read timeout): {}",
                self.opts.read_timeout,
                error_chain(e)
            )
        } else {
            error_chain(e)
        }
    }

    /// Reconnect after `cause` and continue at `self.pos`, or fail with why not.
    fn resume(&mut self, cause: io::Error) -> io::Result<()> {
        let why = self.describe(&cause);
        let (Some(total), Some(validator)) = (self.content_length, self.validator.clone()) else {
            return Err(self.wrap(cause.kind(), why));
        };
        loop {
            if self.resumes >= self.opts.retries {
                return Err(self.wrap(
                    cause.kind(),
                    format!("{why} (gave up after {} resumes)", self.resumes),
                ));
            }
            self.resumes += 1;
            // 0.25 s, 0.5 s, 1 s, … capped by the configured retry interval.
            let pause = Duration::from_millis(250)
                .saturating_mul(1 << (self.resumes - 1).min(16))
                .min(self.opts.retry_interval);
            log::warn!(
                "image download from {} interrupted at byte {} of {total} ({why}); \
                 resuming in {pause:?} (attempt {}/{})",
                self.url,
                self.pos,
                self.resumes,
                self.opts.retries
            );
            std::thread::sleep(pause);
            let req = request(&self.client, &self.url, &self.opts)
                .map_err(|r| self.wrap(io::ErrorKind::Other, r))?
                .header(reqwest::header::RANGE, format!("bytes={}-", self.pos))
                .header(reqwest::header::IF_RANGE, validator.0.as_str());
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("resuming {} failed: {}", self.url, error_chain(&e));
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                log::warn!("resuming {} failed: HTTP status {status}", self.url);
                continue;
            }
            let expected = format!("bytes {}-{}/{total}", self.pos, total.saturating_sub(1));
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if status != reqwest::StatusCode::PARTIAL_CONTENT
                || range.as_deref() != Some(expected.as_str())
            {
                return Err(self.wrap(
                    cause.kind(),
                    format!(
                        "{why}; resuming failed: the server answered {status} with \
                         Content-Range {range:?} instead of 206 {expected:?} (the image changed \
                         or the server does not support ranges)"
                    ),
                ));
            }
            log::info!(
                "image download from {} resumed at byte {}",
                self.url,
                self.pos
            );
            self.resp = resp;
            return Ok(());
        }
    }
}

impl fmt::Debug for ImageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStream")
            .field("url", &self.url)
            .field("content_length", &self.content_length)
            .field("pos", &self.pos)
            .field("resumes", &self.resumes)
            .finish()
    }
}

impl Read for ImageStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.resp.read(buf) {
                Ok(0)
                    if !buf.is_empty()
                        && self.content_length.is_some_and(|total| self.pos < total) =>
                {
                    let early = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed after {} bytes", self.pos),
                    );
                    self.resume(early)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(e)?,
            }
        }
    }
}

/// Byte ranges of one image URL ([`crate::io::RangeSource`]), each tied to the downloaded file
/// by `If-Range`: a server that answers anything but 206 with the requested range fails it.
#[derive(Debug, Clone)]
pub struct HttpRanges {
    client: Client,
    opts: HttpOptions,
    url: String,
    validator: Option<Validator>,
}

impl crate::io::RangeSource for HttpRanges {
    fn open_range(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let fail = |reason: String| ImageError::Download {
            url: self.url.clone(),
            reason: format!("range {start}-{}: {reason}", end.saturating_sub(1)),
        };
        if end <= start {
            return Ok(Box::new(io::empty()));
        }
        let attempts = self.opts.retries.saturating_add(1);
        let mut last = String::new();
        for n in 0..attempts {
            if n > 0 {
                std::thread::sleep(self.opts.retry_interval.min(Duration::from_secs(2)));
            }
            let mut req = request(&self.client, &self.url, &self.opts)
                .map_err(fail)?
                .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
            if let Some(v) = &self.validator {
                req = req.header(reqwest::header::IF_RANGE, v.0.as_str());
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    last = describe_send_error(&e, &self.opts);
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                last = format!("HTTP status {status}");
                continue;
            }
            let got = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let want = format!("bytes {start}-{}/", end - 1);
            if status != reqwest::StatusCode::PARTIAL_CONTENT
                || !got.as_deref().is_some_and(|g| g.starts_with(&want))
            {
                return Err(fail(format!(
                    "the server answered {status} with Content-Range {got:?} (ranges \
                     unsupported, or the image changed)"
                )));
            }
            return Ok(Box::new(LengthCheckedBody {
                resp,
                left: end - start,
                url: self.url.clone(),
            }));
        }
        Err(fail(last))
    }
}

/// A 206 body that must deliver exactly the requested count.
struct LengthCheckedBody {
    resp: Response,
    left: u64,
    url: String,
}

impl Read for LengthCheckedBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = (buf.len() as u64).min(self.left) as usize;
        if max == 0 {
            return Ok(0);
        }
        let n = self.resp.read(&mut buf[..max]).map_err(|e| {
            io::Error::new(
                e.kind(),
                StreamReadError {
                    url: self.url.clone(),
                    reason: error_chain(&e),
                },
            )
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                StreamReadError {
                    url: self.url.clone(),
                    reason: format!("range body ended {} bytes early", self.left),
                },
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The payload of an [`ImageStream`] read error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReadError {
    /// URL being read.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for StreamReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading {}: {}", self.url, self.reason)
    }
}

impl std::error::Error for StreamReadError {}

fn is_timeout(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::TimedOut {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = cur {
        if let Some(re) = err.downcast_ref::<reqwest::Error>() {
            if re.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn describe_read_error(e: &io::Error, opts: &HttpOptions) -> String {
    if is_timeout(e) {
        format!("no data for {:?} (read timeout): {e}", opts.read_timeout)
    } else {
        error_chain(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_ipa() {
        let o = HttpOptions::default();
        assert_eq!(o.retries, 9);
        assert_eq!(o.retry_interval, Duration::from_secs(10));
        assert_eq!(o.connect_timeout, Duration::from_secs(60));
        assert_eq!(o.read_timeout, Duration::from_secs(60));
        assert!(!o.insecure);
    }

    #[test]
    fn debug_redacts_credentials() {
        let o = HttpOptions {
            authorization: Some("Bearer s3cret".into()),
            basic_auth: Some(("user".into(), "hunter2".into())),
            ..HttpOptions::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("s3cret") && !s.contains("hunter2"), "{s}");
        assert!(s.contains("user"), "{s}");
    }

    #[test]
    fn client_builds_with_system_roots_insecure_and_proxies() {
        http_client(&HttpOptions::default()).unwrap();
        http_client(&HttpOptions {
            insecure: true,
            ..HttpOptions::default()
        })
        .unwrap();
        let mut proxies = BTreeMap::new();
        proxies.insert("http".to_string(), "proxy.example:3128".to_string());
        proxies.insert("https".to_string(), "http://proxy.example:3128".to_string());
        http_client(&HttpOptions {
            proxies,
            no_proxy: Some(".example.org,10.0.0.0/8".into()),
            ..HttpOptions::default()
        })
        .unwrap();
    }

    #[test]
    fn bad_ca_file_and_proxy_scheme_are_errors() {
        let missing = HttpOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..HttpOptions::default()
        };
        assert!(matches!(
            http_client(&missing),
            Err(ImageError::HttpClient(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "this is not PEM\n").unwrap();
        let junk_opts = HttpOptions {
            ca_file: Some(junk),
            ..HttpOptions::default()
        };
        let err = http_client(&junk_opts).unwrap_err();
        assert!(err.to_string().contains("no usable certificate"), "{err}");

        let mut proxies = BTreeMap::new();
        proxies.insert("ftp".to_string(), "http://p:1".to_string());
        let opts = HttpOptions {
            proxies,
            ..HttpOptions::default()
        };
        assert!(matches!(http_client(&opts), Err(ImageError::HttpClient(_))));
    }
}
