//! The agent REST API (PROTOCOL.md §2; IPA `api/app.py`), a thin layer (STYLE.md pattern
//! 6): parse the request, hand it to the [`crate::commands::Runner`], serialise the answer.
//! Every error body is WSME's `{"faultcode", "faultstring"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::error::AgentError;

/// The largest request body accepted. A config drive travels inside the body: Ironic caps
/// it at 64 MiB after gzip, base64 adds a third, and the rest of the step is small.
pub const MAX_BODY: usize = 96 * 1024 * 1024;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a body read from a caller without the right agent token.
const UNAUTHENTICATED_BODY: usize = 64 * 1024;

/// A request body must arrive within this time plus its size at [`MIN_BODY_RATE`].
const BODY_GRACE: Duration = Duration::from_secs(20);

/// Slowest body transfer accepted, in bytes per second (a 96 MiB config drive step may take
/// about 2 minutes; a conductor on any network sends it far faster).
const MIN_BODY_RATE: u64 = 1 << 20;

/// At most this many connections are served at once; the rest wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// An HTTP error with WSME's body. `faultstring` is `"<message>: <details>"`, which for
/// werkzeug's exceptions reads `"401 Unauthorized: Token invalid."`.
fn fault(status: StatusCode, faultstring: String) -> Resp {
    json_response(
        status,
        &json!({
            "faultcode": if status.as_u16() >= 500 { "Server" } else { "Client" },
            "faultstring": faultstring,
        }),
    )
}

fn agent_error(e: &AgentError) -> Resp {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.fault_body())
}

fn unauthorized() -> Resp {
    fault(
        StatusCode::UNAUTHORIZED,
        "401 Unauthorized: Token invalid.".into(),
    )
}

fn bad_request(why: &str) -> Resp {
    fault(StatusCode::BAD_REQUEST, format!("400 Bad Request: {why}"))
}

fn not_found() -> Resp {
    fault(
        StatusCode::NOT_FOUND,
        "404 Not Found: The requested URL was not found on the server. If you entered the URL \
         manually please check your spelling and try again."
            .into(),
    )
}

fn method_not_allowed() -> Resp {
    fault(
        StatusCode::METHOD_NOT_ALLOWED,
        "405 Method Not Allowed: The method is not allowed for the requested URL.".into(),
    )
}

/// Decode a query string into (key, value) pairs.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len()
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit() =>
                {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn root_url(req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn link(root: &str, rel: &str, resource: &str, bookmark: bool) -> Value {
    let href = if bookmark {
        format!("{root}/{resource}")
    } else {
        format!("{root}/v1/{resource}")
    };
    json!({"href": href, "rel": rel})
}

fn version_doc(root: &str) -> Value {
    json!({
        "id": "v1",
        "links": [
            link(root, "self", "v1", true),
            {"href": "https://docs.openstack.org/ironic-python-agent", "rel": "describedby",
             "type": "text/html"},
        ],
    })
}

/// Route one request.
pub async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let pairs = query_pairs(req.uri().query());
    // Same routes with or without the /v1 prefix (IPA's default version).
    let rel = path.strip_prefix("/v1").unwrap_or(&path);
    let method = req.method().clone();
    match (rel, path.as_str()) {
        (_, "/") => {
            if method != Method::GET {
                return method_not_allowed();
            }
            let root = root_url(&req);
            json_response(
                StatusCode::OK,
                &json!({
                    "name": "OpenStack Ironic Python Agent API",
                    "description": "Ironic Python Agent is a provisioning agent for OpenStack Ironic",
                    "versions": [version_doc(&root)],
                    "default_version": version_doc(&root),
                }),
            )
        }
        ("" | "/", "/v1" | "/v1/") => {
            if method != Method::GET {
                return method_not_allowed();
            }
            let root = root_url(&req);
            let mut v = version_doc(&root);
            v["commands"] = json!([
                link(&root, "self", "commands", false),
                link(&root, "bookmark", "commands", true)
            ]);
            v["status"] = json!([
                link(&root, "self", "status", false),
                link(&root, "bookmark", "status", true)
            ]);
            v["media_types"] = json!([{"base": "application/json",
                "type": "application/vnd.openstack.ironic-python-agent.v1+json"}]);
            json_response(StatusCode::OK, &v)
        }
        ("/status", _) => {
            if method != Method::GET {
                return method_not_allowed();
            }
            json_response(
                StatusCode::OK,
                &json!({"started_at": agent.started_at, "version": crate::AGENT_VERSION}),
            )
        }
        ("/commands" | "/commands/", _) => {
            let token = query_get(&pairs, "agent_token");
            match method {
                Method::GET => {
                    if !agent.validate_token(token) {
                        return unauthorized();
                    }
                    let list = agent.runner.list();
                    json_response(StatusCode::OK, &json!({ "commands": list }))
                }
                Method::POST => run_command(agent.clone(), req, &pairs).await,
                _ => method_not_allowed(),
            }
        }
        (r, _) if r.starts_with("/commands/") => {
            if method != Method::GET {
                return method_not_allowed();
            }
            if !agent.validate_token(query_get(&pairs, "agent_token")) {
                return unauthorized();
            }
            let id = &r["/commands/".len()..];
            let Some(entry) = agent.runner.get(id) else {
                return agent_error(&AgentError::not_found("Command", id));
            };
            if wants_wait(&pairs) {
                entry.wait().await;
            }
            json_response(
                StatusCode::OK,
                &serde_json::to_value(entry.snapshot()).unwrap_or_default(),
            )
        }
        _ => not_found(),
    }
}

fn wants_wait(pairs: &[(String, String)]) -> bool {
    query_get(pairs, "wait").is_some_and(|w| w.eq_ignore_ascii_case("true"))
}

async fn run_command(
    agent: Arc<Agent>,
    req: Request<Incoming>,
    pairs: &[(String, String)],
) -> Resp {
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("413 Request Entity Too Large: the body exceeds {MAX_BODY} bytes"),
            );
        }
    }
    let authorized = agent.validate_token(query_get(pairs, "agent_token"));
    // IPA answers a malformed body with 400 before it looks at the token. The token is known
    // before a byte of the body is read, though, so a caller without it gets at most a small
    // body read (enough for IPA's 400-before-401 order on ordinary requests), never 96 MiB.
    let limit = if authorized {
        MAX_BODY
    } else {
        UNAUTHENTICATED_BODY
    };
    let body = match read_body(req.into_body(), limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) if !authorized => return unauthorized(),
        Err(BodyError::TooLarge) => {
            return fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("413 Request Entity Too Large: the body exceeds {MAX_BODY} bytes"),
            )
        }
        Err(BodyError::TooSlow(n)) => {
            log::warn!("a command request body stalled after {n} bytes; connection closed");
            let mut r = fault(
                StatusCode::REQUEST_TIMEOUT,
                format!("408 Request Timeout: the body arrived too slowly ({n} bytes)"),
            );
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return r;
        }
        Err(BodyError::Read(e)) => {
            return bad_request(&format!("cannot read the request body: {e}"))
        }
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Failed to decode JSON object: {e}")),
    };
    let (name, params) = match (
        parsed.get("name").and_then(Value::as_str),
        parsed.get("params").and_then(Value::as_object),
    ) {
        (Some(n), Some(p)) => (n.to_string(), p.clone()),
        _ => return bad_request("Missing or invalid name or params"),
    };
    if !authorized {
        return unauthorized();
    }
    match agent.runner.execute(&agent, &name, params).await {
        Ok(entry) => {
            if wants_wait(pairs) {
                entry.wait().await;
            }
            json_response(
                StatusCode::OK,
                &serde_json::to_value(entry.snapshot()).unwrap_or_default(),
            )
        }
        Err(e) => agent_error(&e),
    }
}

enum BodyError {
    TooLarge,
    TooSlow(usize),
    Read(hyper::Error),
}

/// Read a request body of at most `limit` bytes. It must keep up [`MIN_BODY_RATE`] after a
/// [`BODY_GRACE`]: the header timeout does not cover bodies, and a body trickled a byte a
/// second would otherwise hold a connection slot for ever.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    use hyper::body::Body as _;
    let hint = body.size_hint().exact().unwrap_or(0);
    if hint > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let start = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(hint.min(1 << 20) as usize);
    loop {
        let expected = (hint as usize).max(buf.len()) as u64;
        let deadline = start + BODY_GRACE + Duration::from_millis(expected * 1000 / MIN_BODY_RATE);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow(buf.len())),
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Bind the listener (fails early, before lookup, if the port is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    sock.set_reuseaddr(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // "::" serves IPv4 too, as IPA's default listen address does.
        let raw = socket2_dual_stack(&sock);
        if let Err(e) = raw {
            log::warn!("cannot enable dual-stack on {addr}: {e}");
        }
    }
    sock.bind(addr)?;
    sock.listen(1024)
}

fn socket2_dual_stack(sock: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::Ipv6V6Only, &false)
        .map_err(std::io::Error::from)
}

/// Serve plain HTTP until the process ends.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    serve_with(agent, listener, None).await
}

/// Serve until the process ends; HTTPS when `tls` is given.
pub async fn serve_with(
    agent: Arc<Agent>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ServerTls>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            h = agent.handed_over() => {
                // Dropping the listener closes the port: new connections are refused.
                log::info!("API closed ({h:?})");
                return;
            }
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(agent, TokioIo::new(stream), peer).await,
                Some(t) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(t.config());
                    // A client that never finishes the handshake holds a slot only this long.
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(agent, TokioIo::new(s), peer).await,
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<I>(agent: Arc<Agent>, io: I, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let watcher = agent.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let agent = agent.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let resp = handle(agent, req).await;
            log::debug!("{peer} {method} {path} → {}", resp.status().as_u16());
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = watcher.handed_over() => {
            // Finish the request in flight (the answer to finalize_rescue or lockdown itself),
            // then close: kept-alive connections must not outlive the API.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        log::debug!("connection from {peer} ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let p = query_pairs(Some(
            "agent_token=a%2Bb%3D&wait=true&x&y=1+2&bad=%zz&end=%4",
        ));
        assert_eq!(query_get(&p, "agent_token"), Some("a+b="));
        assert_eq!(query_get(&p, "wait"), Some("true"));
        assert_eq!(query_get(&p, "x"), Some(""));
        assert_eq!(query_get(&p, "y"), Some("1 2"));
        assert_eq!(query_get(&p, "bad"), Some("%zz"));
        assert_eq!(query_get(&p, "end"), Some("%4"));
        assert!(wants_wait(&p));
        assert!(query_pairs(None).is_empty());
    }
}
