//! Entry points shared by the cargo-fuzz targets (`fuzz/` at the repository
//! root) and the proptest runs (`protocol/tests/fuzz.rs`).
//!
//! Each takes arbitrary bytes, what a peer could put on a stream, and runs
//! them through the very functions the coordinator or the node runs on the
//! bytes it receives, with the same limits: [`crate::codec::read_msg`],
//! [`crate::preamble::read`], then [`NodeToCoord::validate`] and
//! [`UploadHeader::validate`] on what the coordinator decoded. The reads are
//! the real async functions, polled over a byte slice, which never waits, so
//! nothing here needs a runtime.
//!
//! What the fuzzers hold these to: no input makes them panic, and none makes
//! them hold more than [`decode_bound_bytes`] of the frame limit at once. A
//! frame whose declared length is over its limit is refused before anything
//! is allocated for it; one under it costs its body buffer (allocated at the
//! declared size, as in the coordinator, even when fewer bytes follow) and
//! what deserializing the body yields.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncReadExt;

use crate::codec::{encode_frame, read_msg, WireError, MAX_CONTROL_FRAME_BYTES};
use crate::messages::{
    Assign, ChunkDone, ChunkFailed, ChunkLog, ChunkProgress, ChunkRef, ClientRequest, CoordToNode,
    Heartbeat, Hello, NodeToCoord, RunningChunk, ShrinkAck, SpooledSegment, UploadAdmission,
    UploadHeader, UploadOutcome, WireAdapter, WireCalibration, WireCapabilities,
    MAX_CLIENT_FRAME_BYTES, MAX_UPLOAD_FRAME_BYTES, PROTOCOL_VERSION,
};
use crate::preamble::{self, PreambleError};
use crate::validate::ProtocolViolation;
use crate::StreamKind;

/// Most bytes one frame read may hold at once, for a frame limit of
/// `limit_bytes`: the body buffer (at most the limit) and the deserialized
/// message, at most four times the body (an archived string of up to 8
/// bytes takes 8 bytes of the archive, and in memory a 24-byte `String` plus
/// its 8 bytes on the heap), with room for the error's text.
pub const fn decode_bound_bytes(limit_bytes: usize) -> usize {
    6 * limit_bytes + 64 * 1024
}

/// Why a stream was refused, at the first thing wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The stream was empty where its kind byte belongs.
    #[error("the stream ended before its kind byte")]
    NoKind,
    /// The stream's first byte is not the kind the reader expects.
    #[error("stream of kind {0}, expected {1:?}")]
    WrongKind(u8, StreamKind),
    /// The preamble is missing or not Drover's.
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u32),
    /// A frame is over its limit, truncated, or not a valid archive.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended before a message the reader needs.
    #[error("the stream ended before the {0}")]
    Ended(&'static str),
    /// The node's first message is not a hello.
    #[error("the first message is not a hello")]
    NotHello,
    /// A message decoded but breaks a limit of the protocol.
    #[error(transparent)]
    Violation(#[from] ProtocolViolation),
}

/// Runs a read over a byte slice to completion. A slice is always ready, so
/// one poll finishes any of the codec's reads.
fn now<F: Future>(read: F) -> F::Output {
    let mut read = pin!(read);
    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a read from a byte slice never waits"),
    }
}

/// The coordinator's reads of a node's control stream after the hello:
/// frames of at most [`MAX_CONTROL_FRAME_BYTES`], each a [`NodeToCoord`]
/// that must validate, until the stream ends between two frames. Returns
/// how many messages were read.
pub fn node_to_coord(data: &[u8]) -> Result<usize, Refusal> {
    control_messages(&mut &data[..])
}

fn control_messages(stream: &mut &[u8]) -> Result<usize, Refusal> {
    let mut n = 0;
    while let Some(msg) = now(read_msg::<_, NodeToCoord>(stream, MAX_CONTROL_FRAME_BYTES))? {
        msg.validate()?;
        n += 1;
    }
    Ok(n)
}

/// The coordinator's side of the handshake on a fresh control stream: the
/// stream kind byte, the node's preamble (its version must be ours), then
/// the first frame, which must be a [`Hello`] that validates.
pub fn handshake(data: &[u8]) -> Result<Box<Hello>, Refusal> {
    read_handshake(&mut &data[..])
}

fn read_handshake(stream: &mut &[u8]) -> Result<Box<Hello>, Refusal> {
    let kind = now(stream.read_u8()).map_err(|_| Refusal::NoKind)?;
    if StreamKind::from_byte(kind) != Some(StreamKind::Control) {
        return Err(Refusal::WrongKind(kind, StreamKind::Control));
    }
    let theirs = now(preamble::read(stream))?;
    if theirs != PROTOCOL_VERSION {
        return Err(Refusal::Version(theirs));
    }
    match now(read_msg::<_, NodeToCoord>(stream, MAX_CONTROL_FRAME_BYTES))? {
        Some(NodeToCoord::Hello(hello)) => {
            hello.validate()?;
            Ok(hello)
        }
        Some(_) => Err(Refusal::NotHello),
        None => Err(Refusal::Ended("hello")),
    }
}

/// A whole control stream as the coordinator reads it: [`handshake`], then
/// the messages that follow as [`node_to_coord`] reads them. Returns how
/// many messages came after the hello.
pub fn session(data: &[u8]) -> Result<usize, Refusal> {
    let mut stream = data;
    read_handshake(&mut stream)?;
    control_messages(&mut stream)
}

/// The coordinator's read of an upload stream's start: the stream kind
/// byte, then an [`UploadHeader`] in a frame of at most
/// [`MAX_UPLOAD_FRAME_BYTES`], which must validate.
pub fn upload_header(data: &[u8]) -> Result<UploadHeader, Refusal> {
    let mut stream = data;
    let kind = now(stream.read_u8()).map_err(|_| Refusal::NoKind)?;
    if StreamKind::from_byte(kind) != Some(StreamKind::Upload) {
        return Err(Refusal::WrongKind(kind, StreamKind::Upload));
    }
    let header = now(read_msg::<_, UploadHeader>(
        &mut stream,
        MAX_UPLOAD_FRAME_BYTES,
    ))?
    .ok_or(Refusal::Ended("upload header"))?;
    header.validate()?;
    Ok(header)
}

/// The node's reads of its control stream: the coordinator's preamble (its
/// version must be ours), then [`CoordToNode`] frames of at most
/// [`MAX_CONTROL_FRAME_BYTES`] until the stream ends between two frames.
/// Returns how many messages were read.
pub fn coord_to_node(data: &[u8]) -> Result<usize, Refusal> {
    let mut stream = data;
    let theirs = now(preamble::read(&mut stream))?;
    if theirs != PROTOCOL_VERSION {
        return Err(Refusal::Version(theirs));
    }
    let mut n = 0;
    while now(read_msg::<_, CoordToNode>(
        &mut stream,
        MAX_CONTROL_FRAME_BYTES,
    ))?
    .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// The coordinator's reads of an API client's stream: the stream kind
/// byte, the client's preamble (its version must be ours), then
/// [`ClientRequest`] frames of at most [`MAX_CLIENT_FRAME_BYTES`] until the
/// stream ends between two frames. (What a request's body holds goes
/// through the API's own checks; a job spec's are fuzzed by
/// `drover_shared::fuzzing`.) Returns how many requests were read.
pub fn client_requests(data: &[u8]) -> Result<usize, Refusal> {
    let mut stream = data;
    let kind = now(stream.read_u8()).map_err(|_| Refusal::NoKind)?;
    if StreamKind::from_byte(kind) != Some(StreamKind::Client) {
        return Err(Refusal::WrongKind(kind, StreamKind::Client));
    }
    let theirs = now(preamble::read(&mut stream))?;
    if theirs != PROTOCOL_VERSION {
        return Err(Refusal::Version(theirs));
    }
    let mut n = 0;
    while now(read_msg::<_, ClientRequest>(
        &mut stream,
        MAX_CLIENT_FRAME_BYTES,
    ))?
    .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// The node's reads of an upload stream: the coordinator's
/// [`UploadAdmission`], and after an accept, its [`UploadOutcome`], each in
/// a frame of at most [`MAX_UPLOAD_FRAME_BYTES`].
pub fn upload_answers(data: &[u8]) -> Result<(), Refusal> {
    let mut stream = data;
    let admission = now(read_msg::<_, UploadAdmission>(
        &mut stream,
        MAX_UPLOAD_FRAME_BYTES,
    ))?
    .ok_or(Refusal::Ended("upload admission"))?;
    if let UploadAdmission::Accept { .. } = admission {
        now(read_msg::<_, UploadOutcome>(
            &mut stream,
            MAX_UPLOAD_FRAME_BYTES,
        ))?
        .ok_or(Refusal::Ended("upload outcome"))?;
    }
    Ok(())
}

/// Every decoder above on the same bytes: what the `decode` fuzz target
/// runs. The verdicts are dropped; a panic is the only failure.
pub fn decode_all(data: &[u8]) {
    let _ = node_to_coord(data);
    let _ = upload_header(data);
    let _ = client_requests(data);
    let _ = coord_to_node(data);
    let _ = upload_answers(data);
}

/// A valid input for a fuzz target, to start its corpus from: a fuzzer
/// starting from nothing rarely guesses the preamble, let alone a valid
/// archive of a hello.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The cargo-fuzz target it is for (`decode` or `handshake`).
    pub target: &'static str,
    /// A file name for it in the target's corpus.
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
}

/// Valid streams of every kind, with every message kind in them, as the
/// real agent and coordinator write them. `protocol/tests/fuzz.rs` checks
/// that each reads cleanly and writes them into a corpus on request (see
/// `fuzz/README.md`).
pub fn seeds() -> Vec<Seed> {
    let frame = |msg: &dyn Fn() -> Result<Vec<u8>, WireError>| msg().expect("seeds encode");
    let c = ChunkRef {
        job: 7,
        index: 3,
        epoch: 1,
    };
    let node_messages = [
        frame(&|| {
            encode_frame(&NodeToCoord::Heartbeat(Heartbeat {
                cpu_load_pct: 37.5,
                memory_load_pct: 61.0,
                chunks: vec![ChunkProgress {
                    chunk: c,
                    frames_done: 4,
                }],
            }))
        }),
        frame(&|| {
            encode_frame(&NodeToCoord::Progress(ChunkProgress {
                chunk: c,
                frames_done: 5,
            }))
        }),
        frame(&|| {
            encode_frame(&NodeToCoord::ShrinkAck(ShrinkAck {
                chunk: c,
                end: Some(40),
            }))
        }),
        frame(&|| {
            encode_frame(&NodeToCoord::Done(ChunkDone {
                chunk: c,
                start: 24,
                end: 40,
                output_hash: [0xab; 32],
                adapter: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
                elapsed_ms: 1234,
            }))
        }),
        frame(&|| {
            encode_frame(&NodeToCoord::Failed(ChunkFailed {
                chunk: c,
                reason: "frame 31 failed".into(),
                log_tail: "job 7 chunk 3 frames 24-47 on llvmpipe (Cpu): frame 31 failed".into(),
                failed_frame: Some(31),
            }))
        }),
        frame(&|| encode_frame(&NodeToCoord::Leaving)),
        frame(&|| encode_frame(&NodeToCoord::Preempted)),
        frame(&|| {
            encode_frame(&NodeToCoord::ChunkLog(ChunkLog {
                chunk: c,
                offset: 0,
                text: "frame 24: 12.5 ms\n".into(),
                last: true,
            }))
        }),
    ];
    let adapter = WireAdapter {
        name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        backend: "Vulkan".into(),
        device_type: "Cpu".into(),
        vendor: "mesa".into(),
        vram_bytes: 0,
    };
    let hello = NodeToCoord::Hello(Box::new(Hello {
        agent_version: "0.1.0".into(),
        node_id: "0123456789abcdef0123456789abcdef".into(),
        name: "gpu-07".into(),
        capabilities: WireCapabilities {
            hostname: "gpu-07".into(),
            os: "Debian GNU/Linux 12".into(),
            cpu_brand: "AMD EPYC".into(),
            cpu_cores: 16,
            memory_bytes: 64 << 30,
            adapters: vec![adapter.clone()],
            render_adapter: Some(adapter),
            encoders: vec!["libx264".into()],
            tags: vec!["fast".into()],
            pool: "studio".into(),
            calibration: Some(WireCalibration {
                frames_per_s: 120.0,
                width: 640,
                height: 360,
            }),
            test_override: None,
        },
        running: vec![RunningChunk {
            chunk: c,
            start: 24,
            end: 47,
            frames_done: 5,
        }],
        spooled: vec![SpooledSegment {
            chunk: ChunkRef { index: 2, ..c },
            start: 0,
            end: 23,
            size_bytes: 1 << 20,
            hash: [7; 32],
        }],
        join_token: String::new(),
    }));
    let mut session = vec![StreamKind::Control as u8];
    session.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
    session.extend_from_slice(&frame(&|| encode_frame(&hello)));
    session.extend(node_messages.iter().flatten());

    let header = UploadHeader {
        chunk: c,
        start: 24,
        end: 47,
        size_bytes: 1 << 20,
        hash: [7; 32],
    };
    let mut upload = vec![StreamKind::Upload as u8];
    upload.extend_from_slice(&frame(&|| encode_frame(&header)));

    let mut coordinator = preamble::encode(PROTOCOL_VERSION).to_vec();
    for msg in [
        CoordToNode::Welcome {
            heartbeat_interval_ms: 1000,
        },
        CoordToNode::Assign(Assign {
            chunk: c,
            start: 24,
            end: 47,
            fps: 24,
            width: 1280,
            height: 720,
            shader_source: "@fragment fn fs_main() {}".into(),
            encoder: "libx264".into(),
            crf: 18,
            frame_timeout_s: 0,
        }),
        CoordToNode::Shrink {
            chunk: c,
            proposed_end: 40,
        },
        CoordToNode::Cancel(c),
        CoordToNode::Refused {
            reason: "name gpu-07 is in use".into(),
            permanent: false,
        },
    ] {
        coordinator.extend_from_slice(&frame(&|| encode_frame(&msg)));
    }
    let mut accepted = frame(&|| encode_frame(&UploadAdmission::Accept { offset_bytes: 0 }));
    accepted.extend_from_slice(&frame(&|| encode_frame(&UploadOutcome::Stored)));
    let later = frame(&|| {
        encode_frame(&UploadAdmission::Later {
            reason: "too many uploads".into(),
        })
    });

    let mut client = vec![StreamKind::Client as u8];
    client.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
    client.extend_from_slice(&frame(&|| {
        encode_frame(&ClientRequest {
            id: 1,
            api_key: "drv_0123456789abcdef".into(),
            method: "POST".into(),
            path: "/v1/jobs".into(),
            content_type: "application/json".into(),
            body: br#"{"name":"shot 010","frames":{"start":1,"end":48},"resolution":{"width":320,"height":180},"render":{"kind":"shader","shader":"plasma"}}"#.to_vec(),
        })
    }));

    let seed = |target, name, bytes| Seed {
        target,
        name,
        bytes,
    };
    vec![
        seed("handshake", "session", session.clone()),
        seed("decode", "node-control", node_messages.concat()),
        seed("decode", "node-upload", upload),
        seed("decode", "client", client),
        seed("decode", "coordinator-control", coordinator),
        seed("decode", "upload-accepted", accepted),
        seed("decode", "upload-later", later),
        // The coordinator's session, whole, for the decoders too.
        seed("decode", "session", session),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ChunkRef, Heartbeat};

    fn control_stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![StreamKind::Control as u8];
        out.extend_from_slice(&preamble::encode(PROTOCOL_VERSION));
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    fn hello() -> NodeToCoord {
        NodeToCoord::Hello(Box::new(Hello {
            agent_version: "0.1.0".into(),
            node_id: "ab".repeat(16),
            name: "n1".into(),
            capabilities: (&drover_shared::caps::Capabilities::default()).into(),
            running: vec![],
            spooled: vec![],
            join_token: String::new(),
        }))
    }

    fn heartbeat(entries: usize) -> NodeToCoord {
        NodeToCoord::Heartbeat(Heartbeat {
            cpu_load_pct: 1.0,
            memory_load_pct: 1.0,
            chunks: vec![
                crate::messages::ChunkProgress {
                    chunk: ChunkRef {
                        job: 1,
                        index: 0,
                        epoch: 1,
                    },
                    frames_done: 0,
                };
                entries
            ],
        })
    }

    #[test]
    fn a_well_formed_session_is_read_whole() {
        let hb = encode_frame(&heartbeat(1)).unwrap();
        let stream = control_stream(&[encode_frame(&hello()).unwrap(), hb.clone(), hb]);
        assert_eq!(handshake(&stream).unwrap().name, "n1");
        assert_eq!(session(&stream).unwrap(), 2);
    }

    #[test]
    fn each_step_of_the_handshake_refuses() {
        let good = control_stream(&[encode_frame(&hello()).unwrap()]);
        let refusal = |data: &[u8]| handshake(data).unwrap_err().to_string();
        assert_eq!(refusal(&[]), "the stream ended before its kind byte");
        assert_eq!(refusal(&[2]), "stream of kind 2, expected Control");
        assert!(refusal(&good[..5]).starts_with("reading the preamble"));
        let mut other = good.clone();
        other[1] = b'X';
        assert!(refusal(&other).contains("bad magic"));
        let mut old = good.clone();
        old[5..9].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            refusal(&old),
            format!("the peer speaks protocol 2, this build speaks {PROTOCOL_VERSION}")
        );
        assert_eq!(refusal(&good[..9]), "the stream ended before the hello");
        assert!(refusal(&good[..good.len() - 1]).contains("stream ended inside a frame"));
        let hb_first = control_stream(&[encode_frame(&heartbeat(0)).unwrap()]);
        assert_eq!(refusal(&hb_first), "the first message is not a hello");
        let mut bad_name = hello();
        if let NodeToCoord::Hello(h) = &mut bad_name {
            h.name = "a/b".into();
        }
        let bad = control_stream(&[encode_frame(&bad_name).unwrap()]);
        assert!(refusal(&bad).starts_with("hello.name: contains '/'"));
    }

    #[test]
    fn a_heartbeat_over_its_entry_limit_ends_the_session() {
        let stream = control_stream(&[
            encode_frame(&hello()).unwrap(),
            encode_frame(&heartbeat(crate::MAX_HEARTBEAT_ENTRIES + 1)).unwrap(),
        ]);
        let err = session(&stream).unwrap_err().to_string();
        assert_eq!(err, "heartbeat.chunks: 65 entries, the limit is 64");
    }

    #[test]
    fn an_oversize_length_is_refused_on_the_length_alone() {
        // Declares the limit plus one and sends nothing more.
        let frame = ((MAX_CONTROL_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            node_to_coord(&frame),
            Err(Refusal::Wire(WireError::FrameTooLarge { .. }))
        ));
        let mut upload = vec![StreamKind::Upload as u8];
        upload.extend_from_slice(&((MAX_UPLOAD_FRAME_BYTES + 1) as u32).to_be_bytes());
        assert!(matches!(
            upload_header(&upload),
            Err(Refusal::Wire(WireError::FrameTooLarge { .. }))
        ));
    }

    #[test]
    fn upload_streams_both_ways() {
        let header = UploadHeader {
            chunk: ChunkRef {
                job: 1,
                index: 2,
                epoch: 3,
            },
            start: 10,
            end: 9,
            size_bytes: 5,
            hash: [0; 32],
        };
        let mut stream = vec![StreamKind::Upload as u8];
        stream.extend_from_slice(&encode_frame(&header).unwrap());
        assert_eq!(
            upload_header(&stream).unwrap_err().to_string(),
            "upload_header: frames 10..=9 end before they start"
        );
        let mut answers = encode_frame(&UploadAdmission::Accept { offset_bytes: 0 }).unwrap();
        assert_eq!(
            upload_answers(&answers).unwrap_err().to_string(),
            "the stream ended before the upload outcome"
        );
        answers.extend_from_slice(&encode_frame(&UploadOutcome::Stored).unwrap());
        upload_answers(&answers).unwrap();
        let later = encode_frame(&UploadAdmission::Later {
            reason: "busy".into(),
        })
        .unwrap();
        upload_answers(&later).unwrap();
    }

    #[test]
    fn the_node_reads_the_coordinators_preamble_then_messages() {
        let mut stream = preamble::encode(PROTOCOL_VERSION).to_vec();
        stream.extend_from_slice(
            &encode_frame(&CoordToNode::Welcome {
                heartbeat_interval_ms: 1000,
            })
            .unwrap(),
        );
        assert_eq!(coord_to_node(&stream).unwrap(), 1);
        assert!(matches!(
            coord_to_node(&stream[..3]),
            Err(Refusal::Preamble(_))
        ));
    }
}
