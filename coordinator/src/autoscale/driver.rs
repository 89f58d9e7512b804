//! The driver: one thread per pool that reads the pool from the scheduler
//! core, runs the policy, journals each decision and carries it out.
//!
//! Providers block (a process to start and reap, a cloud CLI, the
//! Kubernetes API), so they never run on the actix thread: each pool's
//! thread owns its provider. The thread reads the core through the
//! scheduler actor ([`ReadCore`]) and drains nodes through it
//! ([`CoreEvent`]), like any other client of the core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::Addr;
use drover_shared::api::{PoolView, ScaleDecisionView};

use super::config::{PoolConfig, ProviderKind};
use super::decisions::DecisionLog;
use super::policy::{Decision, NodeObs, PoolInput, PoolPolicy};
use super::provider::{CommandProvider, ProcessProvider, Provider, ProviderError};
use crate::actors::{now_ms, CoreEvent, ReadCore, Scheduler};
use crate::sched::pools::PoolReport;
use crate::sched::Event;

/// How often each pool is looked at: fast enough that a job waits about
/// a second for its first scale-up, slow enough to cost nothing (one read
/// of the core over the pool's jobs).
pub const TICK: Duration = Duration::from_millis(1_000);

/// How often the provider is asked how many nodes it holds, in ticks
/// (the Kubernetes provider makes an API call for it).
pub const SYNC_EVERY_TICKS: u32 = 10;

/// First wait after a provider call failed; it doubles per failure in a
/// row up to [`MAX_BACKOFF_MS`].
pub const BASE_BACKOFF_MS: u64 = 2_000;

/// Longest wait between two tries of a failing provider.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 1_000;

/// Decisions a pool's view carries (newest first): what `drover top`
/// shows beside the pool; the rest are a request away.
pub const VIEW_DECISIONS: usize = 5;

/// What a running coordinator needs to start pools.
pub struct PoolsContext<'a> {
    /// The coordinator's data dir (`DATA/pools/...`).
    pub data_dir: &'a std::path::Path,
    /// The scheduler.
    pub sched: Addr<Scheduler>,
    /// Keys and join tokens (the `process` provider makes one per pool).
    pub auth: &'a crate::auth::Auth,
    /// The certificate's fingerprint, for join tokens.
    pub cert_sha256: &'a str,
    /// The QUIC address join tokens carry.
    pub quic_advertise: &'a str,
}

struct PoolShared {
    config: PoolConfig,
    view: Mutex<PoolView>,
}

struct Inner {
    pools: Vec<PoolShared>,
    log: Mutex<Option<DecisionLog>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The running pools: what the API reads, and [`Pools::stop`].
#[derive(Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

impl Pools {
    /// No pools (the coordinator started without `--pools`).
    pub fn none() -> Pools {
        Pools {
            inner: Arc::new(Inner {
                pools: Vec::new(),
                log: Mutex::new(None),
                stop: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Makes each pool's provider and starts its thread.
    pub fn start(configs: Vec<PoolConfig>, cx: PoolsContext<'_>) -> anyhow::Result<Pools> {
        use anyhow::Context as _;
        let dir = cx.data_dir.join("pools");
        let log = DecisionLog::open(&dir)
            .with_context(|| format!("opening the decision journal in {}", dir.display()))?;
        let mut providers = Vec::new();
        for c in &configs {
            providers.push(make_provider(c, &cx).with_context(|| format!("pool {}", c.name))?);
        }
        let pools = Pools {
            inner: Arc::new(Inner {
                pools: configs
                    .into_iter()
                    .map(|config| PoolShared {
                        view: Mutex::new(initial_view(&config)),
                        config,
                    })
                    .collect(),
                log: Mutex::new(Some(log)),
                stop: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
            }),
        };
        for (i, provider) in providers.into_iter().enumerate() {
            let inner = pools.inner.clone();
            let sched = cx.sched.clone();
            let name = inner.pools[i].config.name.clone();
            let t = std::thread::Builder::new()
                .name(format!("pool-{name}"))
                .spawn(move || run_pool(inner, i, sched, provider))
                .context("starting a pool thread")?;
            pools.lock_threads().push(t);
        }
        Ok(pools)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every pool, in the file's order, with its last decisions.
    pub fn views(&self) -> Vec<PoolView> {
        let mut views: Vec<PoolView> = self
            .inner
            .pools
            .iter()
            .map(|p| p.view.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let log = self.inner.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = log.as_ref() {
            for v in &mut views {
                v.decisions = log.list(&v.name, VIEW_DECISIONS);
            }
        }
        views
    }

    /// One pool.
    pub fn view(&self, name: &str) -> Option<PoolView> {
        self.views().into_iter().find(|v| v.name == name)
    }

    /// A pool's decisions, newest first.
    pub fn decisions(&self, name: &str, limit: usize) -> Option<Vec<ScaleDecisionView>> {
        self.inner.pools.iter().find(|p| p.config.name == name)?;
        let log = self.inner.log.lock().unwrap_or_else(|e| e.into_inner());
        Some(log.as_ref().map_or_else(Vec::new, |l| l.list(name, limit)))
    }

    /// Stops every pool's thread; each drops its provider, and the
    /// `process` provider stops the node agents it started.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.lock_threads());
        for t in threads {
            let _ = t.join();
        }
    }
}

fn initial_view(c: &PoolConfig) -> PoolView {
    PoolView {
        name: c.name.clone(),
        provider: c.provider.name().to_string(),
        min: c.min,
        max: c.max,
        requested: 0,
        starting: 0,
        nodes: Vec::new(),
        current: 0,
        draining: Vec::new(),
        backlog_frames: 0,
        work_s: 0.0,
        drain_eta_s: None,
        target_drain_s: c.target_drain_s,
        idle_cooldown_s: c.idle_cooldown_s,
        last_error: None,
        decisions: Vec::new(),
    }
}

fn make_provider(c: &PoolConfig, cx: &PoolsContext<'_>) -> anyhow::Result<Box<dyn Provider>> {
    let dir = cx.data_dir.join("pools").join(&c.name);
    Ok(match c.provider {
        ProviderKind::Process => {
            let token = pool_join_token(&c.name, &dir, cx)?;
            Box::new(ProcessProvider::new(
                &c.name,
                &c.process.clone().unwrap_or_default(),
                &dir,
                token,
            )?)
        }
        ProviderKind::Command => {
            let cfg = c.command.as_ref().ok_or_else(|| ProviderError::Config {
                pool: c.name.clone(),
                message: "[pool.command] is missing".into(),
            })?;
            Box::new(CommandProvider::new(&c.name, cfg, &dir, 0)?)
        }
        ProviderKind::Kubernetes => {
            let cfg = c.kubernetes.clone().ok_or_else(|| ProviderError::Config {
                pool: c.name.clone(),
                message: "[pool.kubernetes] is missing".into(),
            })?;
            Box::new(super::kube::KubernetesProvider::new(&c.name, cfg)?)
        }
    })
}

/// The pool's join token for the nodes the `process` provider starts:
/// made once and kept (0600) in the pool's dir, so restarts do not pile
/// up tokens.
fn pool_join_token(
    pool: &str,
    dir: &std::path::Path,
    cx: &PoolsContext<'_>,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("join-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let new = drover_shared::api::NewJoinToken {
        pool: Some(pool.to_string()),
        note: format!("autoscaler: process pool {pool}"),
        ttl_s: None,
    };
    let (_, token) = cx
        .auth
        .create_token(&new, cx.cert_sha256, cx.quic_advertise)
        .map_err(|e| anyhow::anyhow!("making the pool's join token: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Reads the pool from the core, on the scheduler's thread.
fn read_pool(sched: &Addr<Scheduler>, c: &PoolConfig) -> Option<PoolReport> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (name, caps, est) = (c.name.clone(), c.declared_caps(), c.frame_s_estimate);
    sched.do_send(ReadCore(Box::new(move |core| {
        let _ = tx.send(core.pool_report(&name, &caps, est));
    })));
    rx.blocking_recv().ok()
}

fn run_pool(
    inner: Arc<Inner>,
    index: usize,
    sched: Addr<Scheduler>,
    mut provider: Box<dyn Provider>,
) {
    let shared = &inner.pools[index];
    let c = &shared.config;
    let pool = c.name.clone();
    let first = provider.requested().unwrap_or(0);
    let mut policy = PoolPolicy::new(&pool, c.policy(), first);
    let mut backoffs = Backoffs::default();
    let mut last_error: Option<String> = None;
    // Removed nodes whose drained mark is lifted once they are gone, so
    // no admin record is left behind for a name.
    let mut undrain: Vec<String> = Vec::new();
    let mut tick = 0u32;
    tracing::info!(
        pool,
        provider = provider.kind(),
        min = c.min,
        max = c.max,
        "pool started"
    );
    while !inner.stop.load(Ordering::SeqCst) {
        let Some(report) = read_pool(&sched, c) else {
            break;
        };
        let now = now_ms();
        let nodes: Vec<NodeObs> = report
            .nodes
            .iter()
            .map(|n| NodeObs {
                name: n.name.clone(),
                busy: n.busy,
                drained: n.drained,
            })
            .collect();
        undrain.retain(|name| {
            if nodes.iter().any(|n| &n.name == name) {
                return true;
            }
            sched.do_send(CoreEvent(Event::Undrain { name: name.clone() }));
            false
        });
        if backoffs.tick_ready(now) {
            if tick.is_multiple_of(SYNC_EVERY_TICKS) {
                match provider.requested() {
                    Ok(r) => policy.sync_requested(now, r, &nodes),
                    Err(e) => tracing::warn!(pool, "asking the provider its node count: {e}"),
                }
            }
            tick = tick.wrapping_add(1);
            let input = PoolInput {
                backlog_frames: report.backlog_frames,
                work_s: report.work_s,
                nodes: nodes.clone(),
            };
            let decisions = {
                let provider = &*provider;
                policy.tick_with(now, &input, &|node, nodes| provider.removable(node, nodes))
            };
            for d in decisions {
                if !backoffs.ready(&d, now) {
                    // A removal in its backoff is not tried now: the node
                    // stays drained and comes back once the backoff passed.
                    if let Decision::Remove { node, .. } = &d {
                        policy.remove_failed(node);
                    }
                    continue;
                }
                let remove = matches!(d, Decision::Remove { .. });
                let failed =
                    carry_out(&inner, &sched, &mut *provider, &mut policy, d, &mut undrain);
                backoffs.record(remove, now, failed.is_none());
                match failed {
                    None => last_error = None,
                    Some(e) => {
                        last_error = Some(e);
                        if !remove {
                            break;
                        }
                    }
                }
            }
        }
        let active = nodes.iter().filter(|n| !n.drained).count();
        let mut v = shared.view.lock().unwrap_or_else(|e| e.into_inner());
        v.requested = policy.requested();
        v.starting = policy.starting();
        v.nodes = nodes.iter().map(|n| n.name.clone()).collect();
        v.current = nodes.len() as u32;
        v.draining = policy.draining().cloned().collect();
        v.backlog_frames = report.backlog_frames;
        v.work_s = report.work_s;
        v.drain_eta_s = (active > 0).then(|| report.work_s / active as f64);
        v.last_error = last_error.clone();
        drop(v);
        std::thread::sleep(TICK);
    }
    tracing::info!(pool, "pool stopping: its provider stops what it started");
    drop(provider);
}

/// When a failing kind of provider call may be tried again: the wait
/// starts at [`BASE_BACKOFF_MS`] and doubles per failure in a row up to
/// [`MAX_BACKOFF_MS`].
#[derive(Debug, Default)]
struct Backoff {
    wait_ms: u64,
    retry_at_ms: u64,
}

impl Backoff {
    fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.retry_at_ms
    }

    fn failed(&mut self, now_ms: u64) {
        self.wait_ms = (self.wait_ms * 2).clamp(BASE_BACKOFF_MS, MAX_BACKOFF_MS);
        self.retry_at_ms = now_ms + self.wait_ms;
    }
}

/// A pool's backoffs. Adds and removes back off apart, so a removal the
/// provider keeps refusing (a pod not ready yet, a node it cannot remove)
/// never delays a scale-up; a failing add holds the pool's whole tick, as
/// the provider is likely unreachable.
#[derive(Debug, Default)]
struct Backoffs {
    add: Backoff,
    remove: Backoff,
}

impl Backoffs {
    /// Whether the pool's policy runs this tick.
    fn tick_ready(&self, now_ms: u64) -> bool {
        self.add.ready(now_ms)
    }

    /// Whether `d` may be carried out now.
    fn ready(&self, d: &Decision, now_ms: u64) -> bool {
        match d {
            Decision::Remove { .. } => self.remove.ready(now_ms),
            _ => self.add.ready(now_ms),
        }
    }

    /// A decision's outcome (a drain counts with adds and always succeeds).
    fn record(&mut self, remove: bool, now_ms: u64, ok: bool) {
        let b = if remove {
            &mut self.remove
        } else {
            &mut self.add
        };
        if ok {
            *b = Backoff::default();
        } else {
            b.failed(now_ms);
        }
    }
}

/// Journals one decision, carries it out and journals the outcome with it;
/// returns the provider's error, if any.
fn carry_out(
    inner: &Inner,
    sched: &Addr<Scheduler>,
    provider: &mut dyn Provider,
    policy: &mut PoolPolicy,
    d: Decision,
    undrain: &mut Vec<String>,
) -> Option<String> {
    let now = now_ms();
    let (action, node, count, reason, result) = match d {
        Decision::ScaleUp { by, reason, .. } => {
            tracing::info!(pool = %policy.pool, by, %reason, "scaling up");
            let r = provider.add(by);
            match &r {
                Ok(()) => policy.added(now, by),
                Err(_) => policy.add_failed(now),
            }
            ("scale_up", None, Some(by), reason, r)
        }
        Decision::Drain { node, reason, .. } => {
            tracing::info!(pool = %policy.pool, node, %reason, "draining an idle node");
            sched.do_send(CoreEvent(Event::Drain {
                name: node.clone(),
                now: false,
            }));
            ("drain", Some(node), None, reason, Ok(()))
        }
        Decision::Remove { node, reason, .. } => {
            tracing::info!(pool = %policy.pool, node, %reason, "removing a node");
            let r = provider.remove(&node);
            match &r {
                Ok(()) => {
                    policy.removed(&node);
                    undrain.push(node.clone());
                }
                Err(_) => policy.remove_failed(&node),
            }
            ("remove", Some(node), None, reason, r)
        }
    };
    let error = result.err().map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::warn!(pool = %policy.pool, action, "provider failed: {e}");
    }
    let view = ScaleDecisionView {
        seq: 0,
        at_ms: now,
        pool: policy.pool.clone(),
        action: action.to_string(),
        node,
        count,
        reason,
        outcome: if error.is_some() { "failed" } else { "ok" }.to_string(),
        error: error.clone(),
        output: provider.last_output(),
    };
    let mut log = inner.log.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = log.as_mut() {
        if let Err(e) = l.append(view) {
            tracing::error!(pool = %policy.pool, "journaling a scaling decision: {e}");
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_removal_never_delays_a_scale_up() {
        let up = Decision::ScaleUp {
            pool: "gpu".into(),
            by: 1,
            reason: "work".into(),
        };
        let rm = Decision::Remove {
            pool: "gpu".into(),
            node: "gpu-1".into(),
            reason: "idle".into(),
        };
        let mut b = Backoffs::default();
        b.record(true, 1_000, false);
        assert!(b.tick_ready(1_000) && b.ready(&up, 1_000));
        assert!(!b.ready(&rm, 2_999) && b.ready(&rm, 3_000));
        // It doubles per failure in a row, and a success resets it.
        b.record(true, 3_000, false);
        assert!(!b.ready(&rm, 6_999) && b.ready(&rm, 7_000));
        b.record(true, 7_000, true);
        assert!(b.ready(&rm, 7_000));
        // A failing add holds the tick, not removals' own clock.
        b.record(false, 8_000, false);
        assert!(!b.tick_ready(9_999) && !b.ready(&up, 9_999) && b.ready(&rm, 8_000));
        assert!(b.tick_ready(10_000));
    }
}
