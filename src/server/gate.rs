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
//! # permessage-deflate
//! fastwebsockets refuses every frame with a reserved bit set, RSV1 included, which marks a
//! compressed message (RFC 7692 §6). On a connection that negotiated the extension the gate
//! takes RSV1 off the first frame of a message before fastwebsockets sees it and remembers
//! it ([`FrameGate::compressed`]); a compressed text frame is handed on as binary, so that
//! fastwebsockets does not check its compressed bytes as UTF-8 (the reader checks the
//! inflated text). RSV1 on a control frame or a continuation is refused (§6.1).
//!
//! The gate never parses payloads; fastwebsockets still parses and validates every frame.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The error a read returns for a frame header the gate refuses (1002).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadHeader {
    /// A client frame without a mask.
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1 on a control frame or a continuation (RFC 7692 §6.1).
    #[error("RSV1 set on a control frame or a continuation")]
    MisplacedRsv1,
    /// The stream was read past the gate and no longer stands where the gate thinks
    /// ([`FrameGate::poison`]).
    #[error("the stream was read past its frame structure")]
    Lost,
}

/// RSV1: the message is compressed.
const RSV1: u8 = 0x40;

/// How the message being read is compressed (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compressed {
    /// Not compressed.
    No,
    /// A compressed text message, handed on as binary.
    Text,
    /// A compressed binary message.
    Binary,
}

/// Where the gate is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `have` bytes of a header whose full length is `need` (2 until the second byte is seen).
    Header { have: u8, need: u8 },
    /// `left` payload bytes of the current frame still to come.
    Payload { left: u64 },
    /// Lost: every read fails ([`FrameGate::poison`]).
    Lost,
}

const START: Position = Position::Header { have: 0, need: 2 };

/// An [`AsyncRead`] that yields at most one frame's bytes per read. See the module docs.
pub(crate) struct FrameGate<R> {
    inner: R,
    position: Position,
    header: [u8; 14],
    /// One byte read by [`wait`](Self::wait) and not yet handed on.
    stash: Option<u8>,
    /// Whether the connection negotiated permessage-deflate.
    deflate: bool,
    /// How the message whose frames are being read is compressed.
    compressed: Compressed,
}

impl<R: AsyncRead + Unpin> FrameGate<R> {
    /// A gate over `inner`; `deflate` if the connection negotiated permessage-deflate.
    pub(crate) fn new(inner: R, deflate: bool) -> Self {
        Self {
            inner,
            position: START,
            header: [0; 14],
            stash: None,
            deflate,
            compressed: Compressed::No,
        }
    }

    /// How the current message (the one whose first data frame came last) is compressed.
    pub(crate) fn compressed(&self) -> Compressed {
        self.compressed
    }

    /// The stream it reads.
    pub(crate) fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Makes the next read fail as a protocol error: the stream was read past the gate and
    /// no longer stands where the gate thinks.
    pub(crate) fn poison(&mut self) {
        self.position = Position::Lost;
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
        self.observe(&mut byte)?;
        self.stash = Some(byte[0]);
        Ok(true)
    }

    /// How many bytes the current frame may still pass.
    fn allowance(&self) -> usize {
        match self.position {
            Position::Header { have, need } => usize::from(need - have),
            Position::Payload { left } => usize::try_from(left).unwrap_or(usize::MAX),
            Position::Lost => 0,
        }
    }

    /// Follows the frame structure over `bytes`, which must not cross the current frame,
    /// rewriting a compressed message's first byte (see the [module docs](self)).
    fn observe(&mut self, mut bytes: &mut [u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.position {
                Position::Header { have, need } => {
                    if have == 0 {
                        self.first_byte(&mut bytes[0])?;
                    }
                    let take = bytes.len().min(usize::from(need - have));
                    let at = usize::from(have);
                    self.header[at..at + take].copy_from_slice(&bytes[..take]);
                    bytes = &mut bytes[take..];
                    let have = have + take as u8;
                    self.position = Position::Header { have, need };
                    if have == 2 && need == 2 {
                        if self.header[1] & 0x80 == 0 {
                            return Err(refused(BadHeader::Unmasked));
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
                Position::Lost => return Err(refused(BadHeader::Lost)),
                Position::Payload { left } => {
                    let take = (bytes.len() as u64).min(left);
                    bytes = &mut bytes[take as usize..];
                    self.position = match left - take {
                        0 => START,
                        left => Position::Payload { left },
                    };
                }
            }
        }
        Ok(())
    }

    /// Notes whether a message starts, compressed or not, at this frame's first byte, and
    /// takes RSV1 off a compressed one's.
    fn first_byte(&mut self, byte: &mut u8) -> io::Result<()> {
        let opcode = *byte & 0x0f;
        if *byte & RSV1 == 0 || !self.deflate {
            // Without the extension, fastwebsockets refuses RSV1 itself.
            if matches!(opcode, 0x1 | 0x2) {
                self.compressed = Compressed::No;
            }
            return Ok(());
        }
        self.compressed = match opcode {
            0x1 => Compressed::Text,
            0x2 => Compressed::Binary,
            _ => return Err(refused(BadHeader::MisplacedRsv1)),
        };
        *byte = (*byte & !RSV1 & 0xf0) | 0x2;
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
        if self.position == Position::Lost {
            return Poll::Ready(Err(refused(BadHeader::Lost)));
        }
        let allowance = self.allowance().min(buf.remaining());
        let start = buf.filled().len();
        let window = buf.initialize_unfilled_to(allowance);
        let mut limited = ReadBuf::new(window);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        let this = &mut *self;
        this.observe(&mut buf.filled_mut()[start..start + n])?;
        Poll::Ready(Ok(()))
    }
}

fn refused(why: BadHeader) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
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
        let mut gate = FrameGate::new(std::io::Cursor::new(wire), false);
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
        let mut gate = FrameGate::new(std::io::Cursor::new(masked(0x81, b"hi")), false);
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
        let mut gate = FrameGate::new(std::io::Cursor::new(vec![0x81, 0x02, b'h', b'i']), false);
        let mut buf = [0u8; 16];
        let err = gate.read(&mut buf).await.unwrap_err();
        assert!(matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<BadHeader>()),
            Some(BadHeader::Unmasked)
        ));
    }

    #[tokio::test]
    async fn rsv1_is_taken_off_a_compressed_message_and_refused_elsewhere() {
        let wire = [masked(0xc1, b"z"), masked(0x80, b"y"), masked(0x81, b"x")].concat();
        let mut gate = FrameGate::new(std::io::Cursor::new(wire), true);
        let mut buf = vec![0u8; 64];
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!((n, buf[0]), (2, 0x82), "text handed on as binary, RSV1 off");
        assert_eq!(gate.compressed(), Compressed::Text);
        // Header rest, payload, then the continuation: still the compressed message.
        for n in [4, 1, 2] {
            gate.read_exact(&mut buf[..n]).await.unwrap();
        }
        assert_eq!((buf[0], gate.compressed()), (0x80, Compressed::Text));
        gate.read_exact(&mut buf[..5]).await.unwrap();
        let mut rest = Vec::new();
        gate.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest[0], 0x81);
        assert_eq!(gate.compressed(), Compressed::No);

        for (first, deflate) in [(0xc9, true), (0xc0, true)] {
            let mut gate = FrameGate::new(std::io::Cursor::new(masked(first, b"")), deflate);
            let err = gate.read(&mut buf).await.unwrap_err();
            assert!(
                err.get_ref().is_some_and(|e| e.is::<BadHeader>()),
                "{first:#x}"
            );
        }
        // Without the extension the bit is left for fastwebsockets to refuse.
        let mut gate = FrameGate::new(std::io::Cursor::new(masked(0xc1, b"z")), false);
        gate.read_exact(&mut buf[..2]).await.unwrap();
        assert_eq!(buf[0], 0xc1);
    }
}
