//! A finished job's artifacts as the REST API lists them: the joined output,
//! a poster frame taken from its middle, and the SHA-256 of each.
//!
//! # Layout
//! - [`sha256_file`]: streaming checksum of one file.
//! - [`make_poster`]: decode the middle frame of a video, scale it, encode it
//!   as PNG with FFmpeg and write it atomically.
//! - [`describe`]: the job's artifact list, computing the poster and the
//!   checksums once and caching them in `cache_dir`.
//!
//! # The cache
//! Each artifact `<name>` has a sidecar `<name>.sha256` in `cache_dir` that
//! holds its checksum together with the size and mtime the file had when it
//! was hashed (see [`SIDECAR_SUFFIX`]). A sidecar is trusted while the file's
//! size and mtime still match it, so a second listing reads two small files
//! instead of hashing a film. The poster's sidecar also names the checksum of
//! the output it was made from, so a replaced output gets a new poster.
//!
//! # Concurrency and crashes
//! Every file this module writes (poster, sidecars) is written under a
//! temporary name unique to the writer, fsynced, and renamed into place, so a
//! reader sees either the old file or a whole new one. Two requests listing
//! the same job at once may both compute the poster and the checksums; the
//! last rename wins and both results are whole. A sidecar that does not parse
//! or does not match its file is simply recomputed.
//!
//! Everything here blocks (file I/O, FFmpeg); async callers run it on a
//! blocking thread.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context as _};
use ff::format::Pixel;
use ff::software::scaling;
use ff::Rescale;
use ffmpeg_next as ff;
use sha2::{Digest, Sha256};

/// Name under which the job's output is listed.
pub const OUTPUT_NAME: &str = "output.mp4";
/// Name of the poster frame, listed and stored in the cache directory.
pub const POSTER_NAME: &str = "poster.png";
/// Suffix of an artifact's checksum sidecar in the cache directory.
pub const SIDECAR_SUFFIX: &str = ".sha256";
/// Widest poster [`describe`] makes, in pixels: enough for a preview on a
/// large screen, small enough that the PNG stays a few hundred KiB.
pub const POSTER_MAX_WIDTH_PX: u32 = 1280;
/// Size of each read while hashing: large reads keep the syscall count low
/// on multi-GiB outputs, and 1 MiB of buffer per request is cheap.
pub const HASH_CHUNK_BYTES: usize = 1 << 20;
/// Most frames [`make_poster`] decodes looking for the middle one. Drover's
/// outputs have a keyframe every 2 s, so the seek lands at most a few hundred
/// frames early; a foreign file with one keyframe at the start would instead
/// cost a decode of half the film. Past the limit the poster is the frame
/// reached, somewhat before the middle.
pub const MAX_POSTER_DECODE_FRAMES: u64 = 10_000;
/// Largest sidecar read: a real one is about 200 bytes, anything much bigger
/// is not ours and is recomputed rather than read into memory.
const MAX_SIDECAR_BYTES: u64 = 4096;
/// First line of a sidecar; a change of format changes it, so old sidecars
/// are recomputed instead of misread.
const SIDECAR_HEADER: &str = "drover-sha256-sidecar v1";
/// Content type of [`OUTPUT_NAME`].
const OUTPUT_CONTENT_TYPE: &str = "video/mp4";
/// Content type of [`POSTER_NAME`].
const POSTER_CONTENT_TYPE: &str = "image/png";

/// swscale flags for the poster: bicubic downscaling, with full chroma
/// resolution when expanding 4:2:0 to RGB so colour edges stay sharp.
const POSTER_SCALE_FLAGS: scaling::Flags = scaling::Flags::BICUBIC
    .union(scaling::Flags::ACCURATE_RND)
    .union(scaling::Flags::FULL_CHR_H_INT);

static FFMPEG_INIT: Once = Once::new();

fn init_ffmpeg() {
    FFMPEG_INIT.call_once(|| {
        // init only registers formats on old FFmpeg; failures surface with
        // more detail at the first real call.
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}

/// The poster written by [`make_poster`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosterInfo {
    /// Width of the PNG in pixels (even).
    pub width: u32,
    /// Height of the PNG in pixels (even).
    pub height: u32,
    /// Presentation time of the frame shown, in seconds from the start of
    /// the video.
    pub frame_time_s: f64,
    /// Size of the PNG file in bytes.
    pub bytes: u64,
}

/// One downloadable artifact of a finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Name shown to users: [`OUTPUT_NAME`] or [`POSTER_NAME`].
    pub name: String,
    /// Where the file is on the coordinator's disk.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// MIME type to serve it with.
    pub content_type: &'static str,
}

/// SHA-256 of the file at `path`, lowercase hex, read in
/// [`HASH_CHUNK_BYTES`] pieces so memory stays flat whatever the size. The
/// error's message names the file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(named)?;
    sha256_reader(&mut file).map_err(named)
}

fn sha256_reader(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes a PNG of the frame in the middle of `video` to `png_out`.
///
/// Seeks to about half the video's duration and decodes forward to the first
/// frame at or after that time (the last frame when none is, as in a
/// one-frame video). The frame is scaled to RGB24 at most `max_width` wide,
/// keeping its display aspect ratio with even dimensions (never upscaled),
/// encoded with FFmpeg's PNG encoder and written atomically: to a temporary
/// file next to `png_out`, fsynced, then renamed over it.
///
/// Errors name `video` when it cannot be opened, has no video stream or
/// cannot be decoded, and `png_out` when it cannot be written.
pub fn make_poster(video: &Path, png_out: &Path, max_width: u32) -> anyhow::Result<PosterInfo> {
    if max_width < 2 {
        bail!(
            "poster of {}: a maximum width of {max_width} px is below the 2 px minimum",
            video.display()
        );
    }
    init_ffmpeg();
    let (frame, frame_time_s) = decode_middle_frame(video)?;
    let (width, height) = poster_size(
        frame.width(),
        frame.height(),
        frame.aspect_ratio(),
        max_width,
    );
    let rgb = scale_to_rgb(&frame, width, height).with_context(|| {
        format!(
            "scaling the middle frame of {} to {width}x{height} RGB",
            video.display()
        )
    })?;
    let png = encode_png(rgb)
        .with_context(|| format!("encoding the poster of {} as PNG", video.display()))?;
    write_atomically(png_out, &png)
        .with_context(|| format!("writing the poster {}", png_out.display()))?;
    Ok(PosterInfo {
        width,
        height,
        frame_time_s,
        bytes: png.len() as u64,
    })
}

/// The frame at or just after the middle of `video`'s first video stream,
/// and its time in seconds from the stream's start.
fn decode_middle_frame(video: &Path) -> anyhow::Result<(ff::frame::Video, f64)> {
    let name = video.display();
    let open = || ff::format::input(&video).with_context(|| format!("opening video {name}"));
    let mut input = open()?;
    let (index, time_base, params, start_ts, mut duration_ts) = {
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| anyhow!("{name} has no video stream"))?;
        let start = match stream.start_time() {
            ff::ffi::AV_NOPTS_VALUE => 0,
            t => t,
        };
        (
            stream.index(),
            stream.time_base(),
            stream.parameters(),
            start,
            stream.duration(),
        )
    };
    if duration_ts <= 0 {
        // Some containers only know the duration of the whole file.
        let file_duration_us = input.duration();
        if file_duration_us > 0 {
            duration_ts = file_duration_us.rescale(ff::rescale::TIME_BASE, time_base);
        }
    }
    // With no known duration the first frame is the best guess there is.
    let target_ts = (duration_ts > 0).then(|| start_ts + duration_ts / 2);
    let mut decoder = ff::codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .with_context(|| format!("opening a decoder for {name}"))?;

    if let Some(target) = target_ts {
        let target_us = target.rescale(time_base, ff::rescale::TIME_BASE);
        // The latest keyframe at or before the target; decoding forward
        // from there reaches the target frame.
        if let Err(e) = input.seek(target_us, ..target_us) {
            // A file without a seek index: decode from the start instead,
            // on a fresh reader since a failed seek may leave it anywhere.
            tracing::debug!(video = %name, error = %e, "poster: seek failed, decoding from the start");
            input = open()?;
        }
    }

    let mut decoded = ff::frame::Video::empty();
    // The last frame before the target, kept for videos that end before it.
    let mut last: Option<(ff::frame::Video, Option<i64>)> = None;
    let mut chosen: Option<(ff::frame::Video, Option<i64>)> = None;
    let mut frames = 0u64;
    let mut eof_sent = false;
    let mut packets = input.packets();
    'decode: loop {
        while decoder.receive_frame(&mut decoded).is_ok() {
            frames += 1;
            let ts = decoded.timestamp().or(decoded.pts());
            let reached = match (ts, target_ts) {
                (Some(ts), Some(target)) => ts >= target,
                // Without a target or a timestamp there is nothing to wait
                // for: this frame is as good as any later one.
                _ => true,
            };
            let frame = std::mem::replace(&mut decoded, ff::frame::Video::empty());
            if reached || frames >= MAX_POSTER_DECODE_FRAMES {
                chosen = Some((frame, ts));
                break 'decode;
            }
            last = Some((frame, ts));
        }
        if eof_sent {
            break;
        }
        match packets.by_ref().find(|(stream, _)| stream.index() == index) {
            Some((_, packet)) => decoder
                .send_packet(&packet)
                .with_context(|| format!("decoding a packet of {name}"))?,
            None => {
                decoder
                    .send_eof()
                    .with_context(|| format!("flushing the decoder of {name}"))?;
                eof_sent = true;
            }
        }
    }
    let (frame, ts) = chosen
        .or(last)
        .ok_or_else(|| anyhow!("{name}: no frame of its video stream could be decoded"))?;
    // A frame without a timestamp is reported at the time asked for.
    let frame_ts = ts.or(target_ts).unwrap_or(start_ts);
    let frame_time_s = (frame_ts - start_ts) as f64 * f64::from(time_base.numerator())
        / f64::from(time_base.denominator()).max(1.0);
    Ok((frame, frame_time_s))
}

/// Poster size for a `src_width` x `src_height` frame with sample aspect
/// ratio `sar` (0/x when unknown, meaning square pixels): the display width
/// capped at `max_width`, the height that keeps the display aspect ratio,
/// both rounded to even numbers of at least 2.
fn poster_size(src_width: u32, src_height: u32, sar: ff::Rational, max_width: u32) -> (u32, u32) {
    let display_width = if sar.numerator() > 0 && sar.denominator() > 0 {
        f64::from(src_width) * f64::from(sar.numerator()) / f64::from(sar.denominator())
    } else {
        f64::from(src_width)
    };
    let display_width = display_width.max(1.0);
    let width = ((display_width.min(f64::from(max_width)) as u32) & !1).max(2);
    let height_f = f64::from(src_height) * f64::from(width) / display_width;
    let height = (((height_f / 2.0).round() as u32) * 2).max(2);
    (width, height)
}

fn scale_to_rgb(
    frame: &ff::frame::Video,
    width: u32,
    height: u32,
) -> Result<ff::frame::Video, ff::Error> {
    let mut scaler = scaling::Context::get(
        frame.format(),
        frame.width(),
        frame.height(),
        Pixel::RGB24,
        width,
        height,
        POSTER_SCALE_FLAGS,
    )?;
    let mut rgb = ff::frame::Video::empty();
    scaler.run(frame, &mut rgb)?;
    Ok(rgb)
}

/// One RGB24 frame as a PNG file's bytes, by FFmpeg's PNG encoder.
fn encode_png(mut rgb: ff::frame::Video) -> anyhow::Result<Vec<u8>> {
    let codec = ff::encoder::find(ff::codec::Id::PNG)
        .ok_or_else(|| anyhow!("this FFmpeg build has no PNG encoder"))?;
    let mut encoder = ff::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()?;
    encoder.set_width(rgb.width());
    encoder.set_height(rgb.height());
    encoder.set_format(Pixel::RGB24);
    // Video encoders refuse to open without a time base; one image has no
    // timing to speak of.
    encoder.set_time_base(ff::Rational::new(1, 1));
    let mut encoder = encoder.open_as(codec)?;
    rgb.set_pts(Some(0));
    encoder.send_frame(&rgb)?;
    encoder.send_eof()?;
    let mut png = Vec::new();
    let mut packet = ff::Packet::empty();
    while encoder.receive_packet(&mut packet).is_ok() {
        if let Some(data) = packet.data() {
            png.extend_from_slice(data);
        }
    }
    if png.is_empty() {
        bail!("the PNG encoder produced no data");
    }
    Ok(png)
}

/// Lists the job's artifacts: its output `output` as [`OUTPUT_NAME`] and a
/// poster as [`POSTER_NAME`] (in `cache_dir`, at most
/// [`POSTER_MAX_WIDTH_PX`] wide), each with its size and SHA-256.
///
/// The poster and the checksums are computed the first time and cached in
/// `cache_dir` (created if missing; see the module doc); a checksum is
/// recomputed when its file's size or mtime no longer match its sidecar, and
/// the poster when the output's checksum is not the one it was made from.
/// Safe to call concurrently for the same job.
pub fn describe(output: &Path, cache_dir: &Path) -> anyhow::Result<Vec<ArtifactInfo>> {
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating the artifact cache {}", cache_dir.display()))?;

    let output_sidecar = sidecar_path(cache_dir, OUTPUT_NAME);
    let (output_stamp, output_sha) = match cached(output, &output_sidecar, None) {
        Some(hit) => hit,
        None => hash_and_record(output, &output_sidecar, None)?,
    };

    let poster = cache_dir.join(POSTER_NAME);
    let poster_sidecar = sidecar_path(cache_dir, POSTER_NAME);
    let (poster_stamp, poster_sha) = match cached(&poster, &poster_sidecar, Some(&output_sha)) {
        Some(hit) => hit,
        None => {
            make_poster(output, &poster, POSTER_MAX_WIDTH_PX)?;
            hash_and_record(&poster, &poster_sidecar, Some(&output_sha))?
        }
    };

    Ok(vec![
        ArtifactInfo {
            name: OUTPUT_NAME.to_string(),
            path: output.to_path_buf(),
            bytes: output_stamp.bytes,
            sha256: output_sha,
            content_type: OUTPUT_CONTENT_TYPE,
        },
        ArtifactInfo {
            name: POSTER_NAME.to_string(),
            path: poster,
            bytes: poster_stamp.bytes,
            sha256: poster_sha,
            content_type: POSTER_CONTENT_TYPE,
        },
    ])
}

fn sidecar_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!("{name}{SIDECAR_SUFFIX}"))
}

/// What identifies one version of a file for the cache: its size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    bytes: u64,
    /// Nanoseconds since the Unix epoch; negative before it.
    mtime_ns: i128,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> io::Result<FileStamp> {
        let mtime = meta.modified()?;
        let mtime_ns = match mtime.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        Ok(FileStamp {
            bytes: meta.len(),
            mtime_ns,
        })
    }
}

/// The content of a checksum sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sidecar {
    /// SHA-256 of the file, lowercase hex.
    sha256: String,
    /// The file as it was when hashed.
    stamp: FileStamp,
    /// For a derived artifact (the poster), the SHA-256 of what it was made
    /// from.
    source_sha256: Option<String>,
}

impl Sidecar {
    fn render(&self) -> String {
        let mut text = format!(
            "{SIDECAR_HEADER}\nsha256 {}\nbytes {}\nmtime_ns {}\n",
            self.sha256, self.stamp.bytes, self.stamp.mtime_ns
        );
        if let Some(source) = &self.source_sha256 {
            text.push_str(&format!("source_sha256 {source}\n"));
        }
        text
    }

    /// `None` for anything [`Sidecar::render`] would not have written: the
    /// caller then recomputes, so being strict costs a hash at worst.
    fn parse(text: &str) -> Option<Sidecar> {
        let mut lines = text.lines();
        if lines.next()? != SIDECAR_HEADER {
            return None;
        }
        let (mut sha256, mut bytes, mut mtime_ns, mut source_sha256) = (None, None, None, None);
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            let slot_was_empty = match key {
                "sha256" => sha256.replace(parse_hex_sha256(value)?).is_none(),
                "bytes" => bytes.replace(value.parse::<u64>().ok()?).is_none(),
                "mtime_ns" => mtime_ns.replace(value.parse::<i128>().ok()?).is_none(),
                "source_sha256" => source_sha256.replace(parse_hex_sha256(value)?).is_none(),
                _ => return None,
            };
            if !slot_was_empty {
                return None;
            }
        }
        Some(Sidecar {
            sha256: sha256?,
            stamp: FileStamp {
                bytes: bytes?,
                mtime_ns: mtime_ns?,
            },
            source_sha256,
        })
    }
}

fn parse_hex_sha256(value: &str) -> Option<String> {
    let ok = value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| value.to_string())
}

/// The cached checksum of `path`, if its sidecar matches the file as it is
/// now and, for a derived artifact, was made from `source_sha256`.
fn cached(path: &Path, sidecar: &Path, source_sha256: Option<&str>) -> Option<(FileStamp, String)> {
    let stamp = FileStamp::of(&fs::metadata(path).ok()?).ok()?;
    let mut text = String::new();
    File::open(sidecar)
        .ok()?
        .take(MAX_SIDECAR_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_SIDECAR_BYTES {
        return None;
    }
    let recorded = Sidecar::parse(&text)?;
    let fresh = recorded.stamp == stamp && recorded.source_sha256.as_deref() == source_sha256;
    fresh.then_some((stamp, recorded.sha256))
}

/// Hashes `path` and records the result in `sidecar`.
///
/// Size, mtime and content all come from one open handle, so a concurrent
/// rename over `path` (another request's poster) cannot pair one file's
/// stamp with another's checksum: the sidecar then describes the replaced
/// file, fails to match the new one, and is recomputed next time.
fn hash_and_record(
    path: &Path,
    sidecar: &Path,
    source_sha256: Option<&str>,
) -> anyhow::Result<(FileStamp, String)> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("opening {name}"))?;
    let stamp = |file: &File| {
        file.metadata()
            .and_then(|meta| FileStamp::of(&meta))
            .with_context(|| format!("reading the size and mtime of {name}"))
    };
    let before = stamp(&file)?;
    tracing::debug!(file = %name, bytes = before.bytes, "computing SHA-256");
    let sha256 = sha256_reader(&mut file).with_context(|| format!("reading {name}"))?;
    let after = stamp(&file)?;
    if before != after {
        bail!(
            "{name} changed while its checksum was computed ({} bytes before, {} after)",
            before.bytes,
            after.bytes
        );
    }
    let record = Sidecar {
        sha256: sha256.clone(),
        stamp: before,
        source_sha256: source_sha256.map(str::to_string),
    };
    write_atomically(sidecar, record.render().as_bytes())
        .with_context(|| format!("writing the checksum sidecar {}", sidecar.display()))?;
    Ok((before, sha256))
}

/// Distinguishes the temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that `path` is never seen half-written:
/// `path` + `.<pid>-<n>.tmp` is written, fsynced and renamed over `path`,
/// then the directory is fsynced so the rename survives a crash. The
/// temporary name is unique to this writer because two requests may write
/// the same file at once; a shared one would let them interleave.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name: OsString = path.as_os_str().to_os_string();
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: after a failed rename the temporary file is garbage;
        // after a successful one it is already gone.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    const WIDTH_PX: u32 = 320;
    const HEIGHT_PX: u32 = 180;
    const FPS: i32 = 24;

    /// Frame `i`'s solid colour. Red and green walk in steps of 4 and blue
    /// cycles through three far-apart levels, so every frame's colour is
    /// well away from its neighbours' even after lossy coding.
    fn frame_rgb(i: u64) -> [u8; 3] {
        [
            (20 + i * 4) as u8,
            (230 - i * 4) as u8,
            (20 + (i % 3) * 100) as u8,
        ]
    }

    /// Writes a real H.264 MP4 (libx264 when present, else mpeg4) of
    /// `frames` solid frames coloured by [`frame_rgb`], at 24 fps with a
    /// keyframe every 10 frames and x264's default B-frames, so finding the
    /// middle takes a seek to an earlier keyframe and reordered decoding.
    fn write_test_video(path: &Path, frames: u64) {
        init_ffmpeg();
        let codec_name = if ff::encoder::find_by_name("libx264").is_some() {
            "libx264"
        } else {
            "mpeg4"
        };
        let codec = ff::encoder::find_by_name(codec_name).expect("an H.264 or MPEG-4 encoder");
        let mut output = ff::format::output_as(&path, "mp4").expect("creating the test video");
        let global_header = output
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let encoder_time_base = ff::Rational::new(1, FPS);
        let mut encoder = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .expect("an encoder context");
        encoder.set_width(WIDTH_PX);
        encoder.set_height(HEIGHT_PX);
        encoder.set_format(Pixel::YUV420P);
        encoder.set_time_base(encoder_time_base);
        encoder.set_frame_rate(Some(ff::Rational::new(FPS, 1)));
        encoder.set_gop(10);
        if global_header {
            encoder.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let mut options = ff::Dictionary::new();
        options.set("preset", "veryfast");
        options.set("crf", "12");
        // Every frame here is a scene cut; without this x264 would make
        // each one a keyframe and the seek would land on the middle frame.
        options.set("x264-params", "scenecut=0");
        let mut encoder = encoder
            .open_as_with(codec, options)
            .expect("opening the encoder");
        {
            let mut stream = output.add_stream(codec).expect("adding a stream");
            stream.set_parameters(&encoder);
            stream.set_time_base(encoder_time_base);
        }
        output.write_header().expect("writing the header");
        let stream_time_base = output.stream(0).expect("the stream").time_base();

        let mut scaler = scaling::Context::get(
            Pixel::RGB24,
            WIDTH_PX,
            HEIGHT_PX,
            Pixel::YUV420P,
            WIDTH_PX,
            HEIGHT_PX,
            scaling::Flags::BICUBIC,
        )
        .expect("an RGB to YUV converter");
        let mut rgb = ff::frame::Video::new(Pixel::RGB24, WIDTH_PX, HEIGHT_PX);
        let mut yuv = ff::frame::Video::new(Pixel::YUV420P, WIDTH_PX, HEIGHT_PX);
        let drain = |encoder: &mut ff::encoder::Video, output: &mut ff::format::context::Output| {
            let mut packet = ff::Packet::empty();
            while encoder.receive_packet(&mut packet).is_ok() {
                packet.set_stream(0);
                packet.set_duration(1);
                packet.rescale_ts(encoder_time_base, stream_time_base);
                packet.write_interleaved(output).expect("writing a packet");
            }
        };
        for i in 0..frames {
            let colour = frame_rgb(i);
            let stride = rgb.stride(0);
            let data = rgb.data_mut(0);
            for y in 0..HEIGHT_PX as usize {
                for x in 0..WIDTH_PX as usize {
                    data[y * stride + x * 3..y * stride + x * 3 + 3].copy_from_slice(&colour);
                }
            }
            scaler.run(&rgb, &mut yuv).expect("converting a frame");
            yuv.set_pts(Some(i as i64));
            encoder.send_frame(&yuv).expect("encoding a frame");
            drain(&mut encoder, &mut output);
        }
        encoder.send_eof().expect("flushing the encoder");
        drain(&mut encoder, &mut output);
        output.write_trailer().expect("writing the trailer");
    }

    /// Width and height from a PNG's IHDR chunk, after checking the
    /// signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert!(
            bytes.len() > 24,
            "a PNG is longer than {} bytes",
            bytes.len()
        );
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR", "first chunk");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    /// The mean R, G, B of a PNG, decoded by FFmpeg.
    fn png_mean_rgb(path: &Path) -> [f64; 3] {
        let mut input = ff::format::input(&path).expect("opening the PNG");
        let (index, params) = {
            let stream = input
                .streams()
                .best(ff::media::Type::Video)
                .expect("an image stream");
            (stream.index(), stream.parameters())
        };
        let mut decoder = ff::codec::context::Context::from_parameters(params)
            .and_then(|c| c.decoder().video())
            .expect("a PNG decoder");
        let mut frame = ff::frame::Video::empty();
        let mut got = false;
        for (stream, packet) in input.packets() {
            if stream.index() == index {
                decoder.send_packet(&packet).expect("decoding the PNG");
                if decoder.receive_frame(&mut frame).is_ok() {
                    got = true;
                    break;
                }
            }
        }
        if !got {
            decoder.send_eof().expect("flushing the PNG decoder");
            decoder.receive_frame(&mut frame).expect("a decoded PNG");
        }
        assert_eq!(frame.format(), Pixel::RGB24, "the poster's pixel format");
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let stride = frame.stride(0);
        let data = frame.data(0);
        let mut sum = [0u64; 3];
        for y in 0..h {
            for px in data[y * stride..y * stride + w * 3].chunks_exact(3) {
                for c in 0..3 {
                    sum[c] += u64::from(px[c]);
                }
            }
        }
        let n = (w * h) as f64;
        [sum[0] as f64 / n, sum[1] as f64 / n, sum[2] as f64 / n]
    }

    /// The frame of `frames` whose colour is closest to `mean`, and the
    /// largest per-channel difference to it.
    fn nearest_frame(mean: [f64; 3], frames: u64) -> (u64, f64) {
        let diff = |i: u64| {
            let want = frame_rgb(i);
            (0..3)
                .map(|c| (mean[c] - f64::from(want[c])).abs())
                .fold(0.0, f64::max)
        };
        let best = (0..frames)
            .min_by(|&a, &b| diff(a).total_cmp(&diff(b)))
            .expect("at least one frame");
        (best, diff(best))
    }

    fn whole_file_sha256(path: &Path) -> String {
        hex::encode(Sha256::digest(
            fs::read(path).expect("reading the file whole"),
        ))
    }

    /// Names in `dir` ending in `.tmp`: left-behind temporary files.
    fn leftover_temps(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("listing the directory")
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn sha256_matches_a_digest_of_the_whole_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let check = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, content).expect("writing the test file");
            assert_eq!(
                sha256_file(&path).expect("hashing"),
                whole_file_sha256(&path),
                "{name}"
            );
        };
        check("empty", b"");
        check("short", b"drover");
        check("one chunk", &vec![7u8; HASH_CHUNK_BYTES]);
        // Crosses two chunk boundaries and ends mid-chunk.
        let mut state = 0x2545_f491u32;
        let noise: Vec<u8> = (0..HASH_CHUNK_BYTES * 5 / 2 + 3)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 24) as u8
            })
            .collect();
        check("two and a half chunks", &noise);

        let video = dir.path().join("video.mp4");
        write_test_video(&video, 48);
        assert_eq!(
            sha256_file(&video).expect("hashing the video"),
            whole_file_sha256(&video)
        );
        // The known digest of nothing, as a fixed point.
        assert_eq!(
            sha256_file(&dir.path().join("empty")).expect("hashing"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );

        let missing = dir.path().join("missing.bin");
        let err = sha256_file(&missing).expect_err("a missing file");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn poster_is_a_png_of_the_middle_frame() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let video = dir.path().join("video.mp4");
        write_test_video(&video, 48);
        let png = dir.path().join("poster.png");

        let info = make_poster(&video, &png, POSTER_MAX_WIDTH_PX).expect("making the poster");
        let bytes = fs::read(&png).expect("reading the poster");
        // Never upscaled: a 320 px video gives a 320 px poster.
        assert_eq!(png_size(&bytes), (WIDTH_PX, HEIGHT_PX));
        assert_eq!((info.width, info.height), (WIDTH_PX, HEIGHT_PX));
        assert_eq!(info.bytes, bytes.len() as u64);
        // 48 frames at 24 fps: the middle is frame 24, at 1 s.
        assert!(
            (info.frame_time_s - 1.0).abs() < 1e-6,
            "frame time {} s",
            info.frame_time_s
        );
        let mean = png_mean_rgb(&png);
        let (frame, off) = nearest_frame(mean, 48);
        assert_eq!(frame, 24, "the poster's colour {mean:?} is frame {frame}'s");
        assert!(
            off < 6.0,
            "the poster's colour {mean:?} is {off} off frame 24's"
        );
        assert_eq!(leftover_temps(dir.path()), Vec::<String>::new());

        // Writing again replaces the poster whole.
        make_poster(&video, &png, POSTER_MAX_WIDTH_PX).expect("making the poster again");
        assert_eq!(fs::read(&png).expect("reading the poster"), bytes);
    }

    #[test]
    fn poster_is_scaled_down_keeping_the_aspect_ratio() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let video = dir.path().join("video.mp4");
        write_test_video(&video, 48);
        let png = dir.path().join("small.png");
        let info = make_poster(&video, &png, 101).expect("making the poster");
        // 101 rounds down to an even 100; 180 * 100 / 320 = 56.25 rounds to 56.
        assert_eq!((info.width, info.height), (100, 56));
        assert_eq!(
            png_size(&fs::read(&png).expect("reading the poster")),
            (100, 56)
        );
        let (frame, _) = nearest_frame(png_mean_rgb(&png), 48);
        assert_eq!(frame, 24);
    }

    #[test]
    fn poster_of_a_one_frame_video_is_that_frame() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let video = dir.path().join("one.mp4");
        write_test_video(&video, 1);
        let png = dir.path().join("poster.png");
        let info = make_poster(&video, &png, POSTER_MAX_WIDTH_PX).expect("making the poster");
        assert_eq!(info.frame_time_s, 0.0);
        let (frame, off) = nearest_frame(png_mean_rgb(&png), 1);
        assert_eq!(frame, 0);
        assert!(off < 6.0, "{off} off frame 0's colour");
    }

    #[test]
    fn poster_size_keeps_the_display_aspect_ratio() {
        let check = |src: (u32, u32), sar: (i32, i32), max_width: u32, want: (u32, u32)| {
            let got = poster_size(src.0, src.1, ff::Rational::new(sar.0, sar.1), max_width);
            assert_eq!(got, want, "{src:?} sar {sar:?} max {max_width}");
        };
        check((320, 180), (0, 1), 1280, (320, 180));
        check((320, 180), (1, 1), 160, (160, 90));
        check((320, 180), (1, 1), 101, (100, 56));
        check((1920, 1080), (1, 1), 1280, (1280, 720));
        check((3840, 2160), (0, 1), 1280, (1280, 720));
        // Odd sources give even posters.
        check((321, 181), (1, 1), 1280, (320, 180));
        // Anamorphic: 720x576 with 16:15 pixels displays as 768x576.
        check((720, 576), (16, 15), 1280, (768, 576));
        check((720, 576), (16, 15), 384, (384, 288));
        // Never below 2x2.
        check((320, 180), (1, 1), 2, (2, 2));
        check((1, 1), (1, 1), 1280, (2, 2));
    }

    #[test]
    fn poster_errors_name_the_video() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let check = |name: &str, content: Option<&[u8]>, want: &str| {
            let video = dir.path().join(name);
            if let Some(content) = content {
                fs::write(&video, content).expect("writing the input");
            }
            let png = dir.path().join(format!("{name}.png"));
            let err = make_poster(&video, &png, POSTER_MAX_WIDTH_PX).expect_err(name);
            let message = format!("{err:#}");
            assert!(
                err.to_string().contains(&video.display().to_string()),
                "{name}: {message}"
            );
            assert!(message.contains(want), "{name}: {message}");
            assert!(!png.exists(), "{name}: no poster on failure");
        };
        check("missing.mp4", None, "opening video");
        check(
            "garbage.mp4",
            Some(b"this is not a video, just some text".as_slice()),
            "opening video",
        );
        check("audio.wav", Some(&silent_wav()), "has no video stream");

        let video = dir.path().join("video.mp4");
        write_test_video(&video, 2);
        let err = make_poster(&video, &dir.path().join("p.png"), 1).expect_err("width 1");
        assert!(err.to_string().contains("below the 2 px minimum"), "{err}");
    }

    /// A valid WAV file: one tenth of a second of 8 kHz mono silence, so a
    /// real file FFmpeg opens that has no video stream.
    fn silent_wav() -> Vec<u8> {
        let samples = 800u32;
        let data_bytes = samples * 2;
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
        wav.extend_from_slice(&1u16.to_le_bytes()); // mono
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&16_000u32.to_le_bytes()); // bytes per second
        wav.extend_from_slice(&2u16.to_le_bytes()); // block align
        wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&data_bytes.to_le_bytes());
        wav.resize(wav.len() + data_bytes as usize, 0);
        wav
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).expect("the file exists").ino()
    }

    #[test]
    fn describe_computes_once_and_then_trusts_its_cache() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("out.mp4");
        write_test_video(&output, 48);
        let cache = dir.path().join("cache");
        let real_sha = whole_file_sha256(&output);

        let first = describe(&output, &cache).expect("describing");
        let poster = cache.join(POSTER_NAME);
        assert_eq!(
            first,
            vec![
                ArtifactInfo {
                    name: "output.mp4".into(),
                    path: output.clone(),
                    bytes: fs::metadata(&output).expect("output").len(),
                    sha256: real_sha.clone(),
                    content_type: "video/mp4",
                },
                ArtifactInfo {
                    name: "poster.png".into(),
                    path: poster.clone(),
                    bytes: fs::metadata(&poster).expect("poster").len(),
                    sha256: whole_file_sha256(&poster),
                    content_type: "image/png",
                },
            ]
        );
        let poster_bytes = fs::read(&poster).expect("reading the poster");
        assert_eq!(png_size(&poster_bytes), (WIDTH_PX, HEIGHT_PX));

        // The second call writes nothing: same poster file, same sidecars.
        let output_sidecar = cache.join("output.mp4.sha256");
        let poster_sidecar = cache.join("poster.png.sha256");
        let inodes = [
            inode(&poster),
            inode(&output_sidecar),
            inode(&poster_sidecar),
        ];
        let second = describe(&output, &cache).expect("describing again");
        assert_eq!(second, first);
        assert_eq!(
            [
                inode(&poster),
                inode(&output_sidecar),
                inode(&poster_sidecar)
            ],
            inodes
        );

        // A sidecar that matches the file's size and mtime is believed, even
        // when it is wrong: proof that the checksum is not recomputed.
        let wrong_sha = "0".repeat(64);
        let sidecar_text = fs::read_to_string(&output_sidecar).expect("the sidecar");
        assert!(sidecar_text.contains(&real_sha), "{sidecar_text}");
        fs::write(&output_sidecar, sidecar_text.replace(&real_sha, &wrong_sha))
            .expect("tampering with the sidecar");
        let third = describe(&output, &cache).expect("describing from the tampered cache");
        assert_eq!(third[0].sha256, wrong_sha);

        // Touching the output makes the sidecar stale: recomputed and
        // rewritten.
        let file = File::options()
            .write(true)
            .open(&output)
            .expect("opening the output");
        let mtime = file
            .metadata()
            .expect("metadata")
            .modified()
            .expect("mtime");
        file.set_modified(mtime + Duration::from_secs(1))
            .expect("touching the output");
        drop(file);
        let fourth = describe(&output, &cache).expect("describing after a touch");
        assert_eq!(fourth[0].sha256, real_sha);
        assert!(fs::read_to_string(&output_sidecar)
            .expect("the sidecar")
            .contains(&real_sha));
        // The poster follows the output it was made from, and is the same
        // image again.
        assert_eq!(fourth[1], first[1]);
        assert_eq!(fs::read(&poster).expect("the poster"), poster_bytes);
        assert_eq!(leftover_temps(&cache), Vec::<String>::new());
    }

    #[test]
    fn describe_recomputes_a_sidecar_it_cannot_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("out.mp4");
        write_test_video(&output, 4);
        let cache = dir.path().join("cache");
        let first = describe(&output, &cache).expect("describing");
        let sidecar = cache.join("output.mp4.sha256");
        // A torn sidecar (as after a crash without the fsync) and a foreign
        // file are both recomputed, not trusted and not an error.
        let whole = fs::read_to_string(&sidecar).expect("the sidecar");
        for bad in [&whole[..whole.len() / 2], "", "garbage\n"] {
            fs::write(&sidecar, bad).expect("breaking the sidecar");
            assert_eq!(
                describe(&output, &cache).expect("describing"),
                first,
                "{bad:?}"
            );
            assert_eq!(fs::read_to_string(&sidecar).expect("the sidecar"), whole);
        }
    }

    #[test]
    fn describe_calls_at_once_agree() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("out.mp4");
        write_test_video(&output, 48);
        let cache = dir.path().join("cache");
        const CALLERS: usize = 4;
        let start = Arc::new(Barrier::new(CALLERS));
        let results: Vec<Vec<ArtifactInfo>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let start = Arc::clone(&start);
                    let (output, cache) = (&output, &cache);
                    scope.spawn(move || {
                        start.wait();
                        describe(output, cache)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic").expect("describing"))
                .collect()
        });
        for r in &results[1..] {
            assert_eq!(r, &results[0]);
        }
        // Whatever interleaving happened, the files on disk are whole and
        // agree with what was returned.
        let poster = cache.join(POSTER_NAME);
        assert_eq!(whole_file_sha256(&poster), results[0][1].sha256);
        assert_eq!(
            png_size(&fs::read(&poster).expect("the poster")),
            (WIDTH_PX, HEIGHT_PX)
        );
        assert_eq!(results[0][0].sha256, whole_file_sha256(&output));
        assert_eq!(
            describe(&output, &cache).expect("describing after"),
            results[0]
        );
        assert_eq!(leftover_temps(&cache), Vec::<String>::new());
    }

    #[test]
    fn describe_of_a_missing_output_names_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("never-made.mp4");
        let err = describe(&output, &dir.path().join("cache")).expect_err("no output");
        assert!(
            err.to_string().contains(&output.display().to_string()),
            "{err:#}"
        );
    }

    #[test]
    fn sidecar_parse_accepts_only_what_render_writes() {
        let sha = "ab".repeat(32);
        let other = "cd".repeat(32);
        let check = |text: &str, want: Option<Sidecar>| {
            assert_eq!(Sidecar::parse(text), want, "{text:?}");
        };
        let plain = Sidecar {
            sha256: sha.clone(),
            stamp: FileStamp {
                bytes: 1234,
                mtime_ns: 1_700_000_000_123_456_789,
            },
            source_sha256: None,
        };
        let derived = Sidecar {
            source_sha256: Some(other.clone()),
            stamp: FileStamp {
                bytes: 0,
                mtime_ns: -5,
            },
            ..plain.clone()
        };
        check(&plain.render(), Some(plain.clone()));
        check(&derived.render(), Some(derived.clone()));
        let h = SIDECAR_HEADER;
        check(
            &format!("{h}\nsha256 {sha}\nbytes 1\nmtime_ns 2"),
            Some(Sidecar {
                stamp: FileStamp {
                    bytes: 1,
                    mtime_ns: 2,
                },
                ..plain.clone()
            }),
        );
        check("", None);
        check(&format!("sha256 {sha}\nbytes 1\nmtime_ns 2\n"), None);
        check(
            &format!("drover-sha256-sidecar v2\nsha256 {sha}\nbytes 1\nmtime_ns 2\n"),
            None,
        );
        check(&format!("{h}\nbytes 1\nmtime_ns 2\n"), None);
        check(&format!("{h}\nsha256 {sha}\nmtime_ns 2\n"), None);
        check(&format!("{h}\nsha256 {sha}\nbytes 1\n"), None);
        check(
            &format!("{h}\nsha256 {}\nbytes 1\nmtime_ns 2\n", sha.to_uppercase()),
            None,
        );
        check(
            &format!("{h}\nsha256 {}\nbytes 1\nmtime_ns 2\n", &sha[1..]),
            None,
        );
        check(&format!("{h}\nsha256 {sha}\nbytes -1\nmtime_ns 2\n"), None);
        check(
            &format!("{h}\nsha256 {sha}\nbytes 1\nmtime_ns 2\nbytes 1\n"),
            None,
        );
        check(
            &format!("{h}\nsha256 {sha}\nbytes 1\nmtime_ns 2\ncolour red\n"),
            None,
        );
        check(&format!("{h}\nsha256  {sha}\nbytes 1\nmtime_ns 2\n"), None);
    }
}
