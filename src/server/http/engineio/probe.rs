//! The upgrade of a long-polling session to WebSocket (Engine.IO 4):
//!
//! 1. the client opens a WebSocket with the session's `sid` and sends `2probe`;
//! 2. the server answers `3probe`, and answers the client's pending `GET` (a noop if it has
//!    nothing else), so the client can pause polling;
//! 3. the client sends `5` (upgrade); the server writes to the socket what was still
//!    waiting for a `GET` and moves the session onto the socket.
//!
//! The two probe frames are read byte-exactly (header, mask, payload), so nothing the
//! client sends after `5` is read here: it is the session's.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::polling::Polling;
use crate::server::http::upgrade::{BoxRead, BoxWrite};

/// How long the client has for each step of the probe (Engine.IO's `upgradeTimeout`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest probe frame payload read (the probe packets are a few bytes).
const MAX_PROBE_PAYLOAD: usize = 125;

/// Runs the probe on a new WebSocket of `polling`'s session and, if the client completes
/// it, hands the socket over. A failed probe closes the socket and leaves the session
/// polling.
pub(crate) async fn take_over(polling: Arc<Polling>, mut read: BoxRead, mut write: BoxWrite) {
    let probe = async {
        expect(&mut read, b"2probe").await?;
        write.write_all(&crate::frame::text(b"3probe")).await?;
        polling.upgrading();
        expect(&mut read, b"5").await
    };
    match tokio::time::timeout(2 * PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => polling.hand_over(read, write).await,
        Ok(Err(e)) => {
            tracing::debug!(sid = polling.sid(), error = %e, "upgrade probe failed");
            polling.upgrade_failed();
        }
        Err(_) => {
            tracing::debug!(sid = polling.sid(), "upgrade probe timed out");
            polling.upgrade_failed();
        }
    }
}

/// Reads one client text frame and checks that its payload is `expected`.
async fn expect(read: &mut (impl AsyncRead + Unpin), expected: &[u8]) -> io::Result<()> {
    let payload = read_text_frame(read).await?;
    if payload == expected {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected {:?}, got {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&payload)
            ),
        ))
    }
}

/// Reads exactly one small, unfragmented, masked text frame.
async fn read_text_frame(read: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut header = [0u8; 2];
    read.read_exact(&mut header).await?;
    if header[0] != 0x81 {
        return Err(invalid("not a whole text frame"));
    }
    if header[1] & 0x80 == 0 {
        return Err(invalid("client frames must be masked"));
    }
    let len = usize::from(header[1] & 0x7f);
    if len > MAX_PROBE_PAYLOAD {
        return Err(invalid("probe frame too long"));
    }
    let mut mask = [0u8; 4];
    read.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[tokio::test]
    async fn probe_frames_are_read_exactly() {
        let mut wire = masked(b"2probe");
        wire.extend_from_slice(&masked(b"5"));
        wire.extend_from_slice(b"rest");
        let mut read = &wire[..];
        expect(&mut read, b"2probe").await.unwrap();
        expect(&mut read, b"5").await.unwrap();
        assert_eq!(read, b"rest", "nothing past the probe is consumed");
    }

    #[tokio::test]
    async fn anything_else_fails_the_probe() {
        for wire in [
            masked(b"2prob"),
            vec![0x82, 0x80, 0, 0, 0, 0],
            vec![0x81, 0x01, b'x'],
        ] {
            assert!(expect(&mut &wire[..], b"2probe").await.is_err());
        }
    }
}
