//! A hostile or broken conductor (issue 6 item 3): the fake Ironic answers lookups and
//! heartbeats with errors, garbage, silence, or loses its state mid-deploy. Each row needs its
//! own agent (lookup happens once, at start), so the rows run in parallel threads, each with
//! its own fake Ironic, agent and disk, each under a deadline. Lookup rows end when a heartbeat
//! is accepted and the agent's API (HTTPS, verified with the certificate it sent) answers;
//! deploy rows end when the node is `active` (or `deploy failed` where that is right) and the
//! disk holds the image (or was left untouched).
//!
//! The agent runs with `ipa-http-request-timeout=3` so that a silent Ironic costs seconds.
//! The table is printed and written to `$CARGO_TARGET_TMPDIR/hostile-conductor.md`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferric_tests::conductor::{Conductor, DeployPlan, Plan};
use ferric_tests::e2e::{report, spawn_agent_for_ironic, RunningAgent, TestDisk};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, ScriptedReply};
use ferric_tests::fixtures::{md5_hex, test_image, TableKind};
use ferric_tests::hostile::{disk_verdict, ensure, mem_kib, Deadline, DiskVerdict, Table};
use ferric_tests::image_server::{Fault, ImageServer};
use serde_json::{json, Value};

const CMDLINE: &str = "ipa-http-request-timeout=3";
const LOOKUP_ROW: Duration = Duration::from_secs(60);
const DEPLOY_ROW: Duration = Duration::from_secs(100);
const MIB: u64 = 1 << 20;
const FILL: u8 = 0xaa;

/// `GET {callback}/v1/status`, trusting exactly the certificate the agent sent.
fn status_over(callback: &str, ca: Option<&str>) -> Result<(), String> {
    let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5));
    if let Some(pem) = ca {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
        );
    }
    let c = b.build().map_err(|e| e.to_string())?;
    let r = c
        .get(format!("{callback}/v1/status"))
        .send()
        .map_err(|e| format!("GET {callback}/v1/status: {e}"))?;
    ensure(r.status().as_u16() == 200, || {
        format!("GET {callback}/v1/status → {}", r.status())
    })
}

fn statuses(ironic: &FakeIronic, path: &str) -> String {
    ironic
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(path))
        .map(|r| r.status.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits for an accepted heartbeat; checks it carries the token Ironic issued in clear, then
/// that the API it advertised answers. Returns a summary of the lookups and heartbeats.
fn settled_lookup(
    ironic: &FakeIronic,
    agent: &mut RunningAgent,
    d: &Deadline,
) -> Result<String, String> {
    let hb = ironic
        .wait_for_request(d.remaining(), |r| {
            r.path.starts_with("/v1/heartbeat/") && r.status == 202
        })
        .ok_or_else(|| {
            format!(
                "no accepted heartbeat by the deadline (lookups {}, heartbeats {}){}",
                statuses(ironic, "/v1/lookup"),
                statuses(ironic, "/v1/heartbeat/"),
                match agent.process.try_exit() {
                    Some(st) => format!("; the agent exited ({st})"),
                    None => String::new(),
                }
            )
        })?;
    let body = hb.json().unwrap_or(Value::Null);
    let token = ironic.token().unwrap_or_default();
    ensure(body["agent_token"] == Value::String(token), || {
        format!(
            "the accepted heartbeat's token is not the one issued: {}",
            hb.summary()
        )
    })?;
    let callback = body["callback_url"].as_str().unwrap_or_default();
    status_over(callback, body["agent_verify_ca"].as_str())?;
    ensure(agent.process.is_running(), || "the agent exited".into())?;
    Ok(format!(
        "lookups {}; heartbeats {}; accepted at +{:.1}s; API answers",
        statuses(ironic, "/v1/lookup"),
        statuses(ironic, "/v1/heartbeat/"),
        hb.at.as_secs_f64()
    ))
}

type Setup = Box<dyn FnOnce(&FakeIronic) + Send>;
type Check =
    Box<dyn FnOnce(&FakeIronic, &mut RunningAgent, &Deadline) -> Result<String, String> + Send>;

struct LookupRow {
    name: &'static str,
    expected: &'static str,
    setup: Setup,
    check: Option<Check>,
}

fn replace(status: u16, body: &[u8]) -> ScriptedReply {
    ScriptedReply {
        delay: Duration::ZERO,
        replace: Some((status, body.to_vec())),
    }
}

fn delay(secs: u64) -> ScriptedReply {
    ScriptedReply {
        delay: Duration::from_secs(secs),
        replace: None,
    }
}

fn lookup_rows() -> Vec<LookupRow> {
    let row = |name, expected, setup: Setup| LookupRow {
        name,
        expected,
        setup,
        check: None,
    };
    let masked = json!({
        "node": {"uuid": "deac3149-028a-46ae-9ba7-d09dcef7d201", "properties": {},
                 "instance_info": {}, "driver_internal_info": {}},
        "config": {"heartbeat_timeout": 20, "agent_token": "******", "agent_token_required": true},
    })
    .to_string();
    vec![
        row(
            "lookup answers 500 twice, then 200",
            "retries; heartbeat accepted with the token of the 200",
            Box::new(|i| i.script_lookup(500, 2)),
        ),
        LookupRow {
            name: "lookup answers 409 (node locked) once",
            expected: "pauses ≥ 5 s (IPA), then looks up again; heartbeat accepted",
            setup: Box::new(|i| i.script_lookup(409, 1)),
            check: Some(Box::new(|i, a, d| {
                let out = settled_lookup(i, a, d)?;
                let l = i.lookups();
                let gap = l[1].at.saturating_sub(l[0].at);
                ensure(gap >= Duration::from_millis(4500), || {
                    format!("looked up again {gap:?} after the 409: {out}")
                })?;
                Ok(format!(
                    "{out}; retried {:.1}s after the 409",
                    gap.as_secs_f64()
                ))
            })),
        },
        row(
            "lookup answers 200 with garbage (not JSON), twice",
            "retries; heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/v1/lookup", replace(200, b"{garbage"), 2)),
        ),
        row(
            "lookup answers 200 with a node but no config",
            "retries; heartbeat accepted",
            Box::new(|i| {
                let b = br#"{"node": {"uuid": "deac3149-028a-46ae-9ba7-d09dcef7d201"}}"#;
                i.script_reply("GET", "/v1/lookup", replace(200, b), 1)
            }),
        ),
        row(
            "lookup answers 200 with config but no node",
            "retries; heartbeat accepted",
            Box::new(|i| {
                let b = br#"{"config": {"agent_token": "stolen", "heartbeat_timeout": 20}}"#;
                i.script_reply("GET", "/v1/lookup", replace(200, b), 1)
            }),
        ),
        row(
            "lookup answers 200 with a JSON list",
            "retries; heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/v1/lookup", replace(200, b"[1, 2, 3]"), 1)),
        ),
        row(
            "lookup answers 200 with a masked token and none is known, twice",
            "keeps looking up until a clear token comes; heartbeat accepted with it",
            Box::new(move |i| {
                i.script_reply("GET", "/v1/lookup", replace(200, masked.as_bytes()), 2)
            }),
        ),
        row(
            "lookup answers 200 with 4 MiB of `[`",
            "retries (JSON recursion limit); heartbeat accepted",
            Box::new(|i| {
                i.script_reply("GET", "/v1/lookup", replace(200, &vec![b'['; 4 << 20]), 1)
            }),
        ),
        LookupRow {
            name: "lookup answers 200 with a 64 MiB JSON string",
            expected: "reads at most 8 MiB of it (peak RSS < 40 MiB), retries; heartbeat accepted",
            setup: Box::new(|i| {
                let mut b = vec![b'"'; 1];
                b.resize(64 << 20, b'a');
                b.push(b'"');
                i.script_reply("GET", "/v1/lookup", replace(200, &b), 1)
            }),
            check: Some(Box::new(|i, a, d| {
                let out = settled_lookup(i, a, d)?;
                let peak = mem_kib(a.process.pid(), "VmHWM").ok_or("no VmHWM")? >> 10;
                ensure(peak < 40, || format!("peak RSS {peak} MiB: {out}"))?;
                Ok(format!("{out}; peak RSS {peak} MiB"))
            })),
        },
        row(
            "lookup answers after 6 s (agent timeout 3 s)",
            "times out, retries; heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/v1/lookup", delay(6), 1)),
        ),
        row(
            "version discovery (GET /) answers 500 twice",
            "retries discovery; heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/", replace(500, b"oops"), 2)),
        ),
        row(
            "version discovery answers 200 with garbage",
            "uses the version headers (or retries); heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/", replace(200, b"<html>hello</html>"), 1)),
        ),
        row(
            "version discovery answers after 6 s (agent timeout 3 s)",
            "times out, retries; heartbeat accepted",
            Box::new(|i| i.script_reply("GET", "/", delay(6), 1)),
        ),
        row(
            "heartbeat answers 500 twice",
            "retries after 5–10 s each; heartbeat accepted",
            Box::new(|i| i.script_heartbeat(500, 2)),
        ),
        row(
            "heartbeat answers 409 twice",
            "retries; heartbeat accepted",
            Box::new(|i| i.script_heartbeat(409, 2)),
        ),
        row(
            "heartbeat answers 400 with an HTML body",
            "retries (not a token error); heartbeat accepted",
            Box::new(|i| {
                i.script_reply(
                    "POST",
                    "/v1/heartbeat/",
                    replace(400, b"<html>bad</html>"),
                    1,
                )
            }),
        ),
        row(
            "heartbeat answers after 6 s (agent timeout 3 s)",
            "times out, retries; heartbeat accepted",
            Box::new(|i| i.script_reply("POST", "/v1/heartbeat/", delay(6), 1)),
        ),
    ]
}

fn run_lookup_row(table: &Table, row: LookupRow) {
    let disk = TestDisk::create("hostile_conductor::lookup", 8 << 20).expect("temp disk");
    let ironic = FakeIronic::start(FakeIronicConfig::default()).expect("fake Ironic");
    (row.setup)(&ironic);
    let mut agent = spawn_agent_for_ironic(&ironic, &disk.path(), CMDLINE, &[]);
    let ok = table.row(row.name, row.expected, LOOKUP_ROW, |d| match row.check {
        Some(c) => c(&ironic, &mut agent, d),
        None => settled_lookup(&ironic, &mut agent, d),
    });
    if !ok {
        eprintln!(
            "row {:?} failed:{}",
            row.name,
            report(Some(&agent), Some(&ironic), None, None)
        );
    }
}

/// A deploy of a 16 MiB MBR image, the download throttled to 4 MiB/s so that there is a
/// "mid-deploy" to act in.
struct Deploy {
    agent: RunningAgent,
    conductor: Option<Conductor>,
    ironic: Option<FakeIronic>,
    images: ImageServer,
    disk: TestDisk,
    img: Vec<u8>,
    plan: DeployPlan,
}

fn start_deploy(cfg: FakeIronicConfig, plan: impl FnOnce(&str, &[u8]) -> DeployPlan) -> Deploy {
    let disk = TestDisk::create("hostile_conductor::deploy", 64 << 20).expect("temp disk");
    disk.fill(FILL);
    let img = test_image(TableKind::Mbr, 16 << 20, 0xdeb).bytes;
    let images = ImageServer::start().expect("image server");
    images.add("disk.raw", img.clone());
    images.set_fault("disk.raw", Fault::Throttle(4 * MIB));
    let plan = plan(&images.url("disk.raw"), &img);
    let ironic = FakeIronic::start(cfg).expect("fake Ironic");
    let conductor = Conductor::start(&ironic, Plan::Deploy(plan.clone()));
    let agent = spawn_agent_for_ironic(&ironic, &disk.path(), CMDLINE, &[]);
    Deploy {
        agent,
        conductor: Some(conductor),
        ironic: Some(ironic),
        images,
        disk,
        img,
        plan,
    }
}

impl Deploy {
    fn report(&self) -> String {
        report(
            Some(&self.agent),
            self.ironic.as_ref(),
            self.conductor.as_ref(),
            Some(&self.images),
        )
    }

    /// Waits until the image download is under way.
    fn wait_downloading(&self, d: &Deadline) -> Result<(), String> {
        ferric_tests::util::poll_until(d.remaining(), Duration::from_millis(50), || {
            self.images
                .requests()
                .iter()
                .any(|r| r.bytes_sent >= MIB)
                .then_some(())
        })
        .ok_or_else(|| "the image download never started".to_string())
    }

    /// Waits for `active`; then the agent has powered "off" (exited) and the disk holds the
    /// image.
    fn expect_active(&mut self, d: &Deadline) -> Result<String, String> {
        let c = self.conductor.as_ref().ok_or("no conductor")?;
        let st = c
            .wait_until_settled(d.remaining())
            .map_err(|st| format!("not settled: {:?} phase {:?}", st.provision_state, st.phase))?;
        ensure(st.provision_state == "active", || {
            format!("{} ({:?})", st.provision_state, st.last_error)
        })?;
        let exit = self.agent.process.wait_exit(Duration::from_secs(15));
        ensure(exit.is_some_and(|e| e.success()), || {
            format!("active, but the agent did not power off (exit) cleanly: {exit:?}")
        })?;
        let v = disk_verdict(&self.disk.read_all(), FILL, Some(&self.img));
        ensure(v == DiskVerdict::Image, || {
            format!("active, but the disk is {v:?}")
        })?;
        Ok(format!(
            "active after {} write_image(s); disk holds the image; agent exited 0",
            st.sent("deploy.execute_deploy_step")
                .iter()
                .filter(|c| c.http_status == Some(200))
                .count()
        ))
    }
}

fn deploy_rows(table: &Table) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut dep = start_deploy(FakeIronicConfig::default(), |url, img| {
                DeployPlan::whole_disk_raw(url, &ferric_tests::fixtures::sha256_hex(img), None)
            });
            let ok = table.row(
                "token wiped mid-deploy (conductor's wipe_token)",
                "the agent looks up again, gets the new token and the deploy completes",
                DEPLOY_ROW,
                |d| {
                    dep.wait_downloading(d)?;
                    let ironic = dep.ironic.as_ref().ok_or("no Ironic")?;
                    let old = ironic.token().ok_or("no token issued before the wipe")?;
                    ironic.wipe_token();
                    let out = dep.expect_active(d)?;
                    let ironic = dep.ironic.as_ref().ok_or("no Ironic")?;
                    // Ironic wipes the token again at the final power-off: look at the tokens
                    // the accepted heartbeats carried instead.
                    let tokens: std::collections::BTreeSet<String> = ironic
                        .heartbeats()
                        .iter()
                        .map(|h| h.agent_token.clone())
                        .collect();
                    ensure(tokens.len() == 2 && tokens.contains(&old), || {
                        format!(
                            "{out}; but heartbeats carried {} distinct token(s)",
                            tokens.len()
                        )
                    })?;
                    let refused = ironic
                        .heartbeat_requests()
                        .iter()
                        .filter(|r| r.status == 400)
                        .count();
                    Ok(format!(
                        "{out}; {refused} heartbeat(s) refused with the old token, lookups {}",
                        statuses(ironic, "/v1/lookup")
                    ))
                },
            );
            if !ok {
                eprintln!("token wipe row failed:{}", dep.report());
            }
        });
        for keep_db in [true, false] {
            s.spawn(move || {
                let mut dep = start_deploy(FakeIronicConfig::default(), |url, img| {
                    DeployPlan::whole_disk_raw(url, &ferric_tests::fixtures::sha256_hex(img), None)
                });
                let name = if keep_db {
                    "Ironic restarts mid-deploy (same port, database kept)"
                } else {
                    "Ironic restarts mid-deploy (same port, database lost: no token)"
                };
                let ok = table.row(
                    name,
                    "the agent keeps heartbeating (looks up again if its token is unknown); the \
                     new conductor redrives the deploy to active",
                    DEPLOY_ROW,
                    |d| {
                        dep.wait_downloading(d)?;
                        let old = dep.ironic.take().ok_or("no Ironic")?;
                        let addr: SocketAddr = old.addr();
                        let node = old.node();
                        drop(dep.conductor.take());
                        drop(old);
                        let down = Instant::now();
                        std::thread::sleep(Duration::from_secs(1));
                        let mut downtime = Duration::ZERO;
                        let cfg = FakeIronicConfig {
                            listen: addr,
                            ..Default::default()
                        };
                        let ironic = ferric_tests::util::poll_until(
                            Duration::from_secs(10),
                            Duration::from_millis(200),
                            || FakeIronic::start(cfg.clone()).ok(),
                        )
                        .ok_or("cannot listen on the old port again")?;
                        downtime = down.elapsed().max(downtime);
                        if keep_db {
                            ironic.with_node(|n| *n = node.clone());
                        }
                        dep.conductor = Some(Conductor::start(&ironic, Plan::Deploy(dep.plan.clone())));
                        dep.ironic = Some(ironic);
                        let out = dep.expect_active(d)?;
                        let ironic = dep.ironic.as_ref().ok_or("no Ironic")?;
                        Ok(format!(
                            "{out}; Ironic was down {:.1}s; new Ironic saw lookups {} heartbeats {}",
                            downtime.as_secs_f64(),
                            statuses(ironic, "/v1/lookup"),
                            statuses(ironic, "/v1/heartbeat/")
                        ))
                    },
                );
                if !ok {
                    eprintln!("{name} failed:{}", dep.report());
                }
            });
        }
        s.spawn(|| {
            let cfg = FakeIronicConfig {
                agent_md5_checksum_enable: false,
                ..Default::default()
            };
            let dep = start_deploy(cfg, |url, img| {
                let mut p = DeployPlan::whole_disk_raw(url, "", None);
                p.os_hash_algo = None;
                p.os_hash_value = None;
                p.checksum = Some(md5_hex(img));
                p
            });
            let ok = table.row(
                "md5 checksum while lookup says agent_md5_checksum_enable=false",
                "deploy failed; last_error names md5; disk untouched",
                DEPLOY_ROW,
                |d| {
                    let c = dep.conductor.as_ref().ok_or("no conductor")?;
                    let st = c
                        .wait_until_settled(d.remaining())
                        .map_err(|st| format!("not settled: {:?}", st.provision_state))?;
                    let err = st.last_error.clone().unwrap_or_default();
                    ensure(st.provision_state == "deploy failed", || {
                        format!("{} ({err})", st.provision_state)
                    })?;
                    ensure(err.to_ascii_lowercase().contains("md5"), || {
                        format!("last_error does not name md5: {err}")
                    })?;
                    let v = disk_verdict(&dep.disk.read_all(), FILL, None);
                    ensure(v == DiskVerdict::Untouched, || {
                        format!("{err}; disk is {v:?}")
                    })?;
                    ensure(dep.images.requests().is_empty(), || {
                        "the image was downloaded although its checksum cannot be used".into()
                    })?;
                    Ok(format!(
                        "deploy failed: {}",
                        ferric_tests::util::truncate(&err, 200)
                    ))
                },
            );
            if !ok {
                eprintln!("md5 row failed:{}", dep.report());
            }
        });
    });
}

#[test]
fn conductor_table() {
    let table = Table::new("conductor");
    std::thread::scope(|s| {
        for row in lookup_rows() {
            let table = &table;
            s.spawn(move || run_lookup_row(table, row));
        }
        s.spawn(|| deploy_rows(&table));
    });
    table.finish(env!("CARGO_TARGET_TMPDIR"));
}
