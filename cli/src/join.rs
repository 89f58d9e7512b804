//! Where a node finds its coordinator and how it pins it: flags first,
//! then a join token, then what the first join saved in the data dir,
//! then the single-machine defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drover_node::tls::Trust;
use drover_shared::config::DEFAULT_QUIC_ADDR;
use drover_shared::join::JoinToken;
use serde::{Deserialize, Serialize};

/// The file in a node's data dir with the coordinator its token named.
pub const SAVED_FILE: &str = "coordinator.json";

/// What a join saves: where the coordinator is and its fingerprint (never
/// the token's secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// `host:port`.
    pub address: String,
    /// SHA-256 of its certificate, hex.
    pub cert_sha256: String,
}

/// The coordinator a node talks to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its QUIC address.
    pub address: SocketAddr,
    /// How it is pinned.
    pub trust: Trust,
}

fn lookup(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("resolving the coordinator address {address:?}"))?
        .next()
        .with_context(|| format!("{address:?} resolves to no address"))
}

/// Decides the coordinator and the pin; with a token, saves its address
/// and fingerprint in `data_dir` for later starts.
pub fn resolve(
    data_dir: &Path,
    token: Option<&str>,
    coordinator: Option<&str>,
    cert: Option<&Path>,
    cert_sha256: Option<&str>,
    default_cert: &Path,
) -> anyhow::Result<Resolved> {
    let saved_path = data_dir.join(SAVED_FILE);
    let from_token = match token {
        Some(t) => {
            let t = JoinToken::parse(t).map_err(|e| anyhow::anyhow!("--join: {e}"))?;
            let saved = Saved {
                address: t.address.clone(),
                cert_sha256: t.cert_sha256.clone(),
            };
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            std::fs::write(&saved_path, serde_json::to_vec_pretty(&saved)?)
                .with_context(|| format!("writing {}", saved_path.display()))?;
            Some(saved)
        }
        None => match std::fs::read(&saved_path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Saved>(&bytes)
                    .with_context(|| format!("reading {}", saved_path.display()))?,
            ),
            Err(_) => None,
        },
    };
    let address = match (coordinator, &from_token) {
        (Some(a), _) => a.to_string(),
        (None, Some(s)) => s.address.clone(),
        (None, None) => DEFAULT_QUIC_ADDR.to_string(),
    };
    let trust = match (cert, cert_sha256, &from_token) {
        (_, Some(fp), _) => Trust::Fingerprint(fp.to_string()),
        (Some(p), None, _) => Trust::CertFile(p.to_path_buf()),
        (None, None, Some(s)) => Trust::Fingerprint(s.cert_sha256.clone()),
        (None, None, None) => Trust::CertFile(PathBuf::from(default_cert)),
    };
    Ok(Resolved {
        address: lookup(&address)?,
        trust,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_saved_and_used_by_later_starts_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let token = JoinToken {
            id: "0123456789abcdef".into(),
            secret: "a".repeat(64),
            cert_sha256: "b".repeat(64),
            address: "127.0.0.1:9999".into(),
        }
        .to_text();
        let def = Path::new("/nonexistent/cert.der");
        let r = resolve(dir.path(), Some(&token), None, None, None, def).unwrap();
        assert_eq!(r.address, "127.0.0.1:9999".parse::<SocketAddr>().unwrap());
        assert!(matches!(r.trust, Trust::Fingerprint(ref f) if *f == "b".repeat(64)));
        let saved = std::fs::read_to_string(dir.path().join(SAVED_FILE)).unwrap();
        assert!(!saved.contains(&"a".repeat(64)), "the secret is not saved");
        // A later start without the token finds the same coordinator.
        let r = resolve(dir.path(), None, None, None, None, def).unwrap();
        assert_eq!(r.address.port(), 9999);
        // Flags win.
        let r = resolve(dir.path(), None, Some("127.0.0.1:1"), Some(def), None, def).unwrap();
        assert_eq!(r.address.port(), 1);
        assert!(matches!(r.trust, Trust::CertFile(_)));
        assert!(resolve(dir.path(), Some("drj1_x"), None, None, None, def).is_err());
    }
}
