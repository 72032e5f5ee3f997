//! The agent API over TLS. Ironic requires TLS for agent callbacks by default
//! (`[agent]require_tls = true`); like IPA's auto TLS, the agent generates a self-signed
//! certificate for its advertised address at start when Ironic supports API 1.68, serves
//! HTTPS with it and sends it to Ironic as `agent_verify_ca`, so the conductor can verify
//! exactly this agent. Given certificate and key files are used as they are instead.
//!
//! The server configuration sits behind a lock so that lookup's `tls_min_version` can
//! tighten it after the listener is already serving.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// TLS material and the live server configuration.
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    config: RwLock<Arc<ServerConfig>>,
    /// The generated certificate in PEM, sent to Ironic as `agent_verify_ca`; `None` for
    /// operator-provided certificates.
    pub verify_ca: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    tls13_only: bool,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs.to_vec(), key.clone_key())
        .map_err(|e| format!("unusable certificate/key: {e}"))?;
    Ok(Arc::new(cfg))
}

impl ServerTls {
    /// A self-signed certificate whose subject alternative name is `host` (an IP address
    /// or a DNS name), valid from now on.
    pub fn generate(host: &str) -> Result<ServerTls, String> {
        let host = host.trim_matches(|c| c == '[' || c == ']').to_string();
        let ck = rcgen::generate_simple_self_signed(vec![host.clone()])
            .map_err(|e| format!("cannot generate a certificate for {host}: {e}"))?;
        let pem = ck.cert.pem();
        let certs = vec![ck.cert.der().clone()];
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| format!("generated key unusable: {e}"))?;
        let config = RwLock::new(build(&certs, &key, false)?);
        log::info!(
            "generated a TLS certificate for {host} ({})",
            if host.parse::<IpAddr>().is_ok() {
                "IP SAN"
            } else {
                "DNS SAN"
            }
        );
        Ok(ServerTls {
            certs,
            key,
            config,
            verify_ca: Some(pem),
        })
    }

    /// Certificate chain and private key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("{}: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", cert.display()));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let config = RwLock::new(build(&certs, &key, false)?);
        Ok(ServerTls {
            certs,
            key,
            config,
            verify_ca: None,
        })
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Apply lookup's `tls_min_version` ("1.2" or "1.3").
    pub fn set_min_version(&self, v: &str) {
        let tls13_only = match v.trim() {
            "1.3" => true,
            "1.2" | "" => false,
            other => {
                log::warn!("ignoring unknown tls_min_version {other:?}");
                return;
            }
        };
        match build(&self.certs, &self.key, tls13_only) {
            Ok(c) => {
                *self.config.write().unwrap_or_else(|p| p.into_inner()) = c;
                log::info!("agent API TLS: minimum version {v}");
            }
            Err(e) => log::error!("cannot apply tls_min_version {v}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_names_the_address() {
        let t = ServerTls::generate("127.0.0.1").unwrap();
        let pem = t.verify_ca.as_deref().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        // The SAN holds the IP address as 4 raw bytes (tag 0x87, length 4).
        let der = t.certs[0].as_ref();
        assert!(
            der.windows(6).any(|w| w == [0x87, 4, 127, 0, 0, 1]),
            "IP SAN present"
        );
        assert!(ServerTls::generate("agent.example").is_ok());
        t.set_min_version("1.3");
        assert_eq!(t.config().alpn_protocols.len(), 0);
    }
}
