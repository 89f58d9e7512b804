//! How a node trusts its coordinator: by pinning the coordinator's
//! self-signed certificate, either the file itself or its SHA-256
//! fingerprint. There is no "accept any certificate" mode.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// The pin.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The coordinator's certificate file (DER), trusted as the only root.
    CertFile(PathBuf),
    /// SHA-256 of the coordinator's certificate, hex.
    Fingerprint(String),
}

/// A QUIC client configuration that trusts only the pinned coordinator.
pub fn client_config(trust: &Trust) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?;
    let tls = match trust {
        Trust::CertFile(path) => {
            let der = std::fs::read(path).with_context(|| {
                format!(
                    "reading the coordinator certificate {} (the coordinator writes it to its data dir on first start)",
                    path.display()
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(der))
                .with_context(|| format!("{} is not a DER certificate", path.display()))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(hex_fp) => {
            let want = hex::decode(hex_fp.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .with_context(|| {
                    format!("--cert-sha256 {hex_fp:?} is not 64 hex digits (a SHA-256 fingerprint)")
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedFingerprint { want, provider }))
                .with_no_client_auth()
        }
    };
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(crate::agent::transport()));
    Ok(cfg)
}

/// Accepts exactly the certificate whose SHA-256 is `want`, and still checks
/// that the server proves it holds that certificate's key.
#[derive(Debug)]
struct PinnedFingerprint {
    want: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sha2::Sha256::digest(end_entity.as_ref()).as_slice() == self.want.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "coordinator certificate does not match the pinned SHA-256 fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by QUIC".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
