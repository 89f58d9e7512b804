//! Arbitrary bytes as a `POST /v1/jobs` body, as JSON and as TOML: the size
//! limit, the parser, validation (naga included), and a check that every
//! accepted spec keeps the limits validation promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    drover_shared::fuzzing::spec(data);
});
