//! Limits on everything a node sends, and the checks that enforce them.
//!
//! rkyv's validation (in [`crate::codec`]) only proves that a frame is a
//! well-formed archive; a well-formed archive may still carry a 500 KiB node
//! name, a hello listing ten thousand tags or a heartbeat whose every entry
//! costs the scheduler an event. The frame limit bounds one message, not
//! what the coordinator keeps of it, so each string and list a node sends has
//! its own limit here, and [`NodeToCoord::validate`] (every control message,
//! the hello included) and [`UploadHeader::validate`] check a decoded message
//! against them before it goes any further.
//!
//! Every limit is wide enough for what the real node agent sends (its
//! sanitising of tags and pools, the host name as its default name, its own
//! cut of failure reports), so a violation means a broken or hostile peer.
//! A refusal names the field and the limit:
//! `hello.capabilities.tags: 40 tags, the limit is 32`.

use drover_shared::join::MAX_JOIN_TOKEN_BYTES;
use drover_shared::spec::{self, MAX_FRAMES_PER_JOB, MAX_FRAME_NUMBER, MAX_LABEL_BYTES};

use crate::messages::{
    ChunkDone, ChunkFailed, ChunkLog, Heartbeat, Hello, NodeToCoord, ShrinkAck, UploadHeader,
    WireAdapter, WireCalibration, WireCapabilities, MAX_CHUNK_LOG_BYTES, MAX_CHUNK_LOG_PIECE_BYTES,
    MAX_HELLO_RUNNING, MAX_HELLO_SPOOLED,
};

/// Longest node name, in bytes. The name is the scheduler's key for the node,
/// appears in logs, the API's URLs (`/v1/nodes/{name}`) and the node's data
/// dir, and defaults to the host name (a DNS label is at most 63 bytes).
pub const MAX_NODE_NAME_BYTES: usize = 64;

/// Longest node id, in bytes. The agent makes 32 hex digits
/// (`load_or_create_node_id`); twice that leaves room for another scheme.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Most tags a node may carry. A job may require at most
/// [`spec::MAX_TAGS`] (16); twice that is room for tags no job names yet.
/// Each tag follows the job spec's label rule ([`spec::label`]: 1..=64 bytes
/// of letters, digits, space, `-`, `_`, `.`, `*`), which is also what the
/// agent checks its `--tags` against at start, so that every tag a node has
/// is one a job can name.
pub const MAX_NODE_TAGS: usize = 32;

/// Longest free-text description a node reports, in bytes: its host name,
/// OS, CPU brand, agent version, each adapter's name, backend, device type
/// and vendor, and the adapter a finished chunk rendered on. Real ones are
/// tens of bytes (`llvmpipe (LLVM 15.0.6, 256 bits)`); a host name is at
/// most 255.
pub const MAX_TEXT_BYTES: usize = 256;

/// Most adapters a hello may list. wgpu lists each GPU once per backend
/// (Vulkan, GL), plus software adapters: a machine with eight GPUs lists
/// about twenty.
pub const MAX_ADAPTERS: usize = 64;

/// Most encoders a hello may list. The agent probes a fixed list of a few
/// candidates (`CANDIDATE_ENCODERS`); each name is at most
/// [`MAX_LABEL_BYTES`], like a job's `requirements.encoder`.
pub const MAX_ENCODERS: usize = 32;

/// Longest `test_override` note, in bytes. The agent writes one line per
/// test aid in use, listing `--fail-frame` numbers, so it is longer than
/// other descriptions; it is shown to people, never interpreted.
pub const MAX_TEST_OVERRIDE_BYTES: usize = 1024;

/// Longest `reason` and `log_tail` of a [`ChunkFailed`], in bytes. The
/// agent cuts a worker's report to 4 KiB (`MAX_REPORT_BYTES` in
/// `node/src/exec/wire.rs`) and some reasons it writes itself wrap another
/// message (an upload's refusal, a path); twice the cut keeps every honest
/// report valid while bounding what a job's failure record keeps.
pub const MAX_FAILURE_TEXT_BYTES: usize = 8 * 1024;

/// Most entries in a [`Heartbeat`]'s `chunks`. A node reports only the
/// chunks it has started, and runs one at a time with a second one's
/// encoder finishing (a hello lists at most [`MAX_HELLO_RUNNING`] held
/// chunks, queued ones included); every entry costs the scheduler an event,
/// so a heartbeat with tens of thousands would be a cheap way to flood it.
pub const MAX_HEARTBEAT_ENTRIES: usize = 64;

/// Highest `cpu_load_pct` (sysinfo clamps each CPU's load to 100).
pub const MAX_CPU_LOAD_PCT: f32 = 100.0;

/// Highest `memory_load_pct`: a share of the machine's memory cannot pass
/// all of it.
pub const MAX_MEMORY_LOAD_PCT: f32 = 100.0;

/// A message a node sent that breaks a limit of the protocol: which field,
/// and what is wrong with it, with the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ProtocolViolation {
    /// Dotted path of the field (`hello.capabilities.tags[3]`,
    /// `heartbeat.chunks`).
    pub field: String,
    /// What is wrong, with the limit.
    pub message: String,
}

impl ProtocolViolation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProtocolViolation {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `field`'s violation, for `map_err` on a check that returns the message.
fn at(field: &str) -> impl FnOnce(String) -> ProtocolViolation + '_ {
    move |message| ProtocolViolation::new(field, message)
}

impl NodeToCoord {
    /// Checks every string, list and frame number of a node's control
    /// message against its limit; the hello's checks are [`Hello::validate`].
    pub fn validate(&self) -> Result<(), ProtocolViolation> {
        match self {
            NodeToCoord::Hello(hello) => hello.validate(),
            NodeToCoord::Heartbeat(hb) => validate_heartbeat(hb),
            NodeToCoord::Progress(p) => {
                frames_done(p.frames_done).map_err(at("progress.frames_done"))
            }
            NodeToCoord::Done(done) => validate_done(done),
            NodeToCoord::Failed(failed) => validate_failed(failed),
            NodeToCoord::ShrinkAck(ShrinkAck { end, .. }) => match end {
                Some(end) => frame_number(*end).map_err(at("shrink_ack.end")),
                None => Ok(()),
            },
            NodeToCoord::Leaving => Ok(()),
            // No fields: nothing to bound.
            NodeToCoord::Preempted => Ok(()),
            NodeToCoord::ChunkLog(log) => validate_chunk_log(log),
        }
    }
}

impl Hello {
    /// Checks a node's hello: its name ([`check_node_name`]) and id, every
    /// capability, the lists of held chunks and spooled segments (at most
    /// [`MAX_HELLO_RUNNING`] and [`MAX_HELLO_SPOOLED`], each a frame range
    /// that starts before it ends), and its join token's size (at most
    /// [`MAX_JOIN_TOKEN_BYTES`]).
    pub fn validate(&self) -> Result<(), ProtocolViolation> {
        check_node_name(&self.name)?;
        node_id(&self.node_id).map_err(at("hello.node_id"))?;
        text(&self.agent_version, MAX_TEXT_BYTES).map_err(at("hello.agent_version"))?;
        validate_capabilities(&self.capabilities)?;
        count(self.running.len(), MAX_HELLO_RUNNING, "chunks").map_err(at("hello.running"))?;
        for (i, r) in self.running.iter().enumerate() {
            frame_range(r.start, r.end)
                .and_then(|()| frames_done(r.frames_done))
                .map_err(|m| ProtocolViolation::new(format!("hello.running[{i}]"), m))?;
        }
        count(self.spooled.len(), MAX_HELLO_SPOOLED, "segments").map_err(at("hello.spooled"))?;
        for (i, s) in self.spooled.iter().enumerate() {
            frame_range(s.start, s.end)
                .map_err(|m| ProtocolViolation::new(format!("hello.spooled[{i}]"), m))?;
        }
        // Its form is checked where it is redeemed; only its size here.
        text(&self.join_token, MAX_JOIN_TOKEN_BYTES).map_err(at("hello.join_token"))?;
        Ok(())
    }
}

impl UploadHeader {
    /// Checks the frame range an upload stream announces.
    pub fn validate(&self) -> Result<(), ProtocolViolation> {
        frame_range(self.start, self.end).map_err(at("upload_header"))
    }
}

/// Checks a node name: 1..=[`MAX_NODE_NAME_BYTES`] bytes of ASCII letters,
/// digits, `.`, `_` and `-`, not starting with `.` or `-` (so it is safe as
/// a path component, in a URL and as a command-line argument). Host names
/// pass, fully qualified ones included.
pub fn check_node_name(name: &str) -> Result<(), ProtocolViolation> {
    let field = "hello.name";
    if name.is_empty() || name.len() > MAX_NODE_NAME_BYTES {
        return Err(ProtocolViolation::new(
            field,
            format!(
                "{} bytes, allowed are 1..={MAX_NODE_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ProtocolViolation::new(
            field,
            format!("contains {c:?}; allowed are letters, digits, '.', '_', '-'"),
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(ProtocolViolation::new(
            field,
            format!("{name:?} starts with {:?}", char::from(name.as_bytes()[0])),
        ));
    }
    Ok(())
}

fn validate_capabilities(c: &WireCapabilities) -> Result<(), ProtocolViolation> {
    // The prefix of the fields whose name is built (list entries).
    let field = "hello.capabilities";
    text(&c.hostname, MAX_TEXT_BYTES).map_err(at("hello.capabilities.hostname"))?;
    text(&c.os, MAX_TEXT_BYTES).map_err(at("hello.capabilities.os"))?;
    text(&c.cpu_brand, MAX_TEXT_BYTES).map_err(at("hello.capabilities.cpu_brand"))?;
    count(c.adapters.len(), MAX_ADAPTERS, "adapters").map_err(at("hello.capabilities.adapters"))?;
    for (i, a) in c.adapters.iter().enumerate() {
        adapter(a).map_err(|(part, m)| {
            ProtocolViolation::new(format!("{field}.adapters[{i}].{part}"), m)
        })?;
    }
    if let Some(a) = &c.render_adapter {
        adapter(a).map_err(|(part, m)| {
            ProtocolViolation::new(format!("{field}.render_adapter.{part}"), m)
        })?;
    }
    count(c.encoders.len(), MAX_ENCODERS, "encoders").map_err(at("hello.capabilities.encoders"))?;
    for (i, e) in c.encoders.iter().enumerate() {
        non_empty_text(e, MAX_LABEL_BYTES)
            .map_err(|m| ProtocolViolation::new(format!("{field}.encoders[{i}]"), m))?;
    }
    count(c.tags.len(), MAX_NODE_TAGS, "tags").map_err(at("hello.capabilities.tags"))?;
    for (i, t) in c.tags.iter().enumerate() {
        spec::label("", t)
            .map_err(|e| ProtocolViolation::new(format!("{field}.tags[{i}]"), e.message))?;
    }
    // An empty pool is no pool.
    if !c.pool.is_empty() {
        spec::label("", &c.pool)
            .map_err(|e| ProtocolViolation::new("hello.capabilities.pool", e.message))?;
    }
    if let Some(k) = &c.calibration {
        calibration(k).map_err(at("hello.capabilities.calibration.frames_per_s"))?;
    }
    if let Some(t) = &c.test_override {
        text(t, MAX_TEST_OVERRIDE_BYTES).map_err(at("hello.capabilities.test_override"))?;
    }
    Ok(())
}

/// An adapter's strings; the error names the adapter's field.
fn adapter(a: &WireAdapter) -> Result<(), (&'static str, String)> {
    for (part, value) in [
        ("name", &a.name),
        ("backend", &a.backend),
        ("device_type", &a.device_type),
        ("vendor", &a.vendor),
    ] {
        text(value, MAX_TEXT_BYTES).map_err(|m| (part, m))?;
    }
    Ok(())
}

fn calibration(k: &WireCalibration) -> Result<(), String> {
    // The agent divides frames by a time of at least a microsecond: always
    // finite and positive.
    if k.frames_per_s.is_finite() && k.frames_per_s > 0.0 {
        Ok(())
    } else {
        Err(format!("{} is not a positive number", k.frames_per_s))
    }
}

fn validate_heartbeat(hb: &Heartbeat) -> Result<(), ProtocolViolation> {
    // NaN fails both comparisons.
    if !(hb.cpu_load_pct >= 0.0 && hb.cpu_load_pct <= MAX_CPU_LOAD_PCT) {
        return Err(ProtocolViolation::new(
            "heartbeat.cpu_load_pct",
            format!("{} is outside 0..={MAX_CPU_LOAD_PCT}", hb.cpu_load_pct),
        ));
    }
    if !(hb.memory_load_pct >= 0.0 && hb.memory_load_pct <= MAX_MEMORY_LOAD_PCT) {
        return Err(ProtocolViolation::new(
            "heartbeat.memory_load_pct",
            format!(
                "{} is outside 0..={MAX_MEMORY_LOAD_PCT}",
                hb.memory_load_pct
            ),
        ));
    }
    count(hb.chunks.len(), MAX_HEARTBEAT_ENTRIES, "entries").map_err(at("heartbeat.chunks"))?;
    for (i, p) in hb.chunks.iter().enumerate() {
        frames_done(p.frames_done)
            .map_err(|m| ProtocolViolation::new(format!("heartbeat.chunks[{i}].frames_done"), m))?;
    }
    Ok(())
}

fn validate_done(done: &ChunkDone) -> Result<(), ProtocolViolation> {
    frame_range(done.start, done.end).map_err(at("done"))?;
    text(&done.adapter, MAX_TEXT_BYTES).map_err(at("done.adapter"))
}

fn validate_chunk_log(log: &ChunkLog) -> Result<(), ProtocolViolation> {
    text(&log.text, MAX_CHUNK_LOG_PIECE_BYTES).map_err(at("chunk_log.text"))?;
    let end = log.offset.saturating_add(log.text.len() as u64);
    if end > MAX_CHUNK_LOG_BYTES {
        return Err(ProtocolViolation::new(
            "chunk_log.offset",
            format!(
                "the piece ends at byte {end}, past the limit of {MAX_CHUNK_LOG_BYTES} per chunk"
            ),
        ));
    }
    Ok(())
}

fn validate_failed(failed: &ChunkFailed) -> Result<(), ProtocolViolation> {
    text(&failed.reason, MAX_FAILURE_TEXT_BYTES).map_err(at("failed.reason"))?;
    text(&failed.log_tail, MAX_FAILURE_TEXT_BYTES).map_err(at("failed.log_tail"))?;
    match failed.failed_frame {
        Some(f) => frame_number(f).map_err(at("failed.failed_frame")),
        None => Ok(()),
    }
}

/// At most `limit` bytes.
fn text(value: &str, limit: usize) -> Result<(), String> {
    if value.len() > limit {
        return Err(format!("{} bytes, the limit is {limit}", value.len()));
    }
    Ok(())
}

/// 1..=`limit` bytes.
fn non_empty_text(value: &str, limit: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    text(value, limit)
}

/// At most `limit` entries of a list of `what`.
fn count(len: usize, limit: usize, what: &str) -> Result<(), String> {
    if len > limit {
        return Err(format!("{len} {what}, the limit is {limit}"));
    }
    Ok(())
}

/// 1..=[`MAX_NODE_ID_BYTES`] ASCII letters and digits.
fn node_id(id: &str) -> Result<(), String> {
    non_empty_text(id, MAX_NODE_ID_BYTES)?;
    if let Some(c) = id.chars().find(|c| !c.is_ascii_alphanumeric()) {
        return Err(format!("contains {c:?}; allowed are letters and digits"));
    }
    Ok(())
}

/// A frame number a job can have.
fn frame_number(frame: u64) -> Result<(), String> {
    if frame > MAX_FRAME_NUMBER {
        return Err(format!(
            "frame {frame} is above the highest frame number {MAX_FRAME_NUMBER}"
        ));
    }
    Ok(())
}

/// An inclusive frame range of a job.
fn frame_range(start: u64, end: u64) -> Result<(), String> {
    if end < start {
        return Err(format!("frames {start}..={end} end before they start"));
    }
    frame_number(end)
}

/// A count of frames rendered in one chunk, which is part of one job.
fn frames_done(n: u64) -> Result<(), String> {
    if n > MAX_FRAMES_PER_JOB {
        return Err(format!(
            "{n} frames done, more than a job may have ({MAX_FRAMES_PER_JOB})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
