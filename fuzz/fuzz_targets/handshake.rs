//! Arbitrary bytes as a node's whole control stream, as the coordinator
//! reads it: the stream kind, the preamble, the hello (validated), then the
//! messages after it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_protocol::fuzzing::session(data);
});
