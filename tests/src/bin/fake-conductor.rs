//! `fake-conductor`: serves the fake Ironic API and an image server, drives one deploy of
//! `--image` (with a config drive) onto whatever agent looks up with `--mac`, prints phases and
//! timings, and exits 0 when the node reaches `active` (1 on `deploy failed` or timeout).
//! Used by the demos (`scripts/demo.sh` boots the ramdisk in QEMU, `scripts/demo-loop.sh`
//! runs the agent on this host).
//!
//! Every time printed is in seconds since the fake Ironic started; the first line gives that
//! instant as a Unix time (`time base unix=…`) so a script can relate it to other events
//! (e.g. a VM's power-on). The last line on success is machine-readable:
//! `fake-conductor: timings first_lookup=S first_heartbeat=S started=S write_image_sent=S
//! write_image_done=S power_off_sent=S active=S` (`-` for an event that did not happen).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ferric_tests::conductor::{Conductor, DeployPlan, Plan};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, RECORDED_MAC};
use ferric_tests::fixtures::{configdrive_b64, sha256_hex};
use ferric_tests::image_server::ImageServer;
use std::io::Write as _;

const USAGE: &str = "\
usage: fake-conductor [options]
  --listen HOST:PORT        fake Ironic API address (default 127.0.0.1:6385)
  --image-listen HOST:PORT  image server address (default 127.0.0.1:8089)
  --image FILE              whole-disk raw image to deploy (required)
  --image-name NAME         name served by the image server (default: disk.raw)
  --image-url-host HOST     host put in the image URL given to the agent (default: the
                            image server's listen address). With QEMU user networking the
                            guest reaches the host's 127.0.0.1 as 10.0.2.2.
  --configdrive FILE|none   base64 gzip ISO text, a gzip ISO, or a raw ISO
                            (default: the config drive from recording 01)
  --mac MAC                 a port MAC of the node (repeatable; default 52:54:00:12:34:56)
  --node-uuid UUID          node UUID (default: the recordings')
  --heartbeat-timeout SECS  lookup config.heartbeat_timeout (default 20)
  --boot-mode uefi|bios     (default uefi: install_bootloader is sent)
  --timeout SECS            give up after this long (default 1800)
  --root-device JSON        node.properties.root_device hints, e.g. '{\"name\": \"/dev/vda\"}'
";

struct Args {
    listen: SocketAddr,
    image_listen: SocketAddr,
    image: PathBuf,
    image_name: String,
    image_url_host: Option<String>,
    configdrive: Option<String>,
    macs: Vec<String>,
    node_uuid: Option<String>,
    heartbeat_timeout: u64,
    boot_mode: String,
    timeout: Duration,
    root_device: Option<serde_json::Value>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        listen: "127.0.0.1:6385".parse().expect("literal"),
        image_listen: "127.0.0.1:8089".parse().expect("literal"),
        image: PathBuf::new(),
        image_name: "disk.raw".into(),
        image_url_host: None,
        configdrive: Some(configdrive_b64().to_string()),
        macs: Vec::new(),
        node_uuid: None,
        heartbeat_timeout: 20,
        boot_mode: "uefi".into(),
        timeout: Duration::from_secs(1800),
        root_device: None,
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = val()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--image-listen" => {
                a.image_listen = val()?.parse().map_err(|e| format!("--image-listen: {e}"))?
            }
            "--image" => a.image = PathBuf::from(val()?),
            "--image-name" => a.image_name = val()?,
            "--image-url-host" => a.image_url_host = Some(val()?),
            "--configdrive" => {
                let v = val()?;
                a.configdrive = if v == "none" {
                    None
                } else {
                    Some(load_configdrive(&v)?)
                };
            }
            "--mac" => a.macs.push(val()?.to_ascii_lowercase()),
            "--node-uuid" => a.node_uuid = Some(val()?),
            "--heartbeat-timeout" => {
                a.heartbeat_timeout = val()?
                    .parse()
                    .map_err(|e| format!("--heartbeat-timeout: {e}"))?
            }
            "--boot-mode" => a.boot_mode = val()?,
            "--timeout" => {
                a.timeout =
                    Duration::from_secs(val()?.parse().map_err(|e| format!("--timeout: {e}"))?)
            }
            "--root-device" => {
                a.root_device =
                    Some(serde_json::from_str(&val()?).map_err(|e| format!("--root-device: {e}"))?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.image.as_os_str().is_empty() {
        return Err("--image is required".into());
    }
    if a.macs.is_empty() {
        a.macs.push(RECORDED_MAC.into());
    }
    Ok(a)
}

/// Accepts base64 text (as Ironic sends), a gzip file, or a raw ISO; returns base64 of gzip.
fn load_configdrive(path: &str) -> Result<String, String> {
    let data = std::fs::read(path).map_err(|e| format!("--configdrive {path}: {e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    if data.starts_with(&[0x1f, 0x8b]) {
        return Ok(b64.encode(&data));
    }
    if data.len() > 0x8006 && &data[0x8001..0x8006] == b"CD001" {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).map_err(|e| e.to_string())?;
        return Ok(b64.encode(gz.finish().map_err(|e| e.to_string())?));
    }
    let text = String::from_utf8(data).map_err(|_| format!("{path}: not base64, gzip or ISO"))?;
    let text: String = text.split_whitespace().collect();
    b64.decode(&text)
        .map_err(|e| format!("{path}: not valid base64: {e}"))?;
    Ok(text)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-conductor: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let image = match std::fs::read(&args.image) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fake-conductor: cannot read {}: {e}", args.image.display());
            return ExitCode::from(2);
        }
    };
    let sha = sha256_hex(&image);
    let images = match ImageServer::start_on(args.image_listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-conductor: image server on {}: {e}", args.image_listen);
            return ExitCode::from(2);
        }
    };
    images.add(&args.image_name, image.clone());
    let mut cfg = FakeIronicConfig {
        listen: args.listen,
        macs: args.macs.clone(),
        heartbeat_timeout: args.heartbeat_timeout,
        ..Default::default()
    };
    if let Some(u) = &args.node_uuid {
        cfg.node_uuid = u.clone();
    }
    if let Some(rd) = &args.root_device {
        cfg.properties["root_device"] = rd.clone();
    }
    let ironic = match FakeIronic::start(cfg) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("fake-conductor: Ironic API on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let image_url = match &args.image_url_host {
        Some(host) => format!(
            "http://{}/{}",
            SocketAddrText(host, images.addr().port()),
            args.image_name
        ),
        None => images.url(&args.image_name),
    };
    let mut plan = DeployPlan::whole_disk_raw(&image_url, &sha, args.configdrive.clone());
    plan.boot_mode = args.boot_mode.clone();
    let base_unix = SystemTime::now()
        .checked_sub(ironic.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    println!(
        "fake-conductor: time base unix={:.3} ; Ironic API {} ; image {image_url} ({} bytes, \
         sha256 {sha}) served on {} ; node {} ; macs {}",
        base_unix.as_secs_f64(),
        ironic.url(),
        image.len(),
        images.addr(),
        ironic.node().uuid,
        args.macs.join(",")
    );
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan));
    let start = Instant::now();
    let mut last = (String::new(), String::new());
    let mut seen_cmds = 0;
    let (mut lookup_shown, mut heartbeat_shown) = (false, false);
    loop {
        let st = conductor.status();
        if let (false, Some(t)) = (lookup_shown, st.timings.first_lookup) {
            println!("[{:7.2}s] first lookup from the agent", t.as_secs_f64());
            lookup_shown = true;
        }
        if let (false, Some(t)) = (heartbeat_shown, st.timings.first_heartbeat) {
            println!("[{:7.2}s] first heartbeat from the agent", t.as_secs_f64());
            heartbeat_shown = true;
        }
        let now = (st.provision_state.clone(), st.phase.clone());
        if now != last {
            println!(
                "[{:7.2}s] provision_state={} phase={}",
                ironic.elapsed().as_secs_f64(),
                now.0,
                now.1
            );
            last = now;
        }
        for c in st.commands.iter().skip(seen_cmds) {
            println!(
                "[{:7.2}s]   {} {} -> {}",
                c.at.as_secs_f64(),
                c.method,
                c.name,
                c.http_status
                    .map(|s| s.to_string())
                    .or_else(|| c.error.clone())
                    .unwrap_or_default()
            );
        }
        seen_cmds = st.commands.len();
        match st.provision_state.as_str() {
            "active" => {
                let t = &st.timings;
                let s = |d: Option<Duration>| {
                    d.map(|d| format!("{:.2}", d.as_secs_f64()))
                        .unwrap_or_else(|| "-".into())
                };
                let power_off = st.sent("standby.power_off").first().map(|c| c.at);
                println!(
                    "fake-conductor: timings first_lookup={} first_heartbeat={} started={} \
                     write_image_sent={} write_image_done={} power_off_sent={} active={}",
                    s(t.first_lookup),
                    s(t.first_heartbeat),
                    s(t.started),
                    s(t.main_step_sent),
                    s(t.main_step_done),
                    s(power_off),
                    s(t.done)
                );
                return ExitCode::SUCCESS;
            }
            "deploy failed" => {
                eprintln!(
                    "fake-conductor: deploy failed: {}\n{}",
                    st.last_error.clone().unwrap_or_default(),
                    st.describe()
                );
                return ExitCode::from(1);
            }
            _ => {}
        }
        if start.elapsed() > args.timeout {
            eprintln!(
                "fake-conductor: timeout after {:?}\n{}\n{}",
                args.timeout,
                st.describe(),
                ironic.dump_requests()
            );
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `host:port`, bracketing an IPv6 literal.
struct SocketAddrText<'a>(&'a str, u16);

impl std::fmt::Display for SocketAddrText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.contains(':') && !self.0.starts_with('[') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}
