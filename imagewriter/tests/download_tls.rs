//! HTTPS through http_client(): a CA file is honoured, an unknown issuer is refused, and
//! `insecure` (ipa-insecure) accepts it. The server is rustls on 127.0.0.1 with the fixtures of
//! tests/fixtures/tls (made by make-certs.sh there).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferric_imagewriter::download::{fetch_bytes, HttpOptions};
use ferric_imagewriter::ImageError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const BODY: &[u8] = b"served over TLS";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// Serve BODY over HTTPS for up to `connections` connections; returns the base URL.
fn https_server(connections: usize) -> String {
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(connections) {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => req.push(byte[0]),
                        _ => return, // handshake refused by the client, or EOF
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    BODY.len()
                );
                let _ = tls.write_all(head.as_bytes());
                let _ = tls.write_all(BODY);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    format!("https://127.0.0.1:{port}/disk.raw")
}

fn opts() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        retries: 0,
        ..HttpOptions::default()
    }
}

#[test]
fn ca_file_is_trusted() {
    let url = https_server(1);
    let o = HttpOptions {
        ca_file: Some(fixture("ca.pem")),
        ..opts()
    };
    assert_eq!(fetch_bytes(&url, &o, 1024).unwrap(), BODY);
}

#[test]
fn unknown_issuer_is_refused() {
    let url = https_server(1);
    // System roots (or none) do not include the test CA.
    let err = fetch_bytes(&url, &opts(), 1024).unwrap_err();
    let ImageError::Download { reason, .. } = err else {
        panic!("expected Download, got {err:?}");
    };
    assert!(
        reason.to_lowercase().contains("certificate"),
        "reason should name the certificate problem: {reason}"
    );
}

#[test]
fn insecure_accepts_any_certificate() {
    let url = https_server(1);
    let o = HttpOptions {
        insecure: true,
        ..opts()
    };
    assert_eq!(fetch_bytes(&url, &o, 1024).unwrap(), BODY);
}

#[test]
fn ca_file_without_the_issuer_is_refused() {
    let url = https_server(1);
    // The server certificate is not a CA: trusting it as a root must not validate the chain.
    let o = HttpOptions {
        ca_file: Some(fixture("server.pem")),
        ..opts()
    };
    assert!(matches!(
        fetch_bytes(&url, &o, 1024),
        Err(ImageError::Download { .. })
    ));
}
