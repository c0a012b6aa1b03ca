//! Socket.IO clients' Engine.IO packets (`40{auth}`, `42/nsp,7["subscribe",…]`, binary
//! headers, garbage) through the Socket.IO dialect's decoder, and the reply addressed back
//! to each: never a panic, always a well-formed packet with JSON after its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmahub::protocol::message::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let (decoded, reply) = sigmahub::fuzzing::socketio_packet(data);
    if let Ok(ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list)) = &decoded {
        assert!(list.channels.len() <= 50, "a longer list is refused whole");
    }
    if let Err(e) = &decoded {
        assert!(!e.message.is_empty());
    }
    // `42[/nsp,]["error",{…}]` or `43[/nsp,]<id>[{…}]`: JSON from the first `[`.
    assert!(reply.starts_with("42") || reply.starts_with("43"), "{reply}");
    let json = &reply[reply.find('[').expect("an array")..];
    let args: serde_json::Value = serde_json::from_str(json).expect("the reply's JSON");
    assert!(args.is_array());
    let header = &reply[2..reply.find('[').unwrap()];
    if let Some(namespace) = header.strip_prefix('/') {
        let (namespace, id) = namespace.split_once(',').expect("a namespace ends with a comma");
        assert!(namespace.bytes().all(|b| b.is_ascii_graphic() && b != b','), "{reply}");
        assert!(id.bytes().all(|b| b.is_ascii_digit()), "{reply}");
    } else {
        assert!(header.bytes().all(|b| b.is_ascii_digit()), "{reply}");
    }
});
