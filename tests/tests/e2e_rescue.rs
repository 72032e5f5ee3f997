//! End to end, no root needed: the two commands after which the agent stops serving.
//!
//! - `rescue.finalize_rescue`: the answer arrives, the password hash and the `.rescued` marker
//!   are where the ramdisk's `/init` looks for them, then the port closes and the process ends
//!   (the ramdisk then hands the machine to the `rescue` user).
//! - `system.lockdown`: the answer arrives, the port closes, kept-alive connections are closed,
//!   heartbeats stop, and the process stays (it idles until Ironic powers the node off).
//!
//! Outside a ramdisk finalize_rescue is refused unless `--rescue-root` points elsewhere: it
//! would otherwise create a login on the machine running the tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferric_tests::e2e::{spawn_agent_for_ironic, spawn_standalone, RunningAgent, TestDisk};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig};
use ferric_tests::util::poll_until;
use serde_json::json;

const TOKEN: &str = "ferric-test-token-0123456789abcdefghijklmnopq";
const CRYPT: &str = "$6$rounds=5000$saltsalt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g.";

fn port_refuses(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// A raw kept-alive HTTP/1.1 connection that has had one answer.
fn kept_alive(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("status answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

/// True once the peer has closed `s` (read returns 0 or an error other than a timeout).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A standalone agent whose finalize_rescue writes under a temporary root; with its disk
/// and that root.
fn agent_with_rescue_root(test: &str) -> (RunningAgent, TestDisk, tempfile::TempDir) {
    let disk = TestDisk::create(test, 4 << 20).expect("disk");
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_string_lossy().into_owned();
    let agent = spawn_standalone(TOKEN, &disk.path(), &["--rescue-root", &root_arg]);
    (agent, disk, root)
}

#[test]
fn finalize_rescue_stores_the_hash_where_the_ramdisk_reads_it_and_the_agent_ends() {
    let (mut agent, _disk, root) = agent_with_rescue_root("e2e_rescue::finalize");
    let api = agent.api();

    let r = api.command(
        "rescue.finalize_rescue",
        json!({"rescue_password": CRYPT, "hashed": true}),
        true,
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{:?}\n{}", r, agent.process.report());
    assert_eq!(r.body["command_status"], "SUCCEEDED", "{}", r.body);
    assert_eq!(r.body["command_name"], "finalize_rescue", "{}", r.body);

    let file = root
        .path()
        .join("etc/ipa-rescue-config/ipa-rescue-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CRYPT);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    assert!(root.path().join("etc/.rescued").exists());

    let status = agent.process.wait_exit(Duration::from_secs(15));
    assert!(
        matches!(status, Some(s) if s.success()),
        "the agent did not end cleanly after finalize_rescue: {status:?}\n{}",
        agent.process.report()
    );
    assert!(port_refuses(agent.port), "the API port still accepts");
}

#[test]
fn a_clear_rescue_password_is_stored_as_a_sha256_crypt_hash() {
    let (mut agent, _disk, root) = agent_with_rescue_root("e2e_rescue::clear");
    let r = agent.api().command(
        "rescue.finalize_rescue",
        json!({"rescue_password": "correct horse"}),
        true,
        Some(TOKEN),
    );
    assert_eq!(r.body["command_status"], "SUCCEEDED", "{}", r.body);
    let hash = std::fs::read_to_string(
        root.path()
            .join("etc/ipa-rescue-config/ipa-rescue-password"),
    )
    .unwrap();
    assert!(hash.starts_with("$5$"), "{hash}");
    assert!(!hash.contains("correct horse"), "{hash}");
    // Checked against another implementation of crypt(3) SHA-256: openssl passwd -5 with the
    // same salt (openssl is in the CI packages).
    let fields: Vec<&str> = hash.split('$').collect();
    let (salt, digest) = (fields[fields.len() - 2], fields[fields.len() - 1]);
    let out = std::process::Command::new("openssl")
        .args(["passwd", "-5", "-salt", salt, "correct horse"])
        .output()
        .expect("openssl (scripts/lib.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        theirs.ends_with(&format!("${digest}")),
        "openssl passwd -5 -salt {salt} gives {theirs}, the agent stored {hash}"
    );
    assert!(agent.process.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn finalize_rescue_outside_a_ramdisk_without_a_rescue_root_is_refused_and_the_agent_stays() {
    let disk = TestDisk::create("e2e_rescue::refused", 4 << 20).expect("disk");
    let mut agent = spawn_standalone(TOKEN, &disk.path(), &[]);
    let api = agent.api();
    let r = api.command(
        "rescue.finalize_rescue",
        json!({"rescue_password": "x", "hashed": false}),
        true,
        Some(TOKEN),
    );
    assert_eq!(r.body["command_status"], "FAILED", "{}", r.body);
    assert!(
        r.body["command_error"]
            .to_string()
            .contains("not in the ramdisk"),
        "{}",
        r.body
    );
    // Nothing was written on this machine, and the agent still serves.
    assert!(!std::path::Path::new("/etc/.rescued").exists());
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.process.is_running(), "{}", agent.process.report());
    assert_eq!(api.get("/v1/status", None).status, 200);

    // A missing password is a parameter error (a failed sync result, as IPA's is), checked
    // before anything is written.
    let r = api.command("rescue.finalize_rescue", json!({}), true, Some(TOKEN));
    assert_eq!(r.body["command_status"], "FAILED", "{}", r.body);
    assert_eq!(
        r.body["command_error"]["type"], "InvalidCommandParamsError",
        "{}",
        r.body
    );
    assert!(agent.process.is_running());
}

#[test]
fn lockdown_closes_the_api_and_stops_heartbeats_but_the_agent_stays_up() {
    let disk = TestDisk::create("e2e_rescue::lockdown", 4 << 20).expect("disk");
    let ironic = FakeIronic::start(FakeIronicConfig {
        heartbeat_timeout: 3,
        ..FakeIronicConfig::default()
    })
    .expect("fake Ironic");
    // Plain HTTP so that a raw kept-alive connection can be held open below.
    let mut agent = spawn_agent_for_ironic(&ironic, &disk.path(), "ipa-enable-auto-tls=0", &[]);
    let token = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        (!ironic.heartbeats().is_empty())
            .then(|| ironic.node().token)
            .flatten()
    })
    .unwrap_or_else(|| panic!("no heartbeat\n{}", agent.process.report()));

    let mut idle = kept_alive(agent.port);
    let r = agent
        .api()
        .command("system.lockdown", json!({}), true, Some(&token));
    assert_eq!(r.status, 200, "{:?}", r);
    assert_eq!(r.body["command_status"], "SUCCEEDED", "{}", r.body);

    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(100), || {
            port_refuses(agent.port).then_some(())
        })
        .is_some(),
        "the API still accepts connections after lockdown"
    );
    assert!(
        closed_by_peer(&mut idle),
        "a kept-alive connection outlived the API"
    );
    // Heartbeats stop: none arrive over more than two intervals.
    std::thread::sleep(Duration::from_secs(1));
    let before = ironic.heartbeats().len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        ironic.heartbeats().len(),
        before,
        "heartbeats after lockdown"
    );
    assert!(
        agent.process.is_running(),
        "the agent must idle until power-off, not exit\n{}",
        agent.process.report()
    );
}
