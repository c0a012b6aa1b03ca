//! Bytes a client sends after the handshake, through sigmahub's frame reader as the server
//! configures it (fastwebsockets behind the frame gate, message assembly, limits).
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE_SIZE: usize = 4096;

fuzz_target!(|wire: &[u8]| {
    let read = sigmahub::fuzzing::read_client_frames(wire, MAX_MESSAGE_SIZE, false);
    let mut total = 0;
    for message in &read.messages {
        assert!(
            message.len() <= MAX_MESSAGE_SIZE,
            "a message over the limit got through"
        );
        assert!(
            std::str::from_utf8(message).is_ok(),
            "a text message is not UTF-8"
        );
        total += message.len();
    }
    // Nothing is invented: payload bytes come from the wire.
    assert!(total <= wire.len());
    if let Some(code) = read.violation {
        assert!(
            [1002, 1003, 1007, 1009].contains(&code.code),
            "unexpected close {code}"
        );
    }
});
