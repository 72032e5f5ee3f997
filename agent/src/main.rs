//! `ferric-agent`: parse the configuration, then serve the API and talk to Ironic.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferric_agent::agent::Agent;
use ferric_agent::config::{Cli, Command, Config, KernelParams};
use ferric_agent::{
    agent, api, commands, devices, heartbeat, inspect, ironic, logging, power, tls,
};

fn read_cmdline(cli: &Cli) -> Result<String, String> {
    let path = cli
        .cmdline_file
        .clone()
        .unwrap_or_else(|| "/proc/cmdline".into());
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmdline = match read_cmdline(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferric-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let kernel = KernelParams::parse(&cmdline);
    if let Some(Command::Inventory) = cli.command {
        return inventory(&cli, &kernel);
    }
    let config = match Config::resolve(&cli, kernel) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferric-agent: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.debug, config.log_file.as_deref());
    // Ramdisk detection always looks at the real root: a test's --sys-root fixture must
    // never be able to switch the disk guard off.
    let in_ramdisk = devices::in_ramdisk(std::path::Path::new("/"));
    log::info!(
        "ferric-agent {} starting ({})",
        ferric_agent::AGENT_VERSION,
        if in_ramdisk {
            "in the ramdisk"
        } else {
            "outside a ramdisk: only --install-device/--allow-device may be touched, power actions exit"
        }
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferric-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, in_ramdisk))
}

async fn run(config: Config, in_ramdisk: bool) -> ExitCode {
    let listener = match api::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let static_tls = match &config.tls_files {
        Some((cert, key)) => match tls::ServerTls::from_files(cert, key) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                log::error!("cannot use the TLS certificate: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let agent = Arc::new(Agent::new(config, in_ramdisk));
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let start_serving = |tls: Option<Arc<tls::ServerTls>>| {
        log::info!(
            "ferric-agent listening on {local} ({})",
            if tls.is_some() { "https" } else { "http" }
        );
        if let Some(t) = &tls {
            let _ = agent.server_tls.set(t.clone());
        }
        tokio::spawn(api::serve_with(agent.clone(), listener, tls));
    };
    if agent.config.standalone {
        start_serving(static_tls);
        log::info!("standalone: no lookup, no heartbeat");
        return after_handover(&agent, agent.handed_over().await).await;
    }
    let http = match ironic::IronicClient::http_client(&agent.config) {
        Ok(h) => h,
        Err(e) => {
            log::error!("cannot build the HTTP client for Ironic: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut node_uuid = None;
    if let Some(url) = agent.config.inspection_callback_url.clone() {
        let config = agent.config.clone();
        let data = tokio::task::spawn_blocking(move || {
            inspect::collect(&config, commands::collect_logs_base64)
        })
        .await
        .unwrap_or_default();
        log::info!("posting inspection data to {url}");
        match inspect::post(&http, &url, &data).await {
            Ok(Some(answer)) => {
                log::info!("inspection accepted; node {:?}", answer.node_uuid);
                if let Some(t) = &answer.agent_token {
                    agent.set_token(t);
                }
                node_uuid = answer.node_uuid;
            }
            Ok(None) => {}
            Err(e) => log::error!("{e}"),
        }
    }
    if agent.config.api_urls.is_empty() {
        start_serving(static_tls);
        log::info!("no ipa-api-url: inspection only, no lookup");
        return after_handover(&agent, agent.handed_over().await).await;
    }

    // Like IPA, learn Ironic's API version before serving: it decides auto TLS.
    let client = match ironic::discover_with_retries(&agent.config, &http).await {
        Ok(c) => c,
        Err(e) => {
            log::error!("giving up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = heartbeat::advertise_host(&agent.config, client.base()).await;
    let tls = match static_tls {
        Some(t) => Some(t),
        None if agent.config.auto_tls && client.supports_auto_tls() => {
            match tls::ServerTls::generate(&host) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    log::error!("automatic TLS failed, serving plain HTTP: {e}");
                    None
                }
            }
        }
        None => {
            log::info!("automatic TLS off (ipa-enable-auto-tls, or Ironic older than API 1.68)");
            None
        }
    };
    let protocol = if tls.is_some() {
        "https"
    } else {
        agent.config.advertise_protocol.as_str()
    };
    let callback = heartbeat::format_callback(protocol, &host, agent.config.advertise_port);
    let verify_ca = tls.as_ref().and_then(|t| t.verify_ca.clone());
    start_serving(tls);

    let macs =
        ferric_hardware::net::lookup_macs(&agent.config.sys_root, agent.config.bootif.as_deref());
    if macs.is_empty() {
        log::error!("no network interface with a MAC address to look the node up with");
    }
    let heartbeats = heartbeat::run(
        agent.clone(),
        http,
        client,
        macs,
        node_uuid,
        callback,
        verify_ca,
    );
    tokio::select! {
        r = heartbeats => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("giving up: {e}");
                ExitCode::FAILURE
            }
        },
        // Heartbeats stop with the API (IPA: the heartbeater stops once serve_api is off).
        h = agent.handed_over() => after_handover(&agent, h).await,
    }
}

/// What follows the end of the API (IPA `agent.run` after `serve_ipa_api` returns).
async fn after_handover(agent: &Agent, why: agent::Handover) -> ExitCode {
    // Let the connections answer their last request (the handover command's own result).
    tokio::time::sleep(Duration::from_secs(1)).await;
    match why {
        agent::Handover::Rescue => {
            log::info!("rescue: the agent ends; the rescue user takes over");
            ExitCode::SUCCESS
        }
        agent::Handover::Lockdown => {
            if agent.in_ramdisk {
                power::lock_down_network(&agent.config.sys_root);
            } else {
                log::info!("lockdown outside the ramdisk: this machine's network is left alone");
            }
            log::info!("system locked down; idling until the machine is powered off");
            std::future::pending::<ExitCode>().await
        }
    }
}

/// `ferric-agent inventory`: the inventory as JSON, pretty on a terminal.
fn inventory(cli: &Cli, kernel: &KernelParams) -> ExitCode {
    use std::io::IsTerminal;
    let inv = ferric_hardware::inventory(
        &cli.sys_root.clone().unwrap_or_else(|| "/".into()),
        &ferric_hardware::InventoryOptions {
            bootif: kernel.get("BOOTIF").map(str::to_string),
            ..Default::default()
        },
    );
    let out = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(&inv)
    } else {
        serde_json::to_string(&inv)
    };
    match out {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferric-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
