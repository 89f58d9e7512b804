//! A small blocking client of the coordinator's REST API, used by the client
//! commands and `drover demo`: one typed method per route, and the event
//! stream ([`crate::events`]).

use anyhow::{bail, Context as _};
use drover_shared::api::{
    ArtifactList, ChunkList, JobPage, JobState, JobSummary, JobUpdate, JobView, KeyCreated,
    KeyView, NodeView, Problem, Role, Submitted,
};
use serde::{Deserialize, Serialize};

/// A webhook delivery of a job, as `GET /v1/jobs/{id}/webhooks` lists it.
pub use drover_coordinator::webhook::DeliveryView;

/// `text` as one URL path segment or query value: anything but unreserved
/// characters is percent-encoded, so a node name with a space or `/` stays
/// one segment.
pub fn percent(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The most jobs [`Client::jobs_all`] gathers: a list past this is a
/// mistake of the caller's (filter it), not something to hold in memory.
pub const MAX_LISTED_JOBS: usize = 100_000;

/// Filters of a job list (`GET /v1/jobs`); `None` is no filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this project.
    pub project: Option<String>,
    /// Only jobs submitted with this key (its name or id).
    pub submitter: Option<String>,
    /// Jobs per page, 1..=500 (the API's default: 50).
    pub limit: Option<usize>,
}

impl JobQuery {
    /// The query string, without `?` (empty when there is no filter).
    pub fn to_query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(s) = self.state {
            pairs.push(format!("state={}", state_name(s)));
        }
        if let Some(p) = &self.project {
            pairs.push(format!("project={}", percent(p)));
        }
        if let Some(k) = &self.submitter {
            pairs.push(format!("submitter={}", percent(k)));
        }
        if let Some(l) = self.limit {
            pairs.push(format!("limit={l}"));
        }
        pairs.join("&")
    }
}

/// A job state as the API spells it (`running`).
pub fn state_name(state: JobState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}").to_lowercase())
}

/// The body of `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewKey {
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one project it may see and submit to; all when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Requests per second (the coordinator's default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u32>,
    /// Jobs queued or running at once (the coordinator's default when
    /// absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active_jobs: Option<u32>,
}

/// What a drain or undrain answers: the node, or (202) that the node is
/// known but not connected and the change is remembered for when it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeChange {
    /// The node after the change.
    Node(Box<NodeView>),
    /// Remembered for a node that is not connected.
    Remembered {
        /// `remembered`.
        status: String,
        /// What will happen.
        detail: String,
    },
}

/// An error answer of the API: its status and problem document (RFC 9457),
/// or the raw body when it was not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The problem document, when the body was one.
    pub problem: Option<Problem>,
    /// The body, when it was not (at most [`MAX_ERROR_BODY_CHARS`]).
    pub body: String,
}

/// The most characters of a non-problem error body shown: enough to see
/// what answered (a proxy's page, say), not a whole document.
pub const MAX_ERROR_BODY_CHARS: usize = 500;

impl ApiError {
    /// The error for an answer with `status` and `body`.
    pub fn from_body(status: u16, body: &str) -> ApiError {
        match serde_json::from_str::<Problem>(body) {
            Ok(p) => ApiError {
                status,
                problem: Some(p),
                body: String::new(),
            },
            Err(_) => ApiError {
                status,
                problem: None,
                body: body.chars().take(MAX_ERROR_BODY_CHARS).collect(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.status;
        match &self.problem {
            Some(p) => match &p.field {
                Some(field) => write!(f, "{} ({code}): {} [field: {field}]", p.title, p.detail),
                None => write!(f, "{} ({code}): {}", p.title, p.detail),
            },
            None => write!(f, "HTTP {code}: {}", self.body),
        }
    }
}

/// The REST API at `base` (`http://127.0.0.1:8270`).
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// The API key, sent as `Authorization: Bearer`.
    key: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "DROVER_API_KEY";
/// The environment variable naming a file that holds it.
pub const API_KEY_FILE_ENV: &str = "DROVER_API_KEY_FILE";

/// The config file: `$XDG_CONFIG_HOME/drover/config.toml` (or
/// `~/.config/drover/config.toml`), with `api_key` (or `api_key_file`) and
/// `url`.
pub fn config_path() -> Option<std::path::PathBuf> {
    directories::ProjectDirs::from("", "", "drover").map(|d| d.config_dir().join("config.toml"))
}

/// What the config file may hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The coordinator's REST URL.
    pub url: Option<String>,
    /// The API key.
    pub api_key: Option<String>,
    /// A file holding the API key.
    pub api_key_file: Option<std::path::PathBuf>,
}

impl ClientConfig {
    /// Reads the config file, if there is one.
    pub fn load() -> anyhow::Result<ClientConfig> {
        let Some(path) = config_path() else {
            return Ok(ClientConfig::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API key from {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The API key: `DROVER_API_KEY`, else the file `DROVER_API_KEY_FILE`
/// names, else the config file's `api_key` or `api_key_file`.
pub fn api_key_from_env() -> anyhow::Result<Option<String>> {
    if let Ok(k) = std::env::var(API_KEY_ENV) {
        if !k.trim().is_empty() {
            return Ok(Some(k.trim().to_string()));
        }
    }
    if let Ok(f) = std::env::var(API_KEY_FILE_ENV) {
        return read_key_file(std::path::Path::new(&f)).map(Some);
    }
    let cfg = ClientConfig::load()?;
    if let Some(k) = cfg.api_key {
        return Ok(Some(k));
    }
    cfg.api_key_file.map(|f| read_key_file(&f)).transpose()
}

impl Client {
    /// A client of the coordinator at `base` with no key (public routes
    /// only).
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(std::time::Duration::from_secs(5))
                .timeout_read(std::time::Duration::from_secs(60))
                .build(),
            key: None,
        }
    }

    /// The same client with `key`.
    pub fn with_key(mut self, key: impl Into<String>) -> Client {
        self.key = Some(key.into());
        self
    }

    /// A client with the key from the environment or the config file.
    pub fn from_env(base: &str) -> anyhow::Result<Client> {
        let c = Client::new(base);
        Ok(match api_key_from_env()? {
            Some(k) => c.with_key(k),
            None => c,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &self.url(path));
        match &self.key {
            Some(k) => r.set("authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// The response, or the API's problem document as an [`ApiError`]
    /// (shown as its title, status, detail and field), or why the
    /// coordinator could not be reached.
    pub(crate) fn check(
        &self,
        r: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<ureq::Response> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                Err(ApiError::from_body(status, &body).into())
            }
            Err(e) => Err(anyhow::Error::new(e)).with_context(|| {
                format!(
                    "cannot reach the coordinator at {} (is `drover coordinator` running? set DROVER_URL)",
                    self.base
                )
            }),
        }
    }

    /// `POST /v1/jobs` with a JSON spec.
    pub fn submit_json(&self, spec: &serde_json::Value) -> anyhow::Result<Submitted> {
        let r = self.req("POST", "/v1/jobs").send_json(spec);
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("GET", &format!("/v1/jobs/{id}")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs`: one page, newest first (`query` as in the API:
    /// `state=running&limit=100`).
    pub fn jobs_page(&self, query: &str) -> anyhow::Result<JobPage> {
        let path = if query.is_empty() {
            "/v1/jobs".to_string()
        } else {
            format!("/v1/jobs?{query}")
        };
        let r = self.req("GET", &path).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// Every job, newest first, following the pages (at most `max`).
    pub fn jobs_up_to(&self, max: usize) -> anyhow::Result<Vec<JobSummary>> {
        let mut out = Vec::new();
        let mut next = Some("/v1/jobs?limit=500".to_string());
        while let Some(path) = next.take() {
            let r = self.req("GET", &path).call();
            let page: JobPage = self.check(r)?.into_json()?;
            out.extend(page.jobs);
            if out.len() >= max {
                out.truncate(max);
                break;
            }
            next = page.next;
        }
        Ok(out)
    }

    /// Every job, newest first (at most 100,000).
    pub fn jobs(&self) -> anyhow::Result<Vec<JobSummary>> {
        self.jobs_up_to(100_000)
    }

    /// Polls `GET /v1/jobs/{id}` every `poll` until the job ends, or fails
    /// after `timeout`. Benchmarks poll slowly: every poll costs the
    /// coordinator CPU that nodes would otherwise have.
    pub fn wait_ended(
        &self,
        id: u64,
        poll: std::time::Duration,
        timeout: std::time::Duration,
    ) -> anyhow::Result<JobView> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let job = self.job(id)?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            if std::time::Instant::now() > deadline {
                bail!("job {id} still {:?} after {timeout:?}", job.state);
            }
            std::thread::sleep(poll);
        }
    }

    /// `GET /v1/jobs` with `query`: the first page.
    pub fn list_jobs(&self, query: &JobQuery) -> anyhow::Result<JobPage> {
        self.jobs_page(&query.to_query())
    }

    /// `GET /v1/jobs` with `query`, following `next` to the last page (at
    /// most [`MAX_LISTED_JOBS`] jobs), as one page with no `next`.
    pub fn jobs_all(&self, query: &JobQuery) -> anyhow::Result<JobPage> {
        let mut page = self.list_jobs(query)?;
        let mut next = page.next.take();
        page.next_cursor = None;
        while let Some(path) = next.take() {
            if page.jobs.len() >= MAX_LISTED_JOBS {
                bail!(
                    "more than {MAX_LISTED_JOBS} jobs match; narrow the list with --state, --project or --submitter"
                );
            }
            let r = self.req("GET", &path).call();
            let more: JobPage = self.check(r)?.into_json()?;
            page.jobs.extend(more.jobs);
            next = more.next;
        }
        Ok(page)
    }

    /// `DELETE /v1/jobs/{id}`.
    pub fn cancel(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("DELETE", &format!("/v1/jobs/{id}")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/jobs/{id}/retry`.
    pub fn retry(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("POST", &format!("/v1/jobs/{id}/retry")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/jobs/{id}/pause`.
    pub fn pause(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("POST", &format!("/v1/jobs/{id}/pause")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/jobs/{id}/resume`.
    pub fn resume(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("POST", &format!("/v1/jobs/{id}/resume")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `PATCH /v1/jobs/{id}` with `{"priority": N}`.
    pub fn set_priority(&self, id: u64, priority: u8) -> anyhow::Result<JobView> {
        let body = JobUpdate {
            priority: Some(priority),
        };
        let r = self
            .req("PATCH", &format!("/v1/jobs/{id}"))
            .send_json(&body);
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs/{id}/chunks`.
    pub fn chunks(&self, id: u64) -> anyhow::Result<ChunkList> {
        let r = self.req("GET", &format!("/v1/jobs/{id}/chunks")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs/{id}/artifacts`, links valid for `ttl_s` seconds (the
    /// API's default, an hour, when `None`).
    pub fn artifacts(&self, id: u64, ttl_s: Option<u64>) -> anyhow::Result<ArtifactList> {
        let path = match ttl_s {
            Some(t) => format!("/v1/jobs/{id}/artifacts?ttl_s={t}"),
            None => format!("/v1/jobs/{id}/artifacts"),
        };
        let r = self.req("GET", &path).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs/{id}/webhooks`: every delivery with its attempts.
    pub fn webhooks(&self, id: u64) -> anyhow::Result<Vec<DeliveryView>> {
        let r = self.req("GET", &format!("/v1/jobs/{id}/webhooks")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// Opens a signed download link (`/v1/downloads/...`, as an artifact
    /// list gives it, or a whole URL). No key is sent: the signature is the
    /// permission, and a link may point elsewhere.
    pub fn open_link(&self, link: &str) -> anyhow::Result<ureq::Response> {
        let url = if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else {
            self.url(link)
        };
        let r = self.agent.get(&url).call();
        self.check(r)
    }

    /// `GET path` read as `T`, for routes without a method of their own
    /// (`drover top` reads `/v1/fleet` and `/v1/pools` with it).
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self.req("GET", path).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET path` read as text (a chunk log: `text/plain`).
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self.req("GET", path).call();
        Ok(self.check(r)?.into_string()?)
    }

    /// `GET /v1/nodes`.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let r = self.req("GET", "/v1/nodes").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/nodes/{name}`.
    pub fn node(&self, name: &str) -> anyhow::Result<NodeView> {
        let r = self
            .req("GET", &format!("/v1/nodes/{}", percent(name)))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/clear-quarantine`.
    pub fn clear_quarantine(&self, name: &str) -> anyhow::Result<NodeView> {
        let r = self
            .req(
                "POST",
                &format!("/v1/nodes/{}/clear-quarantine", percent(name)),
            )
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/drain` (`Some(now)`) or `/undrain` (`None`).
    pub fn drain_node(&self, name: &str, drain: Option<bool>) -> anyhow::Result<NodeChange> {
        let path = match drain {
            Some(true) => format!("/v1/nodes/{}/drain?now=true", percent(name)),
            Some(false) => format!("/v1/nodes/{}/drain", percent(name)),
            None => format!("/v1/nodes/{}/undrain", percent(name)),
        };
        let r = self.req("POST", &path).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/pools`: every auto-scaling pool.
    pub fn pools(&self) -> anyhow::Result<Vec<drover_shared::api::PoolView>> {
        let r = self.req("GET", "/v1/pools").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/pools/{name}/decisions?limit=N`: newest first.
    pub fn pool_decisions(
        &self,
        name: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<drover_shared::api::ScaleDecisionView>> {
        let path = format!("/v1/pools/{}/decisions?limit={limit}", percent(name));
        let r = self.req("GET", &path).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/preempt`: a preemption notice.
    pub fn preempt(&self, name: &str) -> anyhow::Result<NodeView> {
        let r = self
            .req("POST", &format!("/v1/nodes/{}/preempt", percent(name)))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// [`Client::drain_node`], for callers that only need it done.
    pub fn drain(&self, name: &str, drain: Option<bool>) -> anyhow::Result<()> {
        self.drain_node(name, drain).map(drop)
    }

    /// `GET /v1/keys`: every key, revoked ones included (never secrets).
    pub fn keys(&self) -> anyhow::Result<Vec<KeyView>> {
        let r = self.req("GET", "/v1/keys").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/keys`: the new key with its secret, shown this once.
    pub fn create_key(&self, key: &NewKey) -> anyhow::Result<KeyCreated> {
        let r = self.req("POST", "/v1/keys").send_json(key);
        Ok(self.check(r)?.into_json()?)
    }

    /// `DELETE /v1/keys/{id}`.
    pub fn revoke_key(&self, id: &str) -> anyhow::Result<KeyView> {
        let r = self
            .req("DELETE", &format!("/v1/keys/{}", percent(id)))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/join-tokens`.
    pub fn join_tokens(&self) -> anyhow::Result<Vec<drover_shared::api::JoinTokenView>> {
        let r = self.req("GET", "/v1/join-tokens").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/join-tokens`: the token, shown this once.
    pub fn create_join_token(
        &self,
        new: &drover_shared::api::NewJoinToken,
    ) -> anyhow::Result<drover_shared::api::JoinTokenCreated> {
        let r = self.req("POST", "/v1/join-tokens").send_json(new);
        Ok(self.check(r)?.into_json()?)
    }

    /// `DELETE /v1/join-tokens/{id}`.
    pub fn revoke_join_token(&self, id: &str) -> anyhow::Result<drover_shared::api::JoinTokenView> {
        let r = self
            .req("DELETE", &format!("/v1/join-tokens/{}", percent(id)))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/identities`.
    pub fn identities(&self) -> anyhow::Result<Vec<drover_shared::api::IdentityView>> {
        let r = self.req("GET", "/v1/identities").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `DELETE /v1/identities/{fingerprint or node name}`.
    pub fn revoke_identity(&self, id: &str) -> anyhow::Result<drover_shared::api::IdentityView> {
        let r = self
            .req("DELETE", &format!("/v1/identities/{}", percent(id)))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `PUT /v1/nodes/{name}/tags`: the node (or `None` when it is not
    /// connected and the tags are remembered).
    pub fn set_node_tags(
        &self,
        name: &str,
        tags: Option<Vec<String>>,
    ) -> anyhow::Result<Option<NodeView>> {
        let r = self
            .req("PUT", &format!("/v1/nodes/{}/tags", percent(name)))
            .send_json(drover_shared::api::NodeTags { tags });
        let resp = self.check(r)?;
        if resp.status() == 202 {
            return Ok(None);
        }
        Ok(Some(resp.into_json()?))
    }

    /// `GET /v1/events`: the event stream, following on across dropped
    /// connections (see [`crate::events::EventStream`]).
    pub fn events(
        &self,
        job: Option<u64>,
        last_event_id: Option<&str>,
    ) -> crate::events::EventStream {
        self.events_with(crate::events::EventQuery {
            job,
            kinds: Vec::new(),
            last_event_id: last_event_id.map(str::to_string),
        })
    }

    /// `GET /v1/events` with every filter.
    pub fn events_with(&self, query: crate::events::EventQuery) -> crate::events::EventStream {
        crate::events::EventStream::new(self.clone(), query)
    }

    /// Opens `GET /v1/events?query` resuming after `last_event_id`.
    pub(crate) fn open_events(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<ureq::Response> {
        let path = if query.is_empty() {
            "/v1/events".to_string()
        } else {
            format!("/v1/events?{query}")
        };
        let mut req = self.req("GET", &path).set("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.set("last-event-id", id);
        }
        self.check(req.call())
    }

    /// `GET /v1/jobs/{id}/output`, written to `dest`.
    pub fn download(&self, id: u64, dest: &std::path::Path) -> anyhow::Result<u64> {
        let r = self.req("GET", &format!("/v1/jobs/{id}/output")).call();
        let resp = self.check(r)?;
        let tmp = dest.with_extension("download");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let n = std::io::copy(&mut resp.into_reader(), &mut f)?;
        drop(f);
        std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use drover_shared::api::JobState;

    #[test]
    fn job_filters_become_one_query_string() {
        let check = |q: super::JobQuery, want: &str| assert_eq!(q.to_query(), want);
        check(super::JobQuery::default(), "");
        check(
            super::JobQuery {
                state: Some(JobState::Running),
                limit: Some(10),
                ..Default::default()
            },
            "state=running&limit=10",
        );
        check(
            super::JobQuery {
                project: Some("film a".into()),
                submitter: Some("ci@x".into()),
                ..Default::default()
            },
            "project=film%20a&submitter=ci%40x",
        );
    }

    #[test]
    fn an_error_answer_reads_as_its_problem_document() {
        let check = |status: u16, body: &str, want: &str| {
            assert_eq!(super::ApiError::from_body(status, body).to_string(), want)
        };
        check(
            403,
            r#"{"title":"forbidden","status":403,"detail":"a viewer key cannot cancel","field":"role"}"#,
            "forbidden (403): a viewer key cannot cancel [field: role]",
        );
        check(
            404,
            r#"{"title":"no such job","status":404,"detail":"job 9 does not exist"}"#,
            "no such job (404): job 9 does not exist",
        );
        check(502, "Bad Gateway", "HTTP 502: Bad Gateway");
    }

    #[test]
    fn names_stay_one_path_segment() {
        let check = |name: &str, want: &str| assert_eq!(super::percent(name), want);
        check("gpu-07", "gpu-07");
        check("render box/2", "render%20box%2F2");
        check("a?b#c", "a%3Fb%23c");
    }
}
