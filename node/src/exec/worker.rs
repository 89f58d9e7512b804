//! The executor process: `drover exec-worker`, started by the agent's
//! supervisor (see [`super`]). It opens its own render device, then renders
//! and encodes the chunks it is sent, exactly as the agent's executor
//! thread did, asking the supervisor before each frame.
//!
//! Threads: this one renders (one chunk at a time, keeping the renderer of
//! the last shader); one reads the supervisor's messages (chunks, answers,
//! cancels) and exits the process when its stdin closes; each chunk's
//! encoder thread reports the chunk's end. Everything written to stdout is
//! a message; stdout is moved aside at start and fd 1 pointed at stderr.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Instant;

use drover_protocol::ChunkRef;

use super::wire::{
    read_msg, to_line, ChunkKey, FromWorker, Job, ToWorker, WORKER_PROTOCOL_VERSION,
};
use super::{
    segment_path, start_segment_gated, ChunkError, FrameGate, PendingSegment, RendererCache,
    TestAids,
};
use crate::chunklog::FrameLines;
use crate::encode::{EncodeSettings, DEFAULT_PRESET};
use crate::render::{AdapterReport, Gpu};

/// The worker's output: messages to the supervisor, one line per write.
struct Out {
    pipe: Mutex<std::fs::File>,
}

impl Out {
    /// A line of `chunk`'s log.
    fn log(&self, chunk: ChunkKey, line: String) {
        self.send(&FromWorker::Log { chunk, line });
    }

    fn send(&self, msg: &FromWorker) {
        let line = to_line(msg);
        let mut pipe = self.pipe.lock().unwrap_or_else(PoisonError::into_inner);
        if pipe.write_all(&line).is_err() {
            // The agent is gone: nobody wants this work any more.
            exit_now(0);
        }
    }
}

/// The cancel flags of the chunks this worker holds.
type Cancels = Arc<Mutex<HashMap<ChunkKey, Arc<AtomicBool>>>>;

/// Runs the executor process until its stdin closes (the process then
/// exits at once). Returns only if it could not start: the supervisor has
/// been told why when it could.
pub fn run() -> anyhow::Result<()> {
    ignore_stop_signals();
    let out = Arc::new(Out {
        pipe: Mutex::new(protocol_output()?),
    });
    let mut input = std::io::BufReader::new(std::io::stdin());
    let mut buf = Vec::new();
    let fatal = |reason: String| -> anyhow::Result<()> {
        out.send(&FromWorker::Fatal {
            reason: reason.clone(),
        });
        anyhow::bail!(reason)
    };
    let (spool, aids) = match read_msg::<ToWorker>(&mut input, &mut buf) {
        Ok(Some(ToWorker::Init {
            version,
            spool,
            slowdown_factor,
            fail_frames,
        })) => {
            if version != WORKER_PROTOCOL_VERSION {
                return fatal(format!(
                    "the agent speaks executor protocol {version}, this worker {WORKER_PROTOCOL_VERSION}"
                ));
            }
            let aids = TestAids {
                slowdown_factor,
                fail_frames,
            };
            if let Err(e) = aids.check() {
                return fatal(e);
            }
            (spool, aids)
        }
        Ok(None) => return Ok(()),
        Ok(Some(other)) => return fatal(format!("expected init first, got {other:?}")),
        Err(e) => return fatal(format!("reading init: {e}")),
    };
    let gpu = match Gpu::new() {
        Ok(gpu) => gpu,
        Err(e) => return fatal(format!("no render device: {e}")),
    };
    let adapter = gpu.adapter().clone();
    tracing::info!(pid = std::process::id(), adapter = %adapter.name, "executor process ready");
    out.send(&FromWorker::Ready {
        adapter: adapter.name.clone(),
        device_type: adapter.device_type.clone(),
    });

    let cancels: Cancels = Arc::default();
    let (jobs_tx, jobs_rx) = mpsc::channel::<(Job, Arc<AtomicBool>)>();
    let (answers_tx, answers_rx) = mpsc::channel::<(ChunkKey, u64, bool)>();
    let reader_cancels = Arc::clone(&cancels);
    std::thread::Builder::new()
        .name("drover-worker-stdin".into())
        .spawn(move || loop {
            match read_msg::<ToWorker>(&mut input, &mut buf) {
                Ok(Some(ToWorker::Run(job))) => {
                    let flag = Arc::new(AtomicBool::new(false));
                    lock(&reader_cancels).insert(job.chunk, Arc::clone(&flag));
                    let _ = jobs_tx.send((job, flag));
                }
                Ok(Some(ToWorker::Answer { chunk, frame, go })) => {
                    let _ = answers_tx.send((chunk, frame, go));
                }
                Ok(Some(ToWorker::Cancel { chunk })) => {
                    if let Some(flag) = lock(&reader_cancels).get(&chunk) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Some(ToWorker::Init { .. })) => {
                    tracing::error!("a second init from the agent");
                    exit_now(2);
                }
                // The agent closed the pipe or died: the chunks in hand are
                // nobody's any more, and a render may be hung.
                Ok(None) => exit_now(0),
                Err(e) => {
                    tracing::error!("reading from the agent: {e}");
                    exit_now(2);
                }
            }
        })?;

    let mut cache = RendererCache::default();
    // The previous chunk's encoder, possibly still flushing while this
    // thread renders the next chunk. Joined before a third starts, so at
    // most two encoders are alive.
    let mut finishing: Option<PendingSegment> = None;
    for (job, cancel) in jobs_rx {
        let chunk = job.chunk;
        if cancel.load(Ordering::Relaxed) {
            lock(&cancels).remove(&chunk);
            out.send(&FromWorker::Failed {
                chunk,
                reason: "cancelled before it started".into(),
                log_tail: String::new(),
                failed_frame: None,
            });
            continue;
        }
        let gate = RemoteGate {
            chunk,
            start: job.start,
            next: Arc::new(AtomicU64::new(job.start)),
            cancel: Arc::clone(&cancel),
            out: Arc::clone(&out),
            answers: &answers_rx,
            pending: Cell::new(None),
        };
        let ctx = Chunk {
            gpu: &gpu,
            adapter: &adapter,
            spool: &spool,
            aids: &aids,
            out: &out,
            cancels: &cancels,
        };
        // A panic in the renderer must fail this chunk, not end the
        // process (which would fail the flushing one too).
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.start(&mut cache, &job, &gate, &cancel)
        }))
        .unwrap_or_else(|_| {
            cache = RendererCache::default();
            Err(ChunkError::Io(std::io::Error::other("renderer panicked")))
        });
        match started {
            Ok(pending) => {
                out.send(&FromWorker::Rendered { chunk });
                if let Some(prev) = finishing.replace(pending) {
                    prev.wait();
                }
            }
            Err(e) => {
                lock(&cancels).remove(&chunk);
                let end = gate
                    .next
                    .load(Ordering::Relaxed)
                    .saturating_sub(1)
                    .max(job.start);
                out.send(&failed(chunk, job.start, end, &adapter, &e));
            }
        }
    }
    // The reader exits the process; the channel only closes if it panicked.
    anyhow::bail!("the executor process's reader stopped")
}

/// The frames of a chunk, granted one by one by the supervisor.
///
/// The question for the next frame goes out as soon as a frame is granted,
/// so that its answer travels while this frame renders instead of holding
/// up the next one. That is still exact: the render loop asks for every
/// frame in order until one is refused, so a granted frame is always
/// rendered unless the chunk fails (and then the segment holds nothing).
struct RemoteGate<'a> {
    chunk: ChunkKey,
    start: u64,
    /// One past the last frame granted.
    next: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
    out: Arc<Out>,
    answers: &'a mpsc::Receiver<(ChunkKey, u64, bool)>,
    /// The frame asked about whose answer is not read yet.
    pending: Cell<Option<u64>>,
}

impl RemoteGate<'_> {
    fn ask(&self, frame: u64) {
        self.out.send(&FromWorker::Start {
            chunk: self.chunk,
            frame,
        });
        self.pending.set(Some(frame));
    }

    /// Reads the answer about the frame asked about last.
    fn answer(&self) -> Option<(u64, bool)> {
        let frame = self.pending.take()?;
        match self.answers.recv() {
            Ok((chunk, f, go)) if chunk == self.chunk && f == frame => Some((frame, go)),
            Ok(other) => {
                tracing::error!(
                    "asked about frame {frame} of {:?}, answered {other:?}",
                    self.chunk
                );
                exit_now(2)
            }
            // The reader ended: the process is exiting.
            Err(_) => exit_now(0),
        }
    }
}

impl FrameGate for RemoteGate<'_> {
    fn first_frame(&self) -> u64 {
        self.start
    }

    fn try_start(&self, frame: u64) -> bool {
        if self.pending.get().is_none() {
            if self.cancel.load(Ordering::Relaxed) {
                return false;
            }
            self.ask(frame);
        }
        let go = match self.answer() {
            Some((asked, go)) => {
                debug_assert_eq!(asked, frame, "frames are asked for in order");
                go && asked == frame
            }
            None => false,
        };
        if !go {
            return false;
        }
        self.next.store(frame + 1, Ordering::Relaxed);
        if self.cancel.load(Ordering::Relaxed) {
            return false;
        }
        self.ask(frame + 1);
        true
    }

    fn stop(&self) {
        // The supervisor stops the chunk's window when it hears the
        // chunk failed.
    }
}

impl Drop for RemoteGate<'_> {
    fn drop(&mut self) {
        // A render that stopped on an error leaves one question out; its
        // answer must not be taken for the next chunk's.
        let _ = self.answer();
    }
}

/// What starting a chunk needs.
struct Chunk<'a> {
    gpu: &'a Gpu,
    adapter: &'a AdapterReport,
    spool: &'a PathBuf,
    aids: &'a TestAids,
    out: &'a Arc<Out>,
    cancels: &'a Cancels,
}

impl Chunk<'_> {
    /// Renders the chunk on this thread and leaves its encoder finishing;
    /// the encoder thread hashes the segment and reports the chunk's end.
    fn start(
        &self,
        cache: &mut RendererCache,
        job: &Job,
        gate: &RemoteGate<'_>,
        cancel: &AtomicBool,
    ) -> Result<PendingSegment, ChunkError> {
        let started = Instant::now();
        let chunk = job.chunk;
        let a = self.adapter;
        self.out.log(
            chunk,
            format!(
                "executor process (pid {}): adapter {} ({}, {}, driver {})",
                std::process::id(),
                a.name,
                a.device_type,
                a.backend,
                if a.driver.is_empty() {
                    "unknown"
                } else {
                    &a.driver
                }
            ),
        );
        self.out.log(
            chunk,
            format!(
                "rendering from frame {} at {}x{}, {} fps; encoder {} (crf {}, preset {DEFAULT_PRESET})",
                job.start, job.width, job.height, job.fps, job.encoder, job.crf
            ),
        );
        if self.aids.slows_down() || !self.aids.fail_frames.is_empty() {
            self.out.log(
                chunk,
                format!(
                    "test aids: slowdown x{}, failing frames {:?}",
                    self.aids.slowdown_factor, self.aids.fail_frames
                ),
            );
        }
        let reused = cache.holds(&job.shader_source, job.width, job.height, job.fps);
        let compiling = Instant::now();
        let renderer = cache.get(self.gpu, &job.shader_source, job.width, job.height, job.fps)?;
        self.out.log(
            chunk,
            if reused {
                "shader pipeline reused from the previous chunk".to_string()
            } else {
                format!(
                    "shader pipeline compiled in {:.1} ms",
                    compiling.elapsed().as_secs_f64() * 1e3
                )
            },
        );
        let settings = EncodeSettings {
            width: job.width,
            height: job.height,
            fps: job.fps,
            crf: job.crf,
            codec: job.encoder.clone(),
            preset: DEFAULT_PRESET.to_string(),
        };
        let path = segment_path(self.spool, ChunkRef::from(chunk));
        let out = Arc::clone(self.out);
        // Flushed by whichever ends first: the render loop, or the encoder
        // thread reporting the segment (its line must come after them).
        let lines = Arc::new(Mutex::new(FrameLines::new()));
        let done_lines = Arc::clone(&lines);
        let mut last_done = Instant::now();
        let first_frame = job.start;
        let progress = |frames_done: u64| {
            out.send(&FromWorker::Progress { chunk, frames_done });
            // With frames in flight, the time between two frames done is
            // the node's pace per frame, which is what a log reader wants.
            let now = Instant::now();
            let took_ms = now.duration_since(last_done).as_secs_f64() * 1e3;
            last_done = now;
            let at_ms = started.elapsed().as_millis() as u64;
            let frame = first_frame + frames_done - 1;
            let line = lock(&lines).frame(at_ms, frame, took_ms);
            if let Some(line) = line {
                out.log(chunk, line);
            }
        };
        let done_out = Arc::clone(self.out);
        let adapter = self.adapter.clone();
        let cancels = Arc::clone(self.cancels);
        let (start, next) = (job.start, Arc::clone(&gate.next));
        let seg = path.clone();
        let on_done = move |result: Result<u64, ChunkError>| {
            lock(&cancels).remove(&chunk);
            // Rendering has ended before the encoder finishes, so the last
            // frame granted is final here.
            let end = next.load(Ordering::Relaxed).saturating_sub(1);
            let total = (end + 1).saturating_sub(start);
            let finished = result.and_then(|frames| {
                if frames != total || total == 0 {
                    let _ = std::fs::remove_file(&seg);
                    return Err(ChunkError::Io(std::io::Error::other(format!(
                        "encoder wrote {frames} frames, expected {total} (frames {start}-{end})"
                    ))));
                }
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(std::fs::File::open(&seg)?)?;
                Ok(*hasher.finalize().as_bytes())
            });
            let line = lock(&done_lines).flush();
            if let Some(line) = line {
                done_out.log(chunk, line);
            }
            match &finished {
                Ok(hash) => done_out.log(
                    chunk,
                    format!(
                        "segment complete: frames {start}-{end}, {} bytes, blake3 {}..., {} ms after the chunk started",
                        std::fs::metadata(&seg).map_or(0, |m| m.len()),
                        hex::encode(&hash[..8]),
                        started.elapsed().as_millis()
                    ),
                ),
                Err(e) => done_out.log(chunk, format!("segment failed: {e}")),
            }
            let msg = match finished {
                Ok(hash) => FromWorker::Finished {
                    chunk,
                    start,
                    end,
                    path: seg,
                    hash: hex::encode(hash),
                    adapter: adapter.name.clone(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                },
                Err(e) => failed(chunk, start, end.max(start), &adapter, &e),
            };
            done_out.send(&msg);
        };
        self.out.log(
            chunk,
            format!("encoder {} writing {}", settings.codec, path.display()),
        );
        let result = start_segment_gated(
            renderer, &settings, gate, self.aids, &path, cancel, progress, on_done,
        );
        let line = lock(&lines).flush();
        if let Some(line) = line {
            self.out.log(chunk, line);
        }
        result
    }
}

fn failed(
    chunk: ChunkKey,
    start: u64,
    end: u64,
    adapter: &AdapterReport,
    e: &ChunkError,
) -> FromWorker {
    FromWorker::Failed {
        chunk,
        reason: e.to_string(),
        log_tail: format!(
            "job {} chunk {} frames {start}-{end} on {} ({}): {e}",
            chunk.job, chunk.index, adapter.name, adapter.device_type
        ),
        failed_frame: e.failed_frame(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps written in one step each: consistent even after a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends the process now, without running exit handlers: a render thread
/// may be stuck in the driver, whose handlers could wait for it.
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// The agent decides when its worker ends (closing its stdin, or SIGKILL):
/// a Ctrl-C in the agent's terminal reaches its whole process group, and a
/// service manager's SIGTERM often its whole control group, while the agent
/// may want to finish the chunk in hand before it leaves.
fn ignore_stop_signals() {
    #[cfg(unix)]
    // SAFETY: dispositions set at the start of the process, before it
    // spawns any thread.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// The messages' pipe: a duplicate of stdout. Fd 1 itself then points at
/// stderr, so that nothing else in the process (a library's print, a stray
/// `println!`) can write into the messages.
#[cfg(unix)]
fn protocol_output() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    // Held so that nothing is written through Rust's stdout meanwhile.
    let _guard = stdout.lock();
    let pipe = stdout.as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 on two descriptors this process owns; fd 1 is replaced
    // atomically by a duplicate of fd 2.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(pipe))
}

#[cfg(not(unix))]
fn protocol_output() -> std::io::Result<std::fs::File> {
    Err(std::io::Error::other(
        "the executor process needs a Unix system (it moves stdout aside)",
    ))
}
