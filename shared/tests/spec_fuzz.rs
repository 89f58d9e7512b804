//! The job spec's fuzz runs, in CI: arbitrary text, and structurally
//! plausible specs (every field, each mostly valid, sometimes at or past its
//! limit or of the wrong type) as JSON and as TOML, whole or with their text
//! mutated, through `drover_shared::fuzzing`, the entry point the `spec`
//! cargo-fuzz target calls. 100,000 cases per property; none may panic,
//! every accepted spec must keep the limits validation promises
//! (`fuzzing::check_accepted`), and none may allocate more than
//! [`SPEC_BOUND_BYTES`] at once, measured by a counting global allocator.
//!
//! The structured runs count their verdicts and require accepted specs,
//! specs refused by validation and specs refused by the parser, so they
//! provably reach `JobSpec::validate`, not only the parser's errors.

use std::collections::BTreeMap;
use std::sync::Mutex;

use drover_shared::fuzzing::{self, check_accepted, submit, Format, PeakAlloc, Verdict};
use drover_shared::spec::MAX_SPEC_BYTES;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Most bytes one submission may hold at once, for a body of at most
/// [`MAX_SPEC_BYTES`] (80 KiB): 12.5 MiB. The costliest bodies measured
/// (`the_largest_bodies_stay_under_the_bound`) are TOML's: a key of 40,000
/// dotted parts takes 9.5 MB before the parser refuses it, and naga takes
/// 8 MB for the longest shader source; JSON stays under 1 MB.
const SPEC_BOUND_BYTES: usize = 160 * MAX_SPEC_BYTES;

/// 100,000 cases, and no failure files written into the tree.
fn config() -> Config {
    Config {
        cases: 100_000,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A shader that validates.
const GOOD_SHADER: &str = "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> { return vec4<f32>(p.x / drover.resolution.x, 0.5, sin(drover.time), 1.0); }";

/// Runs `submit` and fails the case when it held more than
/// [`SPEC_BOUND_BYTES`] at once; checks an accepted spec.
fn submit_bounded(body: &[u8], format: Format) -> Result<&'static str, TestCaseError> {
    let (verdict, peak) = PeakAlloc::peak_bytes(|| submit(body, format));
    prop_assert!(
        peak <= SPEC_BOUND_BYTES,
        "peak {peak} bytes, bound {SPEC_BOUND_BYTES}"
    );
    if let Verdict::Accepted(spec) = &verdict {
        check_accepted(spec);
    }
    Ok(name(&verdict))
}

fn name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::TooLarge => "too large",
        Verdict::NotUtf8 => "not utf-8",
        Verdict::Unparsed(_) => "unparsed",
        Verdict::Invalid(_) => "invalid",
        Verdict::Accepted(_) => "accepted",
    }
}

/// How cases ended, by format and verdict.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<(&'static str, &'static str), usize>>);

impl Tally {
    fn add(&self, format: Format, verdict: &'static str) {
        let format = match format {
            Format::Json => "json",
            Format::Toml => "toml",
        };
        *self.0.lock().unwrap().entry((format, verdict)).or_default() += 1;
    }

    /// Fails unless each (format, verdict) in `required` occurred at least
    /// as many times as it says.
    fn require(&self, required: &[(&str, &str, usize)]) {
        let t = self.0.lock().unwrap();
        // Shown with --nocapture: how the run spread over the paths.
        eprintln!("{t:?}");
        for &(format, verdict, min) in required {
            let n = t
                .iter()
                .filter(|((f, v), _)| *f == format && *v == verdict)
                .map(|(_, n)| *n)
                .sum::<usize>();
            assert!(
                n >= min,
                "{format} {verdict}: {n} cases, expected at least {min}; all: {t:?}"
            );
        }
    }
}

// ---- Strategies: a spec's fields, mostly valid ----

const CLEAN: &[char] = &['a', 'Z', '0', '9', ' ', '-', '_', '.'];
const ODD: &[char] = &['/', '*', 'é', '\n', '"', '\'', '\\', '\0', '['];

/// A name or label: mostly short and clean, sometimes empty, exactly
/// `limit` bytes or one more, with a character only some fields allow, or
/// not a string at all.
fn label(limit: usize) -> BoxedStrategy<Value> {
    prop_oneof![
        100 => vec(select(&CLEAN[..4]), 1..6)
            .prop_flat_map(|head| vec(select(CLEAN), 0..10).prop_map(move |tail| {
                Value::from(head.iter().chain(&tail).collect::<String>())
            })),
        1 => Just(Value::from("")),
        1 => (limit..=limit + 1).prop_map(|n| Value::from("n".repeat(n))),
        1 => (vec(select(CLEAN), 0..4), select(ODD))
            .prop_map(|(a, odd)| Value::from(a.into_iter().chain([odd]).collect::<String>())),
        1 => any::<i64>().prop_map(Value::from),
    ]
    .boxed()
}

/// A number: mostly in `valid`, sometimes just outside it, sometimes
/// anything (negative, fractional, or not a number).
fn number(valid: std::ops::RangeInclusive<i64>) -> BoxedStrategy<Value> {
    let (lo, hi) = (*valid.start(), *valid.end());
    prop_oneof![
        100 => valid.prop_map(Value::from),
        1 => prop_oneof![Just(lo - 1), Just(hi + 1)].prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => Just(Value::from("12")),
    ]
    .boxed()
}

/// One of `names`, or a name that is none of them, or not a string.
fn one_of(names: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        48 => select(names).prop_map(Value::from),
        1 => Just(Value::from("nope")),
        1 => Just(Value::Bool(true)),
    ]
    .boxed()
}

/// An object of the fields that came out `Some`, with a field unknown to
/// the schema as well when `extra`.
fn object(fields: Vec<(&'static str, Option<Value>)>, extra: bool) -> Value {
    let mut m: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    if extra {
        m.insert("colour".into(), Value::from(1));
    }
    Value::Object(m)
}

/// Present 39 times in 40.
fn often(s: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![39 => s.prop_map(Some), 1 => Just(None)].boxed()
}

/// Present half the time.
fn maybe(s: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![s.prop_map(Some), Just(None)].boxed()
}

fn rare_extra() -> BoxedStrategy<bool> {
    prop_oneof![100 => Just(false), 1 => Just(true)].boxed()
}

fn frames() -> BoxedStrategy<Value> {
    prop_oneof![
        40 => (0u64..1000, 0u64..500).prop_map(|(s, n)| json!({"start": s, "end": s + n})),
        1 => (number(0..=10_000_001), number(0..=10_000_001))
            .prop_map(|(s, e)| json!({"start": s, "end": e})),
        1 => (0u64..100).prop_map(|s| json!({"start": s})),
    ]
    .boxed()
}

fn resolution() -> BoxedStrategy<Value> {
    (
        prop_oneof![12 => (8u32..=3840).prop_map(|w| Value::from(w * 2)), 1 => number(0..=8000)],
        prop_oneof![12 => (8u32..=2160).prop_map(|h| Value::from(h * 2)), 1 => number(0..=5000)],
        rare_extra(),
    )
        .prop_map(|(w, h, extra)| object(vec![("width", Some(w)), ("height", Some(h))], extra))
        .boxed()
}

/// A shader source: one that validates, one that does not type-check, a
/// valid one with a few bytes changed (naga's errors), or text.
fn source() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => Just(Value::from(GOOD_SHADER)),
        1 => Just(Value::from(
            "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> { return p.x; }"
        )),
        1 => Just(Value::from("fn main() {}")),
        2 => vec((any::<Index>(), select(ODD)), 1..3).prop_map(|edits| {
            let mut s: Vec<char> = GOOD_SHADER.chars().collect();
            for (i, c) in edits {
                let at = i.index(s.len());
                s[at] = c;
            }
            Value::from(s.into_iter().collect::<String>())
        }),
        1 => vec(select(ODD), 0..20).prop_map(|c| Value::from(c.into_iter().collect::<String>())),
    ]
    .boxed()
}

fn render() -> BoxedStrategy<Value> {
    let builtin = one_of(&["plasma", "rings", "fractal"]);
    prop_oneof![
        // A built-in, or a source, as users write them.
        6 => builtin.clone().prop_map(|s| json!({"kind": "shader", "shader": s})),
        3 => source().prop_map(|s| json!({"kind": "shader", "source": s})),
        // Every combination, other kinds and paths included.
        1 => (
            one_of(&["shader", "blender"]),
            maybe(builtin),
            maybe(source()),
            maybe(Just(Value::from("x.wgsl")).boxed()),
            rare_extra(),
        )
            .prop_map(|(kind, shader, source, path, extra)| {
                object(
                    vec![("kind", Some(kind)), ("shader", shader), ("source", source), ("path", path)],
                    extra,
                )
            }),
    ]
    .boxed()
}

fn output() -> BoxedStrategy<Value> {
    (
        maybe(one_of(&["mp4"])),
        maybe(one_of(&["h264"])),
        maybe(number(0..=51)),
        rare_extra(),
    )
        .prop_map(|(container, codec, quality, extra)| {
            object(
                vec![
                    ("container", container),
                    ("codec", codec),
                    ("quality", quality),
                ],
                extra,
            )
        })
        .boxed()
}

fn requirements() -> BoxedStrategy<Value> {
    let tags = prop_oneof![
        12 => vec(label(64), 0..4).prop_map(Value::from),
        1 => (16usize..=17).prop_map(|n| Value::from(vec!["t"; n])),
    ]
    .boxed();
    (
        (
            maybe(one_of(&["required", "preferred", "any"])),
            maybe(one_of(&["nvidia", "amd", "intel", "apple", "mesa"])),
            maybe(label(64)),
            maybe(number(0..=1 << 20)),
            maybe(one_of(&["vulkan", "Metal", "dx12", "gl"])),
        ),
        (
            maybe(one_of(&["libx264", "h264_nvenc", "hevc_nvenc"])),
            maybe(number(1..=256)),
            maybe(number(1..=1 << 20)),
            maybe(tags),
            maybe(label(64)),
            rare_extra(),
        ),
    )
        .prop_map(
            |(
                (gpu, gpu_vendor, gpu_name, min_vram_mib, backend),
                (encoder, min_cores, min_memory_mib, tags, pool, extra),
            )| {
                object(
                    vec![
                        ("gpu", gpu),
                        ("gpu_vendor", gpu_vendor),
                        ("gpu_name", gpu_name),
                        ("min_vram_mib", min_vram_mib),
                        ("backend", backend),
                        ("encoder", encoder),
                        ("min_cores", min_cores),
                        ("min_memory_mib", min_memory_mib),
                        ("tags", tags),
                        ("pool", pool),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

/// A whole spec: the required fields nearly always there, the optional ones
/// half the time.
fn spec() -> BoxedStrategy<Value> {
    let seconds = prop_oneof![
        12 => (1.0f64..=3600.0).prop_map(|f| json!(f)),
        1 => prop_oneof![Just(0.5), Just(3600.5), Just(-1.0), Just(1e300)].prop_map(|f| json!(f)),
        1 => Just(Value::from(20)),
    ]
    .boxed();
    (
        (
            often(label(128)),
            often(frames()),
            maybe(number(1..=240)),
            often(resolution()),
            often(render()),
        ),
        (
            maybe(output()),
            maybe(requirements()),
            maybe(number(0..=100)),
            maybe(label(64)),
            maybe(number(1..=100_000)),
        ),
        (
            maybe(seconds),
            maybe(any::<bool>().prop_map(Value::from).boxed()),
            maybe(number(1..=86_400)),
            rare_extra(),
        ),
    )
        .prop_map(
            |(
                (name, frames, fps, resolution, render),
                (output, requirements, priority, project, max_nodes),
                (chunk_target_s, allow_missing_frames, frame_timeout_s, extra),
            )| {
                object(
                    vec![
                        ("name", name),
                        ("frames", frames),
                        ("fps", fps),
                        ("resolution", resolution),
                        ("render", render),
                        ("output", output),
                        ("requirements", requirements),
                        ("priority", priority),
                        ("project", project),
                        ("max_nodes", max_nodes),
                        ("chunk_target_s", chunk_target_s),
                        ("allow_missing_frames", allow_missing_frames),
                        ("frame_timeout_s", frame_timeout_s),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

/// Changes to a document's bytes: bytes flipped, set, inserted, removed, or
/// the document cut.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutations() -> BoxedStrategy<Vec<Mutation>> {
    let one = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), select(b"{}[]\",=:. 0\n\x80".as_slice()))
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), select(b"{}[]\",=:. 0\n\x80".as_slice()))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ];
    // Three documents in four are left whole, so most reach validation.
    prop_oneof![3 => Just(vec![]), 1 => vec(one, 1..4)].boxed()
}

fn mutate(doc: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = doc.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => doc[i.index(len)] ^= 1 << (bit % 8),
            Mutation::Set(i, b) if len > 0 => doc[i.index(len)] = *b,
            Mutation::Insert(i, b) => doc.insert(i.index(len + 1), *b),
            Mutation::Remove(i) if len > 0 => {
                doc.remove(i.index(len));
            }
            Mutation::Truncate(i) => doc.truncate(i.index(len + 1)),
            _ => {}
        }
    }
}

// ---- The properties ----

/// Arbitrary text and bytes, in both formats.
#[test]
fn arbitrary_documents() {
    let tally = Tally::default();
    let doc = prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        vec(any::<u8>(), 0..200),
        // Made of the formats' own punctuation, so the parsers get further.
        vec(select(b"{}[]\",=:.0a \n".as_slice()), 0..200),
    ];
    TestRunner::new(config())
        .run(&doc, |doc| {
            for format in [Format::Json, Format::Toml] {
                tally.add(format, submit_bounded(&doc, format)?);
            }
            Ok(())
        })
        .unwrap();
    tally.require(&[("json", "unparsed", 10_000), ("toml", "unparsed", 10_000)]);
}

/// Structured specs as JSON, whole or mutated.
#[test]
fn structured_json_specs() {
    let tally = Tally::default();
    TestRunner::new(config())
        .run(&(spec(), mutations()), |(spec, mutations)| {
            let mut doc = serde_json::to_vec(&spec).unwrap();
            mutate(&mut doc, &mutations);
            tally.add(Format::Json, submit_bounded(&doc, Format::Json)?);
            Ok(())
        })
        .unwrap();
    tally.require(&[
        ("json", "accepted", 10_000),
        ("json", "invalid", 10_000),
        ("json", "unparsed", 10_000),
    ]);
}

/// Structured specs as TOML, whole or mutated.
#[test]
fn structured_toml_specs() {
    let tally = Tally::default();
    TestRunner::new(config())
        .run(&(spec(), mutations()), |(spec, mutations)| {
            // TOML has no null and its integers are i64: a spec with a value
            // TOML cannot hold goes as JSON's text instead, which TOML
            // refuses.
            let mut doc = toml::to_string(&spec)
                .unwrap_or_else(|_| spec.to_string())
                .into_bytes();
            mutate(&mut doc, &mutations);
            tally.add(Format::Toml, submit_bounded(&doc, Format::Toml)?);
            Ok(())
        })
        .unwrap();
    tally.require(&[
        ("toml", "accepted", 10_000),
        ("toml", "invalid", 10_000),
        ("toml", "unparsed", 10_000),
    ]);
}

/// The `spec` fuzz target's entry point on a few documents, and TOML's
/// own values JSON cannot write (nan, inf) refused by validation.
#[test]
fn the_fuzz_entry_point_and_tomls_own_floats() {
    let good = r#"
        name = "t"
        frames = { start = 0, end = 9 }
        resolution = { width = 64, height = 64 }
        [render]
        kind = "shader"
        shader = "rings"
    "#;
    fuzzing::spec(good.as_bytes());
    fuzzing::spec(b"{\"name\": ");
    assert!(matches!(
        submit(good.as_bytes(), Format::Toml),
        Verdict::Accepted(_)
    ));
    for value in ["nan", "inf", "-inf", "-0.0"] {
        let doc = format!("chunk_target_s = {value}\n{good}");
        match submit(doc.as_bytes(), Format::Toml) {
            Verdict::Invalid(e) => assert_eq!(e.field, "chunk_target_s", "{e}"),
            other => panic!("{value}: {other:?}"),
        }
    }
}

/// Bodies at the size limit, built to be the costliest: deep nesting, many
/// small values, a long shader. Each stays under the bound; one byte more
/// is refused before parsing.
#[test]
fn the_largest_bodies_stay_under_the_bound() {
    let max = MAX_SPEC_BYTES;
    let mut docs: Vec<(&str, Format, Vec<u8>)> = vec![
        ("json nesting", Format::Json, "[".repeat(max).into_bytes()),
        (
            "toml nesting",
            Format::Toml,
            format!("a = {}", "[".repeat(max - 4)).into_bytes(),
        ),
        (
            "toml inline tables",
            Format::Toml,
            format!("a = {}", "{b = ".repeat((max - 4) / 5)).into_bytes(),
        ),
        (
            "toml dotted keys",
            Format::Toml,
            format!("{}= 1", "a.".repeat((max - 3) / 2)).into_bytes(),
        ),
        (
            "toml arrays of tables",
            Format::Toml,
            "[[a]]\n".repeat(max / 6).into_bytes(),
        ),
        (
            "toml inline tables in an array",
            Format::Toml,
            format!("a = [{}]", "{},".repeat((max - 6) / 3)).into_bytes(),
        ),
        (
            "toml empty arrays in an array",
            Format::Toml,
            format!("a = [{}]", "[],".repeat((max - 6) / 3)).into_bytes(),
        ),
        (
            "toml many keys",
            Format::Toml,
            (0..max / 12)
                .map(|i| format!("k{i:07}=1\n"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "json empty objects in an array",
            Format::Json,
            format!("[{}{{}}]", "{},".repeat((max - 6) / 3)).into_bytes(),
        ),
    ];
    // Tags as the shortest JSON strings: many values per byte.
    let tags = vec![""; (max - 400) / 3];
    let mut many = json!({"name": "n", "frames": {"start": 0, "end": 1},
        "resolution": {"width": 64, "height": 64}, "render": {"kind": "shader", "shader": "rings"}});
    many["requirements"] = json!({ "tags": tags });
    docs.push((
        "json many tags",
        Format::Json,
        serde_json::to_vec(&many).unwrap(),
    ));
    // The longest shader source that still fits: thousands of statements
    // for naga to parse and validate.
    let mut body = String::new();
    let header = "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {\n var x = p.x;\n";
    while header.len() + body.len() + 600 < drover_shared::shader::MAX_SHADER_SOURCE_BYTES {
        body.push_str(" x = sin(x) * 0.5 + x;\n");
    }
    let shader = format!("{header}{body} return vec4<f32>(x, 0.0, 0.0, 1.0);\n}}");
    let long = json!({"name": "n", "frames": {"start": 0, "end": 1},
        "resolution": {"width": 64, "height": 64}, "render": {"kind": "shader", "source": shader}});
    docs.push((
        "json long shader",
        Format::Json,
        serde_json::to_vec(&long).unwrap(),
    ));
    let mut worst = 0;
    for (what, format, doc) in &docs {
        assert!(doc.len() <= max, "{what}: {} bytes", doc.len());
        let (verdict, peak) = PeakAlloc::peak_bytes(|| submit(doc, *format));
        let why = match &verdict {
            Verdict::Unparsed(e) | Verdict::Invalid(e) => e.to_string(),
            _ => String::new(),
        };
        let verdict = name(&verdict);
        eprintln!(
            "{what}: {} bytes, peak {peak} bytes: {verdict} {why:.100}",
            doc.len()
        );
        worst = worst.max(peak);
        if *what == "json long shader" {
            assert_eq!(verdict, "accepted", "{why}");
        }
    }
    assert!(
        worst <= SPEC_BOUND_BYTES,
        "peak {worst} bytes, bound {SPEC_BOUND_BYTES}"
    );
    let over = vec![b' '; max + 1];
    let (verdict, peak) = PeakAlloc::peak_bytes(|| submit(&over, Format::Json));
    assert!(matches!(verdict, Verdict::TooLarge));
    assert_eq!(peak, 0);
}

/// The seeds the `spec` target's corpus starts from are accepted. With
/// `DROVER_FUZZ_SEEDS` set to a corpus root (`fuzz/corpus`), they are
/// written to its `spec` folder (see `fuzz/README.md`).
#[test]
fn seeds_are_accepted() {
    for (name, format, doc) in fuzzing::seeds() {
        match submit(doc.as_bytes(), format) {
            Verdict::Accepted(spec) => check_accepted(&spec),
            other => panic!("seed {name}: {other:?}"),
        }
    }
    if let Some(root) = std::env::var_os("DROVER_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&root).join("spec");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _, doc) in fuzzing::seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), doc).unwrap();
        }
    }
}
