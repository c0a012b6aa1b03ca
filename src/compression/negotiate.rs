//! The permessage-deflate negotiation (RFC 7692 §5, §7.1) on a WebSocket upgrade.
//!
//! The server accepts the first permessage-deflate offer it can honour and answers with
//! [`ANSWER`]: no context takeover either way. An offer is declined when it is malformed
//! (an unknown or repeated parameter, a bad value: §5 says the server must not accept it)
//! or when it asks for a `server_max_window_bits` of 8, which zlib cannot compress with.
//!
//! The one compressed frame of a broadcast is shared by every subscriber that takes it, so
//! the server compresses with a few windows only ([`Window`]): a client that asks for a
//! `server_max_window_bits` below 15 is answered with the largest of them that is no
//! larger, and shares that window's frame with every other client in its group. A
//! declined offer costs the client nothing but compression.

/// The extension's name.
pub const EXTENSION: &str = "permessage-deflate";

/// The `Sec-WebSocket-Extensions` answer to an accepted offer.
pub const ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The deflate windows the server compresses broadcasts with, one shared frame per window
/// that has subscribers: a client's `server_max_window_bits` is rounded down to one of
/// them. Three, not seven: every window is one more compression per broadcast and one
/// more subscriber set per channel, and a smaller window only matters for messages longer
/// than it (512 bytes, 4 KiB, 32 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Window {
    /// 15 bits, 32 KiB: what a client gets unless it asks for less.
    #[default]
    Bits15,
    /// 12 bits, 4 KiB: for a client asking for 12 to 14.
    Bits12,
    /// 9 bits, 512 bytes: for a client asking for 9 to 11.
    Bits9,
}

impl Window {
    /// Every window, in [`index`](Self::index) order.
    pub const ALL: [Window; 3] = [Window::Bits15, Window::Bits12, Window::Bits9];

    /// The largest window of at most `bits` bits, if any (8 has none: zlib compresses
    /// with at least 9).
    pub const fn at_most(bits: u8) -> Option<Self> {
        match bits {
            15.. => Some(Self::Bits15),
            12..=14 => Some(Self::Bits12),
            9..=11 => Some(Self::Bits9),
            _ => None,
        }
    }

    /// Its size, as a base-2 logarithm.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Bits15 => 15,
            Self::Bits12 => 12,
            Self::Bits9 => 9,
        }
    }

    /// Its place in [`ALL`](Self::ALL).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What an accepted offer agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window the server compresses with for this client.
    pub window: Window,
    /// Whether the offer named `server_max_window_bits`: the answer must then name it too
    /// (RFC 7692 §7.1.2.1).
    pub window_asked: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn answer(&self) -> &'static str {
        match (self.window_asked, self.window) {
            (false, _) => ANSWER,
            (true, Window::Bits15) => concat!(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "; server_max_window_bits=15"
            ),
            (true, Window::Bits12) => concat!(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "; server_max_window_bits=12"
            ),
            (true, Window::Bits9) => concat!(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "; server_max_window_bits=9"
            ),
        }
    }
}

/// What the server agrees to, if it accepts one of `offers` (the first it can honour):
/// the values of the request's `Sec-WebSocket-Extensions` headers, each a comma-separated
/// list of extensions.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    offers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .find_map(acceptable)
}

/// What the server agrees to for one extension of an offer, if it is a permessage-deflate
/// offer the server honours.
fn acceptable(extension: &str) -> Option<Agreed> {
    let mut parts = extension.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        window: Window::Bits15,
        window_asked: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
            None => (param, None),
        };
        let (index, ok) = match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => (0, true),
            ("client_no_context_takeover", None) => (1, true),
            // The largest window the client inflates with.
            ("server_max_window_bits", Some(bits)) => {
                let window = bits.and_then(Window::at_most);
                if let Some(window) = window {
                    agreed = Agreed {
                        window,
                        window_asked: true,
                    };
                }
                (2, window.is_some())
            }
            // The window the client compresses with: the server inflates any.
            ("client_max_window_bits", None) => (3, true),
            ("client_max_window_bits", Some(bits)) => (3, bits.is_some()),
            _ => return None,
        };
        if !ok || std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(agreed)
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
        negotiate([offer.as_bytes()]).is_some()
    }

    fn window_of(offer: &str) -> Agreed {
        negotiate([offer.as_bytes()]).expect(offer)
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
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
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
    fn a_smaller_window_is_rounded_down_to_a_shared_one_and_answered() {
        let offer = |bits: u8| {
            window_of(&format!(
                "permessage-deflate; server_max_window_bits={bits}"
            ))
        };
        for (bits, window) in [
            (15, Window::Bits15),
            (14, Window::Bits12),
            (12, Window::Bits12),
            (11, Window::Bits9),
            (10, Window::Bits9),
            (9, Window::Bits9),
        ] {
            let agreed = offer(bits);
            assert_eq!(agreed.window, window, "{bits}");
            assert!(agreed.window.bits() <= bits);
            assert!(
                agreed
                    .answer()
                    .ends_with(&format!("; server_max_window_bits={}", window.bits())),
                "{}",
                agreed.answer()
            );
        }
        let plain = window_of("permessage-deflate; client_max_window_bits");
        assert_eq!(plain.window, Window::Bits15);
        assert_eq!(plain.answer(), ANSWER, "not asked, not answered");
        assert_eq!(
            window_of("permessage-deflate; server_max_window_bits=\"10\"").window,
            Window::Bits9
        );
        for (i, window) in Window::ALL.into_iter().enumerate() {
            assert_eq!(window.index(), i);
        }
    }

    #[test]
    fn a_later_offer_or_header_may_be_accepted() {
        assert_eq!(
            window_of("permessage-deflate; server_max_window_bits=8, permessage-deflate").window,
            Window::Bits15
        );
        let agreed = negotiate([
            "permessage-deflate; server_max_window_bits=8".as_bytes(),
            b"permessage-deflate; server_max_window_bits=13",
        ]);
        assert_eq!(agreed.map(|a| a.window), Some(Window::Bits12));
        assert!(negotiate([&[0xff, 0xfe][..]]).is_none());
    }
}
