//! Channel names: anything accepted is short, ASCII, and needs no JSON escaping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmahub::protocol::channel::{validate, Channel, MAX_CHANNEL_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate(name).is_ok();
    assert_eq!(valid, Channel::new(name).is_ok());
    if valid {
        assert!(!name.is_empty() && name.len() <= MAX_CHANNEL_LEN && name.is_ascii());
        assert_eq!(serde_json::to_string(name).unwrap(), format!("\"{name}\""));
    }
});
