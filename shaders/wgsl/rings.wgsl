// Rings: concentric rings that pulse outwards from the centre, their hue
// drifting with radius and time, softly vignetted towards the corners.

fn hue(h: f32) -> vec3<f32> {
    // Smooth rainbow: three phase-shifted cosines.
    return 0.5 + 0.5 * cos(6.28318 * (h + vec3<f32>(0.0, 0.33, 0.67)));
}

@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let res = drover.resolution;
    let p = (pos.xy - 0.5 * res) / res.y;
    let t = drover.time;
    let r = length(p);
    let a = atan2(p.y, p.x);

    // Rings move outwards (phase decreases with time); a slight angular
    // wobble keeps them from looking machined.
    let wobble = 0.015 * sin(a * 6.0 + t * 1.3);
    let phase = (r + wobble) * 30.0 - t * 4.0;
    // Soft-edged bands: a raised cosine sharpened by a power.
    let band = pow(0.5 + 0.5 * cos(phase), 3.0);

    let base = hue(r * 0.8 - t * 0.1);
    let glow = hue(r * 0.8 - t * 0.1 + 0.5);
    var col = mix(base * 0.15, glow, band);
    // Vignette: fade towards the corners.
    col = col * smoothstep(1.2, 0.2, r);
    // A faint pulsing core.
    col = col + vec3<f32>(1.0, 0.9, 0.7) * 0.25 * exp(-r * 12.0) * (0.6 + 0.4 * sin(t * 4.0));
    return vec4<f32>(clamp(col, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0);
}
