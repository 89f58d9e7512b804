// Fractal: a Julia set whose constant c travels slowly just inside the edge
// of the Mandelbrot set's main cardioid (where Julia sets are connected and
// most intricate), while the view zooms in and out and rotates. Smooth
// (continuous) iteration counts give banding-free colour.

// Bounded so a frame costs the same on every adapter, lavapipe included.
const MAX_ITER: i32 = 96;
const ESCAPE_RADIUS_SQ: f32 = 256.0;

fn palette(t: f32) -> vec3<f32> {
    let a = vec3<f32>(0.5, 0.5, 0.5);
    let b = vec3<f32>(0.5, 0.5, 0.5);
    let c = vec3<f32>(1.0, 1.0, 1.0);
    let d = vec3<f32>(0.00, 0.10, 0.20);
    return a + b * cos(6.28318 * (c * t + d));
}

@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let res = drover.resolution;
    let t = drover.time;
    var p = (pos.xy - 0.5 * res) / res.y;

    // Zoom breathes between 1x and 1.8x; rotation is slow and steady.
    let zoom = 1.0 + 0.4 * (1.0 - cos(t * 0.15));
    let ang = t * 0.1;
    p = vec2<f32>(cos(ang) * p.x - sin(ang) * p.y, sin(ang) * p.x + cos(ang) * p.y);
    var z = p * 2.6 / zoom;

    // The cardioid's boundary is c(a) = e^(ia)/2 - e^(2ia)/4; scaling it by
    // a little under 1 keeps c inside, so the set stays connected.
    let ca = 1.9 + t * 0.06;
    let edge = 0.5 * vec2<f32>(cos(ca), sin(ca)) - 0.25 * vec2<f32>(cos(2.0 * ca), sin(2.0 * ca));
    let c = edge * 0.985;

    var i: i32 = 0;
    var m2 = dot(z, z);
    loop {
        if (i >= MAX_ITER || m2 > ESCAPE_RADIUS_SQ) {
            break;
        }
        z = vec2<f32>(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        m2 = dot(z, z);
        i = i + 1;
    }

    if (i >= MAX_ITER) {
        // Inside the set: a dark tint that shifts with time.
        return vec4<f32>(0.02, 0.02, 0.05 + 0.03 * sin(t), 1.0);
    }
    // Continuous escape count: n + 1 - log2(log|z|).
    let smooth_i = f32(i) + 1.0 - log2(log(m2) * 0.5);
    // sqrt spreads the many early escapes over more of the palette.
    let col = palette(sqrt(max(smooth_i, 0.0)) * 0.3 + t * 0.03);
    return vec4<f32>(col, 1.0);
}
