//! The inflater of compressed client messages: any bytes are refused or inflate within the
//! limit, and what the server compresses inflates back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Some(out) = sigmahub::fuzzing::inflate(data, LIMIT) {
        assert!(out.len() <= LIMIT, "inflated past the limit");
    }
    if let Some(compressed) = sigmahub::compression::compress(data, 6) {
        assert!(compressed.len() < data.len());
        let back = sigmahub::fuzzing::inflate(&compressed, data.len());
        assert_eq!(back.as_deref(), Some(data), "a round trip changed the bytes");
    }
});
