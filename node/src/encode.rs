//! FFmpeg encode executor (being written).
