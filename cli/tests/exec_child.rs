//! The node's executor process as `drover node` runs it: the real `drover`
//! binary's hidden `exec-worker` subcommand. A job whose shader never
//! finishes a frame has its frame killed at the job's limit, the agent's
//! process (this test) carries on, and the next, normal chunk renders.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_node::exec::{
    ExecOptions, Executor, FrameWindow, TestAids, WorkItem, WorkerCommand, WorkerEvent,
};
use drover_node::render::Gpu;
use drover_protocol::{Assign, ChunkRef};

/// A frame that never ends: every pixel iterates a hash until it is
/// negative, which it never is.
const HUNG: &str =
    "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {
    var x = p.x / drover.resolution.x + drover.time;
    loop {
        x = fract(sin(x * 12.9898) * 43758.5453);
        if (x < -1.0) { break; }
    }
    return vec4<f32>(x, 0.0, 0.0, 1.0);
}";

fn assign(index: u32, start: u64, end: u64, shader: &str, frame_timeout_s: u32) -> Assign {
    Assign {
        chunk: ChunkRef {
            job: 3,
            index,
            epoch: 1,
        },
        start,
        end,
        fps: 24,
        width: 64,
        height: 64,
        shader_source: shader.to_string(),
        encoder: "libx264".into(),
        crf: 23,
        frame_timeout_s,
    }
}

#[test]
fn drover_exec_worker_kills_a_hung_frame_and_renders_the_next_chunk() {
    let spool = tempfile::tempdir().unwrap();
    let opts = ExecOptions {
        worker: WorkerCommand::subcommand_of(env!("CARGO_BIN_EXE_drover")),
        ..ExecOptions::default()
    };
    let gpu = Gpu::new().expect("render adapter");
    let executor = Executor::start_with(gpu, spool.path().to_path_buf(), TestAids::default(), opts);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for a in [
        assign(0, 0, 23, HUNG, 2),
        assign(1, 24, 47, drover_shaders::get("plasma").unwrap().source, 0),
    ] {
        executor.submit(WorkItem {
            window: Arc::new(FrameWindow::new(a.start, a.end).unwrap()),
            assign: a,
            cancel: Arc::new(AtomicBool::new(false)),
            frames_done: Arc::new(AtomicU64::new(0)),
            events: tx.clone(),
        });
    }
    let started = Instant::now();
    let mut ends = Vec::new();
    // Each chunk's log as its pieces put it together.
    let mut logs = [String::new(), String::new()];
    while ends.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no end after {:?}: {ends:?}",
            started.elapsed()
        );
        match rx.try_recv() {
            Ok(WorkerEvent::Progress { .. }) => {}
            Ok(WorkerEvent::Log {
                chunk,
                offset,
                text,
                ..
            }) => {
                let log = &mut logs[chunk.index as usize];
                assert_eq!(offset as usize, log.len(), "pieces follow each other");
                log.push_str(&text);
            }
            Ok(WorkerEvent::Failed {
                chunk,
                reason,
                failed_frame,
                ..
            }) => ends.push((chunk.index, Err((reason, failed_frame)))),
            Ok(WorkerEvent::Finished {
                assign, start, end, ..
            }) => ends.push((assign.chunk.index, Ok((start, end)))),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    ends.sort_by_key(|(index, _)| *index);
    assert_eq!(
        ends,
        [
            (
                0,
                Err((
                    "frame 0 exceeded the frame time limit of 2 s".to_string(),
                    Some(0)
                ))
            ),
            (1, Ok((24, 47)))
        ]
    );
    // The hung chunk's log names the frame it was killed on; the next
    // chunk's has the worker's lines about it, frames 24-47 only.
    assert!(
        logs[0].ends_with(
            "chunk failed on frame 0: frame 0 exceeded the frame time limit of 2 s\n\
             the executor process was killed: frame 0 exceeded the frame time limit of 2 s\n"
        ),
        "{}",
        logs[0]
    );
    for want in [
        ": adapter ",
        "rendering from frame 24 at ",
        "frame 24: ",
        "segment complete: frames 24-47",
        "chunk finished: frames 24-47 in ",
    ] {
        assert!(
            logs[1].contains(want),
            "{want:?} missing from:\n{}",
            logs[1]
        );
    }
    assert!(!logs[1].contains("frame 0"), "{}", logs[1]);
}

/// The subcommand is for the agent only: `drover --help` does not offer it.
#[test]
fn exec_worker_is_hidden_from_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("node") && !help.contains("exec-worker"),
        "{help}"
    );
}
