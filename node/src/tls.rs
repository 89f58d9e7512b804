//! How a node trusts its coordinator, and how it proves who it is.
//!
//! - Trust: by pinning the coordinator's self-signed certificate, either the
//!   file itself or its SHA-256 fingerprint (a join token carries it).
//!   There is no "accept any certificate" mode.
//! - Identity: a certificate of the node's own, made on its first start and
//!   kept in its data dir (mutual TLS). The coordinator enrolls it when the
//!   node joins with a token and knows the node by it from then on; an
//!   admin can revoke it.

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

/// Files of a node's identity in its data dir.
pub const IDENTITY_CERT_FILE: &str = "node-cert.der";
/// Its private key (mode 0600).
pub const IDENTITY_KEY_FILE: &str = "node-key.der";

/// A client certificate and its key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh certificate for one process (clients that are not nodes:
    /// their key, not their certificate, says who they are).
    pub fn ephemeral() -> anyhow::Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec!["drover-client".to_string()])
            .context("making a client certificate")?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        })
    }

    /// The node's identity from `data_dir`, made there (key mode 0600) on
    /// first start.
    pub fn load_or_create(data_dir: &std::path::Path) -> anyhow::Result<Identity> {
        let cert_path = data_dir.join(IDENTITY_CERT_FILE);
        let key_path = data_dir.join(IDENTITY_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let ck = rcgen::generate_simple_self_signed(vec!["drover-node".to_string()])
                .context("making the node's certificate")?;
            write_private(&key_path, &ck.signing_key.serialize_der())?;
            std::fs::write(&cert_path, ck.cert.der())
                .with_context(|| format!("writing {}", cert_path.display()))?;
        }
        let cert = std::fs::read(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key =
            std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        Ok(Identity {
            cert: CertificateDer::from(cert),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        })
    }

    /// SHA-256 of the certificate, hex: the name the coordinator knows it
    /// by.
    pub fn fingerprint(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.cert))
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A QUIC client configuration that trusts only the pinned coordinator,
/// with a certificate made for this process.
pub fn client_config(trust: &Trust) -> anyhow::Result<quinn::ClientConfig> {
    client_config_with(trust, &Identity::ephemeral()?)
}

/// A QUIC client configuration that trusts only the pinned coordinator
/// and presents `identity`.
pub fn client_config_with(
    trust: &Trust,
    identity: &Identity,
) -> anyhow::Result<quinn::ClientConfig> {
    let chain = vec![identity.cert.clone()];
    let key = identity.key.clone_key();
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
            builder
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .context("the node's certificate")?
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
                .with_client_auth_cert(chain, key)
                .context("the node's certificate")?
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
