//! [`FrameGate`]: the socket as fastwebsockets sees it, one frame at a time.
//!
//! fastwebsockets reads into an 8 KiB buffer that it allocates when its reader is created and
//! keeps for the reader's life. Held by every idle connection, that buffer would dominate a
//! connection's memory. The gate makes the reader disposable instead: it follows the frame
//! headers (2 to 14 bytes) of the bytes it lets through and never lets a read go past the end
//! of the current frame. When fastwebsockets returns a frame, its buffer is therefore empty,
//! and the session may drop the reader; an idle connection waits in [`FrameGate::wait`] with
//! no buffer at all and creates a reader again when bytes arrive.
//!
//! Seeing each header also lets the gate refuse what fastwebsockets accepts silently: a
//! client frame without a mask (RFC 6455 §5.1 says the server MUST close the connection).
//!
//! The gate never parses payloads; fastwebsockets still parses and validates every frame.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The error a read returns for an unmasked client frame.
#[derive(Debug, thiserror::Error)]
#[error("client frame is not masked")]
pub(crate) struct UnmaskedFrame;

/// Where the gate is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `have` bytes of a header whose full length is `need` (2 until the second byte is seen).
    Header { have: u8, need: u8 },
    /// `left` payload bytes of the current frame still to come.
    Payload { left: u64 },
}

const START: Position = Position::Header { have: 0, need: 2 };

/// An [`AsyncRead`] that yields at most one frame's bytes per read. See the module docs.
pub(crate) struct FrameGate<R> {
    inner: R,
    position: Position,
    header: [u8; 14],
    /// One byte read by [`wait`](Self::wait) and not yet handed on.
    stash: Option<u8>,
}

impl<R: AsyncRead + Unpin> FrameGate<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            position: START,
            header: [0; 14],
            stash: None,
        }
    }

    /// Whether the stream stands between two frames with nothing buffered.
    pub(crate) fn at_boundary(&self) -> bool {
        self.position == START && self.stash.is_none()
    }

    /// Waits, holding no buffer, until the next frame's first byte arrives. Returns false at
    /// end of stream.
    pub(crate) async fn wait(&mut self) -> io::Result<bool> {
        debug_assert!(self.at_boundary());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_read(cx, &mut buf)).await?;
        if buf.filled().is_empty() {
            return Ok(false);
        }
        self.observe(&byte)?;
        self.stash = Some(byte[0]);
        Ok(true)
    }

    /// How many bytes the current frame may still pass.
    fn allowance(&self) -> usize {
        match self.position {
            Position::Header { have, need } => usize::from(need - have),
            Position::Payload { left } => usize::try_from(left).unwrap_or(usize::MAX),
        }
    }

    /// Follows the frame structure over `bytes`, which must not cross the current frame.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.position {
                Position::Header { have, need } => {
                    let take = bytes.len().min(usize::from(need - have));
                    let at = usize::from(have);
                    self.header[at..at + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take as u8;
                    self.position = Position::Header { have, need };
                    if have == 2 && need == 2 {
                        if self.header[1] & 0x80 == 0 {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, UnmaskedFrame));
                        }
                        let extended = match self.header[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        self.position = Position::Header {
                            have,
                            need: 2 + extended + 4,
                        };
                    }
                    if let Position::Header { have, need } = self.position {
                        if have == need {
                            self.position = match self.payload_len() {
                                0 => START,
                                left => Position::Payload { left },
                            };
                        }
                    }
                }
                Position::Payload { left } => {
                    let take = (bytes.len() as u64).min(left);
                    bytes = &bytes[take as usize..];
                    self.position = match left - take {
                        0 => START,
                        left => Position::Payload { left },
                    };
                }
            }
        }
        Ok(())
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameGate<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(byte) = self.stash.take() {
            buf.put_slice(&[byte]);
            return Poll::Ready(Ok(()));
        }
        let allowance = self.allowance().min(buf.remaining());
        let start = buf.filled().len();
        let window = buf.initialize_unfilled_to(allowance);
        let mut limited = ReadBuf::new(window);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        let this = &mut *self;
        this.observe(&buf.filled()[start..start + n])?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn masked(fin_opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![fin_opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    /// Reads as fastwebsockets would (big reads) and records how the stream was cut.
    async fn cuts(wire: Vec<u8>) -> Vec<usize> {
        let mut gate = FrameGate::new(std::io::Cursor::new(wire));
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; 100_000];
            let n = gate.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.push(n);
        }
    }

    #[tokio::test]
    async fn reads_never_cross_a_frame_boundary() {
        let mut wire = masked(0x81, b"hello");
        wire.extend(masked(0x89, b""));
        wire.extend(masked(0x81, &[b'x'; 300]));
        wire.extend(masked(0x81, &[b'y'; 70_000]));
        let got = cuts(wire).await;
        // header start (2), rest of header (mask), payload; per frame.
        assert_eq!(got, vec![2, 4, 5, 2, 4, 2, 6, 300, 2, 12, 70_000]);
    }

    #[tokio::test]
    async fn wait_holds_one_byte_and_hands_it_on() {
        let mut gate = FrameGate::new(std::io::Cursor::new(masked(0x81, b"hi")));
        assert!(gate.at_boundary());
        assert!(gate.wait().await.unwrap());
        assert!(!gate.at_boundary());
        let mut all = Vec::new();
        gate.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, masked(0x81, b"hi"));
        assert!(gate.at_boundary());
        assert!(!gate.wait().await.unwrap(), "end of stream");
    }

    #[tokio::test]
    async fn unmasked_frames_are_refused() {
        let mut gate = FrameGate::new(std::io::Cursor::new(vec![0x81, 0x02, b'h', b'i']));
        let mut buf = [0u8; 16];
        let err = gate.read(&mut buf).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<UnmaskedFrame>()));
    }
}
