//! The executor: runs assigned chunks one at a time, in a child process of
//! the agent, so that a runaway or hung render (a shader that takes minutes
//! per frame or never ends, a crashed driver) is killed without taking the
//! agent down. Inside a chunk the renderer and the encoder run on two threads
//! joined by a short bounded queue, so rendering frame k+1 overlaps encoding
//! frame k.
//!
//! # Layout
//! - [`Executor`]: the agent's handle. Its thread is the *supervisor*
//!   (`supervise`: a sans-IO state machine, and the driver in this file
//!   that spawns, feeds, reads and kills the worker process).
//! - [`worker`]: the child side, `drover exec-worker` ([`worker::run`]):
//!   opens its own render device, renders and encodes chunks exactly as
//!   below, writes segments in the spool. `wire`: the JSON lines between
//!   them.
//! - [`FrameWindow`]: the frames a chunk may still start, shared with the
//!   agent so that a `Shrink` from the coordinator is answered exactly.
//! - [`start_segment_in`] and [`render_and_encode_in`]: render a window of
//!   frames into one segment (the chunk's work in the worker, the
//!   benchmark's baseline and the calibration alike).
//! - [`calibrate`]: the node's speed at start (in the agent's process).
//! - [`TestAids`]: `--slowdown` and `--fail-frame`, for tests of the farm;
//!   the worker applies them.
//!
//! # The executor process
//! The supervisor starts the worker as soon as the executor starts
//! (`current_exe() exec-worker`, or [`EXEC_PROGRAM_ENV`], or
//! [`ExecOptions::worker`]), sends it the spool and the test aids, and keeps
//! one alive. Chunks go to it one at a time over its stdin; its stdout
//! carries only messages (the worker points its own fd 1 at stderr, so a
//! library's stray print cannot corrupt them); its stderr is relayed line by
//! line to the agent's, and the last [`STDERR_TAIL_LINES`] lines go into the
//! report of a chunk whose worker died.
//!
//! - **Exact shrink.** The worker asks the supervisor for each frame before
//!   it starts it, and the supervisor answers with the chunk's
//!   [`FrameWindow::try_start`] under the window's lock: the same decision,
//!   in the same process as the agent's shrink, as when rendering ran on a
//!   thread of the agent. The question for the next frame goes out as soon
//!   as a frame is granted, so the round trip over the pipes travels while
//!   that frame renders; a granted frame is always rendered unless the
//!   chunk fails, so the answer to a shrink stays the segment's last frame.
//! - **Frame limit.** A chunk's frames run under the job's
//!   `frame_timeout_s`, else [`DEFAULT_FRAME_TIMEOUT_S`] (or
//!   [`ExecOptions::frame_timeout`]). The clock of a frame runs from the
//!   moment the worker waits for it: the chunk was sent, or the frame before
//!   it was done (frames in flight overlap, and the GPU draws them in
//!   order). A frame past the limit: the worker is killed (SIGKILL; a hung
//!   shader cannot look at a flag), the chunk fails with that frame named
//!   ("frame N exceeded the frame time limit of X s"), and a new worker
//!   starts at once for the next chunk. After its last frame a segment has
//!   the frame limit, at least [`FLUSH_TIMEOUT_MIN_S`], to be complete.
//! - **Cancel.** The cancel flag is passed on to the worker, which stops at
//!   its next frame; one that has not given the chunk up within
//!   [`CANCEL_GRACE_MS`] is killed and the chunk reported cancelled.
//! - **Crash.** A worker that exits, is killed by a signal or closes its
//!   output fails the chunk it held, naming the frame it was on, and the
//!   chunk whose encoder was still flushing; a new one starts after
//!   [`RESTART_BACKOFF_BASE_MS`], doubling with each death before a
//!   segment is finished, up to [`RESTART_BACKOFF_MAX_MS`]. A worker that
//!   cannot start (no device, a missing program, no answer within
//!   [`WORKER_STARTUP_TIMEOUT_S`]) fails the chunk waiting first and backs
//!   off the same way, so a node whose worker never starts does not hold
//!   work. The agent never goes down with its worker; half-written segments
//!   of a dead worker are removed.
//! - **Overlap.** A chunk is sent to the worker when the previous one has
//!   rendered its last frame; its encoder flushes meanwhile (at most two
//!   encoders are alive, as before).
//! - The worker exits when its stdin closes: the agent dropped the executor
//!   or died.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use drover_protocol::{Assign, ChunkRef};
use drover_shared::caps::Calibration;
use tokio::sync::mpsc::UnboundedSender;

use crate::encode::{EncodeSettings, SegmentEncoder, DEFAULT_CODEC};
use crate::render::{Gpu, RenderError, Renderer, FRAMES_IN_FLIGHT};

mod supervise;
mod wire;
pub mod worker;

use supervise::{Action, Supervisor};
use wire::{FromWorker, ToWorker};

/// Frame time limit, in seconds, of a chunk whose job sets no
/// `frame_timeout_s`: five minutes is far beyond any frame a shader job
/// renders on a working node (lavapipe draws a 720p frame in milliseconds),
/// and still lets a hung render go within minutes.
pub const DEFAULT_FRAME_TIMEOUT_S: u64 = 300;

/// How long a cancelled chunk's worker has to give it up, in milliseconds,
/// before it is killed: it stops at its next frame, so only a frame that
/// never ends (which cannot look at a flag) outlasts this.
pub const CANCEL_GRACE_MS: u64 = 2_000;

/// Least time, in seconds, a segment has after its last frame to be
/// complete (x264 drains its lookahead: about 100 ms at 720p, seconds at
/// 8K on a slow preset); the frame limit when that is longer.
pub const FLUSH_TIMEOUT_MIN_S: u64 = 60;

/// How long a new worker has to open its render device and say so, in
/// seconds; a GPU driver can take several seconds, lavapipe a fraction of
/// one.
pub const WORKER_STARTUP_TIMEOUT_S: u64 = 60;

/// First wait before restarting a worker that died on its own, in
/// milliseconds; doubled with each further death.
pub const RESTART_BACKOFF_BASE_MS: u64 = 250;

/// Longest wait before restarting a worker, in milliseconds: a node whose
/// worker keeps dying tries again twice a minute.
pub const RESTART_BACKOFF_MAX_MS: u64 = 30_000;

/// A worker that lived this long, in seconds, before it died starts the
/// backoff anew: its death is not one of a series.
pub const STABLE_UPTIME_S: u64 = 60;

/// How often the supervisor looks at the agent's cancel flags, in
/// milliseconds, while it holds chunks.
pub const CANCEL_POLL_MS: u64 = 50;

/// Lines of the worker's stderr kept for the report of a chunk whose worker
/// died (a panic message, a driver's complaint).
pub const STDERR_TAIL_LINES: usize = 20;

/// Longest stderr line relayed, in bytes; the rest of a longer one is
/// dropped.
const STDERR_LINE_BYTES: usize = 4 * 1024;

/// How long the supervisor waits for a worker whose output closed to exit,
/// before it kills it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Environment variable naming the program run as the executor process
/// (with the argument [`WORKER_SUBCOMMAND`]); the agent's own binary when
/// unset.
pub const EXEC_PROGRAM_ENV: &str = "DROVER_EXEC_PROGRAM";

/// The hidden subcommand of `drover` that runs [`worker::run`].
pub const WORKER_SUBCOMMAND: &str = "exec-worker";

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
    /// The frames the chunk may still start; the agent shrinks it.
    pub window: Arc<FrameWindow>,
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
        /// First frame in the segment, inclusive.
        start: u64,
        /// Last frame in the segment, inclusive: the assignment's end or,
        /// after a shrink, the end the node answered.
        end: u64,
        /// Spool path of the segment.
        path: PathBuf,
        /// Its BLAKE3.
        hash: [u8; 32],
        /// Adapter that rendered it.
        adapter: String,
        /// Render plus encode time.
        elapsed_ms: u64,
    },
    /// A piece of the chunk's executor log
    /// ([`crate::chunklog::ChunkLogBuffer`]), for the coordinator. The
    /// last piece (`last`) comes right before the chunk's `Finished` or
    /// `Failed`.
    Log {
        /// Which attempt.
        chunk: ChunkRef,
        /// Where `text` starts in the chunk's log, in bytes.
        offset: u64,
        /// At most [`drover_protocol::MAX_CHUNK_LOG_PIECE_BYTES`].
        text: String,
        /// The chunk's log is complete.
        last: bool,
    },
    /// The chunk failed (or was cancelled).
    Failed {
        /// Which attempt.
        chunk: ChunkRef,
        /// One line.
        reason: String,
        /// Context for the admin.
        log_tail: String,
        /// The frame whose render failed, when the failure is a frame's.
        failed_frame: Option<u64>,
    },
}

/// The frames of one chunk: shared by the executor thread, which starts
/// them one by one, and the agent, which shrinks the chunk when the
/// coordinator steals its tail.
///
/// Both sides take the same lock, so each decision is atomic: a frame is
/// started only if it is within the end at that moment, and a shrink never
/// moves the end before a frame already started. The end a shrink answers
/// is therefore exactly the last frame the segment will hold.
#[derive(Debug)]
pub struct FrameWindow {
    start: u64,
    state: Mutex<WindowState>,
}

#[derive(Debug, Clone, Copy)]
struct WindowState {
    /// The next frame the executor would start: `start` until the first
    /// frame is submitted to the GPU, then one past the last submitted.
    next_frame: u64,
    /// The last frame the segment will hold, as far as anyone knows now.
    end: u64,
    /// Rendering failed or was cancelled: the segment will hold nothing.
    stopped: bool,
}

impl FrameWindow {
    /// Frames `start..=end`, none started.
    pub fn new(start: u64, end: u64) -> Result<FrameWindow, ChunkError> {
        if end < start {
            return Err(ChunkError::BadRange { start, end });
        }
        Ok(FrameWindow {
            start,
            state: Mutex::new(WindowState {
                next_frame: start,
                end,
                stopped: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        // The state is three plain numbers written under the lock in one
        // step each, so it is consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// First frame, inclusive.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last frame, inclusive, as of now; final once rendering has ended.
    pub fn end(&self) -> u64 {
        self.lock().end
    }

    /// Frames in the window as of now.
    pub fn frames(&self) -> u64 {
        self.end() - self.start + 1
    }

    /// Frames started so far (submitted to the GPU, not necessarily read
    /// back).
    pub fn frames_started(&self) -> u64 {
        self.lock().next_frame - self.start
    }

    /// Asked by the executor right before it submits `frame` (frames come
    /// in order): `true` starts it and from then on no shrink can end the
    /// window before it; `false` means the window ended before `frame`.
    pub fn try_start(&self, frame: u64) -> bool {
        let mut s = self.lock();
        debug_assert_eq!(frame, s.next_frame, "frames start in order");
        if s.stopped || frame > s.end {
            return false;
        }
        s.next_frame = frame.saturating_add(1);
        true
    }

    /// The coordinator proposes `proposed_end` as the new last frame; the
    /// answer is the last frame the segment will really hold: the proposal,
    /// but never before a frame already started nor before the first frame,
    /// and never after the current end. `None` once rendering has failed or
    /// been cancelled.
    pub fn shrink(&self, proposed_end: u64) -> Option<u64> {
        let mut s = self.lock();
        if s.stopped {
            return None;
        }
        // `next_frame - 1` is the last frame started; before any started it
        // is `start - 1`, which the clamp to `start` already covers.
        let last_started = s.next_frame.saturating_sub(1);
        let end = proposed_end.max(self.start).max(last_started).min(s.end);
        s.end = end;
        Some(end)
    }

    /// Marks the window as delivering nothing (rendering or encoding
    /// failed, or the chunk was cancelled).
    pub fn stop(&self) {
        self.lock().stopped = true;
    }
}

/// Decides, frame by frame, whether the next frame of a segment may start:
/// a [`FrameWindow`] in the agent's process, the supervisor's answers in
/// the worker.
pub(crate) trait FrameGate {
    /// First frame, inclusive.
    fn first_frame(&self) -> u64;
    /// Asked right before `frame` is submitted, once per frame, in order.
    fn try_start(&self, frame: u64) -> bool;
    /// The segment will deliver nothing.
    fn stop(&self);
}

impl FrameGate for FrameWindow {
    fn first_frame(&self) -> u64 {
        self.start
    }

    fn try_start(&self, frame: u64) -> bool {
        FrameWindow::try_start(self, frame)
    }

    fn stop(&self) {
        FrameWindow::stop(self)
    }
}

/// Largest `--slowdown` factor: a bigger one makes a chunk outlast any
/// stall timeout, which tests nothing useful.
pub const MAX_SLOWDOWN_FACTOR: f64 = 1000.0;

/// The least render time the slowdown assumes for a frame: tiny test frames
/// render in well under a millisecond, and a multiple of nearly nothing
/// would leave the node as fast as before.
pub const SLOWDOWN_MIN_FRAME_TIME: Duration = Duration::from_millis(2);

/// Aids for testing the farm, never for production: they make this node
/// behave like a slower or failing one.
#[derive(Debug, Clone, PartialEq)]
pub struct TestAids {
    /// After each frame the renderer pauses `(factor - 1) x` the frame's
    /// render time, and the encoder `(factor - 1) x` its encode time (each
    /// at least [`SLOWDOWN_MIN_FRAME_TIME`]), so whichever stage limits the
    /// node, it is about `factor` times slower. A slowed renderer keeps one
    /// frame in flight instead of [`FRAMES_IN_FLIGHT`], so that its pauses
    /// are not hidden behind GPU work. 1 is normal speed.
    pub slowdown_factor: f64,
    /// Frames (job frame numbers) whose render fails on purpose, in any
    /// chunk that holds them.
    pub fail_frames: Vec<u64>,
}

impl Default for TestAids {
    fn default() -> Self {
        TestAids {
            slowdown_factor: 1.0,
            fail_frames: Vec::new(),
        }
    }
}

impl TestAids {
    /// Checks the factor: finite and in `1..=`[`MAX_SLOWDOWN_FACTOR`].
    pub fn check(&self) -> Result<(), String> {
        let f = self.slowdown_factor;
        if !(1.0..=MAX_SLOWDOWN_FACTOR).contains(&f) {
            return Err(format!(
                "slowdown factor {f} is outside 1..={MAX_SLOWDOWN_FACTOR}"
            ));
        }
        Ok(())
    }

    /// True when frames are slowed down.
    pub fn slows_down(&self) -> bool {
        self.slowdown_factor > 1.0
    }

    /// The pause after a frame that took `frame_time` to render.
    pub fn pause_after(&self, frame_time: Duration) -> Duration {
        if !self.slows_down() {
            return Duration::ZERO;
        }
        let factor = self.slowdown_factor.min(MAX_SLOWDOWN_FACTOR);
        frame_time
            .max(SLOWDOWN_MIN_FRAME_TIME)
            .mul_f64(factor - 1.0)
    }

    pub(crate) fn fails(&self, frame: u64) -> bool {
        self.fail_frames.contains(&frame)
    }
}

/// Parses a `--slowdown` factor (for the command line): a number in
/// `1..=`[`MAX_SLOWDOWN_FACTOR`].
pub fn parse_slowdown_factor(text: &str) -> Result<f64, String> {
    let factor: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let aids = TestAids {
        slowdown_factor: factor,
        fail_frames: Vec::new(),
    };
    aids.check()?;
    Ok(factor)
}

/// Width of the calibration render, pixels.
pub const CALIBRATION_WIDTH_PX: u32 = 640;
/// Height of the calibration render, pixels.
pub const CALIBRATION_HEIGHT_PX: u32 = 360;
/// Frames in the calibration render: a second of video, enough to average
/// out the first frame's start-up cost, short enough not to delay a start.
pub const CALIBRATION_FRAMES: u64 = 24;
/// Frame rate of the calibration render.
const CALIBRATION_FPS: u32 = 24;
/// The built-in shader the calibration renders.
const CALIBRATION_SHADER: &str = "plasma";

/// Measures this node's speed: renders and encodes a fixed short sequence
/// (the built-in `plasma` shader, [`CALIBRATION_FRAMES`] frames at
/// [`CALIBRATION_WIDTH_PX`]x[`CALIBRATION_HEIGHT_PX`]) through the same path
/// chunks take, under `aids` (so a slowed node reports a slower speed),
/// with `encoder`. The segment is written in `dir` and deleted afterwards.
pub fn calibrate(
    gpu: &Gpu,
    dir: &Path,
    aids: &TestAids,
    encoder: &str,
) -> Result<Calibration, ChunkError> {
    let source = drover_shaders::get(CALIBRATION_SHADER)
        .map(|b| b.source)
        .ok_or_else(|| {
            ChunkError::Io(std::io::Error::other(format!(
                "built-in shader {CALIBRATION_SHADER:?} is missing"
            )))
        })?;
    let (width, height) = (CALIBRATION_WIDTH_PX, CALIBRATION_HEIGHT_PX);
    // Compiling the pipeline is a per-job cost, not a per-frame one: kept
    // out of the timed part.
    let mut renderer = Renderer::new(gpu, source, width, height, CALIBRATION_FPS)?;
    let settings = EncodeSettings {
        codec: encoder.to_string(),
        ..EncodeSettings::new(width, height, CALIBRATION_FPS)
    };
    let window = FrameWindow::new(0, CALIBRATION_FRAMES - 1)?;
    // Test aids that fail frames are for chunks; the calibration only
    // takes the slowdown.
    let aids = TestAids {
        fail_frames: Vec::new(),
        ..aids.clone()
    };
    let path = dir.join("calibration.mp4");
    // Timed from the first frame rendered, so that the encoder's start is
    // not counted as frame time (a fast node would look slower than it is);
    // the flush at the end stays in, as every chunk pays it.
    let first_frame = std::cell::Cell::new(None::<Instant>);
    let result = render_and_encode_in(
        &mut renderer,
        &settings,
        &window,
        &aids,
        &path,
        &AtomicBool::new(false),
        |done| {
            if done == 1 {
                first_frame.set(Some(Instant::now()));
            }
        },
    );
    let elapsed_s = first_frame.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
    // Removed whatever happened: only a failed encode removes it itself.
    let _ = std::fs::remove_file(&path);
    let frames = result?;
    Ok(Calibration {
        frames_per_s: frames.saturating_sub(1).max(1) as f64 / elapsed_s.max(1e-6),
        width,
        height,
    })
}

/// The encoder the calibration uses: the default one when it opened here,
/// else the first that did; `None` when none did.
pub fn calibration_encoder(encoders: &[String]) -> Option<&str> {
    encoders
        .iter()
        .find(|e| e.as_str() == DEFAULT_CODEC)
        .or_else(|| encoders.first())
        .map(String::as_str)
}

/// The program run as the executor process, and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// `program exec-worker`: the `drover` binary, or any program that
    /// runs [`worker::run`] when given [`WORKER_SUBCOMMAND`].
    pub fn subcommand_of(program: impl Into<PathBuf>) -> WorkerCommand {
        WorkerCommand {
            program: program.into(),
            args: vec![WORKER_SUBCOMMAND.into()],
        }
    }

    /// The program in [`EXEC_PROGRAM_ENV`], else this process's own binary
    /// (the agent is `drover`, whose hidden `exec-worker` runs the worker).
    pub fn from_env() -> WorkerCommand {
        let program = std::env::var_os(EXEC_PROGRAM_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok())
            // Left for the spawn to fail on, with this name in the report.
            .unwrap_or_else(|| PathBuf::from("drover"));
        WorkerCommand::subcommand_of(program)
    }
}

/// How an [`Executor`] runs its worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOptions {
    /// The executor process.
    pub worker: WorkerCommand,
    /// Frame time limit of a chunk whose job sets none.
    pub frame_timeout: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            worker: WorkerCommand::from_env(),
            frame_timeout: Duration::from_secs(DEFAULT_FRAME_TIMEOUT_S),
        }
    }
}

/// The frame time limit of an assignment: the job's `frame_timeout_s` when
/// it sets one (the wire carries 0 when it does not), else `default`.
pub(crate) fn frame_limit(assign: &Assign, default: Duration) -> Duration {
    match assign.frame_timeout_s {
        0 => default,
        s => Duration::from_secs(u64::from(s)),
    }
}

/// Where the segment of `chunk` is written in `spool`.
pub(crate) fn segment_path(spool: &Path, chunk: ChunkRef) -> PathBuf {
    spool.join(format!(
        "job-{}-chunk-{:05}-e{}.mp4",
        chunk.job, chunk.index, chunk.epoch
    ))
}

/// Handle to the executor: its supervisor thread and, through it, the
/// executor process.
pub struct Executor {
    inputs: mpsc::Sender<Input>,
}

impl Executor {
    /// Starts the executor; segments are written under `spool`, and every
    /// chunk runs under `aids` (the default for real work). The worker is
    /// `current_exe() exec-worker` unless [`EXEC_PROGRAM_ENV`] names another
    /// program, and frames are limited to [`DEFAULT_FRAME_TIMEOUT_S`] unless
    /// their job says otherwise.
    pub fn start(gpu: Gpu, spool: PathBuf, aids: TestAids) -> Executor {
        Executor::start_with(gpu, spool, aids, ExecOptions::default())
    }

    /// [`Executor::start`] with the worker program and the default frame
    /// limit given.
    pub fn start_with(gpu: Gpu, spool: PathBuf, aids: TestAids, opts: ExecOptions) -> Executor {
        // The worker opens its own device; the agent's (from probing and
        // calibrating) is only named in reports until a worker is ready.
        let adapter = gpu.adapter().clone();
        drop(gpu);
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            core: Supervisor::new(Instant::now(), spool.clone(), opts.frame_timeout, adapter),
            inputs: rx,
            feed: tx.clone(),
            worker: opts.worker,
            init: ToWorker::Init {
                version: wire::WORKER_PROTOCOL_VERSION,
                spool,
                slowdown_factor: aids.slowdown_factor,
                fail_frames: aids.fail_frames,
            },
            process: None,
        };
        std::thread::Builder::new()
            .name("drover-executor".into())
            .spawn(move || driver.run())
            .expect("spawning the executor thread");
        Executor { inputs: tx }
    }

    /// Queues a chunk; the executor runs chunks one at a time, in order.
    pub fn submit(&self, item: WorkItem) {
        // The supervisor thread only ends if it panicked; report the chunk
        // failed rather than take the agent down with it.
        if let Err(mpsc::SendError(Input::Submit(item))) = self.inputs.send(Input::Submit(item)) {
            item.window.stop();
            let _ = item.events.send(WorkerEvent::Failed {
                chunk: item.assign.chunk,
                reason: "the node's executor thread has stopped; restart the node".into(),
                log_tail: String::new(),
                failed_frame: None,
            });
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // The supervisor runs what it holds, then stops its worker.
        let _ = self.inputs.send(Input::Close);
    }
}

/// What the supervisor thread waits for.
enum Input {
    Submit(WorkItem),
    /// A message from worker `generation`.
    Message(u64, FromWorker),
    /// Worker `generation` wrote something that is not a message.
    Garbled(u64, String),
    /// Worker `generation` closed its output.
    Closed(u64),
    /// A line worker `generation` wrote on its stderr.
    Stderr(u64, String),
    /// The executor was dropped.
    Close,
}

/// The worker process as the driver holds it.
struct Process {
    generation: u64,
    child: Child,
    /// Lines for its stdin, written by a thread of their own so that a
    /// worker that stops reading cannot block the supervisor.
    stdin: mpsc::Sender<Vec<u8>>,
    /// Its last stderr lines.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Ends when its stderr closes.
    stderr_done: mpsc::Receiver<()>,
}

/// The supervisor thread: performs the core's actions and feeds it what
/// happens.
struct Driver {
    core: Supervisor,
    inputs: mpsc::Receiver<Input>,
    /// Handed to each worker's reader thread.
    feed: mpsc::Sender<Input>,
    worker: WorkerCommand,
    init: ToWorker,
    process: Option<Process>,
}

impl Driver {
    fn run(mut self) {
        loop {
            while let Some(action) = self.core.poll_action() {
                self.perform(action);
            }
            if self.core.is_done() {
                break;
            }
            let now = Instant::now();
            let mut wake = self.core.poll_timeout();
            if self.core.holds_chunks() {
                let poll = now + Duration::from_millis(CANCEL_POLL_MS);
                wake = Some(wake.map_or(poll, |w| w.min(poll)));
            }
            let input = match wake {
                Some(at) => match self.inputs.recv_timeout(at.saturating_duration_since(now)) {
                    Ok(input) => Some(input),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    // `feed` keeps the channel open; this cannot happen.
                    Err(mpsc::RecvTimeoutError::Disconnected) => Some(Input::Close),
                },
                None => Some(self.inputs.recv().unwrap_or(Input::Close)),
            };
            let now = Instant::now();
            match input {
                None => {}
                Some(Input::Submit(item)) => self.core.submit(now, item),
                Some(Input::Message(g, msg)) => self.core.message(now, g, msg),
                Some(Input::Garbled(g, e)) => self.core.garbled(now, g, e),
                Some(Input::Stderr(g, line)) => self.core.stderr_line(g, &line),
                Some(Input::Closed(g)) => {
                    let (status, tail) = self.wait_exit(g);
                    self.core.exited(Instant::now(), g, &status, &tail);
                }
                Some(Input::Close) => self.core.close(now),
            }
            // Every time, not only on timeouts: a stream of progress must
            // not keep the deadlines and cancel flags from being looked at.
            self.core.tick(Instant::now());
        }
        if let Some(p) = self.process.take() {
            // Closing its stdin ends the worker; it holds nothing now.
            drop(p.stdin);
            reap(p.child, EXIT_WAIT);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn { generation } => {
                if let Some(p) = self.process.take() {
                    kill(p.child);
                }
                match self.spawn(generation) {
                    Ok(p) => self.process = Some(p),
                    Err(e) => {
                        let what = format!("{}: {e}", self.worker.program.display());
                        self.core.spawn_failed(Instant::now(), generation, what);
                    }
                }
            }
            Action::Send(msg) => {
                if let Some(p) = &self.process {
                    // A worker that is gone is noticed by its reader.
                    let _ = p.stdin.send(wire::to_line(&msg));
                }
            }
            Action::Kill => {
                if let Some(p) = self.process.take() {
                    kill(p.child);
                }
            }
            Action::Discard(path) => match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a dead worker's segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), "could not remove: {e}"),
            },
        }
    }

    fn spawn(&self, generation: u64) -> std::io::Result<Process> {
        let mut child = Command::new(&self.worker.program)
            .args(&self.worker.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill(child);
            return Err(std::io::Error::other("the worker's pipes were not opened"));
        };
        tracing::info!(pid, generation, "executor process started");
        let (line_tx, line_rx) = mpsc::channel::<Vec<u8>>();
        line_tx
            .send(wire::to_line(&self.init))
            .expect("the receiver is alive");
        std::thread::Builder::new()
            .name("drover-exec-stdin".into())
            .spawn(move || {
                let mut stdin = stdin;
                for line in line_rx {
                    if stdin.write_all(&line).is_err() {
                        break;
                    }
                }
            })?;
        let feed = self.feed.clone();
        std::thread::Builder::new()
            .name("drover-exec-stdout".into())
            .spawn(move || {
                let mut r = std::io::BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    let input = match wire::read_msg::<FromWorker>(&mut r, &mut buf) {
                        Ok(Some(msg)) => Input::Message(generation, msg),
                        Ok(None) => Input::Closed(generation),
                        Err(e) => Input::Garbled(generation, e.to_string()),
                    };
                    let last = !matches!(input, Input::Message(..));
                    if feed.send(input).is_err() || last {
                        break;
                    }
                }
            })?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let (done_tx, stderr_done) = mpsc::channel();
        let keep = Arc::clone(&tail);
        let lines = self.feed.clone();
        std::thread::Builder::new()
            .name("drover-exec-stderr".into())
            .spawn(move || {
                relay_stderr(stderr, &keep, |line| {
                    let _ = lines.send(Input::Stderr(generation, line.to_string()));
                });
                drop(done_tx);
            })?;
        Ok(Process {
            generation,
            child,
            stdin: line_tx,
            tail,
            stderr_done,
        })
    }

    /// Worker `generation` closed its output: waits for it to exit (killing
    /// it if it lingers) and for the rest of its stderr; its exit status
    /// and last stderr lines.
    fn wait_exit(&mut self, generation: u64) -> (String, String) {
        let Some(p) = self.process.as_mut().filter(|p| p.generation == generation) else {
            return (String::new(), String::new());
        };
        let deadline = Instant::now() + EXIT_WAIT;
        let status = loop {
            match p.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break "it closed its output and was killed".to_string();
                }
                Err(e) => break format!("its status is unknown: {e}"),
            }
        };
        let _ = p.stderr_done.recv_timeout(Duration::from_secs(1));
        let tail = p
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        (status, tail)
    }
}

/// Copies the worker's stderr to the agent's, line by line, keeping the
/// last [`STDERR_TAIL_LINES`] and handing each to `on_line` (for the logs
/// of the chunks the worker holds).
fn relay_stderr(
    stderr: std::process::ChildStderr,
    tail: &Mutex<VecDeque<String>>,
    mut on_line: impl FnMut(&str),
) {
    let mut r = std::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match Read::take(&mut r, STDERR_LINE_BYTES as u64).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') {
            // Cut: drop the rest of the line.
            if r.skip_until(b'\n').is_err() {
                return;
            }
            buf.push(b'\n');
        }
        let _ = std::io::stderr().write_all(&buf);
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        on_line(&line);
        let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if t.len() == STDERR_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// SIGKILLs a worker and reaps it on a thread of its own: a process stuck
/// in a driver call can take a while to die, and the supervisor must not
/// wait for it.
fn kill(mut child: Child) {
    let _ = child.kill();
    reap(child, Duration::ZERO);
}

/// Reaps a worker on a thread of its own, killing it if it has not exited
/// after `grace`.
fn reap(mut child: Child, grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("drover-exec-reaper".into())
        .spawn(move || {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            match child.wait() {
                Ok(status) => tracing::debug!(pid = child.id(), "executor process ended: {status}"),
                Err(e) => tracing::warn!(pid = child.id(), "reaping the executor process: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no thread to reap the executor process: {e}");
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
    /// Whether [`RendererCache::get`] would reuse the renderer it holds.
    pub fn holds(&self, source: &str, width: u32, height: u32, fps: u32) -> bool {
        self.renderer.is_some()
            && self
                .key
                .as_ref()
                .is_some_and(|(s, w, h, f)| s == source && (*w, *h, *f) == (width, height, fps))
    }

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
    /// The coordinator sent a range that ends before it starts.
    #[error("assignment's frame range {start}-{end} ends before it starts")]
    BadRange {
        /// First frame sent.
        start: u64,
        /// Last frame sent.
        end: u64,
    },
    /// The `--fail-frame` test aid failed this frame on purpose.
    #[error("test aid: frame {0} fails (--fail-frame)")]
    TestFailFrame(u64),
}

impl ChunkError {
    /// The frame whose render failed, when the failure is a frame's.
    pub fn failed_frame(&self) -> Option<u64> {
        match self {
            ChunkError::Render(RenderError::Frame { frame, .. }) => Some(*frame),
            ChunkError::TestFailFrame(frame) => Some(*frame),
            _ => None,
        }
    }
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
/// The fixed-range form of [`start_segment_in`], without test aids.
#[allow(clippy::too_many_arguments)]
pub fn start_segment(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    start: u64,
    end: u64,
    path: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
    on_done: impl FnOnce(Result<u64, ChunkError>) + Send + 'static,
) -> Result<PendingSegment, ChunkError> {
    let window = FrameWindow::new(start, end)?;
    start_segment_in(
        renderer,
        settings,
        &window,
        &TestAids::default(),
        path,
        cancel,
        progress,
        on_done,
    )
}

/// Renders the frames of `window` and feeds them to an encoder thread
/// writing the segment at `path`; returns as soon as the last frame is
/// rendered.
///
/// The window's end is read before each frame is started, so a shrink
/// while this runs ends the segment at the end it answered; once this
/// returns, the window's end is final and the segment holds exactly
/// `window.start()..=window.end()` (or the segment failed).
///
/// The encoder's flush (x264 drains its lookahead and frame threads, about
/// 100 ms at 720p) and the trailer then finish on the encoder thread, which
/// calls `on_done` with the frames written, so the caller can start
/// rendering the next chunk meanwhile. On failure or cancellation the
/// segment file is removed before `on_done` sees the error. `progress`
/// gets the frames handed to the encoder so far.
#[allow(clippy::too_many_arguments)]
pub fn start_segment_in(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    window: &FrameWindow,
    aids: &TestAids,
    path: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
    on_done: impl FnOnce(Result<u64, ChunkError>) + Send + 'static,
) -> Result<PendingSegment, ChunkError> {
    start_segment_gated(
        renderer, settings, window, aids, path, cancel, progress, on_done,
    )
}

/// [`start_segment_in`] over any [`FrameGate`]: the worker's gate asks the
/// supervisor, which holds the chunk's window.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_segment_gated(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    window: &(impl FrameGate + ?Sized),
    aids: &TestAids,
    path: &Path,
    cancel: &AtomicBool,
    mut progress: impl FnMut(u64),
    on_done: impl FnOnce(Result<u64, ChunkError>) + Send + 'static,
) -> Result<PendingSegment, ChunkError> {
    let mut encoder = SegmentEncoder::create(path, settings)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<ToEncoder>(RENDER_QUEUE_FRAMES);
    let seg_path = path.to_path_buf();
    // The slowdown pauses the encoder too: when encoding is the slower
    // stage, pausing only the renderer would merely drain the queue between
    // them and leave the node as fast as before.
    let encoder_aids = aids.clone();
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
                            let pushed = Instant::now();
                            if let Err(e) = encoder.push_rgba(&rgba) {
                                result = Err(e.into());
                                break;
                            }
                            let pause = encoder_aids.pause_after(pushed.elapsed());
                            if !pause.is_zero() {
                                std::thread::sleep(pause);
                            }
                        }
                        ToEncoder::End(end) => {
                            result = end;
                            break;
                        }
                    }
                }
                result.and_then(|()| {
                    // The encoder's flush encodes the frames its lookahead
                    // still holds, so it is slowed down like every frame.
                    let flushed = Instant::now();
                    let frames = encoder.finish()?.frames;
                    let pause = encoder_aids.pause_after(flushed.elapsed());
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                    Ok(frames)
                })
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
    let start = window.first_frame();
    // A slowed node renders one frame at a time: with frames in flight the
    // GPU would keep drawing through the pauses and hide them, and a
    // frame's own render time could not be measured.
    let frames_in_flight = if aids.slows_down() {
        1
    } else {
        FRAMES_IN_FLIGHT
    };
    // When each frame in flight was submitted, oldest first (read back in
    // the same order), for the slowdown's pause.
    let submitted_at: RefCell<VecDeque<Instant>> =
        RefCell::new(VecDeque::with_capacity(FRAMES_IN_FLIGHT));
    let failed_on_purpose: Cell<Option<u64>> = Cell::new(None);
    let rendered = renderer.render_while(
        start,
        frames_in_flight,
        |frame| {
            // A cancelled chunk starts no more frames (the window would
            // grant them: only the worker knows of the cancel).
            if cancel.load(Ordering::Relaxed) || !window.try_start(frame) {
                return false;
            }
            if aids.fails(frame) {
                failed_on_purpose.set(Some(frame));
                return false;
            }
            submitted_at.borrow_mut().push_back(Instant::now());
            true
        },
        |frame, rgba| {
            if cancel.load(Ordering::Relaxed) {
                return Err(RenderError::Sink("cancelled".into()));
            }
            // Measured before the hand-off, which may wait for a slower
            // (or slowed) encoder: that wait is not this frame's render time.
            let render_time = submitted_at.borrow_mut().pop_front().map(|t| t.elapsed());
            tx.send(ToEncoder::Frame(rgba))
                .map_err(|_| RenderError::Sink("encoder stopped".into()))?;
            if let Some(pause) = render_time.map(|t| aids.pause_after(t)) {
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            // Counted after the pause: a slowed frame is done only when its
            // simulated render time is over.
            progress(frame - start + 1);
            Ok(())
        },
    );
    let end_msg = match (rendered, failed_on_purpose.get()) {
        _ if cancel.load(Ordering::Relaxed) => Err(ChunkError::Cancelled),
        (Ok(()), Some(frame)) => Err(ChunkError::TestFailFrame(frame)),
        (Ok(()), None) => Ok(()),
        (Err(e), _) => Err(e.into()),
    };
    if end_msg.is_err() {
        // A failed segment delivers nothing: a shrink from now on is
        // answered "not held", whatever the end said.
        window.stop();
    }
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
    let window = FrameWindow::new(start, end)?;
    render_and_encode_in(
        renderer,
        settings,
        &window,
        &TestAids::default(),
        path,
        cancel,
        progress,
    )
}

/// [`render_and_encode`] over a [`FrameWindow`] and under test aids: the
/// chunk path, waited for. Returns the frames the segment holds.
pub fn render_and_encode_in(
    renderer: &mut Renderer,
    settings: &EncodeSettings,
    window: &FrameWindow,
    aids: &TestAids,
    path: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
) -> Result<u64, ChunkError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pending = start_segment_in(
        renderer,
        settings,
        window,
        aids,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A window over `start..=end` with `started` frames started, then a
    /// shrink to `proposed`: the answer, and the window's end after it.
    fn check(start: u64, end: u64, started: u64, proposed: u64, want: Option<u64>) {
        let w = FrameWindow::new(start, end).unwrap();
        for f in start..start + started {
            assert!(w.try_start(f), "frame {f} of {start}-{end}");
        }
        let got = w.shrink(proposed);
        assert_eq!(
            got, want,
            "{start}-{end}, {started} started, proposed {proposed}"
        );
        if let Some(e) = got {
            assert_eq!(w.end(), e);
            // The executor starts exactly the frames up to the answer.
            let mut f = start + started;
            while w.try_start(f) {
                f += 1;
            }
            assert_eq!(f, e + 1, "next frame after the last started");
            assert_eq!(w.frames_started(), e - start + 1);
        }
    }

    #[test]
    fn shrink_answers() {
        // Queued: the proposal is taken as is, never before the start.
        check(10, 49, 0, 20, Some(20));
        check(10, 49, 0, 10, Some(10));
        check(10, 49, 0, 3, Some(10));
        check(0, 0, 0, 0, Some(0));
        // Running: never before the last frame started (10..=14 here).
        check(10, 49, 5, 12, Some(14));
        check(10, 49, 5, 14, Some(14));
        check(10, 49, 5, 30, Some(30));
        // Never after the current end.
        check(10, 49, 5, 80, Some(49));
        check(10, 49, 40, 20, Some(49));
        check(10, 49, 40, 49, Some(49));
    }

    #[test]
    fn shrinks_only_shrink_and_stop_is_final() {
        let w = FrameWindow::new(0, 99).unwrap();
        assert!(w.try_start(0) && w.try_start(1));
        assert_eq!(w.shrink(50), Some(50));
        // A later, larger proposal cannot grow the window back.
        assert_eq!(w.shrink(70), Some(50));
        assert_eq!(w.shrink(0), Some(1));
        assert!(!w.try_start(2));
        assert_eq!(w.frames(), 2);
        w.stop();
        assert_eq!(w.shrink(1), None);
        assert!(!w.try_start(2));

        let reversed = FrameWindow::new(5, 4).unwrap_err();
        assert_eq!(
            reversed.to_string(),
            "assignment's frame range 5-4 ends before it starts"
        );
    }

    #[test]
    fn slowdown_pauses() {
        let ms = Duration::from_millis;
        let aids = |f: f64| TestAids {
            slowdown_factor: f,
            fail_frames: Vec::new(),
        };
        assert_eq!(aids(1.0).pause_after(ms(40)), Duration::ZERO);
        assert_eq!(aids(3.0).pause_after(ms(40)), ms(80));
        // Fast frames count as SLOWDOWN_MIN_FRAME_TIME.
        assert_eq!(aids(3.0).pause_after(Duration::ZERO), ms(4));
        assert_eq!(aids(1.5).pause_after(ms(1)), ms(1));
        assert!(aids(1.0).check().is_ok() && aids(1000.0).check().is_ok());
        for bad in [0.5, 0.0, -2.0, 1001.0, f64::NAN, f64::INFINITY] {
            let e = aids(bad).check().unwrap_err();
            assert!(e.contains("outside 1..=1000"), "{bad}: {e}");
        }
    }

    #[test]
    fn slowdown_factors_parse() {
        assert_eq!(parse_slowdown_factor("2.5"), Ok(2.5));
        assert_eq!(parse_slowdown_factor(" 1 "), Ok(1.0));
        assert_eq!(
            parse_slowdown_factor("fast"),
            Err("\"fast\" is not a number".to_string())
        );
        assert!(parse_slowdown_factor("0.5").is_err());
        assert!(parse_slowdown_factor("NaN").is_err());
    }

    #[test]
    fn failed_frames_are_named() {
        let check = |e: ChunkError, want: Option<u64>| assert_eq!(e.failed_frame(), want, "{e}");
        check(ChunkError::TestFailFrame(7), Some(7));
        check(
            ChunkError::Render(RenderError::Frame {
                frame: 3,
                message: "device lost".into(),
            }),
            Some(3),
        );
        check(ChunkError::Render(RenderError::Sink("x".into())), None);
        check(ChunkError::Cancelled, None);
        assert_eq!(
            ChunkError::TestFailFrame(7).to_string(),
            "test aid: frame 7 fails (--fail-frame)"
        );
    }

    #[test]
    fn calibration_prefers_the_default_encoder() {
        let v = |s: &[&str]| s.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(
            calibration_encoder(&v(&["mpeg4", "libx264"])),
            Some("libx264")
        );
        assert_eq!(calibration_encoder(&v(&["mpeg4"])), Some("mpeg4"));
        assert_eq!(calibration_encoder(&[]), None);
    }
}
