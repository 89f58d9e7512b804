//! Entry points shared by the cargo-fuzz targets (`fuzz/` at the repository
//! root) and the proptest runs (`shared/tests/spec_fuzz.rs`,
//! `protocol/tests/fuzz.rs`), and the allocator those runs bound memory
//! with.
//!
//! [`submit`] takes a request body as `POST /v1/jobs` receives it and runs
//! it through what the coordinator runs on it: the size limit, UTF-8, the
//! JSON or TOML parser, [`JobSpec::validate`]. [`spec`] does so in both
//! formats and checks every accepted spec against the limits it claims to
//! enforce, so a fuzzer finds a spec that validation lets through wrongly,
//! not only a panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::shader::MAX_SHADER_SOURCE_BYTES;
use crate::spec::{
    JobSpec, SpecError, MAX_FPS, MAX_FRAMES_PER_JOB, MAX_FRAME_NUMBER, MAX_HEIGHT, MAX_NAME_BYTES,
    MAX_PRIORITY, MAX_QUALITY_CRF, MAX_SPEC_BYTES, MAX_TAGS, MAX_WIDTH, MIN_DIMENSION,
};

/// How a request body says its format (the coordinator reads the
/// `content-type`: TOML when it names `toml`, JSON otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`, and anything that is not TOML.
    Json,
    /// `application/toml`.
    Toml,
}

/// What the coordinator makes of a submitted body.
#[derive(Debug)]
pub enum Verdict {
    /// Over [`MAX_SPEC_BYTES`]: refused before it is parsed.
    TooLarge,
    /// Not UTF-8.
    NotUtf8,
    /// The parser refused it (syntax, types, unknown fields).
    Unparsed(SpecError),
    /// It parsed, and [`JobSpec::validate`] refused it.
    Invalid(SpecError),
    /// A job: what the coordinator stores and schedules.
    Accepted(Box<JobSpec>),
}

/// Runs a request body through what `POST /v1/jobs` does with it before the
/// job reaches the scheduler.
pub fn submit(body: &[u8], format: Format) -> Verdict {
    if body.len() > MAX_SPEC_BYTES {
        return Verdict::TooLarge;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Verdict::NotUtf8;
    };
    let parsed = match format {
        Format::Json => JobSpec::from_json(text),
        Format::Toml => JobSpec::from_toml(text),
    };
    let mut spec = match parsed {
        Ok(spec) => spec,
        Err(e) => return Verdict::Unparsed(e),
    };
    match spec.validate() {
        Ok(()) => Verdict::Accepted(Box::new(spec)),
        Err(e) => Verdict::Invalid(e),
    }
}

/// [`submit`] in both formats; panics when an accepted spec breaks a limit
/// that validation is there to enforce (see [`check_accepted`]). What the
/// `spec` fuzz target runs.
pub fn spec(data: &[u8]) {
    for format in [Format::Json, Format::Toml] {
        if let Verdict::Accepted(spec) = submit(data, format) {
            check_accepted(&spec);
        }
    }
}

/// Valid request bodies to start the `spec` target's corpus from, by name:
/// a fuzzer finds JSON's and TOML's syntax by itself, the schema's field
/// names hardly. `shared/tests/spec_fuzz.rs` checks each is accepted and
/// writes them into a corpus on request (see `fuzz/README.md`).
pub fn seeds() -> Vec<(&'static str, Format, &'static str)> {
    vec![
        (
            "builtin.json",
            Format::Json,
            r#"{"name":"shot 010","frames":{"start":1,"end":48},"fps":24,"resolution":{"width":320,"height":180},"render":{"kind":"shader","shader":"plasma"}}"#,
        ),
        (
            "everything.json",
            Format::Json,
            r#"{"name":"shot 020","frames":{"start":0,"end":239},"fps":30,"resolution":{"width":1280,"height":720},"render":{"kind":"shader","source":"@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> { return vec4<f32>(p.x / drover.resolution.x, 0.5, sin(drover.time), 1.0); }"},"output":{"container":"mp4","codec":"h264","quality":20},"requirements":{"gpu":"preferred","gpu_vendor":"nvidia","gpu_name":"RTX*","min_vram_mib":8192,"backend":"vulkan","encoder":"libx264","min_cores":8,"min_memory_mib":16384,"tags":["fast","4k"],"pool":"studio"},"priority":70,"project":"film","max_nodes":4,"chunk_target_s":15.5,"allow_missing_frames":true,"frame_timeout_s":600}"#,
        ),
        (
            "builtin.toml",
            Format::Toml,
            "name = \"t\"\nframes = { start = 0, end = 9 }\nresolution = { width = 64, height = 64 }\n\n[render]\nkind = \"shader\"\nshader = \"rings\"\n",
        ),
        (
            "requirements.toml",
            Format::Toml,
            "name = \"shot 030\"\nframes = { start = 10, end = 99 }\nfps = 24\npriority = 10\nchunk_target_s = 30.0\nresolution = { width = 640, height = 360 }\n\n[render]\nkind = \"shader\"\nshader = \"fractal\"\n\n[output]\nquality = 18\n\n[requirements]\ngpu = \"required\"\ntags = [\"fast\"]\npool = \"studio\"\n",
        ),
    ]
}

/// Panics unless `spec`, which [`JobSpec::validate`] accepted, keeps every
/// limit it promises, carries its shader's source, and survives the JSON
/// it is stored and served as.
pub fn check_accepted(spec: &JobSpec) {
    let name = spec.name.trim();
    assert!(
        !name.is_empty() && spec.name.len() <= MAX_NAME_BYTES,
        "{spec:?}"
    );
    let f = spec.frames;
    assert!(f.start <= f.end && f.end <= MAX_FRAME_NUMBER, "{spec:?}");
    assert!(f.len() <= MAX_FRAMES_PER_JOB, "{spec:?}");
    assert!((1..=MAX_FPS).contains(&spec.fps), "{spec:?}");
    let r = spec.resolution;
    assert!((MIN_DIMENSION..=MAX_WIDTH).contains(&r.width) && r.width.is_multiple_of(2));
    assert!((MIN_DIMENSION..=MAX_HEIGHT).contains(&r.height) && r.height.is_multiple_of(2));
    assert!(spec.output.quality <= MAX_QUALITY_CRF, "{spec:?}");
    assert!(spec.priority <= MAX_PRIORITY, "{spec:?}");
    assert!(spec.requirements.tags.len() <= MAX_TAGS, "{spec:?}");
    assert!(spec.render.path.is_none(), "{spec:?}");
    let source = spec.shader_source();
    assert!(
        !source.is_empty() && source.len() <= MAX_SHADER_SOURCE_BYTES,
        "{spec:?}"
    );
    let json = serde_json::to_string(spec).expect("a job spec serializes");
    // Exact, floats included (the workspace enables serde_json's
    // `float_roundtrip`): what the journal stores reads back the same.
    let back: JobSpec = serde_json::from_str(&json).expect("a stored job spec reads back");
    assert_eq!(&back, spec);
}

/// A global allocator that counts, per thread, the bytes allocated and not
/// yet freed, and the peak of that count, so a test can bound what one call
/// allocates while other tests run on other threads. A thin wrapper over
/// [`System`]; install it in a test binary with
/// `#[global_allocator] static A: PeakAlloc = PeakAlloc;`.
pub struct PeakAlloc;

thread_local! {
    // Const-initialised cells without destructors: reading them never
    // allocates, which an allocator must not do.
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counting only
// touches this thread's cells.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

impl PeakAlloc {
    /// Runs `f` and returns its result and the most bytes it held allocated
    /// at once on this thread, over what was allocated before it. Only
    /// meaningful with [`PeakAlloc`] installed as the global allocator.
    pub fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let before = LIVE_BYTES.with(Cell::get);
        PEAK_BYTES.with(|peak| peak.set(before));
        let out = f();
        let peak = PEAK_BYTES.with(Cell::get);
        (out, (peak - before).max(0) as usize)
    }
}
