//! wgpu render executor (being written).
