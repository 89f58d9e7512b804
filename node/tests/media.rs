//! Render, encode, join and decode, end to end within one process: the media
//! path a chunk takes on a node and then on the coordinator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use drover_coordinator::mux::{concat_segments, MuxError};
use drover_node::encode::{
    decode_rgba_frames, probe_encoders, psnr_rgb, EncodeSettings, SegmentEncoder, SegmentInfo,
};
use drover_node::render::{Gpu, Renderer};

const FPS: u32 = 24;
/// Lowest acceptable quality of a decoded frame against its render.
const MIN_PSNR_DB: f64 = 35.0;

fn plasma() -> &'static str {
    drover_shaders::get("plasma")
        .expect("plasma is built in")
        .source
}

/// Renders `frames` of plasma at `width`x`height` into a new segment at `path`.
fn encode_segment(
    gpu: &Gpu,
    path: &Path,
    width: u32,
    height: u32,
    frames: std::ops::Range<u64>,
) -> SegmentInfo {
    let mut renderer = Renderer::new(gpu, plasma(), width, height, FPS).expect("renderer");
    let mut encoder =
        SegmentEncoder::create(path, &EncodeSettings::new(width, height, FPS)).expect("encoder");
    renderer
        .render_range(frames, |_, rgba| {
            encoder
                .push_rgba(&rgba)
                .map_err(|e| drover_node::render::RenderError::Sink(e.to_string()))
        })
        .expect("render range");
    encoder.finish().expect("finish segment")
}

/// What `ffprobe -count_frames` says about the first video stream:
/// `(frames read, width, height, r_frame_rate)`.
fn ffprobe(path: &Path) -> (u64, u32, u32, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height,r_frame_rate",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).expect("utf-8");
    // The JSON is tiny and flat; pick the four fields without a parser.
    let field = |name: &str| -> String {
        let key = format!("\"{name}\":");
        let start = json
            .find(&key)
            .unwrap_or_else(|| panic!("{name} in {json}"))
            + key.len();
        json[start..]
            .trim_start()
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect()
    };
    (
        field("nb_read_frames").parse().expect("frame count"),
        field("width").parse().expect("width"),
        field("height").parse().expect("height"),
        field("r_frame_rate"),
    )
}

#[test]
fn one_segment_holds_every_frame() {
    let gpu = Gpu::new().expect("render adapter");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.mp4");
    let info = encode_segment(&gpu, &path, 320, 180, 0..48);
    assert_eq!(info.frames, 48);
    assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(info.bytes > 1000, "segment is only {} bytes", info.bytes);

    let decoded = decode_rgba_frames(&path, &[0, 47]).unwrap();
    assert_eq!(decoded.frame_count, 48);
    assert_eq!((decoded.width, decoded.height), (320, 180));
    assert!((decoded.fps - 24.0).abs() < 1e-9, "fps {}", decoded.fps);
    assert_eq!(decoded.frames.len(), 2);
    assert_eq!(decoded.frames[1].0, 47);

    assert_eq!(ffprobe(&path), (48, 320, 180, "24/1".to_string()));
}

#[test]
fn three_segments_join_into_one_continuous_video() {
    let gpu = Gpu::new().expect("render adapter");
    let dir = tempfile::tempdir().unwrap();
    let ranges = [0..16u64, 16..32, 32..49];
    let segments: Vec<PathBuf> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = dir.path().join(format!("seg{i}.mp4"));
            let info = encode_segment(&gpu, &path, 320, 180, r.clone());
            assert_eq!(info.frames, r.end - r.start);
            path
        })
        .collect();
    let out = dir.path().join("out.mp4");
    let report = concat_segments(&segments, &out).unwrap();
    assert_eq!(report.frames, 49);
    assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());
    let mut partial = out.as_os_str().to_os_string();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "partial file left behind");

    assert_eq!(ffprobe(&out), (49, 320, 180, "24/1".to_string()));

    // Frames on both sides of each join, and the ends.
    let wanted = [0u64, 15, 16, 31, 32, 48];
    let decoded = decode_rgba_frames(&out, &wanted).unwrap();
    assert_eq!(decoded.frame_count, 49);
    assert_eq!((decoded.width, decoded.height), (320, 180));
    assert!((decoded.fps - 24.0).abs() < 1e-9, "fps {}", decoded.fps);
    assert_eq!(
        decoded.frames.iter().map(|f| f.0).collect::<Vec<_>>(),
        wanted
    );
    let mut renderer = Renderer::new(&gpu, plasma(), 320, 180, FPS).unwrap();
    for (k, rgba) in &decoded.frames {
        let psnr = psnr_rgb(rgba, &renderer.render(*k).unwrap());
        println!("joined frame {k}: {psnr:.2} dB");
        assert!(
            psnr >= MIN_PSNR_DB,
            "frame {k}: {psnr:.2} dB < {MIN_PSNR_DB}"
        );
    }
    // A wrong frame must score clearly worse: the comparison has teeth.
    let (k, rgba) = &decoded.frames[2];
    let off_by_one = psnr_rgb(rgba, &renderer.render(k + 8).unwrap());
    assert!(
        off_by_one < MIN_PSNR_DB,
        "frame {k} vs {}: {off_by_one:.2} dB",
        k + 8
    );

    // Timestamps run on across the joins: ffprobe sees strictly increasing
    // pts one frame (1/24 s) apart.
    let out_pts = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    let mut times: Vec<f64> = String::from_utf8(out_pts.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(times.len(), 49);
    for (i, w) in times.windows(2).enumerate() {
        let step = w[1] - w[0];
        assert!(
            (step - 1.0 / 24.0).abs() < 1e-3,
            "pts step {step} after packet {i}"
        );
    }
}

#[test]
fn mismatched_segment_is_refused_by_name() {
    let gpu = Gpu::new().expect("render adapter");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    let odd = dir.path().join("odd-size.mp4");
    encode_segment(&gpu, &good, 320, 180, 0..4);
    encode_segment(&gpu, &odd, 160, 90, 4..8);
    let out = dir.path().join("out.mp4");
    let err = concat_segments(&[good.clone(), odd.clone()], &out).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, MuxError::Mismatch { what: "size", .. }),
        "{err:?}"
    );
    assert!(message.contains("odd-size.mp4"), "{message}");
    assert!(
        message.contains("160x90") && message.contains("320x180"),
        "{message}"
    );
    assert!(!out.exists(), "output written despite the refusal");

    let empty = concat_segments(&[], &out).unwrap_err();
    assert!(matches!(empty, MuxError::NoSegments(_)), "{empty:?}");
}

#[test]
fn libx264_is_probed() {
    let start = Instant::now();
    let encoders = probe_encoders();
    let elapsed = start.elapsed();
    println!("encoders that open here: {encoders:?} (probe took {elapsed:?})");
    assert!(encoders.iter().any(|e| e == "libx264"), "{encoders:?}");
    assert!(encoders
        .iter()
        .all(|e| drover_node::encode::CANDIDATE_ENCODERS.contains(&e.as_str())));
}

#[test]
fn bad_settings_and_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mp4");
    let odd = SegmentEncoder::create(&path, &EncodeSettings::new(321, 180, FPS)).unwrap_err();
    assert!(odd.to_string().contains("width = 321"), "{odd}");
    let mut enc = SegmentEncoder::create(&path, &EncodeSettings::new(64, 64, FPS)).unwrap();
    let short = enc.push_rgba(&[0u8; 10]).unwrap_err();
    assert!(
        short.to_string().contains("64x64 RGBA needs 16384"),
        "{short}"
    );
    let unknown = SegmentEncoder::create(
        &path,
        &EncodeSettings {
            codec: "no-such-codec".into(),
            ..EncodeSettings::new(64, 64, FPS)
        },
    )
    .unwrap_err();
    assert!(unknown.to_string().contains("no-such-codec"), "{unknown}");
    assert_eq!(psnr_rgb(&[1, 2, 3, 4], &[1, 2, 3, 9]), f64::INFINITY);
}

#[test]
fn segment_encoder_is_send() {
    fn send<T: Send>() {}
    send::<SegmentEncoder>();
}
