//! permessage-deflate (RFC 7692), compressed once per broadcast.
//!
//! The usual server compresses each message for each connection, in that connection's
//! deflate context: its CPU grows with the subscribers. sigmahub compresses a broadcast
//! once. It agrees with every client on `server_no_context_takeover`, so that a message is
//! compressed on its own, with no history shared with the messages before it; the one
//! compressed frame is then as shareable as the plain one, and every subscriber that
//! negotiated the extension gets a refcounted clone of it (see [`crate::dialect::Encoding`]).
//! It also asks for `client_no_context_takeover`, so that no connection keeps a 32 KiB
//! inflate window between the client's messages. A client that asks for a smaller window
//! shares the frame compressed with one of a few windows ([`negotiate::Window`]) with the
//! other clients of that window.
//!
//! - [`negotiate`]: the `Sec-WebSocket-Extensions` offer and answer.
//! - `deflate`: one message compressed into a complete frame (private).
//! - `inflate`: a client's compressed message inflated under the size limit (private).
//!
//! The compressor is zlib-rs (through flate2), one-shot per message with its state reused
//! per thread. It was chosen over libdeflate, which compresses small messages as well at a
//! lower level, in less time: libdeflate only writes whole streams, ending in a final
//! block, while RFC 7692's usual form is a sync-flushed message (an empty stored block,
//! stripped). The final-block form is allowed (§7.2.3.4) but is not the one every client
//! is known to read; zlib-rs's sync flush is. Compressed once per broadcast, the time per
//! message (10-13 µs at level 6 for SigmaVault's events) is spread over the subscribers
//! (see `benches/compression.rs` and perf/README.md).

pub(crate) mod deflate;
pub(crate) mod inflate;
pub mod negotiate;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub(crate) use deflate::Deflater;
pub use deflate::{compress, DeflateStats};
pub(crate) use inflate::{inflate, InflateError};

/// Compression of WebSocket messages (TOML section `[compression]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// `on`: permessage-deflate with every WebSocket client that offers it (browsers do);
    /// `off`: never. Default `on`.
    pub mode: CompressionMode,
    /// Messages whose payload is shorter than this many bytes are sent uncompressed: below
    /// about 100 bytes deflate saves little or nothing. Default 128.
    pub threshold: usize,
    /// The deflate level, 1 (fastest) to 9 (smallest). Default 6, zlib's own default: a
    /// broadcast is compressed once for all its subscribers.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            mode: CompressionMode::On,
            threshold: 128,
            level: 6,
        }
    }
}

/// Whether the server compresses (see [`CompressionConfig::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionMode {
    /// permessage-deflate with every client that offers it.
    On,
    /// Never: offers are declined.
    Off,
}
