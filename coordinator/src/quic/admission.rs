//! Who may open a QUIC connection, and keeping the ones that are open
//! within reach.
//!
//! - Mutual TLS: every peer presents a client certificate. The TLS layer
//!   only checks that the peer holds the certificate's key (the handshake
//!   signature); which certificates are admitted is [`crate::auth::Auth::admit`]'s
//!   decision, made on the hello, where a refusal can carry its reason.
//! - Handshake limits: at most [`MAX_PENDING_HANDSHAKES`] connections may
//!   be between their first packet and their hello at once, and new ones
//!   arrive at most [`HANDSHAKES_PER_S`] per second (burst
//!   [`HANDSHAKE_BURST`]); more are refused before any crypto is done.
//! - [`Connections`]: the live node connections by name, so an admin's
//!   revocation cuts a node off at once.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Connections between their first packet and their hello, at most.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// New connections per second, sustained.
pub const HANDSHAKES_PER_S: u32 = 200;
/// New connections at once, in a burst (a whole farm reconnecting after a
/// coordinator restart).
pub const HANDSHAKE_BURST: u32 = 2_000;

/// Accepts any client certificate whose holder proves it has the key;
/// admission by fingerprint happens after the handshake.
#[derive(Debug)]
pub struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    /// A verifier with ring's signature algorithms.
    pub fn new() -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Parsable as X.509 at least; who it is comes after.
        if end_entity.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// SHA-256 (hex) of the certificate a connection's peer presented.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| super::cert_fingerprint(c))
}

/// The live node connections by node name.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<String, quinn::Connection>>>,
}

impl Connections {
    /// Records `name`'s connection (replacing an older one).
    pub fn insert(&self, name: &str, conn: &quinn::Connection) {
        self.lock().insert(name.to_string(), conn.clone());
    }

    /// Forgets `name`'s connection if it is still `conn`.
    pub fn remove(&self, name: &str, conn: &quinn::Connection) {
        let mut g = self.lock();
        if g.get(name)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            g.remove(name);
        }
    }

    /// Closes `name`'s connection with `code` and `reason`; false when it
    /// is not connected.
    pub fn kick(&self, name: &str, code: u32, reason: &str) -> bool {
        match self.lock().remove(name) {
            Some(c) => {
                c.close(code.into(), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handshake limits: a count of connections before their hello, and a
/// rate of new ones.
#[derive(Clone)]
pub struct HandshakeLimits {
    pending: Arc<tokio::sync::Semaphore>,
    rate: Arc<DefaultDirectRateLimiter>,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits::new(MAX_PENDING_HANDSHAKES, HANDSHAKES_PER_S, HANDSHAKE_BURST)
    }
}

impl HandshakeLimits {
    /// Limits of `pending` at once and `per_s` a second (burst `burst`).
    pub fn new(pending: usize, per_s: u32, burst: u32) -> HandshakeLimits {
        let per_s = NonZeroU32::new(per_s.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        HandshakeLimits {
            pending: Arc::new(tokio::sync::Semaphore::new(pending.max(1))),
            rate: Arc::new(RateLimiter::direct(
                Quota::per_second(per_s).allow_burst(burst),
            )),
        }
    }

    /// A place for one new connection until its hello is read, or why not.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, &'static str> {
        if self.rate.check().is_err() {
            return Err("new connections arrive faster than the handshake rate limit");
        }
        self.pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| "too many connections are in their handshake")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_limited_in_number_and_rate() {
        let l = HandshakeLimits::new(2, 1_000, 1_000);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert!(l.admit().unwrap_err().contains("too many"));
        drop(a);
        assert!(l.admit().is_ok(), "a finished handshake frees its place");
        let r = HandshakeLimits::new(100, 1, 3);
        let held: Vec<_> = (0..3).map(|_| r.admit().unwrap()).collect();
        assert!(r.admit().unwrap_err().contains("rate"));
        drop(held);
    }
}
