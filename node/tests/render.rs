//! The render executor's contract: output format, determinism, pipelined
//! output equal to one-at-a-time output, and errors instead of panics.

use drover_node::render::{probe_adapters, Gpu, RenderError, Renderer};

const SOLID: &str = "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {
    // Red from the column, green from the row, blue from the frame number.
    return vec4<f32>(p.x / drover.resolution.x, p.y / drover.resolution.y, f32(drover.frame) / 255.0, 1.0);
}";

fn plasma() -> &'static str {
    drover_shaders::get("plasma").unwrap().source
}

#[test]
fn adapters_are_reported() {
    let adapters = probe_adapters();
    println!("{adapters:#?}");
    assert!(!adapters.is_empty(), "wgpu found no adapter at all");
    let kinds = ["DiscreteGpu", "IntegratedGpu", "VirtualGpu", "Cpu", "Other"];
    assert!(adapters
        .iter()
        .all(|a| kinds.contains(&a.device_type.as_str())));
    let gpu = Gpu::new().unwrap();
    assert!(
        adapters.contains(gpu.adapter()),
        "{:?} not enumerated",
        gpu.adapter()
    );
}

#[test]
fn frames_are_tight_rgba_top_row_first() {
    let gpu = Gpu::new().unwrap();
    // 100 px wide: 400 bytes per row, which wgpu pads to 512 for the copy.
    let (w, h) = (100u32, 50u32);
    let mut r = Renderer::new(&gpu, SOLID, w, h, 24).unwrap();
    let rgba = r.render(7).unwrap();
    assert_eq!(rgba.len(), (w * h * 4) as usize);
    let px = |x: u32, y: u32| &rgba[((y * w + x) * 4) as usize..((y * w + x) * 4 + 4) as usize];
    // Pixel centres are at +0.5: top-left is dark, the far ends are bright.
    assert!(px(0, 0)[0] < 3 && px(0, 0)[1] < 5, "{:?}", px(0, 0));
    assert!(px(w - 1, 0)[0] > 250, "{:?}", px(w - 1, 0));
    assert!(px(0, h - 1)[1] > 250, "{:?}", px(0, h - 1));
    assert!(rgba.chunks_exact(4).all(|p| p[2] == 7 && p[3] == 255));
}

#[test]
fn render_range_matches_render_and_is_deterministic() {
    let gpu = Gpu::new().unwrap();
    let mut r = Renderer::new(&gpu, plasma(), 96, 54, 30).unwrap();
    let mut got = Vec::new();
    r.render_range(10..17, |f, rgba| {
        got.push((f, rgba));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (10..17).collect::<Vec<_>>()
    );
    for (f, rgba) in &got {
        assert_eq!(&r.render(*f).unwrap(), rgba, "frame {f}");
    }
    // A second renderer of the same job draws the same pixels.
    let mut again = Renderer::new(&gpu, plasma(), 96, 54, 30).unwrap();
    assert_eq!(again.render(12).unwrap(), got[2].1);
}

#[test]
fn sink_error_stops_the_range_and_the_renderer_stays_usable() {
    let gpu = Gpu::new().unwrap();
    let mut r = Renderer::new(&gpu, SOLID, 64, 32, 24).unwrap();
    let mut seen = Vec::new();
    let err = r
        .render_range(0..20, |f, _| {
            seen.push(f);
            if f == 4 {
                Err(RenderError::Sink("disk full".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(
        matches!(err, RenderError::Sink(ref m) if m == "disk full"),
        "{err}"
    );
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    let mut count = 0;
    r.render_range(0..5, |_, _| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 5);
    assert_eq!(r.render(9).unwrap()[2], 9);
}

#[test]
fn bad_shaders_and_sizes_are_errors() {
    let gpu = Gpu::new().unwrap();
    let check = |src: &str, want: &str| match Renderer::new(&gpu, src, 64, 64, 24) {
        Err(RenderError::Shader(m)) => assert!(m.contains(want), "{m:?} lacks {want:?}"),
        other => panic!("expected a shader error for {src:?}, got {other:?}"),
    };
    check("fn fs_main( {", "line 1");
    check(
        "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {\n  return nope;\n}",
        "line 2",
    );
    check(
        "@fragment fn other() -> @location(0) vec4<f32> { return vec4<f32>(1.0); }",
        "fs_main",
    );
    // Returns a vec3 where the render target needs a vec4: valid WGSL that
    // only pipeline creation rejects, through the device's error scope.
    check(
        "@fragment fn fs_main() -> @location(0) vec3<f32> { return vec3<f32>(1.0); }",
        "",
    );
    for (w, h) in [(0, 10), (10, 0), (100_000, 10)] {
        let err = Renderer::new(&gpu, SOLID, w, h, 24).unwrap_err();
        assert!(matches!(err, RenderError::BadSize { .. }), "{w}x{h}: {err}");
    }
}

/// The node moves renderers and the shared device into blocking tasks.
#[test]
fn executors_can_move_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Gpu>();
    sync::<Gpu>();
    send::<Renderer>();
}
