//! Segment concatenation (being written).
