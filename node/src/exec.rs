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
                // The previous chunk's encoder, possibly still flushing while
                // this thread renders the next chunk. Joined before a third
                // starts, so at most two encoders are alive.
                let mut finishing: Option<PendingSegment> = None;
                for item in rx {
                    if item.cancel.load(Ordering::Relaxed) {
                        let _ = item.events.send(WorkerEvent::Failed {
                            chunk: item.assign.chunk,
                            reason: "cancelled before it started".into(),
                            log_tail: String::new(),
                        });
                        continue;
                    }
                    let events = item.events.clone();
                    let assign = item.assign.clone();
                    // A panic in the renderer must fail this chunk, not kill
                    // the thread and strand every chunk queued behind it.
                    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        start_chunk(&gpu, &mut cache, &spool, item, Instant::now())
                    }))
                    .unwrap_or_else(|_| {
                        cache = RendererCache::default();
                        Err(ChunkError::Io(std::io::Error::other("renderer panicked")))
                    });
                    match started {
                        Ok(pending) => {
                            if let Some(prev) = finishing.replace(pending) {
                                prev.wait();
                            }
                        }
                        Err(e) => {
                            let _ = events.send(failed(&assign, gpu.adapter(), &e));
                        }
                    }
                }
                if let Some(prev) = finishing {
                    prev.wait();
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

/// What the renderer tells the encoder thread.
enum ToEncoder {
    Frame(Vec<u8>),
    /// Rendering ended: `Ok` after the last frame, `Err` when it failed or
    /// was cancelled (the segment is then discarded).
    End(Result<(), ChunkError>),
}

/// A segment whose frames are all rendered and whose encoder may still be
/// flushing on its own thread.
pub struct PendingSegment {
    handle: std::thread::JoinHandle<()>,
}

impl PendingSegment {
    /// Waits for the encoder thread (and the callback it ran) to finish.
    pub fn wait(self) {
        // The thread catches its own panics and reports them through
        // `on_done`; a join error can only come from the callback itself.
        if self.handle.join().is_err() {
            tracing::error!("segment completion callback panicked");
        }
    }
}

/// Renders frames `start..=end` and feeds them to an encoder thread writing
/// the segment at `path`; returns as soon as the last frame is rendered.
///
/// The encoder's flush (x264 drains its lookahead and frame threads, about
/// 100 ms at 720p) and the trailer then finish on the encoder thread, which
/// calls `on_done` with the frames written, so the caller can start
/// rendering the next chunk meanwhile. On failure or cancellation the
/// segment file is removed before `on_done` sees the error.
#[allow(clippy::too_many_arguments)]
pub fn start_segment(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    start: u64,
    end: u64,
    path: &Path,
    cancel: &AtomicBool,
    mut progress: impl FnMut(u64),
    on_done: impl FnOnce(Result<u64, ChunkError>) + Send + 'static,
) -> Result<PendingSegment, ChunkError> {
    let mut encoder = SegmentEncoder::create(path, settings)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<ToEncoder>(RENDER_QUEUE_FRAMES);
    let seg_path = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("drover-encoder".into())
        .spawn(move || {
            // A panic inside FFmpeg's wrapper must still end in `on_done`,
            // or the chunk would stay assigned to a live node forever.
            let encode = std::panic::AssertUnwindSafe(|| {
                let mut result = Err(ChunkError::Render(RenderError::Sink(
                    "renderer stopped".into(),
                )));
                for msg in rx {
                    match msg {
                        ToEncoder::Frame(rgba) => {
                            if let Err(e) = encoder.push_rgba(&rgba) {
                                result = Err(e.into());
                                break;
                            }
                        }
                        ToEncoder::End(end) => {
                            result = end;
                            break;
                        }
                    }
                }
                result.and_then(|()| Ok(encoder.finish()?.frames))
            });
            let result = std::panic::catch_unwind(encode).unwrap_or_else(|_| {
                Err(ChunkError::Io(std::io::Error::other(
                    "encoder thread panicked",
                )))
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&seg_path);
            }
            on_done(result);
        })?;
    let rendered = renderer.render_range(start..end + 1, |frame, rgba| {
        if cancel.load(Ordering::Relaxed) {
            return Err(RenderError::Sink("cancelled".into()));
        }
        tx.send(ToEncoder::Frame(rgba))
            .map_err(|_| RenderError::Sink("encoder stopped".into()))?;
        progress(frame - start + 1);
        Ok(())
    });
    let end_msg = match rendered {
        _ if cancel.load(Ordering::Relaxed) => Err(ChunkError::Cancelled),
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    };
    // The encoder may already have stopped on its own error; it then
    // reports that error, which explains the render's "encoder stopped".
    let _ = tx.send(ToEncoder::End(end_msg));
    Ok(PendingSegment { handle })
}

/// Renders and encodes frames `start..=end` into one segment at `path` and
/// waits for the segment to be complete: the whole work of a chunk, without
/// overlapping the next one. The benchmark's no-farm baseline.
pub fn render_and_encode(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    start: u64,
    end: u64,
    path: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
) -> Result<u64, ChunkError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pending = start_segment(
        renderer,
        settings,
        start,
        end,
        path,
        cancel,
        progress,
        move |r| {
            let _ = tx.send(r);
        },
    )?;
    pending.wait();
    rx.recv().expect("on_done always runs")
}

/// Starts one chunk: renders it on this thread and leaves its encoder
/// finishing; the encoder thread hashes the segment and reports the result.
fn start_chunk(
    gpu: &Gpu,
    cache: &mut RendererCache,
    spool: &Path,
    item: WorkItem,
    started: Instant,
) -> Result<PendingSegment, ChunkError> {
    let a = item.assign.clone();
    let total = a.end - a.start + 1;
    let chunk = a.chunk;
    let report = |frames_done: u64| {
        item.frames_done.store(frames_done, Ordering::Relaxed);
        let _ = item.events.send(WorkerEvent::Progress {
            chunk,
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
    let adapter = gpu.adapter().clone();
    let events = item.events.clone();
    let seg = path.clone();
    let on_done = move |result: Result<u64, ChunkError>| {
        let finished = result.and_then(|frames| {
            if frames != total {
                let _ = std::fs::remove_file(&seg);
                return Err(ChunkError::Io(std::io::Error::other(format!(
                    "encoder wrote {frames} frames, expected {total}"
                ))));
            }
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(std::fs::File::open(&seg)?)?;
            Ok(*hasher.finalize().as_bytes())
        });
        let ev = match finished {
            Ok(hash) => WorkerEvent::Finished {
                assign: a,
                path: seg,
                hash,
                adapter: adapter.name.clone(),
                elapsed_ms: started.elapsed().as_millis() as u64,
            },
            Err(e) => failed(&a, &adapter, &e),
        };
        let _ = events.send(ev);
    };
    start_segment(
        renderer,
        &settings,
        item.assign.start,
        item.assign.end,
        &path,
        &item.cancel,
        report,
        on_done,
    )
}

fn failed(a: &Assign, adapter: &crate::render::AdapterReport, e: &ChunkError) -> WorkerEvent {
    WorkerEvent::Failed {
        chunk: a.chunk,
        reason: e.to_string(),
        log_tail: format!(
            "job {} chunk {} frames {}-{} on {} ({}): {e}",
            a.chunk.job, a.chunk.index, a.start, a.end, adapter.name, adapter.device_type
        ),
    }
}
