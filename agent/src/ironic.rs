//! The agent → Ironic side of the protocol (PROTOCOL.md §1): version discovery, lookup and
//! heartbeat. Pure HTTP: the policy of when to call (backoff, heartbeat timing) lives in
//! [`crate::heartbeat`] and [`lookup_with_retries`].

use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::Value;

use crate::config::Config;
use ferric_imagewriter::download::error_chain;

/// Lookup's API version: the highest that changes nothing we rely on (IPA pins 1.62).
const LOOKUP_VERSION: (u32, u32) = (1, 62);
/// Heartbeat's API version (1.68 adds agent_verify_ca).
const HEARTBEAT_VERSION: (u32, u32) = (1, 68);
/// Ramdisk endpoints exist from 1.22 on; below that lookup is a 404 indistinguishable from
/// an unknown MAC.
const MIN_VERSION: (u32, u32) = (1, 22);

/// What can go wrong talking to Ironic.
#[derive(Debug, thiserror::Error)]
pub enum IronicError {
    /// No connection, timeout, TLS failure.
    #[error("cannot reach {url}: {reason}")]
    Connection {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// Ironic answered with an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Ironic's faultstring when it sent one, else the body's start.
        message: String,
    },
    /// Ironic is too old for the ramdisk API.
    #[error("Ironic at {url} supports API {version} at most; the ramdisk API needs 1.22")]
    TooOld {
        /// The URL.
        url: String,
        /// Its maximum version.
        version: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl IronicError {
    /// The HTTP status, when Ironic answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            IronicError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when a heartbeat was refused because the conductor no longer knows our token
    /// (it powered the node off or rebooted it out of band and wiped the token).
    pub fn is_invalid_token(&self) -> bool {
        matches!(self, IronicError::Status { status, message, .. }
            if (*status == 400 || *status == 401 || *status == 403)
                && message.to_ascii_lowercase().contains("token"))
    }
}

/// Ironic's error bodies are `{"error_message": "<JSON string with faultstring>"}`; dig the
/// faultstring out, whatever the nesting.
pub fn fault_message(body: &str) -> String {
    fn from_value(v: &Value) -> Option<String> {
        if let Some(s) = v.get("faultstring").and_then(Value::as_str) {
            return Some(s.to_string());
        }
        match v.get("error_message") {
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(inner) => from_value(&inner).or_else(|| Some(s.clone())),
                Err(_) => Some(s.clone()),
            },
            Some(other) => from_value(other),
            None => None,
        }
    }
    match serde_json::from_str::<Value>(body) {
        Ok(v) => from_value(&v).unwrap_or_else(|| truncate(body)),
        Err(_) => truncate(body),
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn fmt_version(v: (u32, u32)) -> String {
    format!("{}.{}", v.0, v.1)
}

/// What lookup returned.
#[derive(Debug, Clone)]
pub struct LookupResult {
    /// `node` as Ironic sent it (secrets masked).
    pub node: Value,
    /// `config` as Ironic sent it.
    pub config: Value,
}

impl LookupResult {
    /// The node's UUID.
    pub fn uuid(&self) -> Option<&str> {
        self.node.get("uuid").and_then(Value::as_str)
    }

    /// The agent token, if Ironic sent it in clear (it does once per boot).
    pub fn clear_token(&self) -> Option<&str> {
        self.config
            .get("agent_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && !t.chars().all(|c| c == '*'))
    }

    /// `heartbeat_timeout` from config (Ironic's default: 300 s).
    pub fn heartbeat_timeout(&self) -> Duration {
        let secs = self
            .config
            .get("heartbeat_timeout")
            .and_then(Value::as_f64)
            .filter(|s| *s > 0.0 && *s < 86400.0)
            .unwrap_or(300.0);
        Duration::from_secs_f64(secs)
    }
}

/// A client bound to one Ironic endpoint.
#[derive(Clone)]
pub struct IronicClient {
    http: reqwest::Client,
    base: String,
    max_version: (u32, u32),
    request_id: Option<String>,
}

impl IronicClient {
    /// Build the HTTP client used for every Ironic call, on the same TLS trust decisions as
    /// image downloads (ipa-insecure, system CA bundle).
    pub fn http_client(config: &Config) -> Result<reqwest::Client, String> {
        let opts = ferric_imagewriter::download::HttpOptions {
            insecure: config.insecure,
            ..Default::default()
        };
        let tls = ferric_imagewriter::download::tls_config(&opts).map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.http_request_timeout)
            .user_agent(concat!("ferric-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| error_chain(&e))
    }

    /// Discover the API version of the first URL that answers, trying them in order
    /// (ipa-api-url may list several). Returns the client for that URL.
    pub async fn discover(
        config: &Config,
        http: reqwest::Client,
    ) -> Result<IronicClient, IronicError> {
        let mut last = None;
        for base in &config.api_urls {
            match Self::discover_one(config, http.clone(), base).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    log::warn!("Ironic API {base} did not answer version discovery: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| IronicError::Protocol {
            url: String::new(),
            reason: "no Ironic API URL configured".into(),
        }))
    }

    async fn discover_one(
        config: &Config,
        http: reqwest::Client,
        base: &str,
    ) -> Result<IronicClient, IronicError> {
        let url = format!("{base}/");
        let pinned = config.ironic_api_version.as_deref().and_then(parse_version);
        let mut req = http.get(&url).header("Accept", "application/json");
        if let Some(id) = &config.global_request_id {
            req = req.header("X-OpenStack-Request-ID", id);
        }
        let resp = req.send().await.map_err(|e| IronicError::Connection {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let header_max = resp
            .headers()
            .get("X-OpenStack-Ironic-API-Maximum-Version")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_version);
        let body = bounded_text(resp).await.unwrap_or_default();
        if !status.is_success() {
            return Err(IronicError::Status {
                url,
                status: status.as_u16(),
                message: fault_message(&body),
            });
        }
        let doc_max = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
            v.pointer("/default_version/version")
                .and_then(Value::as_str)
                .and_then(parse_version)
        });
        let max = pinned
            .or(doc_max)
            .or(header_max)
            .ok_or_else(|| IronicError::Protocol {
                url: url.clone(),
                reason: "no API version in the version document".into(),
            })?;
        if max < MIN_VERSION {
            return Err(IronicError::TooOld {
                url,
                version: fmt_version(max),
            });
        }
        log::info!("Ironic API {base} speaks up to {}", fmt_version(max));
        Ok(IronicClient {
            http,
            base: base.to_string(),
            max_version: max,
            request_id: config.global_request_id.clone(),
        })
    }

    /// The base URL in use.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// True when Ironic accepts `agent_verify_ca` in heartbeats (API 1.68), which is what
    /// IPA's automatic TLS needs.
    pub fn supports_auto_tls(&self) -> bool {
        self.max_version >= HEARTBEAT_VERSION
    }

    fn version_for(&self, want: (u32, u32)) -> String {
        fmt_version(want.min(self.max_version))
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        version: (u32, u32),
    ) -> reqwest::RequestBuilder {
        let with_body = method == reqwest::Method::POST;
        let mut r = self
            .http
            .request(method, url)
            .header("Accept", "application/json")
            .header("X-OpenStack-Ironic-API-Version", self.version_for(version));
        if with_body {
            r = r.header("Content-Type", "application/json");
        }
        if let Some(id) = &self.request_id {
            r = r.header("X-OpenStack-Request-ID", id);
        }
        r
    }

    /// One lookup attempt.
    pub async fn lookup(
        &self,
        macs: &[String],
        node_uuid: Option<&str>,
    ) -> Result<LookupResult, IronicError> {
        let mut url = format!(
            "{}/v1/lookup?addresses={}",
            self.base,
            urlencode(&macs.join(","))
        );
        if let Some(u) = node_uuid {
            url.push_str("&node_uuid=");
            url.push_str(&urlencode(u));
        }
        let resp = self
            .request(reqwest::Method::GET, &url, LOOKUP_VERSION)
            .send()
            .await
            .map_err(|e| IronicError::Connection {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        let body = bounded_text(resp)
            .await
            .map_err(|reason| IronicError::Connection {
                url: url.clone(),
                reason,
            })?;
        if status != StatusCode::OK {
            return Err(IronicError::Status {
                url,
                status: status.as_u16(),
                message: fault_message(&body),
            });
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| IronicError::Protocol {
            url: url.clone(),
            reason: format!("lookup body is not JSON: {e}"),
        })?;
        let node = v.get("node").cloned().filter(Value::is_object);
        let config = v.get("config").cloned().filter(Value::is_object);
        match (node, config) {
            (Some(node), Some(config)) if node.get("uuid").and_then(Value::as_str).is_some() => {
                Ok(LookupResult { node, config })
            }
            _ => Err(IronicError::Protocol {
                url,
                reason: "lookup answer lacks node.uuid or config".into(),
            }),
        }
    }

    /// One heartbeat.
    pub async fn heartbeat(
        &self,
        node_uuid: &str,
        callback_url: &str,
        token: Option<&str>,
        verify_ca: Option<&str>,
    ) -> Result<(), IronicError> {
        let url = format!("{}/v1/heartbeat/{}", self.base, urlencode(node_uuid));
        let mut body = serde_json::json!({
            "callback_url": callback_url,
            "agent_version": crate::AGENT_VERSION,
        });
        if let Some(t) = token {
            body["agent_token"] = Value::String(t.to_string());
        }
        if let Some(ca) = verify_ca {
            if self.max_version >= HEARTBEAT_VERSION {
                body["agent_verify_ca"] = Value::String(ca.to_string());
            }
        }
        let resp = self
            .request(reqwest::Method::POST, &url, HEARTBEAT_VERSION)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| IronicError::Connection {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = bounded_text(resp).await.unwrap_or_default();
        Err(IronicError::Status {
            url,
            status: status.as_u16(),
            message: fault_message(&text),
        })
    }
}

/// The most of an Ironic response body read. A lookup answer (node with its properties and
/// instance_info) is kilobytes; a proxy or a broken server must not make the agent buffer more.
const MAX_RESPONSE: usize = 8 << 20;

/// The body as text, at most [`MAX_RESPONSE`] bytes (the client's timeout bounds the time).
pub(crate) async fn bounded_text(mut resp: reqwest::Response) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if buf.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!("response body exceeds {MAX_RESPONSE} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Percent-encode a query value (MACs and UUIDs only contain a few reserved characters).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Discover the API, retrying with backoff until `config.lookup_timeout` (the agent needs
/// the API version before it serves: it decides whether to serve TLS).
pub async fn discover_with_retries(
    config: &Config,
    http: &reqwest::Client,
) -> Result<IronicClient, IronicError> {
    let deadline = Instant::now() + config.lookup_timeout;
    let mut attempt = 0u32;
    loop {
        match IronicClient::discover(config, http.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let pause = backoff(config.lookup_interval, attempt);
                attempt += 1;
                if Instant::now() + pause > deadline {
                    return Err(e);
                }
                log::warn!(
                    "Ironic API not reachable ({e}); retrying in {:.1}s",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The pauses after a 409 from lookup (the conductor holds the node's lock): 5, 10, then
/// 30 s (PROTOCOL.md §1).
fn conflict_pause(n: u32) -> Duration {
    Duration::from_secs(match n {
        0 => 5,
        1 => 10,
        _ => 30,
    })
}

/// Jittered exponential backoff: the n-th retry waits `base × 2ⁿ` capped at 30 s, scaled by
/// U(0.5, 1.0) so that a rack of agents that booted together does not retry in lockstep.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi(n.min(16) as i32);
    let capped = exp.clamp(0.05, 30.0);
    Duration::from_secs_f64(capped * rand::thread_rng().gen_range(0.5..=1.0))
}

/// Look up until Ironic answers with our node, or `config.lookup_timeout` passes.
/// Discovers the API first (again on every failure, so that a second URL can take over).
pub async fn lookup_with_retries(
    config: &Config,
    http: &reqwest::Client,
    initial: Option<IronicClient>,
    macs: &[String],
    node_uuid: Option<&str>,
    known_token: Option<&str>,
) -> Result<(IronicClient, LookupResult), IronicError> {
    let deadline = Instant::now() + config.lookup_timeout;
    let mut attempt = 0u32;
    let mut conflicts = 0u32;
    let mut client: Option<IronicClient> = initial;
    loop {
        let err = match &client {
            None => match IronicClient::discover(config, http.clone()).await {
                Ok(c) => {
                    client = Some(c);
                    continue;
                }
                Err(e) => e,
            },
            Some(c) => match c.lookup(macs, node_uuid).await {
                Ok(found) => {
                    if found.clear_token().is_some() || known_token.is_some() {
                        return Ok((c.clone(), found));
                    }
                    if found
                        .config
                        .get("agent_token_required")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                    {
                        // Ironic already handed this boot's token to someone (a previous
                        // agent process); it wipes it on the next power action. Keep trying:
                        // the alternative is an agent that can never be commanded.
                        IronicError::Protocol {
                            url: c.base().to_string(),
                            reason: "lookup returned a masked agent token and none is known; \
                                     waiting for the conductor to reset it"
                                .into(),
                        }
                    } else {
                        return Ok((c.clone(), found));
                    }
                }
                Err(e) => {
                    if e.status().is_none() {
                        client = None; // connection-level: rediscover, maybe another URL
                    }
                    e
                }
            },
        };
        let pause = if err.status() == Some(409) {
            conflicts += 1;
            conflict_pause(conflicts - 1)
        } else {
            attempt += 1;
            backoff(config.lookup_interval, attempt - 1)
        };
        let now = Instant::now();
        if now + pause > deadline {
            log::error!("lookup gave up after {:?}: {err}", config.lookup_timeout);
            return Err(err);
        }
        log::warn!(
            "lookup failed ({err}); retrying in {:.1}s",
            pause.as_secs_f64()
        );
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_message_digs_out_faultstring() {
        let body = r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Invalid or missing agent token received.\", \"debuginfo\": null}"}"#;
        assert_eq!(
            fault_message(body),
            "Invalid or missing agent token received."
        );
        assert_eq!(fault_message("<html>oops</html>"), "<html>oops</html>");
        assert_eq!(fault_message(r#"{"error_message": "plain"}"#), "plain");
    }

    #[test]
    fn invalid_token_is_recognised() {
        let e = IronicError::Status {
            url: "u".into(),
            status: 400,
            message: "Invalid or missing agent token received.".into(),
        };
        assert!(e.is_invalid_token());
        let e = IronicError::Status {
            url: "u".into(),
            status: 400,
            message: "Node is locked".into(),
        };
        assert!(!e.is_invalid_token());
    }

    #[test]
    fn versions_are_capped_by_the_server() {
        let c = IronicClient {
            http: reqwest::Client::new(),
            base: "http://x".into(),
            max_version: (1, 46),
            request_id: None,
        };
        assert_eq!(c.version_for(LOOKUP_VERSION), "1.46");
        let c = IronicClient {
            max_version: (1, 115),
            ..c
        };
        assert_eq!(c.version_for(LOOKUP_VERSION), "1.62");
        assert_eq!(c.version_for(HEARTBEAT_VERSION), "1.68");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Duration::from_secs(1);
        for n in 0..20 {
            let d = backoff(b, n).as_secs_f64();
            let nominal = (2f64.powi(n.min(16) as i32)).min(30.0);
            assert!(
                d >= nominal * 0.5 - 1e-9 && d <= nominal + 1e-9,
                "n={n} d={d}"
            );
        }
        assert_eq!(conflict_pause(0), Duration::from_secs(5));
        assert_eq!(conflict_pause(1), Duration::from_secs(10));
        assert_eq!(conflict_pause(7), Duration::from_secs(30));
    }

    #[test]
    fn urlencode_macs() {
        assert_eq!(
            urlencode("52:54:00:12:34:56,aa:bb"),
            "52%3A54%3A00%3A12%3A34%3A56%2Caa%3Abb"
        );
    }

    #[test]
    fn lookup_result_token_handling() {
        let r = LookupResult {
            node: serde_json::json!({"uuid": "u"}),
            config: serde_json::json!({"agent_token": "******", "heartbeat_timeout": 20}),
        };
        assert_eq!(r.clear_token(), None);
        assert_eq!(r.heartbeat_timeout(), Duration::from_secs(20));
        let r = LookupResult {
            config: serde_json::json!({"agent_token": "abc"}),
            ..r
        };
        assert_eq!(r.clear_token(), Some("abc"));
        assert_eq!(r.heartbeat_timeout(), Duration::from_secs(300));
    }
}
