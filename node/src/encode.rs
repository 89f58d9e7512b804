//! FFmpeg encode executor: RGBA frames in, one MP4 *segment* out.
//!
//! # Layout
//! - [`SegmentEncoder`]: swscale RGBA to the encoder's pixel format, encode,
//!   mux into MP4 with timestamps from 0 in time base `1/fps`.
//! - [`probe_encoders`]: which encoders really open on this machine.
//! - [`decode_rgba_frames`] and [`psnr_rgb`]: read a video back and compare it
//!   with renders (tests and verification).
//!
//! # Why segments join by stream copy
//! The coordinator concatenates segments without re-encoding, so every
//! segment of a job must carry identical stream parameters: the same codec
//! settings, closed GOPs that start at each segment's first frame, no B-frames
//! (so decode order equals presentation order and pts = dts = frame index), a
//! fixed keyframe interval with scene-cut detection off, and for x264
//! `stitchable=1` so that every segment writes byte-identical headers.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use thiserror::Error;

/// The default encoder: libx264 is in every FFmpeg build worth using and
/// joins cleanly by stream copy.
pub const DEFAULT_CODEC: &str = "libx264";
/// The default x264 preset: fast enough to keep up with lavapipe renders on
/// two cores while still compressing well.
pub const DEFAULT_PRESET: &str = "veryfast";
/// The default constant rate factor (x264 scale, 0 to 51; lower is better).
pub const DEFAULT_CRF: u8 = 20;
/// Largest CRF any supported encoder accepts (x264/x265 use 0..=51, the AV1
/// and VP9 encoders 0..=63).
pub const MAX_CRF: u8 = 63;
/// Keyframe interval in seconds of video. Fixed (never decided by scene
/// cuts) so every segment has the same GOP structure; each segment still
/// starts with its own keyframe because an encoder's first frame always is.
pub const KEYFRAME_INTERVAL_S: u32 = 2;
/// Largest width or height accepted, in pixels (8K): bounds frame buffers.
pub const MAX_DIMENSION_PX: u32 = 8192;
/// Highest frame rate accepted; anything above is a typo, not a video.
pub const MAX_FPS: u32 = 1000;

/// Encoders [`probe_encoders`] tries, most preferred first within a codec.
pub const CANDIDATE_ENCODERS: &[&str] = &[
    "libx264",
    "libx265",
    "h264_nvenc",
    "hevc_nvenc",
    "h264_vaapi",
    "h264_qsv",
    "libvpx-vp9",
    "libaom-av1",
    "libsvtav1",
    "mpeg4",
];

/// Size of the probe's test encode: small enough to cost milliseconds, large
/// enough for every encoder's minimum size (hardware encoders refuse tiny
/// frames, which is the kind of failure the probe exists to find).
const PROBE_SIZE_PX: u32 = 64;
/// Frames in the probe's test encode.
const PROBE_FRAMES: u64 = 2;

/// swscale flags for RGBA <-> YUV at the same size. Without the two full
/// chroma flags swscale point-samples chroma when subsampling RGB and when
/// expanding it again, which alone costs about 11 dB of PSNR on smooth
/// saturated gradients (40.6 dB round trip instead of 52.1 dB measured on
/// the plasma shader).
const CONVERT_FLAGS: scaling::Flags = scaling::Flags::BICUBIC
    .union(scaling::Flags::ACCURATE_RND)
    .union(scaling::Flags::FULL_CHR_H_INT)
    .union(scaling::Flags::FULL_CHR_H_INP);

static FFMPEG_INIT: Once = Once::new();

/// Initialises FFmpeg once per process and quiets its logging to errors.
fn init_ffmpeg() {
    FFMPEG_INIT.call_once(|| {
        // init only registers devices/formats on old FFmpeg; it cannot fail
        // in a way that later calls would not report with more detail.
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}

/// Why encoding or decoding failed.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The settings cannot describe a valid stream.
    #[error("invalid encode settings: {field} = {value} ({why})")]
    BadSettings {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected instead.
        why: &'static str,
    },
    /// FFmpeg has no encoder by this name.
    #[error("encoder {0:?} is not in this FFmpeg build")]
    UnknownEncoder(String),
    /// The encoder takes no pixel format swscale can produce for it
    /// (hardware-surface-only encoders such as VAAPI).
    #[error("encoder {0:?} takes neither yuv420p nor nv12 frames")]
    NoPixelFormat(String),
    /// A frame handed to [`SegmentEncoder::push_rgba`] has the wrong size.
    #[error("frame {frame} is {got} bytes; {width}x{height} RGBA needs {want}")]
    FrameSize {
        /// 0-based index of the frame within the segment.
        frame: u64,
        /// Bytes received.
        got: usize,
        /// Bytes expected: `width * height * 4`.
        want: usize,
        /// Segment width in pixels.
        width: u32,
        /// Segment height in pixels.
        height: u32,
    },
    /// An FFmpeg call failed.
    #[error("{op} {}: {source}", path.display())]
    Ffmpeg {
        /// What was being done: "opening encoder libx264 for", "writing
        /// header of", ...
        op: String,
        /// The file involved.
        path: PathBuf,
        /// FFmpeg's error.
        source: ff::Error,
    },
    /// The file has no video stream.
    #[error("{} has no video stream", .0.display())]
    NoVideoStream(PathBuf),
    /// Reading file metadata failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn ff_err(op: impl Into<String>, path: &Path) -> impl FnOnce(ff::Error) -> EncodeError {
    let op = op.into();
    let path = path.to_path_buf();
    move |source| EncodeError::Ffmpeg { op, path, source }
}

/// How a segment is encoded. Every segment of one job must use equal
/// settings, or the segments will not join.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeSettings {
    /// Width in pixels; even (4:2:0 chroma).
    pub width: u32,
    /// Height in pixels; even.
    pub height: u32,
    /// Frames per second; the stream's time base is `1/fps`.
    pub fps: u32,
    /// Constant rate factor (lower is better quality, bigger files).
    pub crf: u8,
    /// FFmpeg encoder name, e.g. `libx264`.
    pub codec: String,
    /// Encoder speed preset (x264/x265 names such as `veryfast`); ignored by
    /// encoders without presets.
    pub preset: String,
}

impl EncodeSettings {
    /// libx264, [`DEFAULT_CRF`], [`DEFAULT_PRESET`] at the given size and rate.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        EncodeSettings {
            width,
            height,
            fps,
            crf: DEFAULT_CRF,
            codec: DEFAULT_CODEC.to_string(),
            preset: DEFAULT_PRESET.to_string(),
        }
    }

    fn check(&self) -> Result<(), EncodeError> {
        let bad = |field, value: u32, why| {
            Err(EncodeError::BadSettings {
                field,
                value: value.to_string(),
                why,
            })
        };
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v % 2 != 0 || v > MAX_DIMENSION_PX {
                return bad(field, v, "must be even and in 2..=8192");
            }
        }
        if self.fps == 0 || self.fps > MAX_FPS {
            return bad("fps", self.fps, "must be in 1..=1000");
        }
        if self.crf > MAX_CRF {
            return bad("crf", self.crf.into(), "must be in 0..=63");
        }
        Ok(())
    }
}

/// What a finished segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Frames encoded (packets written).
    pub frames: u64,
    /// Size of the MP4 file in bytes.
    pub bytes: u64,
}

/// A swscale context that may move to another thread.
struct Scaler(scaling::Context);

// SAFETY: an SwsContext has no thread affinity; it only must not be used
// from two threads at once, which `&mut self` access (no `Sync`, no shared
// handle) already rules out. ffmpeg-next leaves it `!Send` only because it
// wraps a raw pointer. This lets a node build a segment on one thread and
// finish it on another.
unsafe impl Send for Scaler {}

/// An opened encoder and its frame conversion, without any container.
struct OpenEncoder {
    encoder: ff::encoder::Video,
    scaler: Scaler,
    rgba: ff::frame::Video,
    converted: ff::frame::Video,
    width: u32,
    height: u32,
}

impl OpenEncoder {
    fn open(
        settings: &EncodeSettings,
        global_header: bool,
        path: &Path,
    ) -> Result<Self, EncodeError> {
        init_ffmpeg();
        let codec = ff::encoder::find_by_name(&settings.codec)
            .ok_or_else(|| EncodeError::UnknownEncoder(settings.codec.clone()))?;
        let format = pick_pixel_format(codec)
            .ok_or_else(|| EncodeError::NoPixelFormat(settings.codec.clone()))?;
        let mut encoder = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ff_err(
                format!("creating encoder {} for", settings.codec),
                path,
            ))?;
        encoder.set_width(settings.width);
        encoder.set_height(settings.height);
        encoder.set_format(format);
        encoder.set_time_base(ff::Rational::new(1, settings.fps as i32));
        encoder.set_frame_rate(Some(ff::Rational::new(settings.fps as i32, 1)));
        encoder.set_gop(settings.fps * KEYFRAME_INTERVAL_S);
        encoder.set_max_b_frames(0);
        // swscale's default RGB->YUV matrix is BT.601 limited range; say so
        // in the stream so players convert back with the same matrix.
        encoder.set_colorspace(ff::color::Space::SMPTE170M);
        encoder.set_color_range(ff::color::Range::MPEG);
        if global_header {
            encoder.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let opened = encoder
            .open_as_with(codec, codec_options(settings))
            .map_err(ff_err(
                format!("opening encoder {} for", settings.codec),
                path,
            ))?;
        let scaler = scaling::Context::get(
            Pixel::RGBA,
            settings.width,
            settings.height,
            format,
            settings.width,
            settings.height,
            CONVERT_FLAGS,
        )
        .map_err(ff_err("creating RGBA converter for", path))?;
        Ok(OpenEncoder {
            encoder: opened,
            scaler: Scaler(scaler),
            rgba: ff::frame::Video::new(Pixel::RGBA, settings.width, settings.height),
            converted: ff::frame::Video::new(format, settings.width, settings.height),
            width: settings.width,
            height: settings.height,
        })
    }

    /// Converts and sends one frame with presentation time `pts` (in
    /// `1/fps` units).
    fn send(&mut self, rgba: &[u8], pts: i64, path: &Path) -> Result<(), EncodeError> {
        let want = self.width as usize * self.height as usize * 4;
        if rgba.len() != want {
            return Err(EncodeError::FrameSize {
                frame: pts as u64,
                got: rgba.len(),
                want,
                width: self.width,
                height: self.height,
            });
        }
        let row = self.width as usize * 4;
        let stride = self.rgba.stride(0);
        let dst = self.rgba.data_mut(0);
        for (y, src_row) in rgba.chunks_exact(row).enumerate() {
            dst[y * stride..y * stride + row].copy_from_slice(src_row);
        }
        self.scaler
            .0
            .run(&self.rgba, &mut self.converted)
            .map_err(ff_err("converting RGBA for", path))?;
        self.converted.set_pts(Some(pts));
        self.encoder
            .send_frame(&self.converted)
            .map_err(ff_err("encoding a frame of", path))
    }
}

/// yuv420p when the encoder takes it (every software encoder here), else
/// nv12 (Quick Sync); encoders that only take hardware surfaces get `None`.
fn pick_pixel_format(codec: ff::Codec) -> Option<Pixel> {
    let video = codec.video().ok()?;
    let formats: Vec<Pixel> = match video.formats() {
        Some(f) => f.collect(),
        // No list means the encoder does not declare one; assume the
        // universal format and let open() be the judge.
        None => return Some(Pixel::YUV420P),
    };
    [Pixel::YUV420P, Pixel::NV12]
        .into_iter()
        .find(|p| formats.contains(p))
}

/// Per-encoder options that make segments stitchable (see the module doc).
fn codec_options(settings: &EncodeSettings) -> ff::Dictionary<'static> {
    let keyint = settings.fps * KEYFRAME_INTERVAL_S;
    let crf = settings.crf.to_string();
    let mut d = ff::Dictionary::new();
    match settings.codec.as_str() {
        "libx264" => {
            d.set("preset", &settings.preset);
            d.set("crf", &crf);
            d.set(
                "x264-params",
                &format!(
                    "keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:\
                     open-gop=0:stitchable=1:repeat-headers=1"
                ),
            );
        }
        "libx265" => {
            d.set("preset", &settings.preset);
            d.set("crf", &crf);
            d.set(
                "x265-params",
                &format!(
                    "keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:\
                     open-gop=0:repeat-headers=1:log-level=error"
                ),
            );
        }
        "libvpx-vp9" => {
            d.set("crf", &crf);
            d.set("b", "0");
            d.set("deadline", "realtime");
            d.set("cpu-used", "8");
        }
        "libaom-av1" => {
            d.set("crf", &crf);
            d.set("usage", "realtime");
            d.set("cpu-used", "8");
        }
        "libsvtav1" => {
            d.set("crf", &crf);
            d.set("preset", "12");
        }
        "h264_nvenc" | "hevc_nvenc" => {
            d.set("preset", "p4");
            d.set("rc", "constqp");
            d.set("qp", &crf);
            d.set("forced-idr", "1");
        }
        "mpeg4" => {
            // mpeg4 has no CRF; a fixed quantiser is its constant quality.
            d.set("qscale", "3");
        }
        _ => {}
    }
    d
}

/// Encodes RGBA frames into one MP4 segment.
pub struct SegmentEncoder {
    path: PathBuf,
    output: ff::format::context::Output,
    enc: OpenEncoder,
    encoder_time_base: ff::Rational,
    stream_time_base: ff::Rational,
    frames_in: u64,
    packets_out: u64,
}

impl std::fmt::Debug for SegmentEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentEncoder")
            .field("path", &self.path)
            .field("frames_in", &self.frames_in)
            .field("packets_out", &self.packets_out)
            .finish_non_exhaustive()
    }
}

impl SegmentEncoder {
    /// Creates the MP4 file at `path` (whatever its extension) and opens the
    /// encoder. The first frame pushed gets pts 0.
    pub fn create(path: &Path, settings: &EncodeSettings) -> Result<SegmentEncoder, EncodeError> {
        settings.check()?;
        init_ffmpeg();
        let mut output = ff::format::output_as(&path, "mp4").map_err(ff_err("creating", path))?;
        let global_header = output
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let enc = OpenEncoder::open(settings, global_header, path)?;
        {
            let mut stream = output
                .add_stream(ff::encoder::find_by_name(&settings.codec))
                .map_err(ff_err("adding a stream to", path))?;
            stream.set_parameters(&enc.encoder);
            stream.set_time_base(ff::Rational::new(1, settings.fps as i32));
            stream.set_rate(ff::Rational::new(settings.fps as i32, 1));
            stream.set_avg_frame_rate(ff::Rational::new(settings.fps as i32, 1));
        }
        output
            .write_header()
            .map_err(ff_err("writing the header of", path))?;
        // The muxer may pick its own time base (MP4 prefers a finer one);
        // read it back after the header.
        let stream_time_base = output
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(ff::Rational::new(1, settings.fps as i32));
        Ok(SegmentEncoder {
            path: path.to_path_buf(),
            output,
            encoder_time_base: ff::Rational::new(1, settings.fps as i32),
            stream_time_base,
            enc,
            frames_in: 0,
            packets_out: 0,
        })
    }

    /// Converts one tightly packed RGBA frame to the encoder's format and
    /// encodes it.
    pub fn push_rgba(&mut self, rgba: &[u8]) -> Result<(), EncodeError> {
        self.enc.send(rgba, self.frames_in as i64, &self.path)?;
        self.frames_in += 1;
        self.drain()
    }

    /// Writes every packet the encoder has ready.
    fn drain(&mut self) -> Result<(), EncodeError> {
        let mut packet = ff::Packet::empty();
        while self.enc.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // One frame lasts one tick of 1/fps; MP4 needs durations to
            // compute the last sample's length.
            packet.set_duration(1);
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet.set_position(-1);
            packet
                .write_interleaved(&mut self.output)
                .map_err(ff_err("writing a packet to", &self.path))?;
            self.packets_out += 1;
        }
        Ok(())
    }

    /// Flushes the encoder, writes the trailer and reports the segment.
    pub fn finish(mut self) -> Result<SegmentInfo, EncodeError> {
        self.enc
            .encoder
            .send_eof()
            .map_err(ff_err("flushing the encoder of", &self.path))?;
        self.drain()?;
        self.output
            .write_trailer()
            .map_err(ff_err("writing the trailer of", &self.path))?;
        let bytes = std::fs::metadata(&self.path)
            .map_err(|source| EncodeError::Io {
                path: self.path.clone(),
                source,
            })?
            .len();
        Ok(SegmentInfo {
            frames: self.packets_out,
            bytes,
        })
    }
}

/// The encoders from [`CANDIDATE_ENCODERS`] that really work here: each one
/// encodes a tiny 64x64, two-frame clip in memory. Being listed by FFmpeg is
/// not enough (NVENC needs the driver and an engine, VAAPI a render node).
pub fn probe_encoders() -> Vec<String> {
    init_ffmpeg();
    CANDIDATE_ENCODERS
        .iter()
        .filter(|name| probe_one(name).is_ok())
        .map(|name| name.to_string())
        .collect()
}

fn probe_one(name: &str) -> Result<(), EncodeError> {
    let settings = EncodeSettings {
        codec: name.to_string(),
        crf: 30,
        preset: "ultrafast".to_string(),
        ..EncodeSettings::new(PROBE_SIZE_PX, PROBE_SIZE_PX, 25)
    };
    let path = Path::new("<probe>");
    let mut enc = OpenEncoder::open(&settings, false, path)?;
    let frame = vec![128u8; (PROBE_SIZE_PX * PROBE_SIZE_PX * 4) as usize];
    let mut packets = 0u64;
    let mut packet = ff::Packet::empty();
    for pts in 0..PROBE_FRAMES {
        enc.send(&frame, pts as i64, path)?;
        while enc.encoder.receive_packet(&mut packet).is_ok() {
            packets += 1;
        }
    }
    enc.encoder
        .send_eof()
        .map_err(ff_err(format!("flushing probe of {name} for"), path))?;
    while enc.encoder.receive_packet(&mut packet).is_ok() {
        packets += 1;
    }
    if packets == 0 {
        return Err(EncodeError::Ffmpeg {
            op: format!("probe of {name} produced no packets for"),
            path: path.to_path_buf(),
            source: ff::Error::InvalidData,
        });
    }
    Ok(())
}

/// A video read back by [`decode_rgba_frames`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedVideo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The stream's average frame rate.
    pub fps: f64,
    /// Every frame decoded, counted.
    pub frame_count: u64,
    /// `(index, tightly packed RGBA)` of the frames asked for, in order.
    pub frames: Vec<(u64, Vec<u8>)>,
}

/// Decodes the whole first video stream of `path`, counting every frame, and
/// returns as RGBA the frames whose 0-based index is in `wanted`.
pub fn decode_rgba_frames(path: &Path, wanted: &[u64]) -> Result<DecodedVideo, EncodeError> {
    init_ffmpeg();
    let mut input = ff::format::input(&path).map_err(ff_err("opening", path))?;
    let (index, rate, params) = {
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| EncodeError::NoVideoStream(path.to_path_buf()))?;
        (stream.index(), stream.avg_frame_rate(), stream.parameters())
    };
    let mut decoder = ff::codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .map_err(ff_err("opening a decoder for", path))?;
    let (width, height) = (decoder.width(), decoder.height());
    let mut scaler: Option<scaling::Context> = None;
    let mut frames = Vec::new();
    let mut frame_count = 0u64;
    let mut decoded = ff::frame::Video::empty();
    let mut rgba = ff::frame::Video::empty();

    let mut take = |decoder: &mut ff::decoder::Video| -> Result<(), EncodeError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            if wanted.contains(&frame_count) {
                if scaler.is_none() {
                    scaler = Some(
                        scaling::Context::get(
                            decoded.format(),
                            width,
                            height,
                            Pixel::RGBA,
                            width,
                            height,
                            CONVERT_FLAGS,
                        )
                        .map_err(ff_err("creating an RGBA converter for", path))?,
                    );
                }
                if let Some(s) = scaler.as_mut() {
                    s.run(&decoded, &mut rgba)
                        .map_err(ff_err("converting a frame of", path))?;
                }
                let row = width as usize * 4;
                let stride = rgba.stride(0);
                let data = rgba.data(0);
                let mut out = Vec::with_capacity(row * height as usize);
                for y in 0..height as usize {
                    out.extend_from_slice(&data[y * stride..y * stride + row]);
                }
                frames.push((frame_count, out));
            }
            frame_count += 1;
        }
        Ok(())
    };

    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        decoder
            .send_packet(&packet)
            .map_err(ff_err("decoding a packet of", path))?;
        take(&mut decoder)?;
    }
    decoder
        .send_eof()
        .map_err(ff_err("flushing the decoder of", path))?;
    take(&mut decoder)?;

    let fps = if rate.denominator() != 0 {
        f64::from(rate.numerator()) / f64::from(rate.denominator())
    } else {
        0.0
    };
    Ok(DecodedVideo {
        width,
        height,
        fps,
        frame_count,
        frames,
    })
}

/// Peak signal-to-noise ratio in dB over the R, G and B channels of two
/// equally sized RGBA buffers (alpha ignored); infinite when identical.
///
/// # Panics
/// If the buffers differ in length or are not whole RGBA pixels: comparing
/// different sizes is a bug in the caller, not a measurement.
pub fn psnr_rgb(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "psnr_rgb: buffers differ in length");
    assert_eq!(a.len() % 4, 0, "psnr_rgb: not whole RGBA pixels");
    let mut sum_sq = 0u64;
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for c in 0..3 {
            let d = i64::from(pa[c]) - i64::from(pb[c]);
            sum_sq += (d * d) as u64;
        }
    }
    let samples = (a.len() / 4 * 3) as f64;
    if sum_sq == 0 || samples == 0.0 {
        return f64::INFINITY;
    }
    let mse = sum_sq as f64 / samples;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}
