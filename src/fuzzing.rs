//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a public API.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use crate::protocol::close::CloseCode;
use crate::server::reader::{Incoming, MessageReader, ReadEnd};

/// What the client frame reader made of a byte stream.
#[derive(Debug, Default)]
pub struct Read {
    /// Whole text messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// Pings, pongs and closes seen.
    pub control: usize,
    /// The close code the server would send, if the stream broke a rule.
    pub violation: Option<CloseCode>,
}

/// Runs sigmahub's client frame reader, configured as the server configures it, over
/// `wire` (bytes a client sent after the handshake) until the stream ends or breaks a rule;
/// `deflate` as on a connection that negotiated permessage-deflate.
pub fn read_client_frames(wire: &[u8], max_message_size: usize, deflate: bool) -> Read {
    let mut reader = MessageReader::new(std::io::Cursor::new(wire), max_message_size, deflate);
    let mut out = Read::default();
    let at_rest = std::sync::atomic::AtomicBool::new(false);
    loop {
        // An in-memory stream is always ready: poll without a runtime.
        let mut next = std::pin::pin!(reader.next(&at_rest));
        let result = match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("an in-memory stream never blocks"),
        };
        match result {
            Ok(Incoming::Text(message)) => out.messages.push(message),
            Ok(Incoming::Close) => {
                out.control += 1;
                return out;
            }
            Ok(Incoming::Ping(_) | Incoming::Pong | Incoming::Binary) => out.control += 1,
            Err(ReadEnd::Gone) => return out,
            Err(end @ (ReadEnd::Violation(_) | ReadEnd::Inflate(_))) => {
                out.violation = end.close_code();
                return out;
            }
        }
    }
}

/// Inflates `compressed` as the reader inflates a client's compressed message, producing
/// at most `limit` bytes: `None` if it is refused (too big, or not deflate).
pub fn inflate(compressed: &[u8], limit: usize) -> Option<Vec<u8>> {
    crate::compression::inflate(compressed, limit).ok()
}

/// What a session does with an accepted token's expiry: the `expires_at` its
/// `auth_response` shows, and the moment its expiry timer is armed for (`None`: too far to
/// arm), counted from now.
pub fn token_lifetime(expires_at: std::time::SystemTime) -> (String, Option<std::time::Duration>) {
    let shown = crate::event::rfc3339(expires_at);
    let clock = tokio::time::Instant::now();
    let armed = crate::server::deadline::on_clock(expires_at, std::time::SystemTime::now(), clock)
        .map(|at| at - clock);
    (shown, armed)
}

/// Decodes `packet` as a Socket.IO client's Engine.IO packet, as the session does, and
/// writes the reply the session would address to it (an error or an ack): the message (or
/// the refusal), and the reply's payload.
pub fn socketio_packet(
    packet: &[u8],
) -> (
    Result<crate::protocol::message::ClientMessage, crate::protocol::message::MessageError>,
    String,
) {
    use crate::dialect::ServerMessage;
    use crate::protocol::message::ClientMessage;
    let decoded = crate::dialect::Dialect::SocketIo.decode(&mut packet.to_vec(), 50);
    let address = match &decoded {
        Ok(ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list)) => {
            list.correlation_id.clone()
        }
        Ok(
            ClientMessage::Connect { correlation_id, .. }
            | ClientMessage::Ping { correlation_id }
            | ClientMessage::Auth { correlation_id, .. }
            | ClientMessage::Publish { correlation_id, .. }
            | ClientMessage::Request { correlation_id, .. },
        ) => correlation_id.clone(),
        Ok(_) => None,
        Err(e) => e.correlation_id.clone(),
    };
    let reply = crate::dialect::Dialect::SocketIo.message(
        ServerMessage::Error,
        address.as_ref(),
        std::time::SystemTime::UNIX_EPOCH,
        &serde_json::json!({"code": "x", "message": "y"}),
    );
    let payload = crate::frame::payload_of(&reply);
    (
        decoded,
        String::from_utf8(payload.to_vec()).expect("replies are UTF-8"),
    )
}
