//! The protocol's fuzz runs, in CI: arbitrary bytes, and valid encodings of
//! every message kind mutated (bit flips, bytes set, inserted and removed,
//! truncations, length fields changed), through the entry points of
//! `drover_protocol::fuzzing`, which the cargo-fuzz targets in `fuzz/` call
//! too. 100,000 cases per property; none may panic, and none may make a
//! read hold more than `decode_bound_bytes` of its frame limit, measured by
//! a counting global allocator.
//!
//! Each property also counts how its cases ended and requires every kind of
//! ending to occur, so the runs provably reach rkyv's validation of bodies
//! and the protocol's limits, not only the framing's first refusal.

use std::collections::BTreeMap;
use std::sync::Mutex;

use drover_protocol::codec::{decode_body, encode_frame};
use drover_protocol::fuzzing::{self, decode_bound_bytes, Refusal};
use drover_protocol::messages::*;
use drover_protocol::{preamble, StreamKind, WireError, MAX_CONTROL_FRAME_BYTES};
use drover_shared::fuzzing::PeakAlloc;
use drover_shared::spec::{MAX_FRAMES_PER_JOB, MAX_FRAME_NUMBER};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestRunner};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// 100,000 cases, and no failure files written into the tree.
fn config() -> Config {
    Config {
        cases: 100_000,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---- Strategies for every field a message carries ----

/// Characters of names and labels, and a few that no limit allows.
const CLEAN: &[char] = &['a', 'k', 'z', 'Q', '0', '7', '.', '-', '_'];
const ODD: &[char] = &[' ', '*', '/', 'é', '\n', '\0', '\u{10FFFF}'];
/// Characters of free text: both of the above.
const TEXT: &[char] = &[
    'a',
    'k',
    'z',
    'Q',
    '0',
    '7',
    '.',
    '-',
    '_',
    ' ',
    '*',
    '/',
    'é',
    '\n',
    '\0',
    '\u{10FFFF}',
];

/// Mostly short clean strings, sometimes empty, at `limit` or one byte over
/// it, or with a character no name allows.
fn label(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        24 => vec(select(CLEAN), 1..12).prop_map(String::from_iter),
        1 => Just(String::new()),
        1 => (limit..=limit + 1).prop_map(|n| "n".repeat(n)),
        1 => (vec(select(CLEAN), 0..6), select(ODD), vec(select(CLEAN), 0..6))
            .prop_map(|(a, odd, b)| a.into_iter().chain([odd]).chain(b).collect()),
    ]
}

/// Free text: mostly short, sometimes at `limit` bytes or one over.
fn text(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        24 => vec(select(TEXT), 0..16).prop_map(String::from_iter),
        1 => (limit..=limit + 1).prop_map(|n| "t".repeat(n)),
    ]
}

/// Frame numbers: small ones, the highest a job may have and one past it,
/// and any.
fn frame() -> impl Strategy<Value = u64> {
    prop_oneof![
        16 => 0u64..1000,
        1 => (MAX_FRAME_NUMBER - 1)..=(MAX_FRAME_NUMBER + 1),
        1 => any::<u64>(),
    ]
}

/// Frame ranges, mostly in order.
fn frames() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        16 => (0u64..1000, 0u64..100).prop_map(|(s, n)| (s, s + n)),
        1 => (frame(), frame()),
    ]
}

/// Frames done in a chunk: small, around a job's limit, or any.
fn done_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        16 => 0u64..100,
        1 => MAX_FRAMES_PER_JOB..=MAX_FRAMES_PER_JOB + 1,
        1 => any::<u64>(),
    ]
}

/// Lists of `element`: mostly a few, sometimes `limit` or one more.
fn list<T: Clone + std::fmt::Debug>(
    element: impl Strategy<Value = T> + 'static,
    limit: usize,
) -> impl Strategy<Value = Vec<T>> {
    let element = element.boxed();
    prop_oneof![
        24 => vec(element.clone(), 0..4),
        1 => (element, limit..=limit + 1).prop_map(|(e, n)| vec![e; n]),
    ]
}

fn chunk() -> BoxedStrategy<ChunkRef> {
    (any::<u64>(), any::<u32>(), any::<u32>())
        .prop_map(|(job, index, epoch)| ChunkRef { job, index, epoch })
        .boxed()
}

fn adapter() -> BoxedStrategy<WireAdapter> {
    (text(256), text(256), text(256), text(256), any::<u64>())
        .prop_map(
            |(name, backend, device_type, vendor, vram_bytes)| WireAdapter {
                name,
                backend,
                device_type,
                vendor,
                vram_bytes,
            },
        )
        .boxed()
}

fn calibration() -> BoxedStrategy<WireCalibration> {
    (
        prop_oneof![8 => 0.1f64..1e4, 1 => any::<f64>()],
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(frames_per_s, width, height)| WireCalibration {
            frames_per_s,
            width,
            height,
        })
        .boxed()
}

fn capabilities() -> BoxedStrategy<WireCapabilities> {
    (
        (text(256), text(256), text(256), any::<u32>(), any::<u64>()),
        (
            list(adapter(), 64),
            proptest::option::of(adapter()),
            list(label(64), 32),
            list(label(64), 32),
        ),
        (
            prop_oneof![Just(String::new()), label(64)],
            proptest::option::of(calibration()),
            proptest::option::of(text(1024)),
        ),
    )
        .prop_map(
            |(
                (hostname, os, cpu_brand, cpu_cores, memory_bytes),
                (adapters, render_adapter, encoders, tags),
                (pool, calibration, test_override),
            )| WireCapabilities {
                hostname,
                os,
                cpu_brand,
                cpu_cores,
                memory_bytes,
                adapters,
                render_adapter,
                encoders,
                tags,
                pool,
                calibration,
                test_override,
            },
        )
        .boxed()
}

fn hello() -> BoxedStrategy<Hello> {
    let running =
        (chunk(), frames(), done_count()).prop_map(|(chunk, (start, end), n)| RunningChunk {
            chunk,
            start,
            end,
            frames_done: n,
        });
    let spooled = (chunk(), frames(), any::<u64>(), any::<[u8; 32]>()).prop_map(
        |(chunk, (start, end), size_bytes, hash)| SpooledSegment {
            chunk,
            start,
            end,
            size_bytes,
            hash,
        },
    );
    (
        text(256),
        prop_oneof![8 => Just("0123456789abcdef0123456789abcdef".to_string()), 1 => label(64)],
        label(64),
        capabilities(),
        list(running, MAX_HELLO_RUNNING),
        // The spool's limit is crossed in the unit tests: 4,097 entries per
        // case would make this run slow.
        vec(spooled, 0..4),
    )
        .prop_map(
            |(agent_version, node_id, name, capabilities, running, spooled)| Hello {
                agent_version,
                node_id,
                name,
                capabilities,
                running,
                spooled,
                join_token: String::new(),
            },
        )
        .boxed()
}

fn progress() -> BoxedStrategy<ChunkProgress> {
    (chunk(), done_count())
        .prop_map(|(chunk, frames_done)| ChunkProgress { chunk, frames_done })
        .boxed()
}

fn node_message() -> BoxedStrategy<NodeToCoord> {
    prop_oneof![
        hello().prop_map(|h| NodeToCoord::Hello(Box::new(h))),
        (
            prop_oneof![8 => 0.0f32..=100.0, 1 => any::<f32>()],
            prop_oneof![8 => 0.0f32..=100.0, 1 => any::<f32>()],
            list(progress(), drover_protocol::MAX_HEARTBEAT_ENTRIES)
        )
            .prop_map(
                |(cpu_load_pct, memory_load_pct, chunks)| NodeToCoord::Heartbeat(Heartbeat {
                    cpu_load_pct,
                    memory_load_pct,
                    chunks
                })
            ),
        progress().prop_map(NodeToCoord::Progress),
        (
            chunk(),
            frames(),
            any::<[u8; 32]>(),
            text(256),
            any::<u64>()
        )
            .prop_map(|(chunk, (start, end), output_hash, adapter, elapsed_ms)| {
                NodeToCoord::Done(ChunkDone {
                    chunk,
                    start,
                    end,
                    output_hash,
                    adapter,
                    elapsed_ms,
                })
            }),
        (
            chunk(),
            text(8192),
            text(8192),
            proptest::option::of(frame())
        )
            .prop_map(|(chunk, reason, log_tail, failed_frame)| {
                NodeToCoord::Failed(ChunkFailed {
                    chunk,
                    reason,
                    log_tail,
                    failed_frame,
                })
            }),
        (chunk(), proptest::option::of(frame()))
            .prop_map(|(chunk, end)| NodeToCoord::ShrinkAck(ShrinkAck { chunk, end })),
        Just(NodeToCoord::Leaving),
        Just(NodeToCoord::Preempted),
        (
            chunk(),
            prop_oneof![
                8 => 0..MAX_CHUNK_LOG_BYTES,
                1 => (MAX_CHUNK_LOG_BYTES - 1)..=(MAX_CHUNK_LOG_BYTES + 1),
                1 => any::<u64>(),
            ],
            text(MAX_CHUNK_LOG_PIECE_BYTES),
            any::<bool>()
        )
            .prop_map(
                |(chunk, offset, text, last)| NodeToCoord::ChunkLog(ChunkLog {
                    chunk,
                    offset,
                    text,
                    last
                })
            ),
    ]
    .boxed()
}

fn upload_header() -> BoxedStrategy<UploadHeader> {
    (chunk(), frames(), any::<u64>(), any::<[u8; 32]>())
        .prop_map(|(chunk, (start, end), size_bytes, hash)| UploadHeader {
            chunk,
            start,
            end,
            size_bytes,
            hash,
        })
        .boxed()
}

fn client_request() -> BoxedStrategy<ClientRequest> {
    (
        any::<u64>(),
        text(64),
        select(&["GET", "POST", "PATCH", "DELETE", ""][..]),
        text(64),
        select(&["application/json", "application/toml", ""][..]),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(id, api_key, method, path, content_type, body)| ClientRequest {
                id,
                api_key,
                method: method.into(),
                path,
                content_type: content_type.into(),
                body,
            },
        )
        .boxed()
}

fn coordinator_message() -> BoxedStrategy<CoordToNode> {
    let assign = (
        chunk(),
        frames(),
        (any::<u32>(), any::<u32>(), any::<u32>()),
        text(1024),
        text(64),
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(
            |(chunk, (start, end), (fps, width, height), shader_source, encoder, crf, t)| {
                CoordToNode::Assign(Assign {
                    chunk,
                    start,
                    end,
                    fps,
                    width,
                    height,
                    shader_source,
                    encoder,
                    crf,
                    frame_timeout_s: t,
                })
            },
        );
    prop_oneof![
        any::<u64>().prop_map(|heartbeat_interval_ms| CoordToNode::Welcome {
            heartbeat_interval_ms
        }),
        (text(MAX_REASON_BYTES), any::<bool>())
            .prop_map(|(reason, permanent)| CoordToNode::Refused { reason, permanent }),
        assign,
        chunk().prop_map(CoordToNode::Cancel),
        (chunk(), frame()).prop_map(|(chunk, proposed_end)| CoordToNode::Shrink {
            chunk,
            proposed_end
        }),
    ]
    .boxed()
}

fn upload_answers() -> BoxedStrategy<(UploadAdmission, UploadOutcome)> {
    let reason = || text(MAX_REASON_BYTES);
    let admission = prop_oneof![
        any::<u64>().prop_map(|offset_bytes| UploadAdmission::Accept { offset_bytes }),
        reason().prop_map(|reason| UploadAdmission::NotNeeded { reason }),
        reason().prop_map(|reason| UploadAdmission::Later { reason }),
        reason().prop_map(|reason| UploadAdmission::Rejected { reason }),
    ];
    let outcome = prop_oneof![
        Just(UploadOutcome::Stored),
        reason().prop_map(|reason| UploadOutcome::Later { reason }),
        reason().prop_map(|reason| UploadOutcome::Rejected { reason }),
    ];
    (admission, outcome).boxed()
}

// ---- Mutations ----

/// One change to an encoded stream.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    /// The first frame's length field set to its own value plus this.
    LengthDelta(i64),
    /// The first frame's length field set to the reader's limit plus this
    /// (-1, 0 or 1).
    LengthAtLimit(i64),
    /// The first frame's length field set to any value.
    Length(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (-16i64..=16).prop_map(Mutation::LengthDelta),
        1 => (-1i64..=1).prop_map(Mutation::LengthAtLimit),
        1 => any::<u32>().prop_map(Mutation::Length),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    // A quarter of the cases are the encoding itself.
    prop_oneof![1 => Just(vec![]), 3 => vec(mutation(), 1..4)]
}

/// Applies `mutations` to `stream`, whose first frame's length field is at
/// `length_at` and read with `limit`.
fn mutate(stream: &mut Vec<u8>, mutations: &[Mutation], length_at: usize, limit: usize) {
    for m in mutations {
        let len = stream.len();
        let set_length = |stream: &mut Vec<u8>, value: i64| {
            if stream.len() >= length_at + 4 {
                let v = value.clamp(0, u32::MAX as i64) as u32;
                stream[length_at..length_at + 4].copy_from_slice(&v.to_be_bytes());
            }
        };
        let declared = || {
            stream
                .get(length_at..length_at + 4)
                .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()) as i64)
        };
        match m {
            Mutation::Flip(i, bit) if len > 0 => stream[i.index(len)] ^= 1 << (bit % 8),
            Mutation::Set(i, b) if len > 0 => stream[i.index(len)] = *b,
            Mutation::Insert(i, b) => stream.insert(i.index(len + 1), *b),
            Mutation::Remove(i) if len > 0 => {
                stream.remove(i.index(len));
            }
            Mutation::Truncate(i) => stream.truncate(i.index(len + 1)),
            Mutation::LengthDelta(d) => {
                let v = declared() + d;
                set_length(stream, v);
            }
            Mutation::LengthAtLimit(d) => set_length(stream, limit as i64 + d),
            Mutation::Length(v) => set_length(stream, *v as i64),
            _ => {}
        }
    }
}

// ---- Outcomes ----

/// How cases ended, by name, so a run can show it reached every path.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<&'static str, usize>>);

impl Tally {
    fn add(&self, outcome: &'static str) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }

    /// Fails unless each outcome in `required` occurred at least as many
    /// times as it says.
    fn require(&self, required: &[(&str, usize)]) {
        let t = self.0.lock().unwrap();
        // Shown with --nocapture: how the run spread over the paths.
        eprintln!("{t:?}");
        for &(r, min) in required {
            let n = t.get(r).copied().unwrap_or(0);
            assert!(
                n >= min,
                "{r}: {n} cases, expected at least {min}; all: {t:?}"
            );
        }
    }
}

fn outcome<T>(r: &Result<T, Refusal>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Refusal::NoKind | Refusal::WrongKind(..)) => "kind",
        Err(Refusal::Preamble(_)) => "preamble",
        Err(Refusal::Version(_)) => "version",
        Err(Refusal::Wire(WireError::FrameTooLarge { .. })) => "too large",
        Err(Refusal::Wire(WireError::Truncated)) => "truncated",
        Err(Refusal::Wire(WireError::Invalid(_))) => "invalid archive",
        Err(Refusal::Wire(WireError::Io(_))) => "io",
        Err(Refusal::Ended(_)) => "ended",
        Err(Refusal::NotHello) => "not hello",
        Err(Refusal::Violation(_)) => "violation",
    }
}

/// Runs `read` and fails the case when it held more than the bound for
/// `limit` at once.
fn bounded<T>(limit: usize, read: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let (out, peak) = PeakAlloc::peak_bytes(read);
    let bound = decode_bound_bytes(limit);
    prop_assert!(peak <= bound, "peak {peak} bytes, bound {bound}");
    Ok(out)
}

fn control_prefix() -> Vec<u8> {
    let mut out = vec![StreamKind::Control as u8];
    out.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
    out
}

fn client_prefix() -> Vec<u8> {
    let mut out = vec![StreamKind::Client as u8];
    out.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
    out
}

// ---- The properties ----

/// What the coordinator reads from its peers outside the handshake.
#[derive(Debug, Clone)]
enum FromPeer {
    Control(NodeToCoord),
    Upload(UploadHeader),
    Client(ClientRequest),
}

/// Every node message kind, upload headers and API clients' requests,
/// encoded, mutated, and read as the coordinator reads them.
#[test]
fn mutated_node_messages() {
    let tally = Tally::default();
    let peer = prop_oneof![
        6 => node_message().prop_map(FromPeer::Control),
        1 => upload_header().prop_map(FromPeer::Upload),
        1 => client_request().prop_map(FromPeer::Client),
    ];
    TestRunner::new(config())
        .run(&(peer, mutations()), |(msg, mutations)| {
            let pristine = mutations.is_empty();
            match msg {
                FromPeer::Control(msg) => {
                    let mut frame = encode_frame(&msg).unwrap();
                    mutate(&mut frame, &mutations, 0, MAX_CONTROL_FRAME_BYTES);
                    let got = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::node_to_coord(&frame))?;
                    if pristine {
                        prop_assert_eq!(
                            decode_body::<NodeToCoord>(&frame[4..]).unwrap(),
                            msg.clone()
                        );
                        match (&got, msg.validate()) {
                            (Ok(1), Ok(())) => {}
                            (Err(Refusal::Violation(a)), Err(b)) => prop_assert_eq!(a, &b),
                            (got, want) => prop_assert!(false, "{got:?} for {want:?}"),
                        }
                    }
                    tally.add(outcome(&got));
                }
                FromPeer::Upload(header) => {
                    let mut stream = vec![StreamKind::Upload as u8];
                    stream.extend_from_slice(&encode_frame(&header).unwrap());
                    mutate(&mut stream, &mutations, 1, MAX_UPLOAD_FRAME_BYTES);
                    let got = bounded(MAX_UPLOAD_FRAME_BYTES, || fuzzing::upload_header(&stream))?;
                    if pristine {
                        prop_assert_eq!(got.is_ok(), header.validate().is_ok());
                    }
                    tally.add(outcome(&got));
                }
                FromPeer::Client(req) => {
                    let mut stream = vec![StreamKind::Client as u8];
                    stream.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
                    stream.extend_from_slice(&encode_frame(&req).unwrap());
                    mutate(&mut stream, &mutations, 9, MAX_CLIENT_FRAME_BYTES);
                    let got =
                        bounded(MAX_CLIENT_FRAME_BYTES, || fuzzing::client_requests(&stream))?;
                    if pristine {
                        prop_assert!(matches!(got, Ok(1)), "{:?}", got);
                    }
                    tally.add(outcome(&got));
                }
            }
            Ok(())
        })
        .unwrap();
    tally.require(&[
        ("ok", 1000),
        ("violation", 1000),
        ("invalid archive", 1000),
        ("truncated", 1000),
        ("too large", 1000),
        ("kind", 100),
        ("preamble", 100),
        ("version", 100),
    ]);
}

/// Whole control streams, kind byte, preamble, hello and one message
/// after it, mutated anywhere, read as the coordinator's handshake and
/// session.
#[test]
fn mutated_handshakes() {
    let tally = Tally::default();
    TestRunner::new(config())
        .run(
            &(hello(), node_message(), mutations()),
            |(hello, next, mutations)| {
                let hello = NodeToCoord::Hello(Box::new(hello));
                let mut stream = control_prefix();
                stream.extend_from_slice(&encode_frame(&hello).unwrap());
                stream.extend_from_slice(&encode_frame(&next).unwrap());
                let pristine = mutations.is_empty();
                mutate(&mut stream, &mutations, 9, MAX_CONTROL_FRAME_BYTES);
                // The session starts with the handshake, so it covers
                // `handshake`'s code; that is checked alone on the
                // encodings themselves.
                let session = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::session(&stream))?;
                if pristine {
                    let shook = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::handshake(&stream))?;
                    prop_assert_eq!(shook.is_ok(), hello.validate().is_ok());
                    let want = hello.validate().and_then(|()| next.validate());
                    prop_assert_eq!(session.is_ok(), want.is_ok());
                }
                tally.add(outcome(&session));
                Ok(())
            },
        )
        .unwrap();
    tally.require(&[
        ("ok", 1000),
        ("violation", 1000),
        ("invalid archive", 1000),
        ("truncated", 1000),
        ("too large", 1000),
        ("kind", 100),
        ("preamble", 100),
        ("version", 100),
        // A stream cut right after the preamble, or a first frame turned
        // into another message kind: rare, and still reached.
        ("ended", 1),
        ("not hello", 1),
    ]);
}

/// Every coordinator message kind and upload answer, encoded, mutated, and
/// read as the node reads them.
#[test]
fn mutated_coordinator_messages() {
    let tally = Tally::default();
    TestRunner::new(config())
        .run(
            &(
                prop_oneof![
                    coordinator_message().prop_map(Ok),
                    upload_answers().prop_map(Err),
                ],
                mutations(),
            ),
            |(msg, mutations)| {
                match msg {
                    Ok(msg) => {
                        let mut stream = preamble::encode(PROTOCOL_VERSION).to_vec();
                        stream.extend_from_slice(&encode_frame(&msg).unwrap());
                        let pristine = mutations.is_empty();
                        mutate(&mut stream, &mutations, 8, MAX_CONTROL_FRAME_BYTES);
                        let got =
                            bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::coord_to_node(&stream))?;
                        if pristine {
                            prop_assert!(matches!(got, Ok(1)), "{:?}", got);
                        }
                        tally.add(outcome(&got));
                    }
                    Err((admission, outcome_msg)) => {
                        let mut stream = encode_frame(&admission).unwrap();
                        stream.extend_from_slice(&encode_frame(&outcome_msg).unwrap());
                        let pristine = mutations.is_empty();
                        mutate(&mut stream, &mutations, 0, MAX_UPLOAD_FRAME_BYTES);
                        let got =
                            bounded(MAX_UPLOAD_FRAME_BYTES, || fuzzing::upload_answers(&stream))?;
                        if pristine {
                            prop_assert!(got.is_ok(), "{:?}", got);
                        }
                        tally.add(outcome(&got));
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    tally.require(&[
        ("ok", 1000),
        ("invalid archive", 1000),
        ("truncated", 1000),
        ("too large", 1000),
        ("preamble", 100),
    ]);
}

/// Arbitrary bytes, bare or behind a valid stream start, through every
/// reader.
#[test]
fn arbitrary_bytes() {
    let tally = Tally::default();
    let start = prop_oneof![
        Just(vec![]),
        Just(control_prefix()),
        Just(vec![StreamKind::Upload as u8]),
        Just(client_prefix()),
        Just(preamble::encode(PROTOCOL_VERSION).to_vec()),
    ];
    TestRunner::new(config())
        .run(&(start, vec(any::<u8>(), 0..256)), |(start, bytes)| {
            let mut stream = start;
            stream.extend_from_slice(&bytes);
            // The client stream's limit is the largest of all.
            bounded(MAX_CLIENT_FRAME_BYTES, || fuzzing::decode_all(&stream))?;
            let got = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::session(&stream))?;
            tally.add(outcome(&got));
            Ok(())
        })
        .unwrap();
    tally.require(&[("kind", 1000), ("too large", 1000), ("truncated", 100)]);
}

/// Arbitrary bodies in frames whose length is right, so every case reaches
/// rkyv's validation, in every reader.
#[test]
fn arbitrary_bodies() {
    let tally = Tally::default();
    TestRunner::new(config())
        .run(&vec(any::<u8>(), 0..512), |body| {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let got = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::node_to_coord(&frame))?;
            tally.add(outcome(&got));
            let mut upload = vec![StreamKind::Upload as u8];
            upload.extend_from_slice(&frame);
            let _ = bounded(MAX_UPLOAD_FRAME_BYTES, || fuzzing::upload_header(&upload))?;
            let _ = bounded(MAX_UPLOAD_FRAME_BYTES, || fuzzing::upload_answers(&frame))?;
            let mut node = preamble::encode(PROTOCOL_VERSION).to_vec();
            node.extend_from_slice(&frame);
            let _ = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::coord_to_node(&node))?;
            let mut client = client_prefix();
            client.extend_from_slice(&frame);
            let _ = bounded(MAX_CLIENT_FRAME_BYTES, || fuzzing::client_requests(&client))?;
            let mut control = control_prefix();
            control.extend_from_slice(&frame);
            let _ = bounded(MAX_CONTROL_FRAME_BYTES, || fuzzing::session(&control))?;
            Ok(())
        })
        .unwrap();
    tally.require(&[("invalid archive", 10_000)]);
}

/// A length over the reader's limit is refused on the length alone: no
/// buffer is allocated for it, whatever follows.
#[test]
fn oversize_lengths_allocate_nothing() {
    TestRunner::new(config())
        .run(
            &(0u32..=u32::MAX, vec(any::<u8>(), 0..64)),
            |(length, tail)| {
                let frame = |limit: usize| {
                    let declared =
                        (limit as u64 + 1 + length as u64 % (u32::MAX as u64 - limit as u64))
                            as u32;
                    let mut out = declared.to_be_bytes().to_vec();
                    out.extend_from_slice(&tail);
                    out
                };
                let control = frame(MAX_CONTROL_FRAME_BYTES);
                let upload = frame(MAX_UPLOAD_FRAME_BYTES);
                let mut upload_stream = vec![StreamKind::Upload as u8];
                upload_stream.extend_from_slice(&upload);
                let mut node_stream = preamble::encode(PROTOCOL_VERSION).to_vec();
                node_stream.extend_from_slice(&control);
                let mut client_stream = client_prefix();
                client_stream.extend_from_slice(&frame(MAX_CLIENT_FRAME_BYTES));
                let too_large = |r: &'static str| r == "too large";
                let (results, peak) = PeakAlloc::peak_bytes(|| {
                    [
                        outcome(&fuzzing::node_to_coord(&control)),
                        outcome(&fuzzing::upload_header(&upload_stream)),
                        outcome(&fuzzing::coord_to_node(&node_stream)),
                        outcome(&fuzzing::upload_answers(&upload)),
                        outcome(&fuzzing::client_requests(&client_stream)),
                    ]
                });
                prop_assert!(results.iter().all(|r| too_large(r)), "{:?}", results);
                prop_assert_eq!(peak, 0);
                Ok(())
            },
        )
        .unwrap();
}

/// The worst case the bound is for: a frame at the control limit whose
/// every archived string is 8 bytes inline, so deserializing it yields
/// four times its size.
#[test]
fn the_worst_body_for_memory_stays_under_the_bound() {
    let per_tag = 8;
    let tags = (MAX_CONTROL_FRAME_BYTES - 4096) / per_tag;
    let hello = NodeToCoord::Hello(Box::new(Hello {
        agent_version: String::new(),
        node_id: "a".into(),
        name: "n".into(),
        capabilities: WireCapabilities {
            hostname: String::new(),
            os: String::new(),
            cpu_brand: String::new(),
            cpu_cores: 1,
            memory_bytes: 1,
            adapters: vec![],
            render_adapter: None,
            encoders: vec![],
            tags: vec!["abcdefgh".into(); tags],
            pool: String::new(),
            calibration: None,
            test_override: None,
        },
        running: vec![],
        spooled: vec![],
        join_token: String::new(),
    }));
    let mut stream = control_prefix();
    stream.extend_from_slice(&encode_frame(&hello).unwrap());
    assert!(stream.len() - 13 <= MAX_CONTROL_FRAME_BYTES);
    let (got, peak) = PeakAlloc::peak_bytes(|| fuzzing::handshake(&stream));
    // It decodes whole, then the tag limit refuses it.
    assert_eq!(
        got.unwrap_err().to_string(),
        format!("hello.capabilities.tags: {tags} tags, the limit is 32")
    );
    let bound = decode_bound_bytes(MAX_CONTROL_FRAME_BYTES);
    eprintln!(
        "peak {peak} bytes for a {} byte frame, bound {bound}",
        stream.len() - 13
    );
    assert!(
        peak > 4 * MAX_CONTROL_FRAME_BYTES,
        "{peak}: not the worst case"
    );
    assert!(peak <= bound, "{peak} > {bound}");
}

/// The seeds a fuzzer's corpus starts from (`fuzzing::seeds`) are valid
/// streams: each reads cleanly in the reader its target starts with. With
/// `DROVER_FUZZ_SEEDS` set to a corpus root (`fuzz/corpus`), they are
/// written there, one folder per target (see `fuzz/README.md`).
#[test]
fn seeds_read_cleanly() {
    let seeds = fuzzing::seeds();
    for seed in &seeds {
        let ok = match seed.target {
            "handshake" => fuzzing::session(&seed.bytes).is_ok(),
            "decode" => {
                fuzzing::node_to_coord(&seed.bytes).is_ok()
                    || fuzzing::upload_header(&seed.bytes).is_ok()
                    || fuzzing::client_requests(&seed.bytes).is_ok()
                    || fuzzing::coord_to_node(&seed.bytes).is_ok()
                    || fuzzing::upload_answers(&seed.bytes).is_ok()
                    || fuzzing::session(&seed.bytes).is_ok()
            }
            other => panic!("seed {} for an unknown target {other}", seed.name),
        };
        assert!(
            ok,
            "seed {}/{} does not read cleanly",
            seed.target, seed.name
        );
    }
    for target in ["decode", "handshake"] {
        assert!(
            seeds.iter().any(|s| s.target == target),
            "no seed for {target}"
        );
    }
    if let Some(root) = std::env::var_os("DROVER_FUZZ_SEEDS") {
        for seed in &seeds {
            let dir = std::path::Path::new(&root).join(seed.target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{}", seed.name)), &seed.bytes).unwrap();
        }
    }
}
