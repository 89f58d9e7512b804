//! Who may do what: API keys (roles and projects), join tokens for new
//! nodes, and the identities nodes get when they join.
//!
//! # Node admission
//! Every node presents a client certificate of its own (made on its first
//! start, mutual TLS on QUIC). A certificate the coordinator knows (an
//! identity) is admitted as the node it was enrolled for; an unknown one is
//! admitted only with a valid join token, which enrolls it. A revoked
//! identity, a revoked or expired token, a name already bound to another
//! identity, or no token at all are refused at the handshake, with the
//! reason sent to the node.
//!
//! # Secrets
//! Every secret is random (32 bytes from the system), handed out once, and
//! stored only as its SHA-256. A key reads `drv_<id>_<secret>`: the id finds
//! the record, the secret's hash is compared in constant time. A plain hash
//! is enough: the secrets are random, not passwords, so nothing is gained
//! by a slow hash while every request pays for one.
//!
//! # Storage
//! A write-ahead [`Journal`] of its own in `DATA/auth`: every creation and
//! revocation is a fact, durable before the call returns, so a revoked key
//! stays revoked across a crash. The whole model stays in memory (keys,
//! tokens and identities number in the thousands at most).

pub mod http;
pub mod secret;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use drover_shared::api::{IdentityView, JoinTokenView, KeyView, NewJoinToken, Role};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::journal::{Journal, JournalConfig, Model};
pub use secret::{ApiKeySecret, SecretError};

/// Default rate limit of a key, requests per second (its burst is twice
/// this).
pub const DEFAULT_RATE_PER_S: u32 = 50;
/// Largest rate limit a key may be given.
pub const MAX_RATE_PER_S: u32 = 100_000;
/// Default most jobs a key may have queued or running at once.
pub const DEFAULT_MAX_ACTIVE_JOBS: u32 = 1_000;
/// Largest such limit.
pub const MAX_ACTIVE_JOBS_LIMIT: u32 = 1_000_000;
/// Keys at most (revoked ones count until pruned: they are kept so a list
/// shows who had access).
pub const MAX_KEYS: usize = 10_000;
/// A key's or project's name: 1..=64 bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One API key as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id (the part after `drv_`).
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one project it may see and submit to; all when absent.
    pub project: Option<String>,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Requests per second (burst twice this).
    pub rate_per_s: u32,
    /// Jobs queued or running at once.
    pub max_active_jobs: u32,
    /// Created at (ms since the epoch).
    pub created_ms: u64,
    /// Revoked at, if it is.
    pub revoked_ms: Option<u64>,
}

impl KeyRecord {
    /// Who a request with this key is, unless the key is revoked.
    pub fn principal(&self) -> Result<Principal, AuthError> {
        if self.revoked_ms.is_some() {
            return Err(AuthError::Revoked(self.id.clone()));
        }
        Ok(Principal {
            key_id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            project: self.project.clone(),
            rate_per_s: self.rate_per_s,
            max_active_jobs: self.max_active_jobs,
        })
    }

    /// What the API shows of it.
    pub fn view(&self) -> KeyView {
        KeyView {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            project: self.project.clone(),
            rate_per_s: self.rate_per_s,
            max_active_jobs: self.max_active_jobs,
            created_ms: self.created_ms,
            revoked_ms: self.revoked_ms,
        }
    }
}

/// One change to who may do what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthFact {
    /// A key was created.
    KeyCreated(KeyRecord),
    /// A key was revoked.
    KeyRevoked {
        /// Key id.
        id: String,
        /// When.
        at_ms: u64,
    },
    /// A join token was created.
    TokenCreated(TokenRecord),
    /// A join token was revoked.
    TokenRevoked {
        /// Token id.
        id: String,
        /// When.
        at_ms: u64,
    },
    /// A node joined: its certificate is its identity from now on.
    Enrolled(IdentityRecord),
    /// A node's identity was revoked.
    IdentityRevoked {
        /// Certificate fingerprint.
        fingerprint: String,
        /// When.
        at_ms: u64,
    },
}

/// A join token as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// Pool of the nodes joining with it.
    pub pool: Option<String>,
    /// What it is for.
    pub note: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Created at.
    pub created_ms: u64,
    /// Valid until.
    pub expires_ms: Option<u64>,
    /// Revoked at.
    pub revoked_ms: Option<u64>,
}

/// A node's identity as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
    /// Node name it is bound to.
    pub name: String,
    /// Pool, from its token.
    pub pool: Option<String>,
    /// Token it joined with.
    pub token: String,
    /// Joined at.
    pub enrolled_ms: u64,
    /// Revoked at.
    pub revoked_ms: Option<u64>,
}

impl IdentityRecord {
    /// What the API shows.
    pub fn view(&self) -> IdentityView {
        IdentityView {
            fingerprint: self.fingerprint.clone(),
            name: self.name.clone(),
            pool: self.pool.clone(),
            token: self.token.clone(),
            enrolled_ms: self.enrolled_ms,
            revoked_ms: self.revoked_ms,
        }
    }
}

/// Who a node is, once admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// Its pool, when its token set one.
    pub pool: Option<String>,
    /// Enrolled just now (with a token), rather than known.
    pub enrolled: bool,
}

/// Longest join token note.
pub const MAX_NOTE_BYTES: usize = 256;
/// Join tokens at most.
pub const MAX_TOKENS: usize = 10_000;
/// Node identities at most.
pub const MAX_IDENTITIES: usize = 100_000;
/// A join token's lifetime bounds, seconds.
pub const TOKEN_TTL_S: std::ops::RangeInclusive<u64> = 60..=31_536_000;

/// Everything the auth journal knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthModel {
    /// Keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Join tokens by id.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Node identities by certificate fingerprint.
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityRecord>,
}

impl Model for AuthModel {
    type Fact = AuthFact;

    fn kind(fact: &AuthFact) -> u8 {
        match fact {
            AuthFact::KeyCreated(_) => 1,
            AuthFact::KeyRevoked { .. } => 2,
            AuthFact::TokenCreated(_) => 3,
            AuthFact::TokenRevoked { .. } => 4,
            AuthFact::Enrolled(_) => 5,
            AuthFact::IdentityRevoked { .. } => 6,
        }
    }

    fn apply(&mut self, fact: &AuthFact) {
        match fact {
            AuthFact::KeyCreated(k) => {
                self.keys.insert(k.id.clone(), k.clone());
            }
            AuthFact::KeyRevoked { id, at_ms } => {
                if let Some(k) = self.keys.get_mut(id) {
                    k.revoked_ms.get_or_insert(*at_ms);
                }
            }
            AuthFact::TokenCreated(t) => {
                self.tokens.insert(t.id.clone(), t.clone());
            }
            AuthFact::TokenRevoked { id, at_ms } => {
                if let Some(t) = self.tokens.get_mut(id) {
                    t.revoked_ms.get_or_insert(*at_ms);
                }
            }
            AuthFact::Enrolled(i) => {
                self.identities.insert(i.fingerprint.clone(), i.clone());
            }
            AuthFact::IdentityRevoked { fingerprint, at_ms } => {
                if let Some(i) = self.identities.get_mut(fingerprint) {
                    i.revoked_ms.get_or_insert(*at_ms);
                }
            }
        }
    }

    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        Vec::new()
    }
}

/// Who made a request: the key's record, less its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Key id.
    pub key_id: String,
    /// Key name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The one project it is scoped to, or all.
    pub project: Option<String>,
    /// Requests per second.
    pub rate_per_s: u32,
    /// Jobs queued or running at once.
    pub max_active_jobs: u32,
}

impl Principal {
    /// Whether it may see or act on things of `project`.
    pub fn sees(&self, project: &str) -> bool {
        self.project.as_deref().is_none_or(|p| p == project)
    }

    /// Whether its role is at least `role`.
    pub fn is_at_least(&self, role: Role) -> bool {
        role_rank(self.role) >= role_rank(role)
    }
}

fn role_rank(r: Role) -> u8 {
    match r {
        Role::Viewer => 0,
        Role::Submitter => 1,
        Role::Admin => 2,
    }
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No key was given.
    #[error("this endpoint needs an API key: send `Authorization: Bearer <key>` (the CLI reads DROVER_API_KEY)")]
    Missing,
    /// Not a key of this format.
    #[error("{0}")]
    Malformed(SecretError),
    /// No such key, or the secret does not match.
    #[error("the API key is not known to this coordinator")]
    Unknown,
    /// Revoked.
    #[error("the API key {0} was revoked")]
    Revoked(String),
}

/// What a new key is to be.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Who or what it is for: 1..=64 bytes of letters, digits, `-`, `_`,
    /// `.`, `@`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one project it may see and submit to; all when absent.
    #[serde(default)]
    pub project: Option<String>,
    /// Requests per second, 1..=100000 (burst twice this). Default 50.
    #[serde(default)]
    pub rate_per_s: Option<u32>,
    /// Jobs queued or running at once, 1..=1000000. Default 1000.
    #[serde(default)]
    pub max_active_jobs: Option<u32>,
}

/// A field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field.
    pub field: String,
    /// What is wrong, with the limit.
    pub message: String,
}

fn field_error(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.to_string(),
        message,
    }
}

/// Checks a name (of a key, a project, a pool): 1..=64 bytes of letters,
/// digits, `-`, `_`, `.`, `@`.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(field_error(
            field,
            format!(
                "{} bytes; it must be 1..={MAX_NAME_BYTES} bytes",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        return Err(field_error(
            field,
            format!("{c:?} is not allowed; use letters, digits, '-', '_', '.', '@'"),
        ));
    }
    Ok(())
}

impl NewKey {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        if let Some(p) = &self.project {
            check_name("project", p)?;
        }
        if let Some(r) = self.rate_per_s {
            if r == 0 || r > MAX_RATE_PER_S {
                return Err(field_error(
                    "rate_per_s",
                    format!("{r}; it must be 1..={MAX_RATE_PER_S}"),
                ));
            }
        }
        if let Some(m) = self.max_active_jobs {
            if m == 0 || m > MAX_ACTIVE_JOBS_LIMIT {
                return Err(field_error(
                    "max_active_jobs",
                    format!("{m}; it must be 1..={MAX_ACTIVE_JOBS_LIMIT}"),
                ));
            }
        }
        Ok(())
    }
}

/// The auth store: a cheap clonable handle.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Journal<AuthModel>,
    model: RwLock<AuthModel>,
    /// Serialises changes so a check-then-append (the key count, a
    /// revocation) cannot race another.
    write: std::sync::Mutex<()>,
}

/// How long a change may wait for its fsync before it counts as failed.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Auth {
    /// Opens (or creates) the auth journal in `DATA/auth`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Auth> {
        let (journal, recovered) =
            Journal::<AuthModel>::open(JournalConfig::new(data_dir.join("auth")), Box::new(|_| {}))
                .context("opening the auth journal")?;
        Ok(Auth {
            inner: Arc::new(Inner {
                journal,
                model: RwLock::new(recovered.model),
                write: std::sync::Mutex::new(()),
            }),
        })
    }

    /// The auth journal, for an online backup (`crate::backup`).
    pub fn backup_journal(&self) -> Arc<dyn crate::journal::Exportable> {
        Arc::new(self.inner.journal.clone())
    }

    fn model(&self) -> std::sync::RwLockReadGuard<'_, AuthModel> {
        self.inner.model.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `fact` durable, then applies it.
    fn commit(&self, fact: AuthFact) -> anyhow::Result<()> {
        let seq = self.inner.journal.append(vec![fact.clone()])?;
        self.inner.journal.wait_durable(seq, DURABLE_TIMEOUT)?;
        self.inner
            .model
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&fact);
        Ok(())
    }

    /// Whether no key was ever created (a fresh coordinator).
    pub fn is_empty(&self) -> bool {
        self.model().keys.is_empty()
    }

    /// Creates a key; returns its record and the whole secret (shown once).
    pub fn create_key(&self, new: &NewKey) -> anyhow::Result<(KeyRecord, String)> {
        new.validate()?;
        let secret = ApiKeySecret::generate();
        self.insert_key(new, &secret)
    }

    /// Stores `secret` as a key with `new`'s settings.
    pub fn insert_key(
        &self,
        new: &NewKey,
        secret: &ApiKeySecret,
    ) -> anyhow::Result<(KeyRecord, String)> {
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let model = self.model();
        if model.keys.len() >= MAX_KEYS {
            anyhow::bail!("{MAX_KEYS} keys exist, the most this coordinator keeps");
        }
        if model.keys.contains_key(secret.id()) {
            anyhow::bail!("a key with id {} exists already", secret.id());
        }
        drop(model);
        let record = KeyRecord {
            id: secret.id().to_string(),
            name: new.name.clone(),
            role: new.role,
            project: new.project.clone(),
            hash: secret.hash_hex(),
            rate_per_s: new.rate_per_s.unwrap_or(DEFAULT_RATE_PER_S),
            max_active_jobs: new.max_active_jobs.unwrap_or(DEFAULT_MAX_ACTIVE_JOBS),
            created_ms: now_ms(),
            revoked_ms: None,
        };
        self.commit(AuthFact::KeyCreated(record.clone()))?;
        info!(key = %record.id, name = %record.name, role = ?record.role, "API key created");
        Ok((record, secret.expose().to_string()))
    }

    /// Every key, revoked ones included, by id.
    pub fn keys(&self) -> Vec<KeyRecord> {
        self.model().keys.values().cloned().collect()
    }

    /// One key.
    pub fn key(&self, id: &str) -> Option<KeyRecord> {
        self.model().keys.get(id).cloned()
    }

    /// Revokes a key at once; `Ok(None)` when there is no such key.
    pub fn revoke_key(&self, id: &str) -> anyhow::Result<Option<KeyRecord>> {
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let Some(k) = self.key(id) else {
            return Ok(None);
        };
        if k.revoked_ms.is_none() {
            self.commit(AuthFact::KeyRevoked {
                id: id.to_string(),
                at_ms: now_ms(),
            })?;
            info!(key = %id, name = %k.name, "API key revoked");
        }
        Ok(self.key(id))
    }

    /// The principal of key `id` (from a signed link), unless it is
    /// unknown or revoked.
    pub fn principal_of(&self, id: &str) -> Result<Principal, AuthError> {
        let model = self.model();
        let k = model.keys.get(id).ok_or(AuthError::Unknown)?;
        k.principal()
    }

    /// Who `presented` (the whole key) is.
    pub fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let secret = ApiKeySecret::parse(presented).map_err(AuthError::Malformed)?;
        let model = self.model();
        let k = model.keys.get(secret.id()).ok_or(AuthError::Unknown)?;
        if !secret.matches(&k.hash) {
            return Err(AuthError::Unknown);
        }
        k.principal()
    }

    /// On a fresh coordinator, creates the first admin key. With
    /// `key_file`: a key already in the file is adopted (provisioned by a
    /// deployment), else the new key is written there (mode 0600). Without
    /// one the key is printed once on stdout. Returns the key's id when one
    /// was created.
    pub fn bootstrap(&self, key_file: Option<&Path>) -> anyhow::Result<Option<String>> {
        if !self.is_empty() {
            return Ok(None);
        }
        let new = NewKey {
            name: "admin".into(),
            role: Role::Admin,
            project: None,
            rate_per_s: Some(1_000),
            max_active_jobs: None,
        };
        let provisioned = match key_file {
            Some(f) => match std::fs::read_to_string(f) {
                Ok(text) => Some(
                    ApiKeySecret::parse(text.trim())
                        .with_context(|| format!("the admin key in {}", f.display()))?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
            },
            None => None,
        };
        let adopted = provisioned.is_some();
        let secret = provisioned.unwrap_or_else(ApiKeySecret::generate);
        let (record, whole) = self.insert_key(&new, &secret)?;
        match key_file {
            Some(f) if !adopted => {
                secret::write_private(f, format!("{whole}\n").as_bytes())?;
                info!(key = %record.id, file = %f.display(), "first start: admin key written to the file");
            }
            Some(f) => {
                info!(key = %record.id, file = %f.display(), "first start: admin key adopted from the file")
            }
            None => {
                // Printed, never logged: stdout is the operator's terminal.
                println!(
                    "First start: this is the admin API key. It is shown once and only its hash is kept;\nstore it now (export DROVER_API_KEY=...):\n\n  {whole}\n"
                );
            }
        }
        Ok(Some(record.id))
    }

    /// Creates a join token for the coordinator at `address` whose
    /// certificate is `cert_sha256`; returns it and the whole token (shown
    /// once).
    pub fn create_token(
        &self,
        new: &NewJoinToken,
        cert_sha256: &str,
        address: &str,
    ) -> Result<(TokenRecord, String), FieldError> {
        if let Some(p) = &new.pool {
            check_name("pool", p)?;
        }
        if new.note.len() > MAX_NOTE_BYTES {
            return Err(field_error(
                "note",
                format!("{} bytes; the limit is {MAX_NOTE_BYTES}", new.note.len()),
            ));
        }
        if let Some(t) = new.ttl_s {
            if !TOKEN_TTL_S.contains(&t) {
                return Err(field_error(
                    "ttl_s",
                    format!(
                        "{t}; it must be {}..={}",
                        TOKEN_TTL_S.start(),
                        TOKEN_TTL_S.end()
                    ),
                ));
            }
        }
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.model().tokens.len() >= MAX_TOKENS {
            return Err(field_error(
                "token",
                format!("{MAX_TOKENS} join tokens exist, the most kept"),
            ));
        }
        let token = drover_shared::join::JoinToken {
            id: hex::encode(secret::random_bytes(secret::ID_BYTES)),
            secret: hex::encode(secret::random_bytes(secret::SECRET_BYTES)),
            cert_sha256: cert_sha256.to_string(),
            address: address.to_string(),
        };
        let now = now_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            pool: new.pool.clone(),
            note: new.note.clone(),
            hash: secret::sha256_hex(token.secret.as_bytes()),
            created_ms: now,
            expires_ms: new.ttl_s.map(|t| now + t * 1000),
            revoked_ms: None,
        };
        self.commit(AuthFact::TokenCreated(record.clone()))
            .map_err(|e| field_error("token", format!("{e:#}")))?;
        info!(token = %record.id, pool = ?record.pool, "join token created");
        Ok((record, token.to_text()))
    }

    /// A token as the API shows it.
    pub fn token_view(&self, t: &TokenRecord) -> JoinTokenView {
        JoinTokenView {
            id: t.id.clone(),
            pool: t.pool.clone(),
            note: t.note.clone(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            revoked_ms: t.revoked_ms,
            joined: self
                .model()
                .identities
                .values()
                .filter(|i| i.token == t.id)
                .count() as u64,
        }
    }

    /// Every join token.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.model().tokens.values().cloned().collect()
    }

    /// Revokes a join token: no node joins with it any more (nodes that
    /// joined keep their identities). `Ok(None)`: no such token.
    pub fn revoke_token(&self, id: &str) -> anyhow::Result<Option<TokenRecord>> {
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = self.model().tokens.get(id).cloned() else {
            return Ok(None);
        };
        if t.revoked_ms.is_none() {
            self.commit(AuthFact::TokenRevoked {
                id: id.to_string(),
                at_ms: now_ms(),
            })?;
            info!(token = %id, "join token revoked");
        }
        Ok(self.model().tokens.get(id).cloned())
    }

    /// Every node identity.
    pub fn identities(&self) -> Vec<IdentityRecord> {
        self.model().identities.values().cloned().collect()
    }

    /// Revokes the identity with this fingerprint, or the live one bound
    /// to this node name. `Ok(None)`: no such identity.
    pub fn revoke_identity(
        &self,
        fingerprint_or_name: &str,
    ) -> anyhow::Result<Option<IdentityRecord>> {
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let found = {
            let m = self.model();
            m.identities.get(fingerprint_or_name).cloned().or_else(|| {
                m.identities
                    .values()
                    .find(|i| i.name == fingerprint_or_name && i.revoked_ms.is_none())
                    .cloned()
            })
        };
        let Some(i) = found else { return Ok(None) };
        if i.revoked_ms.is_none() {
            self.commit(AuthFact::IdentityRevoked {
                fingerprint: i.fingerprint.clone(),
                at_ms: now_ms(),
            })?;
            info!(node = %i.name, fingerprint = %i.fingerprint, "node identity revoked");
        }
        Ok(self.model().identities.get(&i.fingerprint).cloned())
    }

    /// Decides whether the node presenting the certificate `fingerprint`,
    /// calling itself `name`, with `token` (if it sent one) may join. A
    /// valid token enrolls the certificate (durably) as `name`'s identity.
    /// `Err` is the reason, for the node and the log.
    pub fn admit(
        &self,
        fingerprint: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<Admitted, String> {
        let _w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        {
            let m = self.model();
            if let Some(i) = m.identities.get(fingerprint) {
                if i.revoked_ms.is_some() {
                    return Err(format!(
                        "this node's identity (certificate {}) was revoked by an admin; a new identity needs a new data dir and a join token",
                        &fingerprint[..16.min(fingerprint.len())]
                    ));
                }
                if i.name != name {
                    return Err(format!(
                        "this node's identity is enrolled as {:?}, not {name:?}: keep its name, or join anew with a token",
                        i.name
                    ));
                }
                return Ok(Admitted {
                    pool: i.pool.clone(),
                    enrolled: false,
                });
            }
        }
        let Some(text) = token else {
            return Err("not admitted: this node has no identity here and sent no join token; start it with --join TOKEN (an admin creates one with `drover join-tokens create`)".into());
        };
        let parsed = drover_shared::join::JoinToken::parse(text)
            .map_err(|e| format!("not admitted: {e}"))?;
        let m = self.model();
        let t = m
            .tokens
            .get(&parsed.id)
            .filter(|t| {
                secret::ct_eq(
                    t.hash.as_bytes(),
                    secret::sha256_hex(parsed.secret.as_bytes()).as_bytes(),
                )
            })
            .ok_or("not admitted: the join token is not known to this coordinator")?;
        if t.revoked_ms.is_some() {
            return Err(format!("not admitted: join token {} was revoked", t.id));
        }
        if t.expires_ms.is_some_and(|e| e < now) {
            return Err(format!("not admitted: join token {} expired", t.id));
        }
        if m.identities.len() >= MAX_IDENTITIES {
            return Err(format!(
                "not admitted: {MAX_IDENTITIES} node identities exist, the most kept"
            ));
        }
        if let Some(other) = m
            .identities
            .values()
            .find(|i| i.name == name && i.revoked_ms.is_none())
        {
            return Err(format!(
                "not admitted: the name {name:?} belongs to another node identity ({}); revoke it first (`drover nodes revoke {name}`) or pick another name",
                &other.fingerprint[..16]
            ));
        }
        let record = IdentityRecord {
            fingerprint: fingerprint.to_string(),
            name: name.to_string(),
            pool: t.pool.clone(),
            token: t.id.clone(),
            enrolled_ms: now,
            revoked_ms: None,
        };
        drop(m);
        self.commit(AuthFact::Enrolled(record.clone()))
            .map_err(|e| format!("enrolling the node failed: {e:#}"))?;
        info!(node = %name, fingerprint = %fingerprint, token = %record.token, "node joined: identity enrolled");
        Ok(Admitted {
            pool: record.pool,
            enrolled: true,
        })
    }

    /// Stops the journal.
    pub fn close(self) {
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            let _ = inner.journal.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(role: Role, project: Option<&str>) -> NewKey {
        NewKey {
            name: "ci".into(),
            role,
            project: project.map(str::to_string),
            rate_per_s: None,
            max_active_jobs: None,
        }
    }

    #[test]
    fn a_created_key_authenticates_and_a_revoked_one_stops_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path()).unwrap();
        let (rec, whole) = auth
            .create_key(&new_key(Role::Submitter, Some("shots")))
            .unwrap();
        assert!(!whole.contains(&rec.hash) && rec.hash.len() == 64);
        let p = auth.authenticate(&whole).unwrap();
        assert_eq!(p.role, Role::Submitter);
        assert!(p.sees("shots") && !p.sees("other"));
        assert!(p.is_at_least(Role::Viewer) && !p.is_at_least(Role::Admin));
        // One character changed in the secret: unknown.
        let mut bad = whole.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            auth.authenticate(std::str::from_utf8(&bad).unwrap()),
            Err(AuthError::Unknown)
        );
        auth.revoke_key(&rec.id).unwrap().unwrap();
        assert_eq!(
            auth.authenticate(&whole),
            Err(AuthError::Revoked(rec.id.clone()))
        );
        auth.close();
        let auth = Auth::open(dir.path()).unwrap();
        assert_eq!(auth.authenticate(&whole), Err(AuthError::Revoked(rec.id)));
        assert_eq!(auth.keys().len(), 1);
    }

    #[test]
    fn bootstrap_writes_the_first_admin_key_once_and_adopts_a_provisioned_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.key");
        let auth = Auth::open(&dir.path().join("a")).unwrap();
        assert!(auth.bootstrap(Some(&file)).unwrap().is_some());
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(auth.authenticate(written.trim()).unwrap().role, Role::Admin);
        assert_eq!(auth.bootstrap(Some(&file)).unwrap(), None);
        assert_eq!(auth.keys().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
        // A second coordinator given the same file adopts that key.
        let other = Auth::open(&dir.path().join("b")).unwrap();
        other.bootstrap(Some(&file)).unwrap().unwrap();
        assert!(other.authenticate(written.trim()).is_ok());
    }

    #[test]
    fn a_token_enrolls_a_node_once_and_revocations_refuse_it_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path()).unwrap();
        let fp = "c".repeat(64);
        let new = NewJoinToken {
            pool: Some("gpu".into()),
            ttl_s: None,
            note: "ci".into(),
        };
        let (t, text) = auth.create_token(&new, &fp, "127.0.0.1:8271").unwrap();
        let node_a = "a".repeat(64);
        // No token, an unknown token: refused.
        assert!(auth
            .admit(&node_a, "n1", None)
            .unwrap_err()
            .contains("--join"));
        let forged = text.replace(&text[5..21], "0000000000000000");
        assert!(auth
            .admit(&node_a, "n1", Some(&forged))
            .unwrap_err()
            .contains("not known"));
        // A good token enrolls; the identity is then enough.
        let a = auth.admit(&node_a, "n1", Some(&text)).unwrap();
        assert_eq!(
            a,
            Admitted {
                pool: Some("gpu".into()),
                enrolled: true
            }
        );
        let a = auth.admit(&node_a, "n1", None).unwrap();
        assert!(!a.enrolled);
        // The identity is bound to its name; the name to its identity.
        assert!(auth
            .admit(&node_a, "n2", None)
            .unwrap_err()
            .contains("enrolled as"));
        let node_b = "b".repeat(64);
        assert!(auth
            .admit(&node_b, "n1", Some(&text))
            .unwrap_err()
            .contains("belongs to another"));
        assert_eq!(auth.token_view(&t).joined, 1);
        // A revoked token enrolls no one more; the node that joined stays.
        auth.revoke_token(&t.id).unwrap().unwrap();
        assert!(auth
            .admit(&node_b, "n2", Some(&text))
            .unwrap_err()
            .contains("revoked"));
        assert!(auth.admit(&node_a, "n1", None).is_ok());
        // A revoked identity is refused, also after a reopen.
        auth.revoke_identity("n1").unwrap().unwrap();
        assert!(auth
            .admit(&node_a, "n1", None)
            .unwrap_err()
            .contains("revoked"));
        auth.close();
        let auth = Auth::open(dir.path()).unwrap();
        assert!(auth
            .admit(&node_a, "n1", Some(&text))
            .unwrap_err()
            .contains("revoked"));
        assert_eq!(auth.identities().len(), 1);
        // Expiry and field checks.
        let short = NewJoinToken {
            pool: None,
            ttl_s: Some(5),
            note: String::new(),
        };
        assert_eq!(
            auth.create_token(&short, &fp, "h:1").unwrap_err().field,
            "ttl_s"
        );
        let bad_pool = NewJoinToken {
            pool: Some("a b".into()),
            ttl_s: None,
            note: String::new(),
        };
        assert_eq!(
            auth.create_token(&bad_pool, &fp, "h:1").unwrap_err().field,
            "pool"
        );
    }

    #[test]
    fn new_keys_are_checked_field_by_field() {
        let mut k = new_key(Role::Viewer, None);
        k.name = "has space".into();
        assert_eq!(k.validate().unwrap_err().field, "name");
        let mut k = new_key(Role::Viewer, Some(&"p".repeat(65)));
        assert_eq!(k.validate().unwrap_err().field, "project");
        let mut k2 = new_key(Role::Viewer, None);
        k2.rate_per_s = Some(0);
        assert!(k2.validate().unwrap_err().message.contains("1..=100000"));
        k.project = None;
        k.max_active_jobs = Some(MAX_ACTIVE_JOBS_LIMIT + 1);
        assert_eq!(k.validate().unwrap_err().field, "max_active_jobs");
    }
}
