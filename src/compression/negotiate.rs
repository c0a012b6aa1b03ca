//! The permessage-deflate negotiation (RFC 7692 §5, §7.1) on a WebSocket upgrade.
//!
//! The server accepts the first permessage-deflate offer it can honour and answers with
//! [`ANSWER`]: no context takeover either way. An offer is declined when it is malformed
//! (an unknown or repeated parameter, a bad value: §5 says the server must not accept it)
//! or when it asks for a `server_max_window_bits` below 15: the one compressed frame of a
//! broadcast is shared by every subscriber, and it is compressed with the full window.
//! A declined offer costs the client nothing but compression.

/// The extension's name.
pub const EXTENSION: &str = "permessage-deflate";

/// The `Sec-WebSocket-Extensions` answer to an accepted offer.
pub const ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Whether the server accepts one of `offers`, the values of the request's
/// `Sec-WebSocket-Extensions` headers (each a comma-separated list of extensions).
pub fn accepts<'a>(offers: impl IntoIterator<Item = &'a [u8]>) -> bool {
    offers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .any(acceptable)
}

/// Whether one extension of an offer is a permessage-deflate offer the server honours.
fn acceptable(extension: &str) -> bool {
    let mut parts = extension.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        return false;
    }
    let mut seen = [false; 4];
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
            None => (param, None),
        };
        let (index, ok) = match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => (0, true),
            ("client_no_context_takeover", None) => (1, true),
            // The client may inflate with a smaller window than ours: declined.
            ("server_max_window_bits", Some(bits)) => (2, bits == Some(15)),
            // The window the client compresses with: the server inflates any.
            ("client_max_window_bits", None) => (3, true),
            ("client_max_window_bits", Some(bits)) => (3, bits.is_some()),
            _ => return false,
        };
        if !ok || std::mem::replace(&mut seen[index], true) {
            return false;
        }
    }
    true
}

/// A window-bits value, `15` or `"15"`: `Some` if it is 8 to 15 written plainly.
fn unquote(value: &str) -> Option<u8> {
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.is_empty() || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_one(offer: &str) -> bool {
        accepts([offer.as_bytes()])
    }

    #[test]
    fn what_clients_send_is_accepted() {
        for offer in [
            // Chromium, Firefox
            "permessage-deflate; client_max_window_bits",
            // python websockets
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits",
            // node ws
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "PerMessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=\"10\"",
            "x-webkit-deflate-frame, permessage-deflate",
        ] {
            assert!(accepts_one(offer), "{offer}");
        }
    }

    #[test]
    fn malformed_or_unhonoured_offers_are_declined() {
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=015",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflated",
        ] {
            assert!(!accepts_one(offer), "{offer}");
        }
    }

    #[test]
    fn a_later_offer_or_header_may_be_accepted() {
        assert!(accepts_one(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=9".as_bytes(),
            b"permessage-deflate; client_max_window_bits",
        ]));
        assert!(!accepts([&[0xff, 0xfe][..]]));
    }
}
