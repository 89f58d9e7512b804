//! `drover coordinator`: opens the journal, restores the core, starts the
//! actors, the QUIC endpoint and the REST API, and runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use actix::Actor;
use anyhow::Context as _;
use drover_shared::config::ADDRS_FILE;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::actors::{durable_callback, DurableCell, Scheduler, Shutdown};
use crate::sched::{Core, CoreConfig, Fact, Recovery};
use crate::store::ArtifactStore;

/// Settings of one coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Data directory: journal, artifacts, certificate.
    pub data_dir: PathBuf,
    /// REST address (port 0 picks one).
    pub http_addr: SocketAddr,
    /// QUIC address (port 0 picks one).
    pub quic_addr: SocketAddr,
    /// Scheduler tunables.
    pub core: CoreConfig,
    /// On first start: where the first admin key goes (or, if the file
    /// exists, the key to adopt). Without it the key is printed once.
    pub admin_key_file: Option<PathBuf>,
    /// First wait before a failed webhook delivery is tried again (it
    /// doubles per attempt, with jitter, up to 10 minutes).
    pub webhook_retry_base_ms: u64,
    /// The QUIC address join tokens send nodes to (`host:port`); the bound
    /// address when it is a specific one, else this host's name.
    pub quic_advertise: Option<String>,
    /// The auto-scaling pools file (`--pools`, TOML; see
    /// [`crate::autoscale::config`]).
    pub pools: Option<PathBuf>,
    /// Who may read `/metrics` (`--metrics-token-file`, `--metrics-public`).
    pub metrics: crate::metrics::MetricsAccess,
}

/// The address nodes reach a QUIC endpoint bound to `bound` at: itself, or
/// for a wildcard bind this host's name and the port.
fn advertised(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", bound.port())
}

/// What the coordinator really bound, written to [`ADDRS_FILE`] once it
/// accepts requests (scripts and `drover demo` wait for this file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundAddrs {
    /// REST address.
    pub http: SocketAddr,
    /// QUIC address.
    pub quic: SocketAddr,
    /// SHA-256 fingerprint of the certificate, hex.
    pub cert_sha256: String,
    /// Path of the certificate nodes pin.
    pub cert_path: PathBuf,
}

/// Runs a coordinator until a shutdown signal. Call inside an actix system.
pub async fn run(cfg: CoordinatorConfig) -> anyhow::Result<()> {
    // A bad pools file stops the start before anything is opened.
    let pool_configs = match &cfg.pools {
        Some(path) => crate::autoscale::config::load(path)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let addrs_path = cfg.data_dir.join(ADDRS_FILE);
    let _ = std::fs::remove_file(&addrs_path);
    let cell: DurableCell = Default::default();
    let (journal, recovered) =
        crate::journal::scheduler::open(&cfg.data_dir, |c| c, durable_callback(cell.clone()))
            .context("opening the journal")?;
    let stats = &recovered.stats;
    info!(
        jobs = recovered.model.jobs.len(),
        incarnation = recovered.incarnation,
        snapshot_seq = stats.snapshot_seq,
        facts_replayed = stats.facts_replayed,
        torn_dropped = stats.torn_dropped,
        ms = stats.elapsed.as_millis() as u64,
        "journal replayed"
    );
    crate::metrics::health().set_journal(journal.clone(), cfg.data_dir.clone());
    let store = ArtifactStore::open(&cfg.data_dir.join("artifacts"))?;
    let auth = crate::auth::Auth::open(&cfg.data_dir)?;
    auth.bootstrap(cfg.admin_key_file.as_deref())?;
    let links = crate::api::links::Links::load_or_create(&cfg.data_dir)?;
    let mut state = recovered.model;
    // A journal written before `next_job` was kept: the newest archived
    // job counts too, so no id is given twice.
    if let Some(newest) = journal.archived_keys_before(None, 1)?.first() {
        state.next_job = state.next_job.max(newest + 1);
    }
    // The store against the journal: a stored segment that is gone is
    // rendered again (that chunk only); files no record names (partial
    // uploads, attempts superseded) go.
    let lost = check_store(&store, &mut state);
    if !lost.is_empty() {
        warn!(
            segments = lost.len(),
            "stored segments missing from the artifact store; their frames render again"
        );
        let seq = journal.append(lost)?;
        journal.wait_durable(seq, std::time::Duration::from_secs(60))?;
    }
    let core_config = CoreConfig {
        incarnation: recovered.incarnation,
        ..cfg.core.clone()
    };
    let (core, startup) = Core::restore(core_config, state, crate::actors::now_ms());
    let events = crate::events::EventBus::new(recovered.incarnation);
    let secret = crate::webhook::load_or_create_secret(&cfg.data_dir)?;
    let mut hook_cfg = crate::webhook::WebhookConfig::new(&cfg.data_dir, secret);
    hook_cfg.base_backoff_ms = cfg.webhook_retry_base_ms;
    let hooks = crate::webhook::Webhooks::start(hook_cfg).context("starting webhook deliveries")?;
    // A job that ended just before a crash may not have had its webhooks
    // enqueued yet: enqueue again (idempotent per job, event and URL) for
    // jobs ended within the deliveries' retention.
    let horizon = crate::actors::now_ms().saturating_sub(6 * 86_400_000);
    let mut again = Vec::new();
    for r in core.finished_records() {
        if r.spec.webhooks.is_empty() || r.finished_at_ms.is_none_or(|t| t < horizon) {
            continue;
        }
        let event = match r.state {
            drover_shared::api::JobState::Done => "job.done",
            drover_shared::api::JobState::Cancelled => "job.cancelled",
            _ => "job.failed",
        };
        let view = crate::sched::views::record_view(r);
        again.push(crate::actors::HookCall {
            job: r.id,
            event,
            urls: r.spec.webhooks.clone(),
            body: crate::actors::hook_body(event, &view),
        });
    }
    for c in again {
        if let Err(e) = hooks.enqueue(c.job, c.event, &c.urls, &c.body) {
            warn!(job = c.job, "webhooks not enqueued again: {e:#}");
        }
    }
    // Each chunk attempt's executor log, kept after its job ends.
    let chunk_logs = crate::chunklog::ChunkLogs::open(
        cfg.data_dir.join("logs"),
        crate::chunklog::LogLimits::default(),
    )?;
    let scheduler = Scheduler::new(
        core,
        journal.clone(),
        store.clone(),
        startup,
        cell,
        events.clone(),
        Some(hooks.clone()),
    )
    .with_chunk_logs(chunk_logs)
    .start();

    let (cert, key, fingerprint) = crate::quic::load_or_create_identity(&cfg.data_dir)?;
    let endpoint = crate::quic::bind(&cfg.data_dir, cfg.quic_addr, cert, key)?;
    let quic_addr = endpoint.local_addr()?;
    let quic_advertise = match &cfg.quic_advertise {
        Some(a) => a.clone(),
        None => advertised(quic_addr),
    };
    let pools = if pool_configs.is_empty() {
        crate::autoscale::Pools::none()
    } else {
        crate::autoscale::Pools::start(
            pool_configs,
            crate::autoscale::PoolsContext {
                data_dir: &cfg.data_dir,
                sched: scheduler.clone(),
                auth: &auth,
                cert_sha256: &fingerprint,
                quic_advertise: &quic_advertise,
            },
        )
        .context("starting the auto-scaling pools")?
    };
    let pools_data = actix_web::web::Data::new(pools.clone());

    let gate = crate::auth::http::Gate::new(auth.clone()).with_links(links.clone());
    let backup = actix_web::web::Data::new(crate::backup::Sources::new(
        &cfg.data_dir,
        store.clone(),
        &journal,
        &auth,
        &hooks,
    ));
    let api = std::sync::Arc::new(crate::api::Api {
        sched: scheduler.clone(),
        gate: gate.clone(),
        links,
        store,
        events,
        streams: Default::default(),
        hooks,
        connections: Default::default(),
        cert_sha256: fingerprint.clone(),
        quic_advertise,
        ready: Default::default(),
    });
    actix::spawn(crate::quic::serve(
        endpoint.clone(),
        crate::quic::Quic {
            api: api.clone(),
            limits: Default::default(),
        },
    ));
    let api = actix_web::web::Data::from(api);
    let gate = actix_web::web::Data::new(gate);
    let metrics_access = actix_web::web::Data::new(cfg.metrics.clone());
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(api.clone())
            .app_data(gate.clone())
            .app_data(pools_data.clone())
            .app_data(backup.clone())
            .app_data(metrics_access.clone())
            .configure(crate::api::configure)
            .wrap(actix_web::middleware::from_fn(crate::api::gate))
    })
    .workers(2)
    .bind(cfg.http_addr)
    .with_context(|| format!("binding HTTP on {}", cfg.http_addr))?;
    let http_addr = *server.addrs().first().context("HTTP bound no address")?;
    let bound = BoundAddrs {
        http: http_addr,
        quic: quic_addr,
        cert_sha256: fingerprint,
        cert_path: cfg.data_dir.join(drover_shared::config::CERT_FILE),
    };
    let server = server.run();
    // Written after binding, atomically, so a reader never sees half of it.
    let tmp = addrs_path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&bound)?)?;
    std::fs::rename(&tmp, &addrs_path)?;
    info!(http = %http_addr, quic = %quic_addr, cert_sha256 = %bound.cert_sha256, "coordinator ready");
    server.await.context("HTTP server")?;
    // The pools' threads stop, and the node agents the `process` provider
    // started leave while the scheduler still hears them.
    let _ = actix_web::rt::task::spawn_blocking(move || pools.stop()).await;
    info!("shutting down: no new jobs, journal flushed, node sessions closed");
    let _ = scheduler.send(Shutdown).await;
    endpoint.close(
        drover_protocol::close_code::COORDINATOR_SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );
    endpoint.wait_idle().await;
    actix::System::current().stop();
    Ok(())
}

/// Checks every segment the journal names for the jobs it keeps: a missing
/// one becomes a [`Fact::SegmentLost`] (its frames wait again). Files in
/// the store that no record names are removed. Runs once, before the
/// coordinator takes connections.
fn check_store(store: &ArtifactStore, state: &mut Recovery) -> Vec<Fact> {
    let mut facts = Vec::new();
    let mut keep = std::collections::HashSet::new();
    for (id, r) in &state.jobs {
        if r.discarded {
            continue;
        }
        for (start, d) in &r.done {
            let path = std::path::Path::new(&d.segment);
            if path.is_file() {
                keep.insert(path.to_path_buf());
            } else if r.state != drover_shared::api::JobState::Done {
                facts.push(Fact::SegmentLost {
                    job: *id,
                    start: *start,
                });
            }
        }
    }
    for f in &facts {
        state.apply(f);
    }
    // Jobs waiting to be joined again need every segment: one lost sends
    // the job back to rendering that chunk.
    for r in state.jobs.values_mut() {
        if r.state == drover_shared::api::JobState::Muxing
            && r.frames_done() + r.missing.len() as u64 != r.spec.frames.len()
        {
            r.state = drover_shared::api::JobState::Running;
        }
    }
    match store.sweep(|p| keep.contains(p)) {
        Ok(r) => info!(
            partials = r.partials,
            segments = r.segments,
            bytes = r.bytes,
            "leftover partial and superseded files removed from the store"
        ),
        Err(e) => warn!("sweeping the artifact store: {e}"),
    }
    facts
}
