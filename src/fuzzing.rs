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
/// `wire` (bytes a client sent after the handshake) until the stream ends or breaks a rule.
pub fn read_client_frames(wire: &[u8], max_message_size: usize) -> Read {
    let mut reader = MessageReader::new(std::io::Cursor::new(wire), max_message_size);
    let mut out = Read::default();
    loop {
        // An in-memory stream is always ready: poll without a runtime.
        let mut next = std::pin::pin!(reader.next());
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
            Err(ReadEnd::Violation(code)) => {
                out.violation = Some(code);
                return out;
            }
        }
    }
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
