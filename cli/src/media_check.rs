//! Checks on a finished video, by decoding it: how many frames it really
//! holds, how long it lasts, and how close each frame is to the same frame
//! of a reference video (PSNR over the Y, U and V planes).
//!
//! The chaos test and the `chaos` benchmark compare a job rendered under
//! faults with the same job rendered without them. Both videos are decoded
//! in lockstep, one frame of each in memory at a time, so a long 720p job
//! costs a few megabytes, not gigabytes.
//!
//! A PSNR threshold alone is only a proof if a misplaced frame would fail
//! it, and consecutive frames of slow motion can score above any sensible
//! threshold; so each frame is also compared with the reference's
//! neighbouring frames, and [`Comparison::misplaced_frames`] lists those
//! that are no closer to their own.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

/// Why a video could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// FFmpeg refused an operation on the file.
    #[error("{op} {path}: {source}")]
    Ffmpeg {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// FFmpeg's error.
        source: ff::Error,
    },
    /// The file has no video stream.
    #[error("{0}: no video stream")]
    NoVideo(PathBuf),
    /// The two videos cannot be compared sample by sample.
    #[error("{ours} is {ours_w}x{ours_h} but the reference {reference} is {ref_w}x{ref_h}")]
    SizeMismatch {
        /// The video checked.
        ours: PathBuf,
        /// Its width.
        ours_w: u32,
        /// Its height.
        ours_h: u32,
        /// The reference.
        reference: PathBuf,
        /// Its width.
        ref_w: u32,
        /// Its height.
        ref_h: u32,
    },
}

fn ff_err(op: &'static str, path: &Path) -> impl FnOnce(ff::Error) -> MediaError {
    let path = path.to_path_buf();
    move |source| MediaError::Ffmpeg { op, path, source }
}

static FFMPEG_INIT: Once = Once::new();

fn init_ffmpeg() {
    FFMPEG_INIT.call_once(|| {
        // Only registers formats on old FFmpeg; later calls report any real
        // problem with the file at hand.
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}

/// What decoding a whole video found.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoFacts {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames decoded, counted one by one (not the container's claim).
    pub frames: u64,
    /// The stream's average frame rate.
    pub fps: f64,
    /// The video stream's duration as the container states it, seconds.
    pub duration_s: f64,
}

/// One decoded frame as three tightly packed 4:2:0 planes.
#[derive(Debug, Clone)]
struct Planes {
    /// Y, U, V, each `width x height` of its own plane, rows without padding.
    data: [Vec<u8>; 3],
}

/// A video decoded one frame at a time, converted to 4:2:0 if it is not.
struct FrameReader {
    path: PathBuf,
    input: ff::format::context::Input,
    decoder: ff::decoder::Video,
    stream: usize,
    width: u32,
    height: u32,
    fps: f64,
    duration_s: f64,
    scaler: Option<scaling::Context>,
    decoded: ff::frame::Video,
    converted: ff::frame::Video,
    eof_sent: bool,
    frames: u64,
}

impl FrameReader {
    fn open(path: &Path) -> Result<FrameReader, MediaError> {
        init_ffmpeg();
        let input = ff::format::input(&path).map_err(ff_err("opening", path))?;
        let (stream, rate, duration_s, params) = {
            let s = input
                .streams()
                .best(ff::media::Type::Video)
                .ok_or_else(|| MediaError::NoVideo(path.to_path_buf()))?;
            let tb = s.time_base();
            let duration_s = if s.duration() > 0 && tb.denominator() != 0 {
                s.duration() as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator())
            } else {
                // The stream does not say; the container's duration is in
                // AV_TIME_BASE (microsecond) units.
                input.duration().max(0) as f64 / 1e6
            };
            (s.index(), s.avg_frame_rate(), duration_s, s.parameters())
        };
        let decoder = ff::codec::context::Context::from_parameters(params)
            .and_then(|c| c.decoder().video())
            .map_err(ff_err("opening a decoder for", path))?;
        let fps = if rate.denominator() != 0 {
            f64::from(rate.numerator()) / f64::from(rate.denominator())
        } else {
            0.0
        };
        Ok(FrameReader {
            path: path.to_path_buf(),
            width: decoder.width(),
            height: decoder.height(),
            input,
            decoder,
            stream,
            fps,
            duration_s,
            scaler: None,
            decoded: ff::frame::Video::empty(),
            converted: ff::frame::Video::empty(),
            eof_sent: false,
            frames: 0,
        })
    }

    /// The next frame in presentation order, or `None` at the end.
    fn next_frame(&mut self) -> Result<Option<Planes>, MediaError> {
        loop {
            if self.decoder.receive_frame(&mut self.decoded).is_ok() {
                self.frames += 1;
                return self.planes().map(Some);
            }
            if self.eof_sent {
                return Ok(None);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() == self.stream => self
                    .decoder
                    .send_packet(&packet)
                    .map_err(ff_err("decoding a packet of", &self.path))?,
                Ok(()) => {}
                Err(ff::Error::Eof) => {
                    self.decoder
                        .send_eof()
                        .map_err(ff_err("flushing the decoder of", &self.path))?;
                    self.eof_sent = true;
                }
                Err(e) => return Err(ff_err("reading", &self.path)(e)),
            }
        }
    }

    /// The frame just decoded, as packed 4:2:0 planes.
    fn planes(&mut self) -> Result<Planes, MediaError> {
        let frame = if self.decoded.format() == Pixel::YUV420P {
            &self.decoded
        } else {
            if self.scaler.is_none() {
                self.scaler = Some(
                    scaling::Context::get(
                        self.decoded.format(),
                        self.width,
                        self.height,
                        Pixel::YUV420P,
                        self.width,
                        self.height,
                        scaling::Flags::BILINEAR,
                    )
                    .map_err(ff_err("creating a 4:2:0 converter for", &self.path))?,
                );
            }
            if let Some(s) = self.scaler.as_mut() {
                s.run(&self.decoded, &mut self.converted)
                    .map_err(ff_err("converting a frame of", &self.path))?;
            }
            &self.converted
        };
        let plane = |i: usize| {
            let (w, h) = (
                frame.plane_width(i) as usize,
                frame.plane_height(i) as usize,
            );
            let (stride, data) = (frame.stride(i), frame.data(i));
            let mut out = Vec::with_capacity(w * h);
            for y in 0..h {
                out.extend_from_slice(&data[y * stride..y * stride + w]);
            }
            out
        };
        Ok(Planes {
            data: [plane(0), plane(1), plane(2)],
        })
    }

    fn facts(&self) -> VideoFacts {
        VideoFacts {
            width: self.width,
            height: self.height,
            frames: self.frames,
            fps: self.fps,
            duration_s: self.duration_s,
        }
    }
}

/// Decodes the whole first video stream of `path`, counting its frames.
pub fn facts(path: &Path) -> Result<VideoFacts, MediaError> {
    let mut r = FrameReader::open(path)?;
    while r.next_frame()?.is_some() {}
    Ok(r.facts())
}

/// Peak signal-to-noise ratio in dB between two frames over all samples of
/// their Y, U and V planes (4:2:0, so luma weighs four times each chroma
/// plane); infinite when identical.
fn psnr_yuv(a: &Planes, b: &Planes) -> f64 {
    let mut sum_sq = 0u64;
    let mut samples = 0u64;
    for (pa, pb) in a.data.iter().zip(&b.data) {
        debug_assert_eq!(pa.len(), pb.len(), "frames of equal size");
        for (x, y) in pa.iter().zip(pb) {
            let d = u64::from(x.abs_diff(*y));
            sum_sq += d * d;
        }
        samples += pa.len() as u64;
    }
    if sum_sq == 0 || samples == 0 {
        return f64::INFINITY;
    }
    let mse = sum_sq as f64 / samples as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// A video decoded against a reference, frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The video checked.
    pub ours: VideoFacts,
    /// The reference.
    pub reference: VideoFacts,
    /// PSNR of each frame both videos have against the reference frame of
    /// the same index, in order, dB.
    pub psnr_db: Vec<f64>,
    /// The lowest of them (infinite when there is none or all are equal).
    pub psnr_min_db: f64,
    /// 0-based index of the frame with the lowest PSNR.
    pub worst_frame: u64,
    /// Frames of ours (0-based) that are no closer to the reference frame
    /// of their index than to the one before or after it: a frame out of
    /// place, whatever the PSNR threshold.
    pub misplaced_frames: Vec<u64>,
    /// The smallest margin, in dB, by which a frame matched its own
    /// reference frame better than a neighbouring one (infinite with fewer
    /// than two frames).
    pub alignment_margin_min_db: f64,
}

/// Decodes `ours` and `reference` side by side and compares each frame with
/// the reference frame of the same index, and with its neighbours (so a
/// frame shifted by one is caught even where consecutive frames are alike).
/// Frames of the longer video are still decoded and counted, so both frame
/// counts are exact.
pub fn compare(ours: &Path, reference: &Path) -> Result<Comparison, MediaError> {
    let mut a = FrameReader::open(ours)?;
    let mut b = FrameReader::open(reference)?;
    if (a.width, a.height) != (b.width, b.height) {
        return Err(MediaError::SizeMismatch {
            ours: ours.to_path_buf(),
            ours_w: a.width,
            ours_h: a.height,
            reference: reference.to_path_buf(),
            ref_w: b.width,
            ref_h: b.height,
        });
    }
    let mut psnr_db: Vec<f64> = Vec::new();
    // For each frame, the best PSNR of a cross comparison with a neighbour.
    let mut best_neighbour_db: Vec<f64> = Vec::new();
    let mut previous: Option<(Planes, Planes)> = None;
    let (mut ours_ended, mut reference_ended) = (false, false);
    while !(ours_ended && reference_ended) {
        let fa = if ours_ended { None } else { a.next_frame()? };
        let fb = if reference_ended {
            None
        } else {
            b.next_frame()?
        };
        ours_ended |= fa.is_none();
        reference_ended |= fb.is_none();
        match (fa, fb) {
            (Some(fa), Some(fb)) => {
                psnr_db.push(psnr_yuv(&fa, &fb));
                best_neighbour_db.push(f64::NEG_INFINITY);
                if let Some((pa, pb)) = &previous {
                    let k = psnr_db.len() - 1;
                    let this_vs_previous_reference = psnr_yuv(&fa, pb);
                    let previous_vs_this_reference = psnr_yuv(pa, &fb);
                    best_neighbour_db[k] = best_neighbour_db[k].max(this_vs_previous_reference);
                    best_neighbour_db[k - 1] =
                        best_neighbour_db[k - 1].max(previous_vs_this_reference);
                }
                previous = Some((fa, fb));
            }
            // Ours ended first: its last frame still meets the reference
            // frame after it (a dropped frame shows there).
            (None, Some(fb)) => {
                if let Some((pa, _)) = previous.take() {
                    let k = psnr_db.len() - 1;
                    best_neighbour_db[k] = best_neighbour_db[k].max(psnr_yuv(&pa, &fb));
                }
            }
            _ => {}
        }
    }
    let (worst_frame, psnr_min_db) =
        psnr_db
            .iter()
            .enumerate()
            .fold((0u64, f64::INFINITY), |(wi, wv), (i, v)| {
                if *v < wv {
                    (i as u64, *v)
                } else {
                    (wi, wv)
                }
            });
    let mut misplaced_frames = Vec::new();
    let mut alignment_margin_min_db = f64::INFINITY;
    for (k, (same, neighbour)) in psnr_db.iter().zip(&best_neighbour_db).enumerate() {
        // Two identical frames give infinity on both sides: no margin.
        let margin = if same.is_infinite() && neighbour.is_infinite() && *neighbour > 0.0 {
            0.0
        } else {
            same - neighbour
        };
        alignment_margin_min_db = alignment_margin_min_db.min(margin);
        if margin <= 0.0 {
            misplaced_frames.push(k as u64);
        }
    }
    Ok(Comparison {
        ours: a.facts(),
        reference: b.facts(),
        psnr_db,
        psnr_min_db,
        worst_frame,
        misplaced_frames,
        alignment_margin_min_db,
    })
}
