@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let uv = pos.xy / drover.resolution;
    return vec4<f32>(uv.x, uv.y, 0.5 + 0.5 * sin(drover.time), 1.0);
}
