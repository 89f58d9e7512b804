//! A small blocking client of the coordinator's REST API, used by the client
//! commands and `drover demo`.

use anyhow::{bail, Context as _};
use drover_shared::api::{JobView, NodeView, Problem, Submitted};

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
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the coordinator at `base`.
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(std::time::Duration::from_secs(5))
                .timeout_read(std::time::Duration::from_secs(60))
                .build(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        let r = self.agent.post(&self.url("/v1/jobs")).send_json(spec);
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self.agent.get(&self.url(&format!("/v1/jobs/{id}"))).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/jobs`.
    pub fn jobs(&self) -> anyhow::Result<Vec<JobView>> {
        let r = self.agent.get(&self.url("/v1/jobs")).call();
        Ok(self.check(r)?.into_json()?)
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
        let r = self
            .agent
            .delete(&self.url(&format!("/v1/jobs/{id}")))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `GET /v1/nodes`.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let r = self.agent.get(&self.url("/v1/nodes")).call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/clear-quarantine`.
    pub fn clear_quarantine(&self, name: &str) -> anyhow::Result<NodeView> {
        let r = self
            .agent
            .post(&self.url(&format!(
                "/v1/nodes/{}/clear-quarantine",
                path_segment(name)
            )))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/jobs/{id}/retry`.
    pub fn retry(&self, id: u64) -> anyhow::Result<JobView> {
        let r = self
            .agent
            .post(&self.url(&format!("/v1/jobs/{id}/retry")))
            .call();
        Ok(self.check(r)?.into_json()?)
    }

    /// `POST /v1/nodes/{name}/drain` (`Some(now)`) or `/undrain` (`None`).
    pub fn drain(&self, name: &str, drain: Option<bool>) -> anyhow::Result<()> {
        let path = match drain {
            Some(true) => format!("/v1/nodes/{}/drain?now=true", path_segment(name)),
            Some(false) => format!("/v1/nodes/{}/drain", path_segment(name)),
            None => format!("/v1/nodes/{}/undrain", path_segment(name)),
        };
        let r = self.agent.post(&self.url(&path)).call();
        self.check(r)?;
        Ok(())
    }

    /// `GET /v1/jobs/{id}/output`, written to `dest`.
    pub fn download(&self, id: u64, dest: &std::path::Path) -> anyhow::Result<u64> {
        let r = self
            .agent
            .get(&self.url(&format!("/v1/jobs/{id}/output")))
            .call();
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
