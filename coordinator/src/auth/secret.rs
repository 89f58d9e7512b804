//! Secrets: generating them, their textual form, hashing, and writing them
//! to private files.

use std::path::Path;

use sha2::Digest;

/// Random bytes of a secret.
pub const SECRET_BYTES: usize = 32;
/// Random bytes of a public id.
pub const ID_BYTES: usize = 8;
/// Prefix of an API key.
pub const KEY_PREFIX: &str = "drv_";

/// `n` random bytes from the system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .expect("the system random number generator failed");
    out
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Constant-time equality of two byte strings of equal length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a presented key cannot be one of ours.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretError {
    /// Wrong shape.
    #[error("the API key is malformed: it reads drv_<16 hex digits>_<64 hex digits>")]
    Malformed,
}

/// An API key: `drv_<id>_<secret>`, id and secret in lowercase hex.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret {
    whole: String,
}

impl std::fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeySecret({}{}_…)", KEY_PREFIX, self.id())
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ApiKeySecret {
    /// A new random key.
    pub fn generate() -> ApiKeySecret {
        ApiKeySecret {
            whole: format!(
                "{KEY_PREFIX}{}_{}",
                hex::encode(random_bytes(ID_BYTES)),
                hex::encode(random_bytes(SECRET_BYTES))
            ),
        }
    }

    /// Reads a presented key.
    pub fn parse(text: &str) -> Result<ApiKeySecret, SecretError> {
        let rest = text
            .strip_prefix(KEY_PREFIX)
            .ok_or(SecretError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(SecretError::Malformed)?;
        if !is_lower_hex(id, ID_BYTES * 2) || !is_lower_hex(secret, SECRET_BYTES * 2) {
            return Err(SecretError::Malformed);
        }
        Ok(ApiKeySecret {
            whole: text.to_string(),
        })
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.whole[KEY_PREFIX.len()..KEY_PREFIX.len() + ID_BYTES * 2]
    }

    fn secret(&self) -> &str {
        &self.whole[KEY_PREFIX.len() + ID_BYTES * 2 + 1..]
    }

    /// What is stored: SHA-256 of the secret part, hex.
    pub fn hash_hex(&self) -> String {
        sha256_hex(self.secret().as_bytes())
    }

    /// Whether this is the key whose stored hash is `hash_hex`.
    pub fn matches(&self, hash_hex: &str) -> bool {
        ct_eq(self.hash_hex().as_bytes(), hash_hex.as_bytes())
    }

    /// The whole key, to hand out once.
    pub fn expose(&self) -> &str {
        &self.whole
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), replacing
/// the file atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
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
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_malformed_ones_are_refused() {
        let k = ApiKeySecret::generate();
        let again = ApiKeySecret::parse(k.expose()).unwrap();
        assert_eq!(again.id(), k.id());
        assert!(again.matches(&k.hash_hex()));
        assert!(!ApiKeySecret::generate().matches(&k.hash_hex()));
        for bad in [
            "",
            "drv_",
            "drv_abc_def",
            &k.expose().to_uppercase(),
            &format!("{}x", k.expose()),
            &k.expose().replace("drv_", "key_"),
        ] {
            assert_eq!(
                ApiKeySecret::parse(bad),
                Err(SecretError::Malformed),
                "{bad}"
            );
        }
        assert!(
            !format!("{k:?}").contains(k.secret()),
            "Debug hides the secret"
        );
    }
}
