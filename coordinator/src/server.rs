//! `drover coordinator`: opens the journal, restores the core, starts the
//! actors, the QUIC endpoint and the REST API, and runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use actix::Actor;
use anyhow::Context as _;
use drover_shared::config::ADDRS_FILE;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::actors::Scheduler;
use crate::journal::Journal;
use crate::sched::{Core, CoreConfig};
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
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let addrs_path = cfg.data_dir.join(ADDRS_FILE);
    let _ = std::fs::remove_file(&addrs_path);
    let journal = Journal::open(&cfg.data_dir.join("journal")).context("opening the journal")?;
    let jobs = journal.load().context("reading the journal")?;
    let incarnation = journal
        .next_incarnation()
        .context("counting this start in the journal")?;
    info!(jobs = jobs.len(), incarnation, "journal loaded");
    let store = ArtifactStore::open(&cfg.data_dir.join("artifacts"))?;
    let core_config = CoreConfig {
        incarnation,
        ..cfg.core.clone()
    };
    let (core, startup) = Core::restore(core_config, jobs);
    let scheduler = Scheduler::new(core, journal, store.clone(), startup).start();

    let (cert, key, fingerprint) = crate::quic::load_or_create_identity(&cfg.data_dir)?;
    let endpoint = crate::quic::bind(cfg.quic_addr, cert, key)?;
    let quic_addr = endpoint.local_addr()?;
    actix::spawn(crate::quic::serve(
        endpoint.clone(),
        scheduler.clone(),
        store,
    ));

    let data = actix_web::web::Data::new(scheduler.clone());
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(crate::api::configure)
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
    info!("shutting down");
    endpoint.close(0u32.into(), b"coordinator shutting down");
    actix::System::current().stop();
    Ok(())
}
