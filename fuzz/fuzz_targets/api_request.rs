//! The agent's REST API at the HTTP level: the fuzz input is sent as raw bytes over a TCP
//! connection to `api::serve` (hyper + `api::handle`) running on 127.0.0.1, the answer is read
//! (bounded), and then the server must still answer `GET /v1/status`. `hyper::body::Incoming`
//! cannot be built by hand, so this is the only way to reach `handle` with hostile requests.
//!
//! The agent token is 32 random bytes per run, not a fixed word: with a guessable token the
//! fuzzer soon sends `standby.power_off` (the agent process exits outside a ramdisk) or
//! `standby.prepare_image` with an arbitrary image URL (network traffic). So this target covers
//! routing, the query string, the body limit, JSON and the token check; what an authenticated
//! command does is covered by the `api_command` target, which runs only safe commands.
//!
//! Input: the bytes a client sends (one or several pipelined HTTP/1.1 requests, or garbage).
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferric_agent::agent::Agent;
use ferric_agent::api;
use ferric_agent::config::{Cli, Config, KernelParams};
use libfuzzer_sys::fuzz_target;

/// Upper bound on what is read back for one input (the API's answers are small).
const MAX_ANSWER: usize = 1 << 20;

fn random_token() -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Start the API once per process; returns where it listens.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        ));
        let cli = Cli {
            standalone: true,
            agent_token: Some(random_token()),
            sys_root: Some("/nonexistent/ferric-fuzz".into()),
            ..Default::default()
        };
        let config = Config::resolve(&cli, KernelParams::default()).expect("fixed config resolves");
        let agent = Arc::new(Agent::new(config, false));
        let listener = rt
            .block_on(api::bind("127.0.0.1:0".parse().expect("address")))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        rt.spawn(api::serve(agent, listener));
        addr
    })
}

/// A request that ends the connection: appended to every input so that a server which
/// understood the input answers it too and then closes, which ends the read without a timeout.
const CLOSING_STATUS: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";

/// Read until EOF, `MAX_ANSWER` bytes or a read times out.
fn read_answer(s: &mut TcpStream, answer: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    while answer.len() < MAX_ANSWER {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Send `request` and read the answer. The write side is not shut down at once: hyper drops a
/// request whose client half-closes before the answer is written (`half_close` is off), which
/// no real client does. Only when the server is still waiting for more (an input that ends
/// inside a request) is the write side closed, after `patience`.
fn exchange(addr: SocketAddr, request: &[u8], patience: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(patience))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    // The server may answer and close before it has read everything (a 413, a parse error):
    // a failed write is an outcome, not a harness error.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    read_answer(&mut s, &mut answer);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    read_answer(&mut s, &mut answer);
    Ok(answer)
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let mut input = data.to_vec();
    input.extend_from_slice(CLOSING_STATUS);
    let answer = exchange(addr, &input, Duration::from_millis(100)).expect("connect to the API");
    if answer.starts_with(b"HTTP/1.1 5") {
        panic!(
            "the API answered a 5xx to an unauthenticated request: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
    }
    let status = exchange(addr, CLOSING_STATUS, Duration::from_secs(5))
        .expect("connect to the API after the input");
    assert!(
        status.starts_with(b"HTTP/1.1 200 "),
        "the API no longer answers GET /v1/status: {:?}",
        String::from_utf8_lossy(&status[..status.len().min(300)])
    );
});
