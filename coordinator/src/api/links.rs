//! Signed download links: a URL that carries its own permission, for a
//! browser or a tool without a key, valid until it expires.
//!
//! `/v1/downloads/{job}/{name}?expires=<unix s>&sig=<hex>` where `sig` is
//! HMAC-SHA256, under a secret only the coordinator knows, of
//! `"{job}/{name}\n{expires}"`. Changing any of the three breaks the
//! signature; a link past `expires` is refused even with a good one.

use std::path::Path;

use actix_web::http::StatusCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::problem::Problem;
use crate::auth::secret::{random_bytes, write_private};

/// The file in the data dir holding the link secret.
pub const LINK_KEY_FILE: &str = "link-key";
/// Default lifetime of a link, seconds.
pub const DEFAULT_TTL_S: u64 = 3_600;
/// Shortest lifetime a caller may ask for.
pub const MIN_TTL_S: u64 = 60;
/// Longest: a week.
pub const MAX_TTL_S: u64 = 7 * 86_400;

fn tampered() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "invalid link",
        "the link's signature does not match: it was altered, or not made by this coordinator"
            .into(),
        Some("sig"),
    )
}

fn not_expired(expires: u64) -> Result<(), Problem> {
    let now = now_s();
    if now > expires {
        return Err(Problem::new(
            StatusCode::GONE,
            "link expired",
            format!(
                "the link expired {} s ago (expires={expires}); ask the API for a new one",
                now - expires
            ),
            Some("expires"),
        ));
    }
    Ok(())
}

/// Signs and checks links.
#[derive(Clone)]
pub struct Links {
    key: Vec<u8>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Links {
    /// Loads the secret from the data dir, creating it (0600) on first
    /// start. Deleting the file and restarting invalidates every link
    /// handed out.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Links> {
        let path = data_dir.join(LINK_KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => k,
            _ => {
                let k = random_bytes(32);
                write_private(&path, &k)?;
                k
            }
        };
        Ok(Links { key })
    }

    /// Links signed with `key` (tests).
    pub fn with_key(key: Vec<u8>) -> Links {
        Links { key }
    }

    fn mac(&self, job: u64, name: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(format!("{job}/{name}\n{expires}").as_bytes());
        mac
    }

    /// A link to `name` of `job` valid for `ttl_s` seconds; returns the URL
    /// path and its expiry (unix seconds).
    pub fn sign(&self, job: u64, name: &str, ttl_s: u64) -> (String, u64) {
        let expires = now_s() + ttl_s;
        (self.sign_until(job, name, expires), expires)
    }

    /// A link to `name` of `job` that expires at `expires` (unix seconds).
    pub fn sign_until(&self, job: u64, name: &str, expires: u64) -> String {
        let sig = hex::encode(self.mac(job, name, expires).finalize().into_bytes());
        format!("/v1/downloads/{job}/{name}?expires={expires}&sig={sig}")
    }

    fn stream_mac(&self, key: &str, job: Option<u64>, kinds: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        let job = job.map(|j| j.to_string()).unwrap_or_default();
        mac.update(format!("events\n{key}\n{job}\n{kinds}\n{expires}").as_bytes());
        mac
    }

    /// A link to the event stream for a browser's `EventSource` (which
    /// cannot send a key): it opens the stream as key `key` would, with
    /// these filters, until it expires.
    pub fn sign_stream(
        &self,
        key: &str,
        job: Option<u64>,
        kinds: &str,
        ttl_s: u64,
    ) -> (String, u64) {
        let expires = now_s() + ttl_s;
        let sig = hex::encode(
            self.stream_mac(key, job, kinds, expires)
                .finalize()
                .into_bytes(),
        );
        let mut url = format!("/v1/events?key={key}&expires={expires}&sig={sig}");
        if let Some(j) = job {
            url.push_str(&format!("&job={j}"));
        }
        if !kinds.is_empty() {
            url.push_str(&format!("&kinds={}", super::admin::percent(kinds)));
        }
        (url, expires)
    }

    /// Checks a stream link: 403 if altered, 410 once expired.
    pub fn check_stream(
        &self,
        key: &str,
        job: Option<u64>,
        kinds: &str,
        expires: u64,
        sig: &str,
    ) -> Result<(), Problem> {
        let raw = hex::decode(sig).map_err(|_| tampered())?;
        self.stream_mac(key, job, kinds, expires)
            .verify_slice(&raw)
            .map_err(|_| tampered())?;
        not_expired(expires)
    }

    /// Checks a link's signature, then its expiry: 403 for a link that was
    /// altered or not made here, 410 for one that expired.
    pub fn check(&self, job: u64, name: &str, expires: u64, sig: &str) -> Result<(), Problem> {
        let raw = hex::decode(sig).map_err(|_| tampered())?;
        self.mac(job, name, expires)
            .verify_slice(&raw)
            .map_err(|_| tampered())?;
        not_expired(expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (u64, String) {
        let q = url.split_once('?').unwrap().1;
        let mut expires = 0;
        let mut sig = String::new();
        for kv in q.split('&') {
            match kv.split_once('=').unwrap() {
                ("expires", v) => expires = v.parse().unwrap(),
                ("sig", v) => sig = v.to_string(),
                _ => {}
            }
        }
        (expires, sig)
    }

    #[test]
    fn a_link_is_good_until_altered_or_expired() {
        let links = Links::with_key(b"0123456789abcdef0123456789abcdef".to_vec());
        let (url, expires) = links.sign(7, "output.mp4", 60);
        let (e, sig) = parts(&url);
        assert_eq!(e, expires);
        links.check(7, "output.mp4", e, &sig).unwrap();
        // Another job, another artifact, a later expiry, a flipped digit,
        // another coordinator's key: refused as tampered.
        for (job, name, exp) in [
            (8, "output.mp4", e),
            (7, "poster.png", e),
            (7, "output.mp4", e + 1),
        ] {
            let p = links.check(job, name, exp, &sig).unwrap_err();
            assert_eq!(p.status(), StatusCode::FORBIDDEN);
        }
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let p = links
            .check(7, "output.mp4", e, std::str::from_utf8(&flipped).unwrap())
            .unwrap_err();
        assert_eq!(p.body().field.as_deref(), Some("sig"));
        let other = Links::with_key(vec![1; 32]);
        assert!(other.check(7, "output.mp4", e, &sig).is_err());
        // Signed correctly but in the past: gone, naming the expiry.
        let past = now_s() - 10;
        let sig = hex::encode(links.mac(7, "output.mp4", past).finalize().into_bytes());
        let p = links.check(7, "output.mp4", past, &sig).unwrap_err();
        assert_eq!(p.status(), StatusCode::GONE);
        assert_eq!(p.body().field.as_deref(), Some("expires"));
    }
}
