//! Every built-in shader validates, compiles on the adapter `Gpu::new` picks
//! (lavapipe on a machine without a GPU) and draws a varying, animated image.

use drover_node::render::{Gpu, Renderer};

const WIDTH: u32 = 160;
const HEIGHT: u32 = 90;
const FPS: u32 = 24;

/// Number of distinct RGB colours in an RGBA image.
fn distinct_colours(rgba: &[u8]) -> usize {
    let mut seen: Vec<[u8; 3]> = rgba.chunks_exact(4).map(|p| [p[0], p[1], p[2]]).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// Mean absolute difference per RGB channel between two RGBA images.
fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .map(|(p, q)| (0..3).map(|c| u64::from(p[c].abs_diff(q[c]))).sum::<u64>())
        .sum();
    total as f64 / (a.len() / 4 * 3) as f64
}

#[test]
fn builtins_render_varying_animated_images() {
    let gpu = Gpu::new().expect("no render adapter");
    let adapter = gpu.adapter();
    println!(
        "rendering on {} ({}, {}, driver {})",
        adapter.name, adapter.backend, adapter.device_type, adapter.driver
    );
    assert!(!drover_shaders::BUILTIN.is_empty());
    for builtin in drover_shaders::BUILTIN {
        drover_shared::shader::validate(builtin.source)
            .unwrap_or_else(|e| panic!("{}: {e}", builtin.name));
        let mut renderer = Renderer::new(&gpu, builtin.source, WIDTH, HEIGHT, FPS)
            .unwrap_or_else(|e| panic!("{}: {e}", builtin.name));
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|f| {
                renderer
                    .render(f)
                    .unwrap_or_else(|e| panic!("{} frame {f}: {e}", builtin.name))
            })
            .collect();
        for (f, rgba) in frames.iter().enumerate() {
            assert_eq!(rgba.len(), (WIDTH * HEIGHT * 4) as usize);
            let colours = distinct_colours(rgba);
            println!("{} frame {f}: {colours} distinct colours", builtin.name);
            assert!(
                colours > 50,
                "{} frame {f} is nearly constant ({colours} colours)",
                builtin.name
            );
            assert!(
                rgba.chunks_exact(4).all(|p| p[3] == 255),
                "{} alpha",
                builtin.name
            );
        }
        for f in 1..frames.len() {
            let diff = mean_abs_diff(&frames[f - 1], &frames[f]);
            println!(
                "{} frames {} -> {f}: mean |diff| {diff:.3}",
                builtin.name,
                f - 1
            );
            assert!(
                diff > 0.05,
                "{} frames {} and {f} are the same",
                builtin.name,
                f - 1
            );
        }
        // Rendering is deterministic: the same frame twice is bit-identical.
        assert_eq!(
            renderer.render(1).unwrap(),
            frames[1],
            "{} frame 1 re-render",
            builtin.name
        );
    }
}
