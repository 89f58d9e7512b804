//! Segment concatenation: joins a job's encoded segments into its output by
//! stream copy (no re-encode).
//!
//! Nodes encode segments that are stitchable by construction (closed GOPs,
//! no B-frames, identical stream headers; see `drover_node::encode`). Here
//! each segment's video packets are copied in order, their timestamps shifted
//! by the duration of the segments before them so the joined stream's clock
//! runs on without a gap or a jump.
//!
//! # Crash safety
//! The output is written to `<out>.partial` and renamed over `out` only after
//! the trailer is written, so a crash leaves either no output or a whole one
//! under the real name, never half a file.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ffmpeg_next as ff;
use thiserror::Error;

/// Most segments one output may be joined from: bounds the work a single
/// job's mux can ask for (a 2-hour film at 24 fps in 1-second chunks is
/// 7,200 segments).
pub const MAX_SEGMENTS: usize = 100_000;

/// Suffix of the file being written before it is renamed into place.
pub const PARTIAL_SUFFIX: &str = ".partial";

static FFMPEG_INIT: Once = Once::new();

fn init_ffmpeg() {
    FFMPEG_INIT.call_once(|| {
        // init only registers formats on old FFmpeg; failures surface with
        // more detail at the first real call.
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}

/// What the joined output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxReport {
    /// Video frames (packets) written.
    pub frames: u64,
    /// Size of the output file in bytes.
    pub bytes: u64,
}

/// Why segments could not be joined.
#[derive(Debug, Error)]
pub enum MuxError {
    /// The joined file read back does not hold the job's frames.
    #[error("the joined output {} has {frames} frames over {secs:.3} s; the job has {want_frames} frames over {want_secs:.3} s", path.display())]
    Verify {
        /// The file checked.
        path: PathBuf,
        /// Frames found.
        frames: u64,
        /// Frames wanted.
        want_frames: u64,
        /// Duration found, seconds.
        secs: f64,
        /// Duration wanted, seconds.
        want_secs: f64,
    },
    /// No segments were given.
    #[error("no segments to join into {}", .0.display())]
    NoSegments(PathBuf),
    /// More than [`MAX_SEGMENTS`] segments were given.
    #[error("{count} segments to join; the limit is {limit}")]
    TooManySegments {
        /// Segments given.
        count: usize,
        /// [`MAX_SEGMENTS`].
        limit: usize,
    },
    /// A segment has no video stream.
    #[error("segment {} has no video stream", .0.display())]
    NoVideoStream(PathBuf),
    /// A segment's stream differs from the first segment's, so stream copy
    /// would produce a broken file.
    #[error("segment {} does not match {}: {what} is {got}, expected {want}", segment.display(), first.display())]
    Mismatch {
        /// The segment refused.
        segment: PathBuf,
        /// The first segment, whose parameters the output takes.
        first: PathBuf,
        /// Which parameter differs: "codec", "size", "time base", "pixel
        /// format" or "codec headers".
        what: &'static str,
        /// The refused segment's value.
        got: String,
        /// The first segment's value.
        want: String,
    },
    /// An FFmpeg call failed.
    #[error("{op} {}: {source}", path.display())]
    Ffmpeg {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// FFmpeg's error.
        source: ff::Error,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn ff_err(op: &'static str, path: &Path) -> impl FnOnce(ff::Error) -> MuxError {
    let path = path.to_path_buf();
    move |source| MuxError::Ffmpeg { op, path, source }
}

/// The stream properties every segment must share with the first.
#[derive(Debug, Clone, PartialEq)]
struct StreamShape {
    codec: ff::codec::Id,
    width: u32,
    height: u32,
    format: i32,
    time_base: ff::Rational,
    extradata: Vec<u8>,
}

impl StreamShape {
    fn of(stream: &ff::format::stream::Stream) -> Self {
        let params = stream.parameters();
        // SAFETY: `params` wraps the stream's live AVCodecParameters, valid
        // while `stream` (and its input context) is borrowed.
        let (width, height, format, extradata) = unsafe {
            let p = &*params.as_ptr();
            let extra = if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            };
            (p.width as u32, p.height as u32, p.format, extra)
        };
        StreamShape {
            codec: params.id(),
            width,
            height,
            format,
            time_base: stream.time_base(),
            extradata,
        }
    }

    /// The first parameter in which `self` differs from `first`:
    /// `(what, got, want)`.
    fn difference(&self, first: &StreamShape) -> Option<(&'static str, String, String)> {
        if self.codec != first.codec {
            return Some((
                "codec",
                format!("{:?}", self.codec),
                format!("{:?}", first.codec),
            ));
        }
        if (self.width, self.height) != (first.width, first.height) {
            return Some((
                "size",
                format!("{}x{}", self.width, self.height),
                format!("{}x{}", first.width, first.height),
            ));
        }
        if self.format != first.format {
            return Some((
                "pixel format",
                self.format.to_string(),
                first.format.to_string(),
            ));
        }
        if self.time_base != first.time_base {
            return Some((
                "time base",
                self.time_base.to_string(),
                first.time_base.to_string(),
            ));
        }
        // Only the first segment's headers reach the output; a segment with
        // other headers (other encoder settings) would decode wrongly.
        if self.extradata != first.extradata {
            return Some((
                "codec headers",
                format!("{} bytes", self.extradata.len()),
                format!("{} bytes (different content)", first.extradata.len()),
            ));
        }
        None
    }
}

/// Joins `segments`, in order, into one MP4 at `out` by stream copy of their
/// video packets, with continuous timestamps and `+faststart`. Refuses a
/// segment whose codec, size, pixel format, time base or headers differ from
/// the first's, naming it. Writes `out` + [`PARTIAL_SUFFIX`] first and
/// renames it over `out` only when complete.
pub fn concat_segments(segments: &[PathBuf], out: &Path) -> Result<MuxReport, MuxError> {
    join(segments, out, None)
}

/// What a job's output must hold: checked before it takes its final name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    /// Frames.
    pub frames: u64,
    /// Frames per second (the duration is `frames / fps`).
    pub fps: u32,
}

/// [`concat_segments`] for a job: the joined file is fsynced and checked
/// (frame count, and duration within half a frame) before it is renamed
/// into place, and the directory is fsynced after the rename, so an output
/// under its final name is complete, verified and durable.
pub fn join_and_verify(
    segments: &[PathBuf],
    out: &Path,
    expect: Expected,
) -> Result<MuxReport, MuxError> {
    join(segments, out, Some(expect))
}

fn join(segments: &[PathBuf], out: &Path, expect: Option<Expected>) -> Result<MuxReport, MuxError> {
    init_ffmpeg();
    let first_path = segments
        .first()
        .ok_or_else(|| MuxError::NoSegments(out.to_path_buf()))?;
    if segments.len() > MAX_SEGMENTS {
        return Err(MuxError::TooManySegments {
            count: segments.len(),
            limit: MAX_SEGMENTS,
        });
    }

    // Check every segment before writing anything: a mismatch in the last
    // segment should not cost a full copy of the others.
    let mut first_shape: Option<StreamShape> = None;
    for seg in segments {
        let input = ff::format::input(seg).map_err(ff_err("opening segment", seg))?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| MuxError::NoVideoStream(seg.clone()))?;
        let shape = StreamShape::of(&stream);
        match &first_shape {
            None => first_shape = Some(shape),
            Some(first) => {
                if let Some((what, got, want)) = shape.difference(first) {
                    return Err(MuxError::Mismatch {
                        segment: seg.clone(),
                        first: first_path.clone(),
                        what,
                        got,
                        want,
                    });
                }
            }
        }
    }

    let mut partial_name = out.as_os_str().to_os_string();
    partial_name.push(PARTIAL_SUFFIX);
    let partial = PathBuf::from(partial_name);
    let result = write_joined(segments, first_path, &partial).and_then(|frames| {
        if let Some(want) = expect {
            verify(&partial, want)?;
        }
        sync_file(&partial)?;
        Ok(frames)
    });
    match result {
        Ok(frames) => {
            std::fs::rename(&partial, out).map_err(|source| MuxError::Io {
                op: "renaming the joined output into",
                path: out.to_path_buf(),
                source,
            })?;
            // The rename is durable only once the directory is.
            if let Some(dir) = out.parent() {
                sync_file(dir)?;
            }
            let bytes = std::fs::metadata(out)
                .map_err(|source| MuxError::Io {
                    op: "reading the size of",
                    path: out.to_path_buf(),
                    source,
                })?
                .len();
            Ok(MuxReport { frames, bytes })
        }
        Err(e) => {
            // Best effort: a leftover partial file is harmless (never read
            // under the real name) and overwritten by the next attempt.
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// fsync of a file or a directory.
fn sync_file(path: &Path) -> Result<(), MuxError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| MuxError::Io {
            op: "syncing",
            path: path.to_path_buf(),
            source,
        })
}

/// Reads the joined file back: its video frames and its duration must be
/// the job's.
fn verify(path: &Path, want: Expected) -> Result<(), MuxError> {
    let mut input = ff::format::input(path).map_err(ff_err("reading back", path))?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| MuxError::NoVideoStream(path.to_path_buf()))?;
    let index = stream.index();
    let tb = stream.time_base();
    let mut frames = 0u64;
    let mut end_ts = i64::MIN;
    let mut start_ts = i64::MAX;
    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        frames += 1;
        if let Some(pts) = packet.pts() {
            start_ts = start_ts.min(pts);
            end_ts = end_ts.max(pts + packet.duration().max(0));
        }
    }
    let secs = if end_ts > start_ts {
        (end_ts - start_ts) as f64 * f64::from(tb.numerator())
            / f64::from(tb.denominator()).max(1.0)
    } else {
        0.0
    };
    let want_secs = want.frames as f64 / f64::from(want.fps.max(1));
    let half_frame = 0.5 / f64::from(want.fps.max(1));
    if frames != want.frames || (secs - want_secs).abs() > half_frame {
        return Err(MuxError::Verify {
            path: path.to_path_buf(),
            frames,
            want_frames: want.frames,
            secs,
            want_secs,
        });
    }
    Ok(())
}

/// Copies every segment's video packets into `partial`; returns the number
/// of packets written.
fn write_joined(segments: &[PathBuf], first_path: &Path, partial: &Path) -> Result<u64, MuxError> {
    let mut output = ff::format::output_as(&partial, "mp4").map_err(ff_err("creating", partial))?;
    let input_time_base;
    {
        let first =
            ff::format::input(&first_path).map_err(ff_err("opening segment", first_path))?;
        let stream = first
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| MuxError::NoVideoStream(first_path.to_path_buf()))?;
        input_time_base = stream.time_base();
        let mut ost = output
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(ff_err("adding a stream to", partial))?;
        ost.set_parameters(stream.parameters());
        ost.set_time_base(stream.time_base());
        ost.set_rate(stream.rate());
        ost.set_avg_frame_rate(stream.avg_frame_rate());
        // SAFETY: resetting the tag on the output stream's own parameters;
        // the MP4 muxer picks the right tag for the codec id when it is 0.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
    }
    let mut options = ff::Dictionary::new();
    options.set("movflags", "+faststart");
    output
        .write_header_with(options)
        .map_err(ff_err("writing the header of", partial))?;
    let output_time_base = output
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or(input_time_base);

    let mut frames = 0u64;
    // Start of the current segment on the joined clock, in the segments'
    // time base (all equal, checked above).
    let mut offset = 0i64;
    for seg in segments {
        let mut input = ff::format::input(seg).map_err(ff_err("opening segment", seg))?;
        let index = input
            .streams()
            .best(ff::media::Type::Video)
            .map(|s| s.index())
            .ok_or_else(|| MuxError::NoVideoStream(seg.clone()))?;
        // The segment's length is where its last frame ends, which is also
        // where the next segment's first frame must start.
        let mut segment_end = offset;
        for (stream, mut packet) in input.packets() {
            if stream.index() != index {
                continue;
            }
            let pts = packet.pts().map(|p| p + offset);
            let dts = packet.dts().map(|d| d + offset);
            let duration = packet.duration().max(0);
            if let Some(t) = pts.or(dts) {
                segment_end = segment_end.max(t + duration);
            }
            packet.set_pts(pts);
            packet.set_dts(dts);
            packet.set_stream(0);
            packet.set_position(-1);
            packet.rescale_ts(input_time_base, output_time_base);
            packet
                .write_interleaved(&mut output)
                .map_err(ff_err("writing a packet to", partial))?;
            frames += 1;
        }
        offset = segment_end;
    }
    output
        .write_trailer()
        .map_err(ff_err("writing the trailer of", partial))?;
    Ok(frames)
}
