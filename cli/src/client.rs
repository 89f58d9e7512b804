//! A small blocking client of the coordinator's REST API, used by the client
//! commands and `drover demo`.

use anyhow::{bail, Context as _};
use drover_shared::api::{JobPage, JobSummary, JobView, NodeView, Problem, Submitted};

/// `text` as one URL path segment: anything but unreserved characters is
/// percent-encoded, so a node name with a space or `/` stays one segment.
fn path_segment(text: &str) -> String {
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

    fn check(&self, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<ureq::Response> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<Problem>(&body) {
                    Ok(p) => match p.field {
                        Some(f) => bail!("{} ({code}): {} [field: {f}]", p.title, p.detail),
                        None => bail!("{} ({code}): {}", p.title, p.detail),
                    },
                    Err(_) => bail!("HTTP {code}: {body}"),
                }
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

    /// `DELETE /v1/jobs/{id}`.
    pub fn cancel(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("DELETE", &format!("/v1/jobs/{id}")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/nodes`.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let r = self.req("GET", "/v1/nodes").call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/clear-quarantine`.
    pub fn clear_quarantine(&self, name: &str) -> anyhow::Result<NodeView> {
        let r = self
            .req(
                "POST",
                &format!("/v1/nodes/{}/clear-quarantine", path_segment(name)),
            )
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/jobs/{id}/retry`.
    pub fn retry(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.req("POST", &format!("/v1/jobs/{id}/retry")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/drain` (`Some(now)`) or `/undrain` (`None`).
    pub fn drain(&self, name: &str, drain: Option<bool>) -> anyhow::Result<()> {
        let path = match drain {
            Some(true) => format!("/v1/nodes/{}/drain?now=true", path_segment(name)),
            Some(false) => format!("/v1/nodes/{}/drain", path_segment(name)),
            None => format!("/v1/nodes/{}/undrain", path_segment(name)),
        };
        let r = self.req("POST", &path).call();
        self.check(r)?;
        Ok(())
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
    #[test]
    fn names_stay_one_path_segment() {
        let check = |name: &str, want: &str| assert_eq!(super::path_segment(name), want);
        check("gpu-07", "gpu-07");
        check("render box/2", "render%20box%2F2");
        check("a?b#c", "a%3Fb%23c");
    }
}
