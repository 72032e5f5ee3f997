//! Inspection (IPA `inspector.py`): with `ipa-inspection-callback-url`, collect the
//! inventory and the configured collectors' data and POST it before lookup. Both Ironic's
//! `/v1/continue_inspection` and the older ironic-inspector's `/v1/continue` accept the same
//! body; the inspector also reads the top-level `cpus`, `cpu_arch`, `memory_mb`, `local_gb`
//! and `interfaces`, so they are sent too. A node UUID in the answer is used for lookup.
//!
//! Like IPA, the agent posts whatever it collected even when a collector failed (the
//! failures go in `error`), because inspection runs on unknown machines and the data is what
//! an operator debugs with.

use std::path::Path;
use std::time::Duration;

use ferric_hardware::{self as hw, InventoryOptions};
use serde_json::{json, Map, Value};

use crate::config::Config;
use ferric_imagewriter::download::error_chain;

/// IPA's retry policy for the callback: 5 attempts, exponential wait 5…30 s.
const ATTEMPTS: u32 = 5;

/// The collectors to run (`ipa-inspection-collectors`, default `default`).
pub fn collector_names(config: &Config) -> Vec<String> {
    config
        .kernel
        .get("ipa-inspection-collectors")
        .unwrap_or("default")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The inventory in IPA's format.
pub fn inventory(config: &Config) -> hw::Inventory {
    hw::inventory(
        &config.sys_root,
        &InventoryOptions {
            bootif: config.kernel.get("BOOTIF").map(str::to_string),
            lldp_timeout: config.lldp_timeout,
            ..Default::default()
        },
    )
}

/// Collect the data to post. Collector failures are listed in `error` (null when none).
pub fn collect(config: &Config, logs: impl Fn() -> Option<String>) -> Value {
    let names = collector_names(config);
    let mut data = Map::new();
    let mut failures: Vec<String> = Vec::new();
    for name in &names {
        match name.as_str() {
            "default" => collect_default(config, &mut data, &names),
            "logs" => match logs() {
                Some(l) => {
                    data.insert("logs".into(), Value::String(l));
                }
                None => log::warn!("inspection: cannot collect logs"),
            },
            "pci-devices" => match pci_devices(&config.sys_root) {
                Ok(v) => {
                    data.insert("pci_devices".into(), v);
                }
                Err(e) => failures.push(format!("collector pci-devices failed: {e}")),
            },
            "numa-topology" => match numa_topology(&config.sys_root) {
                Ok(v) => {
                    data.insert("numa_topology".into(), v);
                }
                Err(e) => failures.push(format!("collector numa-topology failed: {e}")),
            },
            "dmi-decode" => {
                data.insert("dmi".into(), dmi_from_sysfs(&config.sys_root));
            }
            other => failures.push(format!(
                "collector {other} is not supported by Ferric (supported: default, logs, \
                 pci-devices, numa-topology, dmi-decode)"
            )),
        }
    }
    data.insert(
        "error".into(),
        if failures.is_empty() {
            Value::Null
        } else {
            Value::String(failures.join("\n"))
        },
    );
    Value::Object(data)
}

fn collect_default(config: &Config, data: &mut Map<String, Value>, names: &[String]) {
    let inv = inventory(config);
    let inv_json = serde_json::to_value(&inv).unwrap_or(Value::Null);
    let disks: Vec<hw::BlockDevice> = inv.disks.clone();
    let root_disk = hw::default_root_device(&disks).cloned();
    if let Some(r) = &root_disk {
        data.insert(
            "root_disk".into(),
            serde_json::to_value(r).unwrap_or(Value::Null),
        );
    }
    data.insert(
        "boot_interface".into(),
        inv_json
            .pointer("/boot/pxe_interface")
            .cloned()
            .unwrap_or(Value::Null),
    );
    data.insert(
        "configuration".into(),
        json!({
            "collectors": names,
            "managers": ferric_hardware::Managers::generic(&config.sys_root)
                .current_versions()
                .as_object()
                .map(|m| m.iter().map(|(k, v)| json!({"name": k, "version": v})).collect::<Vec<_>>())
                .unwrap_or_default(),
        }),
    );
    // What ironic-inspector's /v1/continue reads besides the inventory.
    data.insert(
        "cpus".into(),
        inv_json
            .pointer("/cpu/count")
            .cloned()
            .unwrap_or(Value::Null),
    );
    data.insert(
        "cpu_arch".into(),
        inv_json
            .pointer("/cpu/architecture")
            .cloned()
            .unwrap_or(Value::Null),
    );
    data.insert(
        "memory_mb".into(),
        inv_json
            .pointer("/memory/physical_mb")
            .cloned()
            .unwrap_or(Value::Null),
    );
    // The inspector reserves 1 GiB for partitioning (ironic-inspector's root_disk hook).
    data.insert(
        "local_gb".into(),
        root_disk
            .map(|d| json!((d.size >> 30).saturating_sub(1)))
            .unwrap_or(json!(0)),
    );
    let mut ifaces = Map::new();
    if let Some(list) = inv_json.get("interfaces").and_then(Value::as_array) {
        for i in list {
            if let Some(name) = i.get("name").and_then(Value::as_str) {
                ifaces.insert(
                    name.to_string(),
                    json!({"mac": i.get("mac_address"), "ip": i.get("ipv4_address")}),
                );
            }
        }
    }
    data.insert("interfaces".into(), Value::Object(ifaces));
    data.insert("inventory".into(), inv_json);
}

fn hex_id(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.trim().split_once('x').map(|(_, h)| h.to_string())
}

/// IPA's `pci-devices` collector, from `sys/bus/pci/devices`.
pub fn pci_devices(root: &Path) -> std::io::Result<Value> {
    let dir = root.join("sys/bus/pci/devices");
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for bus in names {
        let d = dir.join(&bus);
        let (Some(vendor), Some(device), Some(class)) = (
            hex_id(&d.join("vendor")),
            hex_id(&d.join("device")),
            hex_id(&d.join("class")),
        ) else {
            continue;
        };
        let numa = std::fs::read_to_string(d.join("numa_node"))
            .ok()
            .map(|s| s.trim().to_string());
        out.push(json!({
            "vendor_id": vendor, "product_id": device, "class": class,
            "revision": hex_id(&d.join("revision")), "bus": bus, "numa_node_id": numa,
        }));
    }
    Ok(Value::Array(out))
}

fn parse_cpulist(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    if b >= a && b - a < 65536 {
                        out.extend(a..=b);
                    }
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// IPA's `numa-topology` collector: RAM per node, CPUs with their thread siblings, NICs.
pub fn numa_topology(root: &Path) -> std::io::Result<Value> {
    let nodes_dir = root.join("sys/devices/system/node");
    let mut nodes: Vec<u32> = std::fs::read_dir(&nodes_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    let (mut ram, mut cpus) = (Vec::new(), Vec::new());
    for n in &nodes {
        let nd = nodes_dir.join(format!("node{n}"));
        if let Ok(meminfo) = std::fs::read_to_string(nd.join("meminfo")) {
            // "Node 0 MemTotal:       16318704 kB"
            if let Some(kb) = meminfo.lines().find_map(|l| {
                let rest = l.split_once("MemTotal:")?.1;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            }) {
                ram.push(json!({"numa_node": n, "size_kb": kb}));
            }
        }
        let list = std::fs::read_to_string(nd.join("cpulist")).unwrap_or_default();
        for cpu in parse_cpulist(&list) {
            let sib = std::fs::read_to_string(root.join(format!(
                "sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            )))
            .unwrap_or_default();
            cpus.push(json!({"cpu": cpu, "numa_node": n, "thread_siblings": parse_cpulist(&sib)}));
        }
    }
    let mut nics = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("sys/class/net")) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let p = root.join(format!("sys/class/net/{name}/device/numa_node"));
            if let Ok(s) = std::fs::read_to_string(p) {
                if let Ok(n) = s.trim().parse::<i64>() {
                    nics.push(json!({"name": name, "numa_node": n.max(0)}));
                }
            }
        }
    }
    Ok(json!({"ram": ram, "cpus": cpus, "nics": nics}))
}

/// The `dmi-decode` collector without dmidecode: what `sys/class/dmi/id` exposes.
pub fn dmi_from_sysfs(root: &Path) -> Value {
    let read = |f: &str| {
        std::fs::read_to_string(root.join("sys/class/dmi/id").join(f))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    json!({
        "bios": {"vendor": read("bios_vendor"), "version": read("bios_version"),
                 "date": read("bios_date")},
        "system": {"manufacturer": read("sys_vendor"), "product_name": read("product_name"),
                   "version": read("product_version"), "serial": read("product_serial"),
                   "uuid": read("product_uuid"), "family": read("product_family")},
        "board": {"manufacturer": read("board_vendor"), "product_name": read("board_name"),
                  "version": read("board_version"), "serial": read("board_serial")},
        "chassis": {"manufacturer": read("chassis_vendor"), "type": read("chassis_type"),
                    "serial": read("chassis_serial")},
    })
}

/// What the callback answered that matters to the agent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InspectionAnswer {
    /// The node UUID (inspector: `uuid`; Ironic ≥ 1.90 style: `node.uuid`).
    pub node_uuid: Option<String>,
    /// A clear agent token, when Ironic issued it with the answer (then lookup only ever
    /// returns it masked, so it must be kept from here).
    pub agent_token: Option<String>,
}

/// Parse the callback's answer.
pub fn parse_answer(v: &Value) -> InspectionAnswer {
    let node_uuid = v
        .get("uuid")
        .or_else(|| v.pointer("/node/uuid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let agent_token = v
        .pointer("/config/agent_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.chars().all(|c| c == '*'))
        .map(str::to_string);
    InspectionAnswer {
        node_uuid,
        agent_token,
    }
}

/// POST the data with IPA's retries. `Ok(None)` when the endpoint answered a 4xx (IPA logs
/// it and proceeds with lookup).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    data: &Value,
) -> Result<Option<InspectionAnswer>, String> {
    let body = data.to_string();
    let mut wait = Duration::from_secs(5);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_server_error() => {
                last = format!("{url} answered {}", resp.status());
            }
            Ok(resp) if resp.status().as_u16() >= 400 => {
                let status = resp.status();
                let text = crate::ironic::bounded_text(resp).await.unwrap_or_default();
                log::error!(
                    "inspection callback {url} refused the data ({status}): {}; proceeding with lookup",
                    crate::ironic::fault_message(&text)
                );
                return Ok(None);
            }
            Ok(resp) => {
                let text = crate::ironic::bounded_text(resp).await.unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                return Ok(Some(parse_answer(&v)));
            }
            Err(e) => last = error_chain(&e),
        }
        if attempt < ATTEMPTS {
            log::warn!(
                "inspection callback failed ({last}); retrying in {}s",
                wait.as_secs()
            );
            tokio::time::sleep(wait).await;
            wait = (wait.mul_f64(1.5)).min(Duration::from_secs(30));
        }
    }
    Err(format!(
        "inspection callback {url} failed {ATTEMPTS} times; last: {last}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist(""), Vec::<u32>::new());
        assert_eq!(parse_cpulist("5-2,x,7"), vec![7]);
    }

    #[test]
    fn answers_of_both_endpoints() {
        assert_eq!(
            parse_answer(&json!({"uuid": "u1"})),
            InspectionAnswer {
                node_uuid: Some("u1".into()),
                agent_token: None
            }
        );
        assert_eq!(
            parse_answer(&json!({"node": {"uuid": "u2"}, "config": {"agent_token": "tok"}})),
            InspectionAnswer {
                node_uuid: Some("u2".into()),
                agent_token: Some("tok".into())
            }
        );
        assert_eq!(
            parse_answer(&json!({"node": {"uuid": "u3"}, "config": {"agent_token": "******"}})),
            InspectionAnswer {
                node_uuid: Some("u3".into()),
                agent_token: None
            }
        );
        assert_eq!(parse_answer(&Value::Null), InspectionAnswer::default());
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn pci_and_numa_from_a_fixture_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "sys/bus/pci/devices/0000:00:03.0/vendor", "0x1af4\n");
        write(r, "sys/bus/pci/devices/0000:00:03.0/device", "0x1000\n");
        write(r, "sys/bus/pci/devices/0000:00:03.0/class", "0x020000\n");
        write(r, "sys/bus/pci/devices/0000:00:03.0/numa_node", "-1\n");
        write(r, "sys/bus/pci/devices/0000:00:04.0/vendor", "garbage\n");
        let v = pci_devices(r).unwrap();
        assert_eq!(
            v,
            json!([{"vendor_id": "1af4", "product_id": "1000", "class": "020000",
                    "revision": null, "bus": "0000:00:03.0", "numa_node_id": "-1"}])
        );

        write(
            r,
            "sys/devices/system/node/node0/meminfo",
            "Node 0 MemTotal:  1024 kB\n",
        );
        write(r, "sys/devices/system/node/node0/cpulist", "0-1\n");
        write(
            r,
            "sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
            "0-1\n",
        );
        write(
            r,
            "sys/devices/system/cpu/cpu1/topology/thread_siblings_list",
            "0-1\n",
        );
        write(r, "sys/class/net/eth0/device/numa_node", "-1\n");
        let n = numa_topology(r).unwrap();
        assert_eq!(
            n,
            json!({"ram": [{"numa_node": 0, "size_kb": 1024}],
                   "cpus": [{"cpu": 0, "numa_node": 0, "thread_siblings": [0, 1]},
                            {"cpu": 1, "numa_node": 0, "thread_siblings": [0, 1]}],
                   "nics": [{"name": "eth0", "numa_node": 0}]})
        );
    }

    #[tokio::test]
    async fn collected_data_is_posted_and_the_uuid_returned() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 65536];
            // Read headers, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some(h) = text.find("\r\n\r\n") {
                    let len: usize = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if req.len() >= h + 4 + len {
                        let body = req[h + 4..h + 4 + len].to_vec();
                        let reply = r#"{"uuid": "0fe22b9a-ad3f-4a41-9771-209e4d6b0da5"}"#;
                        write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}", reply.len()).unwrap();
                        return (text[..h].to_string(), body);
                    }
                }
            }
        });
        let cli = crate::config::Cli::default();
        let kernel = crate::config::KernelParams::parse(&format!(
            "ipa-inspection-callback-url=http://127.0.0.1:{port}/v1/continue \
             ipa-inspection-collectors=default,pci-devices,bogus BOOTIF=01-52-54-00-12-34-56"
        ));
        let config = Config::resolve(&cli, kernel).unwrap();
        let data = collect(&config, || Some("bG9ncw==".into()));
        let http = reqwest::Client::new();
        let answer = post(
            &http,
            config.inspection_callback_url.as_deref().unwrap(),
            &data,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            answer.node_uuid.as_deref(),
            Some("0fe22b9a-ad3f-4a41-9771-209e4d6b0da5")
        );
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /v1/continue "), "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["inventory"]["interfaces"].is_array());
        assert_eq!(v["boot_interface"], "01-52-54-00-12-34-56");
        assert!(v["cpus"].as_u64().unwrap() >= 1);
        assert!(v["memory_mb"].as_u64().is_some());
        assert!(v["pci_devices"].is_array());
        assert_eq!(
            v["configuration"]["collectors"],
            json!(["default", "pci-devices", "bogus"])
        );
        assert!(
            v["error"].as_str().unwrap().contains("bogus"),
            "unknown collectors are reported"
        );
    }
}
