//! The executor as the agent drives it: real chunks in the real executor
//! process (the `drover-exec-worker` binary, the same code as
//! `drover exec-worker`; wgpu on whatever adapter is here, lavapipe on CI,
//! and libx264), shrunk through the shared frame window while they run,
//! failed on purpose by a test aid, killed when a frame runs past its limit
//! or the worker dies, and the start-up calibration.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_node::exec::{
    calibrate, ExecOptions, Executor, FrameWindow, TestAids, WorkItem, WorkerCommand, WorkerEvent,
    CALIBRATION_HEIGHT_PX, CALIBRATION_WIDTH_PX, DEFAULT_FRAME_TIMEOUT_S,
};
use drover_node::render::Gpu;
use drover_protocol::{Assign, ChunkRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Frames are tiny so that a test costs milliseconds per frame.
const SIZE_PX: u32 = 64;

/// Longest a test waits for any one event: far beyond a healthy chunk, so
/// that a broken executor fails the test instead of hanging it.
const EVENT_WAIT: Duration = Duration::from_secs(120);

/// A fragment shader whose every pixel iterates a hash until it is
/// negative, which it never is: a frame that never ends. (The hash keeps
/// the loop from being folded away: a loop that only adds a constant is
/// computed in closed form by lavapipe's compiler, wgpu's loop bound making
/// it finite.)
const HUNG: &str =
    "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {
    var x = p.x / drover.resolution.x + drover.time;
    loop {
        x = fract(sin(x * 12.9898) * 43758.5453);
        if (x < -1.0) { break; }
    }
    return vec4<f32>(x, 0.0, 0.0, 1.0);
}";

fn plasma() -> &'static str {
    drover_shaders::get("plasma").unwrap().source
}

/// One chunk handed to the executor, with the handles the agent keeps.
struct Chunk {
    chunk: ChunkRef,
    window: Arc<FrameWindow>,
    cancel: Arc<AtomicBool>,
}

fn submit(
    executor: &Executor,
    events: &UnboundedSender<WorkerEvent>,
    index: u32,
    start: u64,
    end: u64,
) -> Chunk {
    submit_shader(executor, events, index, start, end, plasma(), 0)
}

/// A chunk of `shader`, under the job's frame limit `frame_timeout_s` (0:
/// the node's).
fn submit_shader(
    executor: &Executor,
    events: &UnboundedSender<WorkerEvent>,
    index: u32,
    start: u64,
    end: u64,
    shader: &str,
    frame_timeout_s: u32,
) -> Chunk {
    let chunk = ChunkRef {
        job: 1,
        index,
        epoch: 1,
    };
    let window = Arc::new(FrameWindow::new(start, end).unwrap());
    let cancel = Arc::new(AtomicBool::new(false));
    executor.submit(WorkItem {
        assign: Assign {
            chunk,
            start,
            end,
            fps: 24,
            width: SIZE_PX,
            height: SIZE_PX,
            shader_source: shader.to_string(),
            encoder: "libx264".into(),
            crf: 23,
            frame_timeout_s,
        },
        cancel: cancel.clone(),
        frames_done: Arc::new(AtomicU64::new(u64::MAX)),
        window: window.clone(),
        events: events.clone(),
    });
    Chunk {
        chunk,
        window,
        cancel,
    }
}

/// This crate's executor process.
fn worker() -> WorkerCommand {
    WorkerCommand::subcommand_of(env!("CARGO_BIN_EXE_drover-exec-worker"))
}

/// An executor writing into `spool`, and its event stream.
fn executor(
    spool: &Path,
    aids: TestAids,
) -> (
    Executor,
    UnboundedSender<WorkerEvent>,
    UnboundedReceiver<WorkerEvent>,
) {
    executor_with(spool, aids, worker(), DEFAULT_FRAME_TIMEOUT_S)
}

/// [`executor`] with its worker program and default frame limit.
fn executor_with(
    spool: &Path,
    aids: TestAids,
    worker: WorkerCommand,
    frame_timeout_s: u64,
) -> (
    Executor,
    UnboundedSender<WorkerEvent>,
    UnboundedReceiver<WorkerEvent>,
) {
    let gpu = Gpu::new().expect("render adapter");
    let (tx, rx) = unbounded_channel();
    let opts = ExecOptions {
        worker,
        frame_timeout: Duration::from_secs(frame_timeout_s),
    };
    (
        Executor::start_with(gpu, spool.to_path_buf(), aids, opts),
        tx,
        rx,
    )
}

/// The next event, or a panic after [`EVENT_WAIT`].
fn next_event(rx: &mut UnboundedReceiver<WorkerEvent>) -> WorkerEvent {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        match rx.try_recv() {
            Ok(ev) => return ev,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no event from the executor: {e:?}"),
        }
    }
}

/// Waits for the first progress of `chunk` with at least `frames` frames.
fn wait_for_progress(rx: &mut UnboundedReceiver<WorkerEvent>, chunk: ChunkRef, frames: u64) -> u64 {
    loop {
        match next_event(rx) {
            WorkerEvent::Progress {
                chunk: c,
                frames_done,
                ..
            } if c == chunk && frames_done >= frames => return frames_done,
            WorkerEvent::Progress { .. } | WorkerEvent::Log { .. } => {}
            other => panic!("chunk {chunk:?} ended early: {other:?}"),
        }
    }
}

/// How a chunk ended: its segment's range and path, or why it failed.
type End = Result<(u64, u64, std::path::PathBuf), (String, Option<u64>)>;

/// Waits until the chunk ends, checking its last progress report.
fn wait_for_end(rx: &mut UnboundedReceiver<WorkerEvent>, chunk: ChunkRef) -> End {
    wait_for_ends(rx, &[chunk]).pop().expect("one chunk")
}

/// Waits until every one of `chunks` ends, in whatever order they do (two
/// chunks' encoders overlap, so a later chunk may finish first), and
/// returns their ends in the order asked.
fn wait_for_ends(rx: &mut UnboundedReceiver<WorkerEvent>, chunks: &[ChunkRef]) -> Vec<End> {
    let mut last_progress = vec![None; chunks.len()];
    let mut ends: Vec<Option<End>> = vec![None; chunks.len()];
    while ends.iter().any(Option::is_none) {
        let ev = next_event(rx);
        let (c, end) = match ev {
            WorkerEvent::Progress {
                chunk,
                frames_done,
                total,
            } => {
                if let Some(i) = chunks.iter().position(|c| *c == chunk) {
                    last_progress[i] = Some((frames_done, total));
                }
                continue;
            }
            WorkerEvent::Log { .. } => continue,
            WorkerEvent::Finished {
                assign,
                start,
                end,
                path,
                ..
            } => (assign.chunk, Ok((start, end, path))),
            WorkerEvent::Failed {
                chunk,
                reason,
                failed_frame,
                ..
            } => (chunk, Err((reason, failed_frame))),
        };
        let Some(i) = chunks.iter().position(|x| *x == c) else {
            continue;
        };
        if let (Ok((start, end, _)), Some(p)) = (&end, last_progress[i]) {
            let frames = end - start + 1;
            assert_eq!(p, (frames, frames), "last progress of {c:?}");
        }
        ends[i] = Some(end);
    }
    ends.into_iter().map(|e| e.expect("ended")).collect()
}

/// Frames in a video, as `ffprobe -count_frames` reads them.
fn ffprobe_frames(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("frame count in {text:?}"))
}

/// The coordinator proposes an end before the frames already started (the
/// earliest possible, the chunk's start) while the renderer keeps several
/// frames in flight: the answer covers every started frame, and the
/// segment holds exactly the answered frames.
#[test]
fn shrink_while_running_is_exact_and_keeps_started_frames() {
    let spool = tempfile::tempdir().unwrap();
    let (executor, tx, mut rx) = executor(spool.path(), TestAids::default());
    let (start, end) = (100, 2099);
    let c = submit(&executor, &tx, 0, start, end);
    let done = wait_for_progress(&mut rx, c.chunk, 3);
    let answer = c.window.shrink(start).expect("chunk is held");
    println!("{done} frames read back when shrunk; answer {answer}");
    assert!(
        answer >= start + done - 1,
        "answer {answer} is before frame {}, already rendered",
        start + done - 1
    );
    assert!(answer < end, "the shrink landed after the last frame");
    let (seg_start, seg_end, path) = wait_for_end(&mut rx, c.chunk).expect("chunk finishes");
    assert_eq!((seg_start, seg_end), (start, answer));
    assert_eq!(c.window.frames_started(), answer - start + 1);
    assert_eq!(ffprobe_frames(&path), answer - start + 1);
}

/// A proposal after the frames started is taken as is. The node is slowed
/// down (one frame at a time, at least 4 ms each), so the 50 frames of
/// margin cannot all start before the shrink lands.
#[test]
fn shrink_to_a_later_frame_takes_the_proposal() {
    let spool = tempfile::tempdir().unwrap();
    let aids = TestAids {
        slowdown_factor: 3.0,
        fail_frames: Vec::new(),
    };
    let (executor, tx, mut rx) = executor(spool.path(), aids);
    let c = submit(&executor, &tx, 0, 0, 999);
    let done = wait_for_progress(&mut rx, c.chunk, 2);
    let proposed = done + 50;
    assert_eq!(c.window.shrink(proposed), Some(proposed));
    let (_, seg_end, path) = wait_for_end(&mut rx, c.chunk).expect("chunk finishes");
    assert_eq!(seg_end, proposed);
    assert_eq!(ffprobe_frames(&path), proposed + 1);
}

/// A chunk still queued behind another is shrunk before any of its frames
/// started: the answer is the proposal, and a cancelled chunk answers
/// "not held".
#[test]
fn shrink_of_a_queued_chunk_and_of_a_cancelled_one() {
    let spool = tempfile::tempdir().unwrap();
    let aids = TestAids {
        slowdown_factor: 2.0,
        fail_frames: Vec::new(),
    };
    let (executor, tx, mut rx) = executor(spool.path(), aids);
    let first = submit(&executor, &tx, 0, 0, 9_999);
    let queued = submit(&executor, &tx, 1, 10_000, 10_099);
    assert_eq!(queued.window.shrink(10_001), Some(10_001));
    assert_eq!(queued.window.frames_started(), 0);
    wait_for_progress(&mut rx, first.chunk, 1);
    first.cancel.store(true, Ordering::Relaxed);
    let mut ends = wait_for_ends(&mut rx, &[first.chunk, queued.chunk]).into_iter();
    let (reason, failed_frame) = ends.next().unwrap().unwrap_err();
    assert_eq!((reason.as_str(), failed_frame), ("cancelled", None));
    assert_eq!(first.window.shrink(5), None);
    let (start, end, path) = ends.next().unwrap().expect("queued chunk runs");
    assert_eq!((start, end), (10_000, 10_001));
    assert_eq!(ffprobe_frames(&path), 2);
}

/// `--fail-frame 5` fails the chunk holding frame 5 with that frame named,
/// leaves no segment behind, and spares chunks without it.
#[test]
fn fail_frame_fails_the_chunk_that_reaches_it() {
    let spool = tempfile::tempdir().unwrap();
    let aids = TestAids {
        slowdown_factor: 1.0,
        fail_frames: vec![5],
    };
    let (executor, tx, mut rx) = executor(spool.path(), aids);
    let failing = submit(&executor, &tx, 0, 0, 9);
    let sparing = submit(&executor, &tx, 1, 10, 12);
    let mut ends = wait_for_ends(&mut rx, &[failing.chunk, sparing.chunk]).into_iter();
    let (reason, failed_frame) = ends.next().unwrap().unwrap_err();
    assert_eq!(reason, "test aid: frame 5 fails (--fail-frame)");
    assert_eq!(failed_frame, Some(5));
    assert_eq!(failing.window.shrink(7), None, "a failed chunk is not held");
    let (start, end, path) = ends.next().unwrap().expect("other chunk runs");
    assert_eq!((start, end), (10, 12));
    assert_eq!(ffprobe_frames(&path), 3);
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![path.file_name().unwrap().to_os_string()]);
}

/// The calibration measures a speed and cleans up after itself, slowed down
/// or not. How much slower a slowed node is depends on the machine, so it
/// is not asserted here.
#[test]
fn calibration_measures_a_speed() {
    let gpu = Gpu::new().expect("render adapter");
    let dir = tempfile::tempdir().unwrap();
    for slowdown_factor in [1.0, 2.0] {
        let aids = TestAids {
            slowdown_factor,
            // Ignored by the calibration, which would otherwise fail.
            fail_frames: vec![3],
        };
        let k = calibrate(&gpu, dir.path(), &aids, "libx264").expect("calibration");
        println!(
            "slowdown x{slowdown_factor}: {:.1} frames/s",
            k.frames_per_s
        );
        assert!(k.frames_per_s.is_finite() && k.frames_per_s > 0.0, "{k:?}");
        assert_eq!(
            (k.width, k.height),
            (CALIBRATION_WIDTH_PX, CALIBRATION_HEIGHT_PX)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

/// The files left in `spool`.
fn spool_files(spool: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

/// A frame that never ends: its worker is killed once the frame has run
/// for the job's `frame_timeout_s` (2 s here, over the node's default of
/// 300 s), the chunk fails naming the frame and the limit, nothing is left
/// in the spool, and the chunk queued behind it renders in a new worker.
#[test]
fn a_hung_frame_is_killed_at_the_limit_and_the_next_chunk_renders() {
    let spool = tempfile::tempdir().unwrap();
    let (executor, tx, mut rx) = executor(spool.path(), TestAids::default());
    let started = Instant::now();
    let hung = submit_shader(&executor, &tx, 0, 10, 19, HUNG, 2);
    let next = submit(&executor, &tx, 1, 20, 22);
    let mut ends = wait_for_ends(&mut rx, &[hung.chunk, next.chunk]).into_iter();
    let (reason, failed_frame) = ends.next().unwrap().unwrap_err();
    assert_eq!(reason, "frame 10 exceeded the frame time limit of 2 s");
    assert_eq!(failed_frame, Some(10));
    assert_eq!(hung.window.shrink(15), None, "a failed chunk is not held");
    let (start, end, path) = ends.next().unwrap().expect("the next chunk renders");
    println!("both ended after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!((start, end), (20, 22));
    assert_eq!(ffprobe_frames(&path), 3);
    assert_eq!(
        spool_files(spool.path()),
        vec![path.file_name().unwrap().to_os_string()]
    );
}

/// Without a limit from the job, the node's default applies.
#[test]
fn the_nodes_frame_limit_applies_when_the_job_sets_none() {
    let spool = tempfile::tempdir().unwrap();
    let (_executor, tx, mut rx) = executor_with(spool.path(), TestAids::default(), worker(), 1);
    let hung = submit_shader(&_executor, &tx, 0, 0, 4, HUNG, 0);
    let (reason, failed_frame) = wait_for_end(&mut rx, hung.chunk).unwrap_err();
    assert_eq!(reason, "frame 0 exceeded the frame time limit of 1 s");
    assert_eq!(failed_frame, Some(0));
}

/// A cancelled chunk whose frame never ends cannot give itself up: its
/// worker is killed after the grace, the chunk is reported cancelled, and
/// the next chunk renders.
#[test]
fn a_cancelled_hung_chunk_is_killed_after_the_grace() {
    let spool = tempfile::tempdir().unwrap();
    let (executor, tx, mut rx) = executor(spool.path(), TestAids::default());
    let hung = submit_shader(&executor, &tx, 0, 0, 9, HUNG, 0);
    wait_for_progress(&mut rx, hung.chunk, 0);
    // Time to compile the shader and start the frame that never ends.
    std::thread::sleep(Duration::from_millis(500));
    let cancelled_at = Instant::now();
    hung.cancel.store(true, Ordering::Relaxed);
    let next = submit(&executor, &tx, 1, 10, 11);
    let mut ends = wait_for_ends(&mut rx, &[hung.chunk, next.chunk]).into_iter();
    let (reason, failed_frame) = ends.next().unwrap().unwrap_err();
    assert_eq!((reason.as_str(), failed_frame), ("cancelled", None));
    let (start, end, _) = ends.next().unwrap().expect("the next chunk renders");
    assert_eq!((start, end), (10, 11));
    let took = cancelled_at.elapsed();
    println!("cancel to the next chunk's end: {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A worker killed from outside (as a crashing driver would end it) fails
/// the chunk it held, naming the frame it was on, and a new worker renders
/// the next chunk.
#[test]
fn a_worker_that_dies_fails_its_chunk_naming_the_frame_and_is_replaced() {
    let spool = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("worker.pid");
    // The wrapper writes its pid, then becomes the worker (same pid).
    let wrapper = WorkerCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "echo $$ > \"$1\"; exec \"$2\" exec-worker".into(),
            "sh".into(),
            pid_file.clone().into(),
            env!("CARGO_BIN_EXE_drover-exec-worker").into(),
        ],
    };
    let aids = TestAids {
        slowdown_factor: 10.0,
        fail_frames: Vec::new(),
    };
    let (executor, tx, mut rx) =
        executor_with(spool.path(), aids, wrapper, DEFAULT_FRAME_TIMEOUT_S);
    let doomed = submit(&executor, &tx, 0, 0, 9_999);
    let done = wait_for_progress(&mut rx, doomed.chunk, 3);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let next = submit(&executor, &tx, 1, 10_000, 10_002);
    let mut ends = wait_for_ends(&mut rx, &[doomed.chunk, next.chunk]).into_iter();
    let (reason, failed_frame) = ends.next().unwrap().unwrap_err();
    println!("{reason}");
    let frame = failed_frame.expect("the frame it was on is named");
    assert!(frame >= done, "frame {frame}, {done} were done");
    assert_eq!(
        reason,
        format!("the executor process died on frame {frame} (signal: 9 (SIGKILL))")
    );
    let (start, end, path) = ends.next().unwrap().expect("the next chunk renders");
    assert_eq!((start, end), (10_000, 10_002));
    assert_eq!(ffprobe_frames(&path), 3);
    assert_eq!(
        spool_files(spool.path()),
        vec![path.file_name().unwrap().to_os_string()],
        "the dead worker's segment is removed"
    );
}

/// A worker that cannot start fails the chunk waiting first, with its
/// reason and last log line, on every attempt: nothing waits for a worker
/// that never comes.
#[test]
fn a_worker_that_cannot_start_fails_the_waiting_chunks() {
    let spool = tempfile::tempdir().unwrap();
    let broken = WorkerCommand {
        program: "sh".into(),
        args: vec!["-c".into(), "echo no device here >&2; exit 3".into()],
    };
    let (executor, tx, mut rx) = executor_with(
        spool.path(),
        TestAids::default(),
        broken,
        DEFAULT_FRAME_TIMEOUT_S,
    );
    let a = submit(&executor, &tx, 0, 0, 2);
    let b = submit(&executor, &tx, 1, 3, 5);
    for end in wait_for_ends(&mut rx, &[a.chunk, b.chunk]) {
        let (reason, failed_frame) = end.unwrap_err();
        assert_eq!(failed_frame, None);
        assert!(
            reason.starts_with("the executor process did not start: exit status: 3")
                && reason.ends_with("no device here"),
            "{reason}"
        );
    }

    let missing = WorkerCommand::subcommand_of("/nonexistent/drover");
    let (executor, tx, mut rx) = executor_with(
        spool.path(),
        TestAids::default(),
        missing,
        DEFAULT_FRAME_TIMEOUT_S,
    );
    let c = submit(&executor, &tx, 0, 0, 2);
    let (reason, _) = wait_for_end(&mut rx, c.chunk).unwrap_err();
    assert!(
        reason.starts_with("the executor process did not start: /nonexistent/drover: "),
        "{reason}"
    );
}

/// The worker alone, spoken to in its own JSON lines: it opens its device,
/// asks before each frame, and when its agent goes away (stdin closes) it
/// exits at once, even in the middle of a frame that never ends.
#[test]
fn a_worker_whose_agent_is_gone_exits_even_mid_frame() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let spool = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover-exec-worker"))
        .arg("exec-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The chunk's log lines (checked below) are set aside.
    let mut logged = Vec::new();
    let mut next = || -> serde_json::Value {
        loop {
            let msg: serde_json::Value =
                serde_json::from_str(&lines.next().expect("a line").unwrap()).unwrap();
            if msg["msg"] != "log" {
                return msg;
            }
            logged.push(msg["line"].as_str().unwrap_or_default().to_string());
        }
    };
    let init = serde_json::json!({
        "msg": "init", "version": 1, "spool": spool.path(),
        "slowdown_factor": 1.0, "fail_frames": [],
    });
    writeln!(stdin, "{init}").unwrap();
    assert_eq!(next()["msg"], "ready");
    let chunk = serde_json::json!({"job": 9, "index": 0, "epoch": 1});
    let run = serde_json::json!({
        "msg": "run", "chunk": chunk, "start": 5, "fps": 24, "width": 64, "height": 64,
        "shader_source": HUNG, "encoder": "libx264", "crf": 23,
    });
    writeln!(stdin, "{run}").unwrap();
    let ask = next();
    assert_eq!(
        (ask["msg"].as_str(), ask["frame"].as_u64()),
        (Some("start"), Some(5))
    );
    let answer = serde_json::json!({"msg": "answer", "chunk": chunk, "frame": 5, "go": true});
    writeln!(stdin, "{answer}").unwrap();
    // It asks about frame 6 while frame 5 renders, and frame 5 never ends.
    assert_eq!(next()["frame"], 6);
    assert!(
        logged.iter().any(|l| l.contains(": adapter ")),
        "{logged:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let closed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if closed.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the worker outlived its agent by 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!(
        "exited {:?} after its stdin closed: {status}",
        closed.elapsed()
    );
    assert!(status.success(), "{status}");
}
