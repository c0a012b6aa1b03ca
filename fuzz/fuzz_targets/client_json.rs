//! Client JSON messages (subscribe, unsubscribe, ping, …) through the simd-json parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmahub::protocol::message::{parse, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    match parse(&mut buf, 50) {
        Ok(ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list)) => {
            if let Some(id) = list.correlation_id {
                serde_json::from_str::<serde_json::Value>(id.as_raw().get())
                    .expect("echoed ids are JSON");
            }
        }
        Ok(_) => {}
        Err(e) => {
            assert!(!e.code.as_str().is_empty() && !e.message.is_empty());
            if let Some(id) = e.correlation_id {
                serde_json::from_str::<serde_json::Value>(id.as_raw().get())
                    .expect("echoed ids are JSON");
            }
        }
    }
});
