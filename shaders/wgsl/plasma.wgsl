// Plasma: four interfering sine fields (two linear, one radial, one
// rotating), mapped through a smooth cosine palette. Resolution-independent:
// coordinates are scaled by the image height, so the pattern keeps its shape
// at any aspect ratio.

// Cosine palette (Inigo Quilez): a + b * cos(2*pi*(c*t + d)).
fn palette(t: f32) -> vec3<f32> {
    let a = vec3<f32>(0.5, 0.5, 0.5);
    let b = vec3<f32>(0.5, 0.5, 0.5);
    let c = vec3<f32>(1.0, 1.0, 1.0);
    let d = vec3<f32>(0.00, 0.33, 0.67);
    return a + b * cos(6.28318 * (c * t + d));
}

@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let res = drover.resolution;
    // Centred coordinates, about -1..1 vertically.
    let p = (pos.xy - 0.5 * res) / res.y * 3.0;
    let t = drover.time;

    var v = sin(p.x * 1.7 + t * 1.1);
    v = v + sin(p.y * 1.3 - t * 0.9);
    v = v + sin((p.x + p.y) * 1.1 + t * 0.7);
    // A moving centre for the radial term keeps the image from looking
    // symmetric.
    let c = p + vec2<f32>(sin(t * 0.5) * 1.5, cos(t * 0.33) * 1.2);
    v = v + sin(length(c) * 2.3 - t * 1.6);
    // A rotating stripe field adds slow large-scale motion.
    let ang = t * 0.2;
    let r = vec2<f32>(cos(ang) * p.x - sin(ang) * p.y, sin(ang) * p.x + cos(ang) * p.y);
    v = v + 0.5 * sin(r.x * 3.0);

    let col = palette(v * 0.2 + t * 0.05);
    return vec4<f32>(col, 1.0);
}
