//! Bytes a client sends after the handshake on a connection that negotiated
//! permessage-deflate: the frame gate's RSV1 handling, the reader, and the inflater under
//! the message size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE_SIZE: usize = 4096;

fuzz_target!(|wire: &[u8]| {
    let read = sigmahub::fuzzing::read_client_frames(wire, MAX_MESSAGE_SIZE, true);
    for message in &read.messages {
        assert!(
            message.len() <= MAX_MESSAGE_SIZE,
            "a message over the limit got through, inflated or not"
        );
        assert!(
            std::str::from_utf8(message).is_ok(),
            "a text message is not UTF-8"
        );
    }
    if let Some(code) = read.violation {
        assert!(
            [1002, 1003, 1007, 1009].contains(&code.code),
            "unexpected close {code}"
        );
    }
});
