//! The agent's life with Ironic: look up, then heartbeat with IPA's timing (PROTOCOL.md §1).
//!
//! # Design
//! One tokio task runs [`run`]. It sleeps until the next regular heartbeat
//! (`heartbeat_timeout × U(0.3, 0.6)`) or until [`Agent::force_heartbeat`] is notified by
//! a finished async command, whichever comes first; forced heartbeats are spaced at least
//! 5 s apart. Those forced heartbeats are what moves a deploy forward: the conductor only
//! looks at the agent when it heartbeats. When Ironic refuses a heartbeat because it wiped
//! the token (the node was power-cycled out of band), the task looks up again and carries
//! on with the new token (IPA just keeps failing).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::{sleep_until, Instant};

use crate::agent::Agent;
use crate::config::Config;
use crate::ironic::{lookup_with_retries, IronicClient, IronicError, LookupResult};

/// Forced heartbeats come at most this often.
const MIN_FORCED_INTERVAL: Duration = Duration::from_secs(5);

fn apply_lookup(agent: &Agent, found: &LookupResult) {
    if let (Some(tls), Some(v)) = (
        agent.server_tls.get(),
        found.config.get("tls_min_version").and_then(|v| v.as_str()),
    ) {
        tls.set_min_version(v);
    }
    agent.set_node(found.node.clone());
    agent.set_lookup_config(found.config.clone());
    if let Some(t) = found.clear_token() {
        agent.set_token(t);
    }
}

/// `http(s)://host:port` for the callback URL, brackets around an IPv6 host.
pub fn format_callback(protocol: &str, host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("{protocol}://[{host}]:{port}")
    } else {
        format!("{protocol}://{host}:{port}")
    }
}

/// The address this machine uses to reach `api_base` (the source address of the route).
async fn route_source(api_base: &str) -> Option<IpAddr> {
    let rest = api_base
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(api_base);
    let hostport = rest.split('/').next()?;
    let with_port = if hostport.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':')
            && p.chars().all(|c| c.is_ascii_digit())
            && (h.starts_with('[') || !h.contains(':'))
    }) {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    };
    let target: SocketAddr = tokio::net::lookup_host(with_port).await.ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.connect(target).await.ok()?;
    Some(sock.local_addr().ok()?.ip())
}

/// The host the conductor reaches the agent at: ipa-advertise-host, else the source
/// address of the route towards Ironic.
pub async fn advertise_host(config: &Config, api_base: &str) -> String {
    match &config.advertise_host {
        Some(h) => h.clone(),
        None => match route_source(api_base).await {
            Some(ip) => ip.to_string(),
            None => {
                log::warn!(
                    "cannot tell the address Ironic reaches us at; advertising {}",
                    config.listen.ip()
                );
                config.listen.ip().to_string()
            }
        },
    }
}

fn regular_interval(timeout: Duration) -> Duration {
    timeout.mul_f64(rand::thread_rng().gen_range(0.3..=0.6))
}

fn error_interval() -> Duration {
    Duration::from_secs_f64(rand::thread_rng().gen_range(5.0..=10.0))
}

/// Look up, then heartbeat forever. Returns only when lookup gives up. `node_uuid` comes
/// from inspection, when it ran first; `verify_ca` is the generated certificate when the API
/// serves auto TLS.
pub async fn run(
    agent: Arc<Agent>,
    http: reqwest::Client,
    client: IronicClient,
    macs: Vec<String>,
    node_uuid: Option<String>,
    callback: String,
    verify_ca: Option<String>,
) -> Result<(), IronicError> {
    log::info!("looking up the node by MAC addresses {}", macs.join(", "));
    let (mut client, found) = lookup_with_retries(
        &agent.config,
        &http,
        Some(client),
        &macs,
        node_uuid.as_deref(),
        agent.token().as_deref(),
    )
    .await?;
    apply_lookup(&agent, &found);
    let mut node_uuid = found.uuid().unwrap_or_default().to_string();
    let mut timeout = found.heartbeat_timeout();
    log::info!(
        "found node {node_uuid}; heartbeat_timeout {}s",
        timeout.as_secs()
    );
    log::info!("callback URL {callback}");

    let mut next = Instant::now();
    let mut last_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = agent.force_heartbeat.notified() => {
                if let Some(l) = last_sent {
                    sleep_until(l + MIN_FORCED_INTERVAL).await;
                }
                log::debug!("heartbeat forced by a finished command");
            }
        }
        last_sent = Some(Instant::now());
        let token = agent.token();
        match client
            .heartbeat(
                &node_uuid,
                &callback,
                token.as_deref(),
                verify_ca.as_deref(),
            )
            .await
        {
            Ok(()) => {
                log::debug!("heartbeat accepted");
                next = Instant::now() + regular_interval(timeout);
            }
            Err(e) if e.is_invalid_token() => {
                log::warn!(
                    "heartbeat refused ({e}); the conductor dropped our token: looking up again"
                );
                match lookup_with_retries(
                    &agent.config,
                    &http,
                    Some(client.clone()),
                    &macs,
                    Some(node_uuid.as_str()),
                    None,
                )
                .await
                {
                    Ok((c, found)) => {
                        if found.clear_token().is_none() {
                            log::error!("lookup after token loss returned no clear token");
                        }
                        apply_lookup(&agent, &found);
                        client = c;
                        node_uuid = found.uuid().unwrap_or(&node_uuid).to_string();
                        timeout = found.heartbeat_timeout();
                        next = Instant::now();
                    }
                    Err(e) => {
                        log::error!("lookup after token loss failed: {e}");
                        next = Instant::now() + error_interval();
                    }
                }
            }
            Err(e) => {
                log::warn!("heartbeat failed: {e}");
                next = Instant::now() + error_interval();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_formats() {
        assert_eq!(
            format_callback("http", "10.0.0.5", 9999),
            "http://10.0.0.5:9999"
        );
        assert_eq!(
            format_callback("https", "fd00::5", 9999),
            "https://[fd00::5]:9999"
        );
        assert_eq!(
            format_callback("http", "[fd00::5]", 1),
            "http://[fd00::5]:1"
        );
    }

    #[test]
    fn intervals_follow_ipa() {
        for _ in 0..100 {
            let d = regular_interval(Duration::from_secs(100)).as_secs_f64();
            assert!((30.0..=60.0).contains(&d), "{d}");
            let e = error_interval().as_secs_f64();
            assert!((5.0..=10.0).contains(&e), "{e}");
        }
    }

    #[tokio::test]
    async fn route_source_for_loopback_is_loopback() {
        assert_eq!(
            route_source("http://127.0.0.1:6385").await,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            route_source("http://127.0.0.1").await,
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
