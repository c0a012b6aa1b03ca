//! Client JSON messages (subscribe, unsubscribe, ping, …) through the simd-json parser, in
//! both grammars: SigmaVault's and Skreaver's (`request`, `ack`, top-level `channels`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmahub::protocol::message::{parse_as, ClientMessage, Grammar};

fuzz_target!(|data: &[u8]| {
    for grammar in [Grammar::SigmaVault, Grammar::Skreaver] {
        let mut buf = data.to_vec();
        match parse_as(grammar, &mut buf, 50) {
            Ok(ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list)) => {
                assert!(list.channels.len() <= 50, "a longer list is refused whole");
                if let Some(id) = list.correlation_id {
                    serde_json::from_str::<serde_json::Value>(id.as_raw().get())
                        .expect("echoed ids are JSON");
                }
            }
            Ok(ClientMessage::Request {
                data: Some(data), ..
            }) => {
                serde_json::from_str::<serde_json::Value>(&data).expect("request data is JSON");
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
    }
});
