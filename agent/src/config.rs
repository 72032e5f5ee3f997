//! Configuration in two stages (STYLE.md pattern 13): first collect the raw `ipa-*` kernel
//! parameters and the command-line flags without any I/O beyond reading the command line
//! file, then resolve both into one validated [`Config`]. Flags override kernel parameters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// What the agent does once a `power_off` / `run_image` command has synced the disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PowerAction {
    /// Power the machine off (reboot(2) with RB_POWER_OFF, sysrq `o` as fallback).
    Poweroff,
    /// Reboot the machine (reboot(2) with RB_AUTOBOOT, sysrq `b` as fallback).
    Reboot,
    /// End the agent's own process: the default outside a ramdisk, so that no test ever
    /// powers off the machine it runs on.
    Exit,
}

/// Command-line interface. Every flag names the kernel parameter it overrides.
#[derive(Debug, Parser, Default)]
#[command(
    name = "ferric-agent",
    version,
    about = "Ferric: an Ironic Python Agent replacement"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Read kernel parameters from FILE instead of /proc/cmdline.
    #[arg(long, value_name = "FILE", global = true)]
    pub cmdline_file: Option<PathBuf>,

    /// Ironic API URL(s), comma separated, tried in order [kernel: ipa-api-url].
    #[arg(long, value_name = "URL[,URL…]")]
    pub api_url: Option<String>,

    /// Address the agent API listens on [kernel: ipa-listen-host, ipa-listen-port].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Address sent to Ironic in the callback URL [kernel: ipa-advertise-host, ipa-advertise-port].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Do not look up or heartbeat; only serve the API (needs --agent-token) [kernel: ipa-standalone].
    #[arg(long)]
    pub standalone: bool,

    /// The agent token the conductor must present [kernel: ipa-agent-token].
    #[arg(long, value_name = "TOKEN")]
    pub agent_token: Option<String>,

    /// Write images to PATH instead of choosing a disk by root device hints (no kernel parameter).
    #[arg(long, value_name = "PATH")]
    pub install_device: Option<PathBuf>,

    /// Allow writing/wiping PATH outside a ramdisk (repeatable; no kernel parameter).
    #[arg(long, value_name = "PATH")]
    pub allow_device: Vec<PathBuf>,

    /// What power_off/run_image do after syncing; default: poweroff/reboot in the ramdisk,
    /// exit elsewhere (no kernel parameter).
    #[arg(long, value_enum)]
    pub power_action: Option<PowerAction>,

    /// Serve the API over HTTPS with this PEM certificate chain (with --tls-key; no kernel
    /// parameter). Without it the agent generates a certificate when Ironic supports
    /// agent_verify_ca (API 1.68) [kernel: ipa-enable-auto-tls, default on].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key for --tls-cert (no kernel parameter).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Also append the log to PATH (no kernel parameter).
    #[arg(long, value_name = "PATH", global = true)]
    pub log_file: Option<PathBuf>,

    /// Read sysfs/procfs below DIR instead of / (tests) (no kernel parameter).
    #[arg(long, value_name = "DIR", global = true, hide = true)]
    pub sys_root: Option<PathBuf>,

    /// Write rescue.finalize_rescue's files under DIR instead of / (tests; outside the
    /// ramdisk finalize_rescue is refused without it).
    #[arg(long, value_name = "DIR", hide = true)]
    pub rescue_root: Option<PathBuf>,

    /// Manage UEFI boot entries in DIR as if booted in UEFI mode (tests; in the ramdisk the
    /// agent uses /sys/firmware/efi/efivars when booted in UEFI mode, elsewhere none).
    #[arg(long, value_name = "DIR", hide = true)]
    pub efivars_dir: Option<PathBuf>,
}

/// Subcommands besides the default (run the agent).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the hardware inventory as JSON.
    Inventory,
}

/// Raw `key=value` kernel parameters (`key` alone maps to an empty string). Later
/// occurrences win, as the kernel's own parser does.
#[derive(Debug, Default, Clone)]
pub struct KernelParams(pub BTreeMap<String, String>);

impl KernelParams {
    /// Split a kernel command line. Double quotes group words (`a="b c"`), as the kernel
    /// allows; everything after a lone `--` belongs to init and is ignored.
    pub fn parse(cmdline: &str) -> KernelParams {
        let mut map = BTreeMap::new();
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_quotes = false;
        let mut any = false;
        for c in cmdline.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    any = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if any {
                        words.push(std::mem::take(&mut cur));
                        any = false;
                    }
                }
                c => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            words.push(cur);
        }
        for w in words {
            if w == "--" {
                break;
            }
            match w.split_once('=') {
                Some((k, v)) => map.insert(k.to_string(), v.to_string()),
                None => map.insert(w, String::new()),
            };
        }
        KernelParams(map)
    }

    /// The value of `key`, if present and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean parameter the way oslo.config reads one (`1`, `true`, `yes`, `on`).
    /// A bare `key` with no value counts as true.
    pub fn flag(&self, key: &str) -> bool {
        match self.0.get(key) {
            None => false,
            Some(v) if v.is_empty() => true,
            Some(v) => matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"),
        }
    }
}

/// A configuration error, reported before the agent starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be parsed.
    #[error("invalid value {value:?} for {name}: {reason}")]
    Invalid {
        /// The flag or kernel parameter.
        name: String,
        /// What was given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Something required is missing.
    #[error("{0}")]
    Missing(String),
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ironic API base URLs, without trailing slash, in the order to try them.
    pub api_urls: Vec<String>,
    /// Where the agent API listens.
    pub listen: SocketAddr,
    /// Host (and port) advertised in the callback URL; `None` → the source address of the
    /// route towards Ironic, with the listen port.
    pub advertise_host: Option<String>,
    /// Port advertised in the callback URL.
    pub advertise_port: u16,
    /// `http` or `https` in the callback URL (https whenever the API serves TLS).
    pub advertise_protocol: String,
    /// Certificate and key files for the API, when given.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// ipa-enable-auto-tls: generate a certificate when Ironic supports agent_verify_ca.
    pub auto_tls: bool,
    /// No lookup, no heartbeat.
    pub standalone: bool,
    /// ipa-inspection-callback-url: post the inventory here before lookup.
    pub inspection_callback_url: Option<String>,
    /// A token given up front (ipa-agent-token / --agent-token).
    pub agent_token: Option<String>,
    /// The install device override.
    pub install_device: Option<PathBuf>,
    /// Devices that may be written outside a ramdisk.
    pub allow_devices: Vec<PathBuf>,
    /// The power action; `None` → decided from whether we run in the ramdisk.
    pub power_action: Option<PowerAction>,
    /// BOOTIF's MAC, normalised to `aa:bb:…`.
    pub bootif: Option<String>,
    /// ipa-lookup-timeout.
    pub lookup_timeout: Duration,
    /// ipa-lookup-interval: the first retry interval of lookup.
    pub lookup_interval: Duration,
    /// ipa-global-request-id, sent as X-OpenStack-Request-ID.
    pub global_request_id: Option<String>,
    /// ipa-insecure: do not verify TLS certificates of Ironic and image servers.
    pub insecure: bool,
    /// ipa-collect-lldp (with ipa-lldp-timeout, default 30 s): listen for LLDP on every
    /// interface while building the inventory. `None`: off (IPA's default).
    pub lldp_timeout: Option<Duration>,
    /// ipa-ironic-api-version: pin the API version instead of negotiating it.
    pub ironic_api_version: Option<String>,
    /// ipa-http-request-timeout (seconds) for Ironic calls.
    pub http_request_timeout: Duration,
    /// ipa-image-download-connection-retries.
    pub image_download_retries: Option<u32>,
    /// ipa-image-download-connection-retry-interval.
    pub image_download_retry_interval: Option<Duration>,
    /// ipa-debug.
    pub debug: bool,
    /// Root under which sysfs/procfs are read.
    pub sys_root: PathBuf,
    /// `--efivars-dir`: UEFI variables to manage whatever the boot mode (tests).
    pub efivars_dir: Option<PathBuf>,
    /// `--rescue-root`: where finalize_rescue writes (tests).
    pub rescue_root: Option<PathBuf>,
    /// Optional log file.
    pub log_file: Option<PathBuf>,
    /// The raw kernel parameters (for components that read more of them later).
    pub kernel: KernelParams,
}

/// IPA's defaults (ironic_python_agent/config.py): listen on all addresses, port 9999.
const DEFAULT_PORT: u16 = 9999;

fn parse_host_port(name: &str, s: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    // Accept "host:port", "[v6]:port", "host" and bare IPv6 "::".
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok((s.to_string(), default_port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| invalid(name, s, "port is not a number from 0 to 65535"))?;
            Ok((h.trim_matches(|c| c == '[' || c == ']').to_string(), port))
        }
        _ if !s.is_empty() && !s.contains(':') => Ok((s.to_string(), default_port)),
        _ => Err(invalid(name, s, "expected HOST:PORT")),
    }
}

fn parse_port(name: &str, s: &str) -> Result<u16, ConfigError> {
    s.parse::<u16>()
        .map_err(|_| invalid(name, s, "not a port number"))
}

fn parse_secs(name: &str, s: &str) -> Result<Duration, ConfigError> {
    let v: f64 = s
        .parse()
        .map_err(|_| invalid(name, s, "not a number of seconds"))?;
    if !(0.0..=86400.0 * 7.0).contains(&v) {
        return Err(invalid(name, s, "out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Resolve flags and kernel parameters into a configuration.
    pub fn resolve(cli: &Cli, kernel: KernelParams) -> Result<Config, ConfigError> {
        let k = &kernel;
        let api_src = cli.api_url.as_deref().or(k.get("ipa-api-url"));
        let api_urls: Vec<String> = api_src
            .map(|s| {
                s.split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for u in &api_urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid(
                    "ipa-api-url",
                    u,
                    "must be an http:// or https:// URL",
                ));
            }
        }
        let standalone = cli.standalone || k.flag("ipa-standalone");
        let inspection_callback_url = k.get("ipa-inspection-callback-url").map(str::to_string);
        if !standalone && api_urls.is_empty() && inspection_callback_url.is_none() {
            return Err(ConfigError::Missing(
                "no Ironic API URL: pass --api-url or ipa-api-url=… on the kernel command line \
                 (or --standalone, or ipa-inspection-callback-url=… to only inspect)"
                    .into(),
            ));
        }

        let (listen_host, listen_port) = match &cli.listen {
            Some(l) => parse_host_port("--listen", l, DEFAULT_PORT)?,
            None => (
                k.get("ipa-listen-host").unwrap_or("::").to_string(),
                match k.get("ipa-listen-port") {
                    Some(p) => parse_port("ipa-listen-port", p)?,
                    None => DEFAULT_PORT,
                },
            ),
        };
        let listen_ip: std::net::IpAddr = listen_host
            .parse()
            .map_err(|_| invalid("listen host", &listen_host, "must be an IP address"))?;
        let listen = SocketAddr::new(listen_ip, listen_port);

        let (advertise_host, advertise_port) = match &cli.advertise {
            Some(a) => {
                let (h, p) = parse_host_port("--advertise", a, listen_port)?;
                (Some(h), p)
            }
            None => (
                k.get("ipa-advertise-host").map(str::to_string),
                match k.get("ipa-advertise-port") {
                    Some(p) => parse_port("ipa-advertise-port", p)?,
                    None => listen_port,
                },
            ),
        };
        let advertise_protocol = k
            .get("ipa-advertise-protocol")
            .unwrap_or("http")
            .to_string();
        if advertise_protocol != "http" && advertise_protocol != "https" {
            return Err(invalid(
                "ipa-advertise-protocol",
                &advertise_protocol,
                "must be http or https",
            ));
        }

        let agent_token = cli
            .agent_token
            .clone()
            .or_else(|| k.get("ipa-agent-token").map(str::to_string));
        if standalone && agent_token.is_none() {
            return Err(ConfigError::Missing(
                "--standalone needs --agent-token (or ipa-agent-token=…): the API never runs \
                 commands without a token"
                    .into(),
            ));
        }

        let bootif = match k.get("BOOTIF") {
            Some(b) => Some(
                ferric_hardware::net::bootif_mac(b)
                    .ok_or_else(|| invalid("BOOTIF", b, "expected 01-aa-bb-cc-dd-ee-ff"))?,
            ),
            None => None,
        };

        let lookup_timeout = match k.get("ipa-lookup-timeout") {
            Some(v) => parse_secs("ipa-lookup-timeout", v)?,
            None => Duration::from_secs(300),
        };
        let lookup_interval = match k.get("ipa-lookup-interval") {
            Some(v) => parse_secs("ipa-lookup-interval", v)?,
            None => Duration::from_secs(1),
        };
        let http_request_timeout = match k.get("ipa-http-request-timeout") {
            Some(v) => parse_secs("ipa-http-request-timeout", v)?,
            None => Duration::from_secs(60),
        };
        let lldp_timeout = if k.flag("ipa-collect-lldp") {
            Some(match k.get("ipa-lldp-timeout") {
                Some(v) => parse_secs("ipa-lldp-timeout", v)?,
                None => Duration::from_secs(30),
            })
        } else {
            None
        };
        let image_download_retries =
            match k.get("ipa-image-download-connection-retries") {
                Some(v) => Some(v.parse::<u32>().map_err(|_| {
                    invalid("ipa-image-download-connection-retries", v, "not a count")
                })?),
                None => None,
            };
        let image_download_retry_interval =
            match k.get("ipa-image-download-connection-retry-interval") {
                Some(v) => Some(parse_secs(
                    "ipa-image-download-connection-retry-interval",
                    v,
                )?),
                None => None,
            };

        Ok(Config {
            api_urls,
            listen,
            advertise_host,
            advertise_port,
            advertise_protocol,
            tls_files: cli.tls_cert.clone().zip(cli.tls_key.clone()),
            auto_tls: k
                .0
                .get("ipa-enable-auto-tls")
                .is_none_or(|_| k.flag("ipa-enable-auto-tls")),
            standalone,
            inspection_callback_url,
            agent_token,
            install_device: cli.install_device.clone(),
            allow_devices: cli.allow_device.clone(),
            power_action: cli.power_action,
            bootif,
            lookup_timeout,
            lookup_interval,
            global_request_id: k.get("ipa-global-request-id").map(str::to_string),
            insecure: k.flag("ipa-insecure"),
            lldp_timeout,
            ironic_api_version: k.get("ipa-ironic-api-version").map(str::to_string),
            http_request_timeout,
            image_download_retries,
            image_download_retry_interval,
            debug: k.flag("ipa-debug"),
            sys_root: cli.sys_root.clone().unwrap_or_else(|| PathBuf::from("/")),
            efivars_dir: cli.efivars_dir.clone(),
            rescue_root: cli.rescue_root.clone(),
            log_file: cli.log_file.clone(),
            kernel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["ferric-agent"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn kernel_params_split_quotes_and_stop_at_double_dash() {
        let k = KernelParams::parse(
            "BOOT_IMAGE=/vmlinuz ipa-api-url=http://10.0.0.1:6385 quiet \
             ipa-global-request-id=\"req-1 2\" ipa-debug=1 -- ipa-standalone=1",
        );
        assert_eq!(k.get("ipa-api-url"), Some("http://10.0.0.1:6385"));
        assert_eq!(k.get("ipa-global-request-id"), Some("req-1 2"));
        assert!(k.flag("quiet"));
        assert!(k.flag("ipa-debug"));
        assert!(!k.flag("ipa-standalone"), "words after -- belong to init");
    }

    #[test]
    fn flags_override_kernel_parameters() {
        let k = KernelParams::parse(
            "ipa-api-url=http://a:6385 ipa-listen-port=8888 ipa-advertise-host=10.1.1.1 \
             ipa-advertise-port=7777 BOOTIF=01-52-54-00-12-34-56 ipa-lookup-timeout=20",
        );
        let c = Config::resolve(
            &cli(&[
                "--api-url",
                "http://b:6385/,https://c:6385",
                "--advertise",
                "127.0.0.1:9",
            ]),
            k,
        )
        .unwrap();
        assert_eq!(c.api_urls, vec!["http://b:6385", "https://c:6385"]);
        assert_eq!(c.listen.port(), 8888);
        assert_eq!(c.advertise_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.advertise_port, 9);
        assert_eq!(c.bootif.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(c.lookup_timeout, Duration::from_secs(20));
    }

    #[test]
    fn kernel_only_configuration_uses_ipa_defaults() {
        let k = KernelParams::parse("ipa-api-url=http://a:6385");
        let c = Config::resolve(&cli(&[]), k).unwrap();
        assert_eq!(c.listen, "[::]:9999".parse().unwrap());
        assert_eq!(c.advertise_host, None);
        assert_eq!(c.advertise_port, 9999);
        assert_eq!(c.lookup_timeout, Duration::from_secs(300));
        assert_eq!(c.lookup_interval, Duration::from_secs(1));
        assert!(!c.insecure);
        assert_eq!(c.lldp_timeout, None);
    }

    #[test]
    fn lldp_collection_follows_ipa_parameters() {
        let lldp = |cmdline: &str| {
            Config::resolve(&cli(&[]), KernelParams::parse(cmdline)).map(|c| c.lldp_timeout)
        };
        let base = "ipa-api-url=http://a:6385";
        assert_eq!(
            lldp(&format!("{base} ipa-collect-lldp=1")).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            lldp(&format!(
                "{base} ipa-collect-lldp=True ipa-lldp-timeout=2.5"
            ))
            .unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(lldp(&format!("{base} ipa-lldp-timeout=5")).unwrap(), None);
        assert!(lldp(&format!("{base} ipa-collect-lldp=1 ipa-lldp-timeout=soon")).is_err());
    }

    #[test]
    fn missing_api_url_is_an_error_unless_standalone() {
        let e = Config::resolve(&cli(&[]), KernelParams::default()).unwrap_err();
        assert!(e.to_string().contains("ipa-api-url"), "{e}");
        let e = Config::resolve(&cli(&["--standalone"]), KernelParams::default()).unwrap_err();
        assert!(e.to_string().contains("--agent-token"), "{e}");
        let c = Config::resolve(
            &cli(&["--standalone", "--agent-token", "t"]),
            KernelParams::default(),
        )
        .unwrap();
        assert!(c.standalone);
        assert_eq!(c.agent_token.as_deref(), Some("t"));
    }

    #[test]
    fn bad_values_are_named() {
        for (line, needle) in [
            ("ipa-api-url=ftp://x", "ipa-api-url"),
            (
                "ipa-api-url=http://x ipa-listen-port=abc",
                "ipa-listen-port",
            ),
            ("ipa-api-url=http://x BOOTIF=zz", "BOOTIF"),
            (
                "ipa-api-url=http://x ipa-lookup-timeout=-1",
                "ipa-lookup-timeout",
            ),
            (
                "ipa-api-url=http://x ipa-advertise-protocol=gopher",
                "ipa-advertise-protocol",
            ),
        ] {
            let e = Config::resolve(&cli(&[]), KernelParams::parse(line)).unwrap_err();
            assert!(e.to_string().contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn listen_forms() {
        for (arg, want) in [
            ("127.0.0.1:1234", "127.0.0.1:1234"),
            ("[::1]:5", "[::1]:5"),
            ("0.0.0.0", "0.0.0.0:9999"),
        ] {
            let c = Config::resolve(
                &cli(&["--standalone", "--agent-token", "t", "--listen", arg]),
                KernelParams::default(),
            )
            .unwrap();
            assert_eq!(c.listen, want.parse().unwrap(), "{arg}");
        }
    }
}
