//! Each limit from both sides: the last value it allows, the first it
//! refuses, and the field the refusal names.

use super::*;
use crate::codec::encode_frame;
use crate::messages::*;
use crate::MAX_CONTROL_FRAME_BYTES;

const C: ChunkRef = ChunkRef {
    job: 7,
    index: 3,
    epoch: 1,
};

fn adapter() -> WireAdapter {
    WireAdapter {
        name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        backend: "Vulkan".into(),
        device_type: "Cpu".into(),
        vendor: "mesa".into(),
        vram_bytes: 0,
    }
}

/// A hello as the real agent sends one.
fn hello() -> Hello {
    Hello {
        agent_version: "0.1.0".into(),
        node_id: "0123456789abcdef0123456789abcdef".into(),
        name: "gpu-07".into(),
        capabilities: WireCapabilities {
            hostname: "gpu-07.studio.example".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            cpu_brand: "AMD EPYC 9654 96-Core Processor".into(),
            cpu_cores: 192,
            memory_bytes: 1 << 40,
            adapters: vec![adapter(); 2],
            render_adapter: Some(adapter()),
            encoders: vec!["libx264".into(), "h264_nvenc".into()],
            tags: vec!["fast".into(), "4k".into()],
            pool: "studio".into(),
            calibration: Some(WireCalibration {
                frames_per_s: 120.5,
                width: 640,
                height: 360,
            }),
            test_override: None,
        },
        running: vec![RunningChunk {
            chunk: C,
            start: 24,
            end: 47,
            frames_done: 5,
        }],
        spooled: vec![SpooledSegment {
            chunk: C,
            start: 0,
            end: 23,
            size_bytes: 1 << 20,
            hash: [7; 32],
        }],
        join_token: String::new(),
    }
}

/// Applies `edit` to a good hello and checks the verdict: `Ok(())`, or the
/// refusal's text (`field: message`) containing `want`.
fn check_hello(edit: impl FnOnce(&mut Hello), want: Result<(), &str>) {
    let mut h = hello();
    edit(&mut h);
    let got = NodeToCoord::Hello(Box::new(h)).validate();
    expect(got, want);
}

/// Checks a node message's verdict, as [`check_hello`].
fn check(msg: NodeToCoord, want: Result<(), &str>) {
    expect(msg.validate(), want);
}

fn expect(got: Result<(), ProtocolViolation>, want: Result<(), &str>) {
    match (got, want) {
        (Ok(()), Ok(())) => {}
        (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

fn s(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn the_agents_hello_is_valid() {
    check_hello(|_| {}, Ok(()));
    // What the agent's own tests and a fresh agent send.
    check_hello(
        |h| {
            h.agent_version = "test".into();
            h.name = "n1".into();
            h.capabilities = (&drover_shared::caps::Capabilities::default()).into();
            h.running.clear();
            h.spooled.clear();
        },
        Ok(()),
    );
}

#[test]
fn node_name() {
    check_hello(|h| h.name = s(64), Ok(()));
    check_hello(
        |h| h.name = s(65),
        Err("hello.name: 65 bytes, allowed are 1..=64"),
    );
    check_hello(
        |h| h.name = String::new(),
        Err("hello.name: 0 bytes, allowed are 1..=64"),
    );
    check_hello(|h| h.name = "render-07.studio.example.com".into(), Ok(()));
    check_hello(|h| h.name = "A_b.c-9-".into(), Ok(()));
    check_hello(
        |h| h.name = "gpu/07".into(),
        Err("hello.name: contains '/'"),
    );
    check_hello(
        |h| h.name = "gpu 07".into(),
        Err("hello.name: contains ' '"),
    );
    check_hello(|h| h.name = "gpü".into(), Err("hello.name: contains 'ü'"));
    check_hello(|h| h.name = ".hidden".into(), Err("starts with '.'"));
    check_hello(|h| h.name = "-rf".into(), Err("starts with '-'"));
    assert!(check_node_name("node").is_ok());
}

#[test]
fn node_id_and_agent_version() {
    check_hello(|h| h.node_id = s(MAX_NODE_ID_BYTES), Ok(()));
    check_hello(
        |h| h.node_id = s(MAX_NODE_ID_BYTES + 1),
        Err("hello.node_id: 65 bytes, the limit is 64"),
    );
    check_hello(|h| h.node_id = String::new(), Err("hello.node_id: empty"));
    check_hello(|h| h.node_id = "ab-cd".into(), Err("contains '-'"));
    check_hello(|h| h.agent_version = s(MAX_TEXT_BYTES), Ok(()));
    check_hello(
        |h| h.agent_version = s(MAX_TEXT_BYTES + 1),
        Err("hello.agent_version: 257 bytes, the limit is 256"),
    );
}

#[test]
fn descriptions_are_bounded_in_bytes() {
    // Bytes, not characters: 128 two-byte characters are at the limit.
    check_hello(|h| h.capabilities.hostname = "é".repeat(128), Ok(()));
    check_hello(
        |h| h.capabilities.hostname = "é".repeat(129),
        Err("hello.capabilities.hostname: 258 bytes, the limit is 256"),
    );
    check_hello(|h| h.capabilities.os = s(256), Ok(()));
    check_hello(
        |h| h.capabilities.os = s(257),
        Err("hello.capabilities.os: 257 bytes"),
    );
    check_hello(|h| h.capabilities.cpu_brand = s(256), Ok(()));
    check_hello(
        |h| h.capabilities.cpu_brand = s(257),
        Err("hello.capabilities.cpu_brand: 257 bytes"),
    );
    check_hello(|h| h.capabilities.test_override = Some(s(1024)), Ok(()));
    check_hello(
        |h| h.capabilities.test_override = Some(s(1025)),
        Err("hello.capabilities.test_override: 1025 bytes, the limit is 1024"),
    );
}

#[test]
fn adapters() {
    check_hello(|h| h.capabilities.adapters = vec![adapter(); 64], Ok(()));
    check_hello(
        |h| h.capabilities.adapters = vec![adapter(); 65],
        Err("hello.capabilities.adapters: 65 adapters, the limit is 64"),
    );
    check_hello(|h| h.capabilities.adapters[1].name = s(256), Ok(()));
    check_hello(
        |h| h.capabilities.adapters[1].name = s(257),
        Err("hello.capabilities.adapters[1].name: 257 bytes"),
    );
    check_hello(
        |h| h.capabilities.adapters[0].backend = s(257),
        Err("hello.capabilities.adapters[0].backend: 257 bytes"),
    );
    check_hello(
        |h| h.capabilities.adapters[0].device_type = s(257),
        Err("hello.capabilities.adapters[0].device_type: 257 bytes"),
    );
    check_hello(
        |h| h.capabilities.render_adapter.as_mut().unwrap().vendor = s(257),
        Err("hello.capabilities.render_adapter.vendor: 257 bytes"),
    );
    check_hello(|h| h.capabilities.render_adapter = None, Ok(()));
}

#[test]
fn encoders() {
    check_hello(|h| h.capabilities.encoders = vec![s(64); 32], Ok(()));
    check_hello(
        |h| h.capabilities.encoders = vec!["libx264".into(); 33],
        Err("hello.capabilities.encoders: 33 encoders, the limit is 32"),
    );
    check_hello(
        |h| h.capabilities.encoders[1] = s(65),
        Err("hello.capabilities.encoders[1]: 65 bytes, the limit is 64"),
    );
    check_hello(
        |h| h.capabilities.encoders[0] = String::new(),
        Err("hello.capabilities.encoders[0]: empty"),
    );
}

#[test]
fn tags_follow_the_job_specs_label_rule() {
    check_hello(|h| h.capabilities.tags = vec![s(64); 32], Ok(()));
    check_hello(
        |h| h.capabilities.tags = vec!["t".into(); 33],
        Err("hello.capabilities.tags: 33 tags, the limit is 32"),
    );
    check_hello(
        |h| h.capabilities.tags[1] = s(65),
        Err("hello.capabilities.tags[1]: \"xxx"),
    );
    check_hello(
        |h| h.capabilities.tags[0] = String::new(),
        Err("hello.capabilities.tags[0]: \"\" is 0 bytes; allowed are 1..=64"),
    );
    check_hello(
        |h| h.capabilities.tags[0] = "a/b".into(),
        Err("hello.capabilities.tags[0]: contains '/'"),
    );
    // The agent's --tags pass the same rule, which jobs' requirements.tags
    // are held to: a space is allowed.
    check_hello(|h| h.capabilities.tags[0] = "fast gpu".into(), Ok(()));
    check_hello(|h| h.capabilities.tags.clear(), Ok(()));
}

#[test]
fn pool() {
    check_hello(|h| h.capabilities.pool = String::new(), Ok(()));
    check_hello(|h| h.capabilities.pool = s(64), Ok(()));
    check_hello(
        |h| h.capabilities.pool = s(65),
        Err("hello.capabilities.pool: \"xxx"),
    );
    check_hello(
        |h| h.capabilities.pool = "a\nb".into(),
        Err("hello.capabilities.pool: contains '\\n'"),
    );
}

#[test]
fn calibration() {
    let fps =
        |v: f64| move |h: &mut Hello| h.capabilities.calibration.as_mut().unwrap().frames_per_s = v;
    check_hello(fps(1e-9), Ok(()));
    check_hello(fps(1e9), Ok(()));
    let want = Err("hello.capabilities.calibration.frames_per_s: ");
    check_hello(fps(0.0), want);
    check_hello(fps(-1.0), want);
    check_hello(fps(f64::NAN), want);
    check_hello(fps(f64::INFINITY), want);
    check_hello(|h| h.capabilities.calibration = None, Ok(()));
}

#[test]
fn held_chunks() {
    let r = |start, end, frames_done| RunningChunk {
        chunk: C,
        start,
        end,
        frames_done,
    };
    check_hello(|h| h.running = vec![r(0, 0, 0); MAX_HELLO_RUNNING], Ok(()));
    check_hello(
        |h| h.running = vec![r(0, 0, 0); MAX_HELLO_RUNNING + 1],
        Err("hello.running: 17 chunks, the limit is 16"),
    );
    check_hello(
        |h| h.running[0] = r(5, 4, 0),
        Err("hello.running[0]: frames 5..=4 end before they start"),
    );
    check_hello(|h| h.running[0] = r(0, MAX_FRAME_NUMBER, 0), Ok(()));
    check_hello(
        |h| h.running[0] = r(0, MAX_FRAME_NUMBER + 1, 0),
        Err("hello.running[0]: frame 10000001 is above the highest frame number 10000000"),
    );
    check_hello(|h| h.running[0] = r(0, 9, MAX_FRAMES_PER_JOB), Ok(()));
    check_hello(
        |h| h.running[0] = r(0, 9, MAX_FRAMES_PER_JOB + 1),
        Err("hello.running[0]: 100001 frames done"),
    );
}

#[test]
fn spooled_segments() {
    let seg = |start, end| SpooledSegment {
        chunk: C,
        start,
        end,
        size_bytes: u64::MAX,
        hash: [0; 32],
    };
    check_hello(|h| h.spooled = vec![seg(3, 3); MAX_HELLO_SPOOLED], Ok(()));
    check_hello(
        |h| h.spooled = vec![seg(3, 3); MAX_HELLO_SPOOLED + 1],
        Err("hello.spooled: 4097 segments, the limit is 4096"),
    );
    check_hello(
        |h| h.spooled.push(seg(3, 2)),
        Err("hello.spooled[1]: frames 3..=2"),
    );
    check_hello(
        |h| h.spooled[0] = seg(0, u64::MAX),
        Err("hello.spooled[0]: frame 18446744073709551615 is above"),
    );
}

#[test]
fn join_token() {
    use drover_shared::join::MAX_JOIN_TOKEN_BYTES;
    check_hello(|h| h.join_token = s(MAX_JOIN_TOKEN_BYTES), Ok(()));
    check_hello(
        |h| h.join_token = s(MAX_JOIN_TOKEN_BYTES + 1),
        Err("hello.join_token: 513 bytes, the limit is 512"),
    );
}

#[test]
fn heartbeats() {
    let hb = |cpu_load_pct, n, frames_done| {
        NodeToCoord::Heartbeat(Heartbeat {
            cpu_load_pct,
            memory_load_pct: 40.0,
            chunks: vec![
                ChunkProgress {
                    chunk: C,
                    frames_done
                };
                n
            ],
        })
    };
    check(hb(0.0, 0, 0), Ok(()));
    check(hb(100.0, MAX_HEARTBEAT_ENTRIES, 3), Ok(()));
    check(
        hb(50.0, MAX_HEARTBEAT_ENTRIES + 1, 3),
        Err("heartbeat.chunks: 65 entries, the limit is 64"),
    );
    check(hb(50.0, 30_000, 3), Err("heartbeat.chunks: 30000 entries"));
    check(hb(50.0, 1, MAX_FRAMES_PER_JOB), Ok(()));
    check(
        hb(50.0, 2, MAX_FRAMES_PER_JOB + 1),
        Err("heartbeat.chunks[0].frames_done: 100001 frames done"),
    );
    for bad in [100.01, -0.01, f32::NAN, f32::INFINITY] {
        check(hb(bad, 1, 0), Err("heartbeat.cpu_load_pct: "));
    }
    let mem = |memory_load_pct| {
        NodeToCoord::Heartbeat(Heartbeat {
            cpu_load_pct: 1.0,
            memory_load_pct,
            chunks: Vec::new(),
        })
    };
    check(mem(0.0), Ok(()));
    check(mem(MAX_MEMORY_LOAD_PCT), Ok(()));
    for bad in [100.5, -1.0, f32::NAN, f32::NEG_INFINITY] {
        check(mem(bad), Err("heartbeat.memory_load_pct: "));
    }
}

#[test]
fn progress_done_failed_shrink() {
    let progress = |frames_done| {
        NodeToCoord::Progress(ChunkProgress {
            chunk: C,
            frames_done,
        })
    };
    check(progress(MAX_FRAMES_PER_JOB), Ok(()));
    check(
        progress(MAX_FRAMES_PER_JOB + 1),
        Err("progress.frames_done: 100001"),
    );

    let done = |start, end, adapter: String| {
        NodeToCoord::Done(ChunkDone {
            chunk: C,
            start,
            end,
            output_hash: [0; 32],
            adapter,
            elapsed_ms: u64::MAX,
        })
    };
    check(done(4, 4, s(256)), Ok(()));
    check(
        done(4, 4, s(257)),
        Err("done.adapter: 257 bytes, the limit is 256"),
    );
    check(
        done(4, 3, s(1)),
        Err("done: frames 4..=3 end before they start"),
    );
    check(
        done(0, MAX_FRAME_NUMBER + 1, s(1)),
        Err("done: frame 10000001"),
    );

    let failed = |reason: String, log_tail: String, failed_frame| {
        NodeToCoord::Failed(ChunkFailed {
            chunk: C,
            reason,
            log_tail,
            failed_frame,
        })
    };
    let max = MAX_FAILURE_TEXT_BYTES;
    check(failed(s(max), s(max), Some(MAX_FRAME_NUMBER)), Ok(()));
    check(failed(String::new(), String::new(), None), Ok(()));
    check(
        failed(s(max + 1), s(1), None),
        Err("failed.reason: 8193 bytes, the limit is 8192"),
    );
    check(
        failed(s(1), s(max + 1), None),
        Err("failed.log_tail: 8193 bytes"),
    );
    check(
        failed(s(1), s(1), Some(MAX_FRAME_NUMBER + 1)),
        Err("failed.failed_frame: frame 10000001"),
    );

    let ack = |end| NodeToCoord::ShrinkAck(ShrinkAck { chunk: C, end });
    check(ack(None), Ok(()));
    check(ack(Some(MAX_FRAME_NUMBER)), Ok(()));
    check(
        ack(Some(MAX_FRAME_NUMBER + 1)),
        Err("shrink_ack.end: frame"),
    );
    check(NodeToCoord::Leaving, Ok(()));
    check(NodeToCoord::Preempted, Ok(()));
}

#[test]
fn upload_header() {
    let header = |start, end| UploadHeader {
        chunk: C,
        start,
        end,
        size_bytes: u64::MAX,
        hash: [0; 32],
    };
    assert!(header(0, MAX_FRAME_NUMBER).validate().is_ok());
    assert_eq!(
        header(9, 8).validate().unwrap_err().to_string(),
        "upload_header: frames 9..=8 end before they start"
    );
    assert!(header(0, MAX_FRAME_NUMBER + 1).validate().is_err());
}

/// The limits fit together: the largest hello they allow, with every string
/// and list at its limit, still fits a control frame, and so does the
/// largest failure report.
#[test]
fn the_largest_valid_messages_fit_a_control_frame() {
    let big = WireAdapter {
        name: s(MAX_TEXT_BYTES),
        backend: s(MAX_TEXT_BYTES),
        device_type: s(MAX_TEXT_BYTES),
        vendor: s(MAX_TEXT_BYTES),
        vram_bytes: u64::MAX,
    };
    let hello = NodeToCoord::Hello(Box::new(Hello {
        agent_version: s(MAX_TEXT_BYTES),
        node_id: s(MAX_NODE_ID_BYTES),
        name: s(MAX_NODE_NAME_BYTES),
        capabilities: WireCapabilities {
            hostname: s(MAX_TEXT_BYTES),
            os: s(MAX_TEXT_BYTES),
            cpu_brand: s(MAX_TEXT_BYTES),
            cpu_cores: u32::MAX,
            memory_bytes: u64::MAX,
            adapters: vec![big.clone(); MAX_ADAPTERS],
            render_adapter: Some(big),
            encoders: vec![s(MAX_LABEL_BYTES); MAX_ENCODERS],
            tags: vec![s(MAX_LABEL_BYTES); MAX_NODE_TAGS],
            pool: s(MAX_LABEL_BYTES),
            calibration: Some(WireCalibration {
                frames_per_s: f64::MAX,
                width: u32::MAX,
                height: u32::MAX,
            }),
            test_override: Some(s(MAX_TEST_OVERRIDE_BYTES)),
        },
        running: vec![
            RunningChunk {
                chunk: C,
                start: MAX_FRAME_NUMBER,
                end: MAX_FRAME_NUMBER,
                frames_done: MAX_FRAMES_PER_JOB,
            };
            MAX_HELLO_RUNNING
        ],
        spooled: vec![
            SpooledSegment {
                chunk: C,
                start: 0,
                end: MAX_FRAME_NUMBER,
                size_bytes: u64::MAX,
                hash: [0xff; 32],
            };
            MAX_HELLO_SPOOLED
        ],
        join_token: s(512),
    }));
    let failed = NodeToCoord::Failed(ChunkFailed {
        chunk: C,
        reason: s(MAX_FAILURE_TEXT_BYTES),
        log_tail: s(MAX_FAILURE_TEXT_BYTES),
        failed_frame: Some(MAX_FRAME_NUMBER),
    });
    let heartbeat = NodeToCoord::Heartbeat(Heartbeat {
        cpu_load_pct: MAX_CPU_LOAD_PCT,
        memory_load_pct: MAX_MEMORY_LOAD_PCT,
        chunks: vec![
            ChunkProgress {
                chunk: C,
                frames_done: MAX_FRAMES_PER_JOB,
            };
            MAX_HEARTBEAT_ENTRIES
        ],
    });
    for msg in [hello, failed, heartbeat] {
        msg.validate().unwrap();
        let body = encode_frame(&msg).unwrap().len() - 4;
        assert!(
            body <= MAX_CONTROL_FRAME_BYTES,
            "{body} bytes, over {MAX_CONTROL_FRAME_BYTES}"
        );
    }
}

#[test]
fn chunk_logs() {
    let log = |offset, len| {
        NodeToCoord::ChunkLog(ChunkLog {
            chunk: C,
            offset,
            text: s(len),
            last: false,
        })
    };
    check(log(0, 0), Ok(()));
    check(log(0, MAX_CHUNK_LOG_PIECE_BYTES), Ok(()));
    check(
        log(0, MAX_CHUNK_LOG_PIECE_BYTES + 1),
        Err("chunk_log.text: 32769 bytes, the limit is 32768"),
    );
    let last_start = MAX_CHUNK_LOG_BYTES - MAX_CHUNK_LOG_PIECE_BYTES as u64;
    check(log(last_start, MAX_CHUNK_LOG_PIECE_BYTES), Ok(()));
    check(
        log(last_start + 1, MAX_CHUNK_LOG_PIECE_BYTES),
        Err("chunk_log.offset: the piece ends at byte 1048577, past the limit of 1048576"),
    );
    // An offset near the top of u64 must not wrap into a valid end.
    check(log(u64::MAX, 1), Err("chunk_log.offset: "));
    // The largest piece fits a control frame with room to spare.
    let frame = encode_frame(&log(0, MAX_CHUNK_LOG_PIECE_BYTES)).unwrap();
    assert!(frame.len() < MAX_CONTROL_FRAME_BYTES / 8, "{}", frame.len());
}
