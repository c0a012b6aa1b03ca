//! `POST /api/v1/publish` bodies: accepted events have valid channels and JSON data that
//! encodes into a well-formed frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(events) = sigmahub::protocol::publish::parse(body) {
        for event in events {
            assert!(sigmahub::protocol::channel::validate(event.channel()).is_ok());
            let frame = event.to_frame(std::time::SystemTime::UNIX_EPOCH);
            let start = match frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let v: serde_json::Value =
                serde_json::from_slice(&frame[start..]).expect("frames hold JSON");
            assert_eq!(v["type"], event.channel().as_str());
        }
    }
});
