//! End to end, no root needed: the real agent's lookup and heartbeat against the fake Ironic
//! (no conductor, so nothing is deployed). The install device is a temp file the agent never
//! writes here.

use std::time::Duration;

use ferric_tests::e2e::{report, spawn_agent_for_ironic, RunningAgent, TestDisk};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig, RecordedRequest, RECORDED_MAC};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(45);

fn setup(test: &str, cfg: FakeIronicConfig) -> (FakeIronic, TestDisk) {
    let disk = TestDisk::create(test, 8 << 20).expect("temp disk");
    (FakeIronic::start(cfg).expect("fake Ironic"), disk)
}

fn wait_heartbeat(ironic: &FakeIronic, agent: &RunningAgent) -> RecordedRequest {
    ironic
        .wait_for_request(WAIT, |r| {
            r.path.starts_with("/v1/heartbeat/") && r.status == 202
        })
        .unwrap_or_else(|| {
            panic!(
                "no accepted heartbeat within {WAIT:?}{}",
                report(Some(agent), Some(ironic), None, None)
            )
        })
}

#[test]
fn lookup_and_heartbeat_speak_the_recorded_wire_format() {
    let (ironic, disk) = setup("e2e_lookup::wire", FakeIronicConfig::default());
    let agent = spawn_agent_for_ironic(&ironic, &disk.path(), "", &[]);
    let hb = wait_heartbeat(&ironic, &agent);
    let rep = || report(Some(&agent), Some(&ironic), None, None);
    let reqs = ironic.requests();
    let lookup = reqs
        .iter()
        .find(|r| r.path == "/v1/lookup" && r.status == 200)
        .unwrap_or_else(|| panic!("no successful lookup{}", rep()));
    assert!(
        reqs.iter()
            .take_while(|r| r.path != "/v1/lookup")
            .any(|r| r.path == "/"),
        "version discovery (GET /) must precede the lookup{}",
        rep()
    );
    assert_eq!(
        lookup.header("x-openstack-ironic-api-version"),
        Some("1.62"),
        "{}",
        rep()
    );
    assert_eq!(
        lookup.header("accept"),
        Some("application/json"),
        "{}",
        rep()
    );
    let addrs = lookup.query_param("addresses").unwrap_or_default();
    assert_eq!(
        addrs.split(',').next(),
        Some(RECORDED_MAC),
        "BOOTIF first: {addrs}{}",
        rep()
    );
    let token = lookup.response_json().unwrap()["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        hb.header("x-openstack-ironic-api-version"),
        Some("1.68"),
        "{}",
        rep()
    );
    assert_eq!(hb.path, format!("/v1/heartbeat/{}", ironic.node().uuid));
    let body = hb
        .json()
        .unwrap_or_else(|| panic!("heartbeat body not JSON{}", rep()));
    let callback = body["callback_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ca = body["agent_verify_ca"].as_str();
    let want = format!("127.0.0.1:{}", agent.port);
    assert!(
        callback == format!("http://{want}") || callback == format!("https://{want}"),
        "callback_url {callback} must use --advertise {want}{}",
        rep()
    );
    if callback.starts_with("https://") {
        assert!(
            ca.is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----")),
            "an https callback needs agent_verify_ca (IPA auto TLS){}",
            rep()
        );
    }
    assert_eq!(body["agent_token"], Value::String(token), "{}", rep());
    assert!(
        body["agent_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{}",
        rep()
    );
    // The API it advertised answers, verified with the certificate it sent.
    let st = ferric_tests::e2e::AgentApi::with_ca(&callback, ca).get("/v1/status", None);
    assert_eq!(st.status, 200, "{st:?}{}", rep());
    assert!(
        st.body["started_at"].is_number() && st.body["version"].is_string(),
        "{st:?}"
    );
}

#[test]
fn lookup_retries_through_404_409_and_500_and_keeps_the_clear_token() {
    let (ironic, disk) = setup("e2e_lookup::retries", FakeIronicConfig::default());
    ironic.script_lookup(500, 1);
    ironic.script_lookup(409, 1);
    // A node not yet in a lookup state answers 404 like an unknown MAC.
    ironic.with_node(|n| n.provision_state = "available".into());
    let agent = spawn_agent_for_ironic(&ironic, &disk.path(), "", &[]);
    let rep = || report(Some(&agent), Some(&ironic), None, None);
    ironic
        .wait_for_request(WAIT, |r| r.path == "/v1/lookup" && r.status == 404)
        .unwrap_or_else(|| panic!("expected a 404 lookup{}", rep()));
    ironic.with_node(|n| n.provision_state = "wait call-back".into());
    let hb = wait_heartbeat(&ironic, &agent);
    let statuses: Vec<u16> = ironic.lookups().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..2], &[500, 409], "{}", rep());
    assert!(
        statuses.contains(&404) && statuses.last() == Some(&200),
        "{statuses:?}{}",
        rep()
    );
    // A second lookup would only get "******": the heartbeat must carry the clear token.
    assert_eq!(
        hb.json().unwrap()["agent_token"].as_str(),
        ironic.token().as_deref(),
        "{}",
        rep()
    );
}

#[test]
fn the_first_api_url_that_answers_is_used() {
    let (ironic, disk) = setup("e2e_lookup::fallback", FakeIronicConfig::default());
    let dead = format!("http://127.0.0.1:{}", ferric_tests::util::free_local_port());
    let port = ferric_tests::util::free_local_port();
    let agent = {
        // Same as spawn_agent_for_ironic, but with a dead URL first in ipa-api-url.
        let cmdline = format!(
            "ipa-api-url={dead},{} {} ipa-lookup-interval=1 ipa-lookup-timeout=120",
            ironic.url(),
            ferric_tests::e2e::BOOTIF
        );
        let addr = format!("127.0.0.1:{port}");
        let dev = disk.path().to_string_lossy().into_owned();
        let p = ferric_tests::agent_process::AgentProcess::spawn_with_cmdline(
            &cmdline,
            [
                "--listen",
                &addr,
                "--advertise",
                &addr,
                "--install-device",
                &dev,
                "--allow-device",
                &dev,
                "--power-action",
                "exit",
            ],
        )
        .expect("spawn agent");
        RunningAgent {
            process: p,
            url: format!("http://{addr}"),
            port,
        }
    };
    wait_heartbeat(&ironic, &agent);
}

#[test]
fn global_request_id_is_sent_as_x_openstack_request_id() {
    let (ironic, disk) = setup("e2e_lookup::request_id", FakeIronicConfig::default());
    let agent = spawn_agent_for_ironic(
        &ironic,
        &disk.path(),
        "ipa-global-request-id=req-0123abcd-aaaa-bbbb-cccc-0123456789ab",
        &[],
    );
    wait_heartbeat(&ironic, &agent);
    let lookup = ironic.lookups().into_iter().next().unwrap();
    assert_eq!(
        lookup.header("x-openstack-request-id"),
        Some("req-0123abcd-aaaa-bbbb-cccc-0123456789ab"),
        "{}",
        report(Some(&agent), Some(&ironic), None, None)
    );
}
