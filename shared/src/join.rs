//! Join tokens: what a new node needs to join a farm, in one string.
//!
//! `drj1_<id>_<secret>_<fingerprint>_<address>`: the token's public id (16
//! hex digits) and secret (64), the SHA-256 of the coordinator's
//! certificate (64 hex digits, which the node pins), and the coordinator's
//! QUIC address (`host:port`). An admin creates one per pool
//! (`drover join-tokens create`); the coordinator keeps only the secret's
//! hash. The token is for joining: once a node has joined it has an
//! identity of its own (its certificate) and needs the token no more.

/// Prefix (and format version) of a join token.
pub const JOIN_PREFIX: &str = "drj1_";
/// Hex digits of a token's id.
pub const JOIN_ID_HEX: usize = 16;
/// Hex digits of a token's secret.
pub const JOIN_SECRET_HEX: usize = 64;
/// Longest join token, bytes.
pub const MAX_JOIN_TOKEN_BYTES: usize = 512;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id.
    pub id: String,
    /// Secret, hex.
    pub secret: String,
    /// SHA-256 of the coordinator's certificate, hex.
    pub cert_sha256: String,
    /// The coordinator's QUIC address, `host:port`.
    pub address: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("cert_sha256", &self.cert_sha256)
            .field("address", &self.address)
            .finish()
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl JoinToken {
    /// Reads a token; the error says which part is wrong.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let text = text.trim();
        if text.len() > MAX_JOIN_TOKEN_BYTES {
            return Err(format!(
                "the join token is {} bytes; the limit is {MAX_JOIN_TOKEN_BYTES}",
                text.len()
            ));
        }
        let rest = text
            .strip_prefix(JOIN_PREFIX)
            .ok_or("not a join token: it starts with drj1_ (ask an admin for one: drover join-tokens create)")?;
        let mut parts = rest.splitn(4, '_');
        let (Some(id), Some(secret), Some(fp), Some(address)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the join token is cut short: it has four parts after drj1_".into());
        };
        if !lower_hex(id, JOIN_ID_HEX) {
            return Err("the join token's id is not 16 hex digits".into());
        }
        if !lower_hex(secret, JOIN_SECRET_HEX) {
            return Err("the join token's secret is not 64 hex digits".into());
        }
        if !lower_hex(fp, 64) {
            return Err("the join token's certificate fingerprint is not 64 hex digits".into());
        }
        if address.is_empty() || !address.contains(':') || address.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "the join token's address {address:?} is not host:port"
            ));
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            cert_sha256: fp.to_string(),
            address: address.to_string(),
        })
    }

    /// The token as text.
    pub fn to_text(&self) -> String {
        format!(
            "{JOIN_PREFIX}{}_{}_{}_{}",
            self.id, self.secret, self.cert_sha256, self.address
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(address: &str) -> JoinToken {
        JoinToken {
            id: "0123456789abcdef".into(),
            secret: "a".repeat(64),
            cert_sha256: "b".repeat(64),
            address: address.into(),
        }
    }

    #[test]
    fn tokens_round_trip_with_any_address_form() {
        for addr in ["10.0.0.5:8271", "[::1]:8271", "farm.example.com:8271"] {
            let t = token(addr);
            assert_eq!(JoinToken::parse(&t.to_text()).unwrap(), t);
        }
        assert!(!format!("{:?}", token("h:1")).contains(&"a".repeat(64)));
    }

    #[test]
    fn bad_tokens_say_which_part_is_wrong() {
        let good = token("h:1").to_text();
        for (bad, says) in [
            ("drv_x".to_string(), "starts with drj1_"),
            ("drj1_0123456789abcdef".to_string(), "cut short"),
            (good.replace("0123456789abcdef", "XYZ"), "id"),
            (good.replace(&"a".repeat(64), "aa"), "secret"),
            (good.replace(&"b".repeat(64), "b"), "fingerprint"),
            (good.replace("_h:1", "_nohost"), "host:port"),
            ("drj1_".to_string() + &"x".repeat(600), "limit is 512"),
        ] {
            let e = JoinToken::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
