//! Arbitrary bytes through every frame reader, on both sides: the
//! coordinator's reads of a node's control and upload streams (each message
//! validated against the protocol's limits) and the node's reads of the
//! coordinator's.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    drover_protocol::fuzzing::decode_all(data);
});
