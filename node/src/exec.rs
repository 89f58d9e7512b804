//! The executor thread: runs assigned chunks one at a time. Inside a chunk the
//! renderer and the encoder run on two threads joined by a short bounded
//! queue, so rendering frame k+1 overlaps encoding frame k.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use drover_protocol::{Assign, ChunkRef};
use tokio::sync::mpsc::UnboundedSender;

use crate::encode::{EncodeSettings, SegmentEncoder, DEFAULT_PRESET};
use crate::render::{Gpu, RenderError, Renderer};

/// Frames waiting between renderer and encoder: enough to absorb jitter, few
/// enough that a 4K chunk does not hold much memory (4 x 33 MB).
pub const RENDER_QUEUE_FRAMES: usize = 4;

/// One chunk for the executor.
pub struct WorkItem {
    /// The assignment.
    pub assign: Assign,
    /// Set when the coordinator cancels the chunk or the session ends.
    pub cancel: Arc<AtomicBool>,
    /// Frames rendered so far, read by heartbeats.
    pub frames_done: Arc<AtomicU64>,
    /// Where progress and the result go (the session that assigned it).
    pub events: UnboundedSender<WorkerEvent>,
}

/// What the executor reports.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Frames rendered so far (0 when the chunk starts).
    Progress {
        /// Which attempt.
        chunk: ChunkRef,
        /// Frames done.
        frames_done: u64,
        /// Frames in the chunk.
        total: u64,
    },
    /// The segment is in the spool.
    Finished {
        /// The assignment.
        assign: Assign,
        /// Spool path of the segment.
        path: PathBuf,
        /// Its BLAKE3.
        hash: [u8; 32],
        /// Adapter that rendered it.
        adapter: String,
        /// Render plus encode time.
        elapsed_ms: u64,
    },
    /// The chunk failed (or was cancelled).
    Failed {
        /// Which attempt.
        chunk: ChunkRef,
        /// One line.
        reason: String,
        /// Context for the admin.
        log_tail: String,
    },
}

/// Handle to the executor thread.
pub struct Executor {
    pub(crate) queue: std::sync::mpsc::Sender<WorkItem>,
}

impl Executor {
    /// Starts the executor thread; segments are written under `spool`.
    pub fn start(gpu: Gpu, spool: PathBuf) -> Executor {
        let (tx, rx) = std::sync::mpsc::channel::<WorkItem>();
        std::thread::Builder::new()
            .name("drover-executor".into())
            .spawn(move || {
                let mut cache = RendererCache::default();
                for item in rx {
                    let chunk = item.assign.chunk;
                    if item.cancel.load(Ordering::Relaxed) {
                        let _ = item.events.send(WorkerEvent::Failed {
                            chunk,
                            reason: "cancelled before it started".into(),
                            log_tail: String::new(),
                        });
                        continue;
                    }
                    let started = Instant::now();
                    let events = item.events.clone();
                    let result = run_chunk(&gpu, &mut cache, &spool, &item);
                    let ev = match result {
                        Ok((path, hash)) => WorkerEvent::Finished {
                            assign: item.assign,
                            path,
                            hash,
                            adapter: gpu.adapter().name.clone(),
                            elapsed_ms: started.elapsed().as_millis() as u64,
                        },
                        Err(e) => WorkerEvent::Failed {
                            chunk,
                            reason: e.to_string(),
                            log_tail: format!(
                                "job {} chunk {} frames {}-{} on {} ({}): {e}",
                                chunk.job,
                                chunk.index,
                                item.assign.start,
                                item.assign.end,
                                gpu.adapter().name,
                                gpu.adapter().device_type
                            ),
                        },
                    };
                    let _ = events.send(ev);
                }
            })
            .expect("spawning the executor thread");
        Executor { queue: tx }
    }
}

/// The last renderer, kept while consecutive chunks share shader and size:
/// compiling the pipeline is the costliest part of a chunk's start.
#[derive(Default)]
pub struct RendererCache {
    key: Option<(String, u32, u32, u32)>,
    renderer: Option<Renderer>,
}

impl RendererCache {
    /// A renderer for this shader, size and rate, reused when it matches.
    pub fn get(
        &mut self,
        gpu: &Gpu,
        source: &str,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<&mut Renderer, RenderError> {
        let key = (source.to_string(), width, height, fps);
        if self.key.as_ref() != Some(&key) || self.renderer.is_none() {
            self.renderer = None;
            self.renderer = Some(Renderer::new(gpu, source, width, height, fps)?);
            self.key = Some(key);
        }
        Ok(self.renderer.as_mut().expect("just set"))
    }
}

/// Why a chunk failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Rendering failed.
    #[error("render: {0}")]
    Render(#[from] RenderError),
    /// Encoding failed.
    #[error("encode: {0}")]
    Encode(#[from] crate::encode::EncodeError),
    /// The chunk was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Spool I/O failed.
    #[error("spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Renders and encodes frames `start..=end` into one segment at `path`,
/// calling `progress` with the frames done so far. This is the whole work of
/// a chunk; the benchmark calls it directly as the no-farm baseline.
#[allow(clippy::too_many_arguments)]
pub fn render_and_encode(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    start: u64,
    end: u64,
    path: &Path,
    cancel: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<u64, ChunkError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(RENDER_QUEUE_FRAMES);
    std::thread::scope(|s| {
        let encoder = s.spawn(move || -> Result<u64, ChunkError> {
            let mut enc = SegmentEncoder::create(path, settings)?;
            for frame in rx {
                enc.push_rgba(&frame)?;
            }
            Ok(enc.finish()?.frames)
        });
        let rendered = renderer.render_range(start..end + 1, |frame, rgba| {
            if cancel.load(Ordering::Relaxed) {
                return Err(RenderError::Sink("cancelled".into()));
            }
            tx.send(rgba)
                .map_err(|_| RenderError::Sink("encoder stopped".into()))?;
            progress(frame - start + 1);
            Ok(())
        });
        drop(tx);
        let encoded = encoder.join().expect("encoder thread panicked");
        if cancel.load(Ordering::Relaxed) {
            return Err(ChunkError::Cancelled);
        }
        // An encoder error explains a render "sink stopped"; report it first.
        let frames = encoded?;
        rendered?;
        Ok(frames)
    })
}

fn run_chunk(
    gpu: &Gpu,
    cache: &mut RendererCache,
    spool: &Path,
    item: &WorkItem,
) -> Result<(PathBuf, [u8; 32]), ChunkError> {
    let a = &item.assign;
    let total = a.end - a.start + 1;
    let report = |frames_done: u64| {
        item.frames_done.store(frames_done, Ordering::Relaxed);
        let _ = item.events.send(WorkerEvent::Progress {
            chunk: a.chunk,
            frames_done,
            total,
        });
    };
    report(0);
    let renderer = cache.get(gpu, &a.shader_source, a.width, a.height, a.fps)?;
    let settings = EncodeSettings {
        width: a.width,
        height: a.height,
        fps: a.fps,
        crf: a.crf,
        codec: a.encoder.clone(),
        preset: DEFAULT_PRESET.to_string(),
    };
    let path = spool.join(format!(
        "job-{}-chunk-{:05}-e{}.mp4",
        a.chunk.job, a.chunk.index, a.chunk.epoch
    ));
    let result = render_and_encode(
        renderer,
        &settings,
        a.start,
        a.end,
        &path,
        &item.cancel,
        report,
    );
    match result {
        Ok(frames) if frames == total => {}
        Ok(frames) => {
            let _ = std::fs::remove_file(&path);
            return Err(ChunkError::Io(std::io::Error::other(format!(
                "encoder wrote {frames} frames, expected {total}"
            ))));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(&path)?)?;
    Ok((path, *hasher.finalize().as_bytes()))
}
