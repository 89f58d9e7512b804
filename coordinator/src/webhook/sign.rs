//! The `Drover-Signature` header: HMAC-SHA256 over `"<t>.<raw body>"`,
//! written by [`sign`] on every attempt and checked by [`verify`] (the
//! receiver's side, kept here so the scheme has one reference
//! implementation and the tests exercise it). The scheme is described in
//! the [module docs](super).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header naming the event (`job.done`, `job.failed`, ...).
pub const HEADER_EVENT: &str = "Drover-Event";

/// The header carrying the delivery id, the same on every attempt of one
/// delivery: receivers deduplicate by it.
pub const HEADER_DELIVERY: &str = "Drover-Delivery";

/// The header carrying the signature.
pub const HEADER_SIGNATURE: &str = "Drover-Signature";

/// A receiver's default tolerance between `t` and its own clock: five
/// minutes absorbs clock skew and a slow network while keeping the window
/// for replaying a captured delivery short.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// The longest signature header [`verify`] reads. One `t` and a handful of
/// `v1` entries (secret rotation) fit in about 400 bytes; a longer header
/// is refused before any parsing so a hostile sender cannot make the
/// receiver decode and compare thousands of entries.
pub const MAX_HEADER_BYTES: usize = 1_024;

/// HMAC-SHA256 output, in bytes.
const MAC_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The MAC over `"<t>.<body>"`, ready to finalize or verify.
fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length (a long one is hashed first), so this
    // cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Drover-Signature` header value for `body` sent at `t` (Unix
/// seconds): `t=<t>,v1=<64 lowercase hex digits>`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

/// Why [`verify`] refused a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is absent or empty.
    #[error("no {HEADER_SIGNATURE} header (or it is empty): the request is not signed")]
    Missing,
    /// The header cannot be read as `t=<secs>,v1=<hex>[,v1=<hex>...]`.
    #[error("the {HEADER_SIGNATURE} header is malformed: {why}")]
    Malformed {
        /// What is wrong with it.
        why: String,
    },
    /// No `v1` entry matches the body under this secret.
    #[error(
        "the {HEADER_SIGNATURE} header does not match the body: no v1 signature verifies with \
         this secret (a wrong or rotated secret, or a body changed on the way)"
    )]
    Mismatch,
    /// The signature is genuine but `t` is too far from the receiver's clock.
    #[error(
        "the {HEADER_SIGNATURE} timestamp t={t} is {} s away from now ({now_s}), outside the \
         tolerance of {tolerance_s} s: a replayed or long-delayed delivery, or a clock out of sync",
        t.abs_diff(*now_s)
    )]
    Stale {
        /// The header's timestamp (Unix seconds).
        t: u64,
        /// The receiver's clock (Unix seconds).
        now_s: u64,
        /// The largest difference accepted, in seconds.
        tolerance_s: u64,
    },
}

/// Checks a `Drover-Signature` header against the raw body as received.
///
/// Accepts when any `v1` entry matches (several appear while a secret is
/// rotated) and `t` is within `tolerance_s` of `now_s` either way. Entries
/// with other keys are ignored, so a later scheme can be added next to
/// `v1`. The comparison is constant-time (`hmac`'s `verify_slice`). The
/// signature is checked before the timestamp, so [`VerifyError::Stale`]
/// always means a genuine delivery that came too late or was replayed.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(VerifyError::Missing);
    }
    let malformed = |why: String| VerifyError::Malformed { why };
    if header.len() > MAX_HEADER_BYTES {
        return Err(malformed(format!(
            "it is {} bytes long, more than the {MAX_HEADER_BYTES} bytes read",
            header.len()
        )));
    }
    let mut t: Option<u64> = None;
    let mut tags: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let part = part.trim();
        let Some((key, value)) = part.split_once('=') else {
            return Err(malformed(format!(
                "`{}` is not key=value",
                super::clip(part, 40)
            )));
        };
        match key.trim() {
            "t" => {
                if t.is_some() {
                    return Err(malformed("it has two t= entries".into()));
                }
                let secs = value.trim().parse::<u64>().map_err(|_| {
                    malformed(format!(
                        "t=`{}` is not a number of seconds",
                        super::clip(value, 40)
                    ))
                })?;
                t = Some(secs);
            }
            "v1" => {
                let tag = hex::decode(value.trim())
                    .ok()
                    .filter(|tag| tag.len() == MAC_BYTES)
                    .ok_or_else(|| {
                        malformed(format!(
                            "v1=`{}` is not {} hex digits",
                            super::clip(value, 16),
                            MAC_BYTES * 2
                        ))
                    })?;
                tags.push(tag);
            }
            // Another scheme's entry: not ours to judge.
            _ => {}
        }
    }
    let Some(t) = t else {
        return Err(malformed("it has no t= entry".into()));
    };
    if tags.is_empty() {
        return Err(malformed("it has no v1= entry".into()));
    }
    let expected = mac(secret, t, body);
    if !tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        return Err(VerifyError::Mismatch);
    }
    if t.abs_diff(now_s) > tolerance_s {
        return Err(VerifyError::Stale {
            t,
            now_s,
            tolerance_s,
        });
    }
    Ok(())
}
