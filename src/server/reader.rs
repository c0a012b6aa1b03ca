//! Reading client frames: fastwebsockets parses and unmasks them; this module turns them into
//! whole messages under sigmahub's limits.
//!
//! fastwebsockets checks each frame (reserved bits, opcodes, control frame size and
//! fragmentation, per-frame size, UTF-8 of unfragmented text). What it leaves to us, and this
//! module adds: a bound on the *total* size of a fragmented message (fastwebsockets'
//! `FragmentCollectorRead` bounds only each fragment, so a fragment flood would grow without
//! limit), UTF-8 validation of reassembled text, and the mapping of every failure to a close
//! code. Control frames are returned as they come, so the session answers pings through the
//! client's ordered queue.
//!
//! A compressed message (permessage-deflate, marked by the gate) is inflated here, whole,
//! under `max_message_size`, which bounds both the compressed bytes and what they inflate
//! to; its text is checked as UTF-8 after inflating.
//!
//! # Memory
//! The fastwebsockets reader (and its 8 KiB buffer) exists only while a message is being
//! read: between messages the connection waits in [`FrameGate::wait`] with no buffer, and
//! the gate guarantees that dropping the reader after a frame loses no bytes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, ReadBuf};

use super::gate::{BadHeader, Compressed, FrameGate};
use crate::compression::{inflate, InflateError};
use crate::protocol::close::CloseCode;

/// A complete client message or control frame.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A whole text message, valid UTF-8, at most `max_message_size` bytes.
    Text(Vec<u8>),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A whole (unfragmented) binary message, its payload dropped.
    Binary,
    /// The client started the close handshake.
    Close,
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The peer went away without a close frame (EOF, reset).
    Gone,
    /// The peer broke a rule; close with this code.
    Violation(CloseCode),
    /// A compressed message was refused: too big inflated (1009), or not deflate (1007).
    Inflate(InflateError),
}

impl ReadEnd {
    /// The close code the connection ends with, if the peer is still there to get one.
    pub(crate) fn close_code(self) -> Option<CloseCode> {
        match self {
            Self::Gone => None,
            Self::Violation(code) => Some(code),
            Self::Inflate(e) => Some(e.close_code()),
        }
    }
}

/// Most frames one message may arrive in. Browsers never fragment; libraries that do cut
/// at a write buffer (Go's gorilla: 4 KiB, 16 fragments for a 64 KiB message). More closes
/// with 1009: without a bound, a message that never ends is a flood of empty frames that
/// no rate limit sees.
pub(crate) const MAX_FRAGMENTS: usize = 64;

/// A fragmented text message being read.
struct Partial {
    bytes: Vec<u8>,
    fragments: usize,
    compressed: bool,
}

/// One frame, its payload unmasked and owned.
struct Frame {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

pub(crate) struct MessageReader<S> {
    gate: FrameGate<S>,
    max_message_size: usize,
    partial: Option<Partial>,
}

impl<S: AsyncRead + Unpin> MessageReader<S> {
    /// A reader of `stream`'s client frames; `deflate` if the connection negotiated
    /// permessage-deflate.
    pub(crate) fn new(stream: S, max_message_size: usize, deflate: bool) -> Self {
        Self {
            gate: FrameGate::new(stream, deflate),
            max_message_size,
            partial: None,
        }
    }

    /// The next frame, read by a fastwebsockets reader over the gate that lives for this
    /// frame only (the gate guarantees it buffered nothing past it).
    async fn frame(&mut self) -> Result<Frame, WebSocketError> {
        let (mut ws, _): (WebSocketRead<_>, _) = fastwebsockets::after_handshake_split(
            &mut self.gate,
            tokio::io::sink(),
            fastwebsockets::Role::Server,
        );
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        // fastwebsockets refuses a frame whose length is >= the limit.
        ws.set_max_message_size(self.max_message_size + 1);
        let frame = ws
            .read_frame(&mut |_| std::future::ready(Ok::<(), std::convert::Infallible>(())))
            .await?;
        Ok(Frame {
            fin: frame.fin,
            opcode: frame.opcode,
            payload: frame.payload.into(),
        })
    }

    /// A whole text message's bytes, inflated if `compressed`, checked as UTF-8.
    fn text(&self, bytes: Vec<u8>, compressed: bool) -> Result<Incoming, ReadEnd> {
        let text = match compressed {
            true => inflate(&bytes, self.max_message_size).map_err(ReadEnd::Inflate)?,
            false => bytes,
        };
        match std::str::from_utf8(&text) {
            Ok(_) => Ok(Incoming::Text(text)),
            Err(_) => Err(ReadEnd::Violation(CloseCode::INVALID_PAYLOAD)),
        }
    }

    /// Reads until a whole message or a control frame is available. Not cancel-safe: keep
    /// the future alive until it completes, except while `at_rest` is set.
    ///
    /// `at_rest` is set while the reader waits for a frame's first byte with nothing read
    /// of it and no fragmented message in progress: dropping the future then loses
    /// nothing, and the connection may go dormant ([`Readiness`]).
    pub(crate) async fn next(&mut self, at_rest: &AtomicBool) -> Result<Incoming, ReadEnd> {
        if self.gate.at_boundary() {
            at_rest.store(self.partial.is_none(), Ordering::Relaxed);
            let waited = self.gate.wait().await;
            at_rest.store(false, Ordering::Relaxed);
            match waited {
                Ok(true) => {}
                Ok(false) => return Err(ReadEnd::Gone),
                Err(e) => return Err(read_end(WebSocketError::IoError(e))),
            }
        }
        let max_message_size = self.max_message_size;
        let mut partial = self.partial.take();
        let result = loop {
            // Boxed: an idle connection waits at a frame boundary (`wait` above), and the
            // reading state (fastwebsockets' reader, ~230 B) would otherwise be part of
            // every connection's future. One allocation per frame a client sends.
            let frame = match Box::pin(self.frame()).await {
                Ok(frame) => frame,
                Err(e) => break Err(read_end(e)),
            };
            // The gate hands a compressed text frame on as binary.
            let compressed = self.gate.compressed();
            let opcode = match (frame.opcode, compressed) {
                (OpCode::Binary, Compressed::Text) => OpCode::Text,
                (opcode, _) => opcode,
            };
            match opcode {
                OpCode::Close => {
                    break match close_violation(&frame.payload) {
                        None => Ok(Incoming::Close),
                        Some(code) => Err(ReadEnd::Violation(code)),
                    }
                }
                OpCode::Ping => break Ok(Incoming::Ping(Bytes::from(frame.payload))),
                OpCode::Pong => break Ok(Incoming::Pong),
                // A whole binary message is the session's to judge (a Socket.IO client's
                // attachments); a fragmented one is refused here.
                OpCode::Binary if frame.fin && partial.is_none() => break Ok(Incoming::Binary),
                OpCode::Binary => break Err(ReadEnd::Violation(CloseCode::UNSUPPORTED_DATA)),
                OpCode::Text if partial.is_some() => {
                    break Err(ReadEnd::Violation(CloseCode::PROTOCOL_ERROR))
                }
                OpCode::Text if frame.fin && compressed == Compressed::No => {
                    // fastwebsockets validated the UTF-8 of this unfragmented message.
                    break Ok(Incoming::Text(frame.payload));
                }
                OpCode::Text if frame.fin => break self.text(frame.payload, true),
                OpCode::Text => {
                    partial = Some(Partial {
                        bytes: frame.payload,
                        fragments: 1,
                        compressed: compressed == Compressed::Text,
                    })
                }
                OpCode::Continuation => {
                    let Some(message) = partial.as_mut() else {
                        break Err(ReadEnd::Violation(CloseCode::PROTOCOL_ERROR));
                    };
                    message.fragments += 1;
                    if message.bytes.len() + frame.payload.len() > max_message_size
                        || message.fragments > MAX_FRAGMENTS
                    {
                        break Err(ReadEnd::Violation(CloseCode::MESSAGE_TOO_BIG));
                    }
                    message.bytes.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let message = partial.take().expect("checked above");
                        break self.text(message.bytes, message.compressed);
                    }
                }
            }
        };
        // A fragmented message in progress survives the reader; the gate guarantees the
        // reader buffered nothing beyond the frames it returned.
        self.partial = partial;
        result
    }
}

/// What is wrong with a client's close frame payload, if anything (RFC 6455 §5.5.1, §7.4):
/// one byte, a code no endpoint may send, or a reason that is not UTF-8.
fn close_violation(payload: &[u8]) -> Option<CloseCode> {
    let (code, reason) = match payload {
        [] => return None,
        [_] => return Some(CloseCode::PROTOCOL_ERROR),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    // 1004-1006 and 1015 are reserved for reports, never sent; 1016-2999 are unassigned.
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Some(CloseCode::PROTOCOL_ERROR);
    }
    std::str::from_utf8(reason)
        .is_err()
        .then_some(CloseCode::INVALID_PAYLOAD)
}

fn read_end(e: WebSocketError) -> ReadEnd {
    use WebSocketError as E;
    match e {
        E::IoError(e) if e.get_ref().is_some_and(|inner| inner.is::<BadHeader>()) => {
            ReadEnd::Violation(CloseCode::PROTOCOL_ERROR)
        }
        E::UnexpectedEOF | E::ConnectionClosed | E::IoError(_) => ReadEnd::Gone,
        E::FrameTooLarge => ReadEnd::Violation(CloseCode::MESSAGE_TOO_BIG),
        E::InvalidUTF8 => ReadEnd::Violation(CloseCode::INVALID_PAYLOAD),
        _ => ReadEnd::Violation(CloseCode::PROTOCOL_ERROR),
    }
}

/// A byte stream that can be looked into without reading from it, as a connection needs
/// to go dormant: a dormant connection holds no task, and wakes when its client sends.
pub(crate) trait Readiness {
    /// Copies the bytes available now into `buf` without consuming them, or registers
    /// `cx`'s waker to be woken once bytes, or the end of the stream, can be read. `None`
    /// if this stream cannot (the connection then never goes dormant).
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Option<Poll<()>> {
        let _ = (cx, buf);
        None
    }

    /// Reads what is available now into `buf`, without waiting.
    fn try_read(&mut self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        let _ = buf;
        None
    }
}

impl Readiness for tokio::net::tcp::OwnedReadHalf {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Option<Poll<()>> {
        // An error or the end of the stream is ready too: the reader proper finds it.
        Some(tokio::net::tcp::OwnedReadHalf::poll_peek(self, cx, buf).map(|_| ()))
    }

    fn try_read(&mut self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        Some(tokio::net::tcp::OwnedReadHalf::try_read(self, buf))
    }
}

/// A generic split (a socket embedded in another server): it cannot.
impl<T> Readiness for tokio::io::ReadHalf<T> {}

impl<R: Readiness> Readiness for Prefixed<R> {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Option<Poll<()>> {
        if self.prefix.has_remaining() {
            // Bytes the HTTP layer read ahead: the reader proper takes them.
            return Some(Poll::Ready(()));
        }
        self.inner.poll_peek(cx, buf)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        match self.prefix.has_remaining() {
            true => None,
            false => self.inner.try_read(buf),
        }
    }
}

/// What a client sent, as [`MessageReader::poll_pong`] saw it without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// Nothing yet: the waker is registered.
    Nothing,
    /// One whole pong frame, now read: the reader stays between frames.
    Pong,
    /// Anything else (a message, a part of a frame, the end, an error), left for the
    /// reader proper; or a stream that cannot be looked into.
    Other,
}

/// The longest client pong frame: 2 header bytes, the 4-byte mask and 125 bytes at most.
const MAX_PONG_FRAME: usize = 2 + 4 + 125;

impl<S: AsyncRead + Unpin + Readiness> MessageReader<S> {
    /// Looks at what the client sent without waiting, for a connection without a task. A
    /// whole pong frame (a keep-alive's answer) is read at once if `take_pong`; anything
    /// else is left for [`next`](Self::next). Registers `cx`'s waker while nothing came.
    pub(crate) fn poll_pong(&mut self, cx: &mut Context<'_>, take_pong: bool) -> Peeked {
        if !self.gate.at_boundary() || self.partial.is_some() {
            return Peeked::Other;
        }
        let mut frame = [0u8; MAX_PONG_FRAME];
        let mut peeked = ReadBuf::new(&mut frame);
        match self.gate.inner_mut().poll_peek(cx, &mut peeked) {
            Some(Poll::Pending) => return Peeked::Nothing,
            Some(Poll::Ready(())) => {}
            None => return Peeked::Other,
        }
        let len = match *peeked.filled() {
            // FIN and the pong opcode; masked, as every client frame is; no extended length.
            [0x8A, second, ..] if second & 0x80 != 0 && second & 0x7F <= 125 => {
                2 + 4 + usize::from(second & 0x7F)
            }
            _ => return Peeked::Other,
        };
        if !take_pong || peeked.filled().len() < len {
            return Peeked::Other;
        }
        // The bytes are there (just peeked) and this is their only reader: all of them
        // come. Were it ever fewer, the stream would stand mid-frame: refuse it.
        match self.gate.inner_mut().try_read(&mut frame[..len]) {
            Some(Ok(read)) if read == len => Peeked::Pong,
            _ => {
                self.gate.poison();
                Peeked::Other
            }
        }
    }
}

/// A read half that first yields bytes the HTTP layer had already read past the handshake.
pub(crate) struct Prefixed<R> {
    prefix: Bytes,
    inner: R,
}

impl<R> Prefixed<R> {
    pub(crate) fn new(prefix: Bytes, inner: R) -> Self {
        // `prefix` is a slice of hyper's read buffer (8 KiB or more): keep it only while it
        // holds bytes, so the connection does not pin that buffer for its whole life.
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            prefix
        };
        Self { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![(fin as u8) << 7 | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(wire: Vec<u8>, max: usize) -> Vec<Result<String, ReadEnd>> {
        read_all_with(wire, max, false).await
    }

    async fn read_all_with(
        wire: Vec<u8>,
        max: usize,
        deflate: bool,
    ) -> Vec<Result<String, ReadEnd>> {
        let (head, tail) = wire.split_at(wire.len() / 3);
        let stream = Prefixed::new(
            Bytes::copy_from_slice(head),
            std::io::Cursor::new(tail.to_vec()),
        );
        let mut reader = MessageReader::new(stream, max, deflate);
        let mut out = Vec::new();
        loop {
            match reader.next(&AtomicBool::new(false)).await {
                Ok(Incoming::Text(t)) => out.push(Ok(String::from_utf8(t).unwrap())),
                Ok(other) => out.push(Ok(format!("{other:?}"))),
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn fragments_are_reassembled_across_the_prefix() {
        let mut wire = frame(false, 1, b"hel");
        wire.extend(frame(true, 9, b"p"));
        wire.extend(frame(false, 0, b"lo "));
        wire.extend(frame(true, 0, "wörld".as_bytes()));
        wire.extend(frame(true, 8, &1000u16.to_be_bytes()));
        let got = read_all(wire, 1024).await;
        assert_eq!(got[0], Ok("Ping(b\"p\")".into()));
        assert_eq!(got[1], Ok("hello wörld".into()));
        assert_eq!(got[2], Ok("Close".into()));
    }

    #[tokio::test]
    async fn a_whole_binary_message_is_the_sessions_to_judge() {
        let wire = [frame(true, 2, b"bin"), frame(true, 1, b"after")].concat();
        let got = read_all(wire, 150).await;
        assert_eq!(got[0], Ok("Binary".into()));
        assert_eq!(got[1], Ok("after".into()));
    }

    #[tokio::test]
    async fn limits_and_violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (frame(true, 1, &[b'a'; 200]), CloseCode::MESSAGE_TOO_BIG),
            (
                [frame(false, 1, &[b'a'; 100]), frame(true, 0, &[b'a'; 100])].concat(),
                CloseCode::MESSAGE_TOO_BIG,
            ),
            (frame(false, 2, b"bin"), CloseCode::UNSUPPORTED_DATA),
            (
                [frame(false, 1, b"a"), frame(true, 2, b"bin")].concat(),
                CloseCode::UNSUPPORTED_DATA,
            ),
            (frame(true, 1, &[0xff, 0xfe]), CloseCode::INVALID_PAYLOAD),
            (
                [frame(false, 1, &[0xe2, 0x82]), frame(true, 0, &[0x28])].concat(),
                CloseCode::INVALID_PAYLOAD,
            ),
            (frame(true, 0, b"orphan"), CloseCode::PROTOCOL_ERROR),
            (
                std::iter::once(frame(false, 1, b"{"))
                    .chain((0..MAX_FRAGMENTS).map(|_| frame(false, 0, b"")))
                    .flatten()
                    .collect(),
                CloseCode::MESSAGE_TOO_BIG,
            ),
            (frame(true, 8, &[3]), CloseCode::PROTOCOL_ERROR),
            (
                frame(true, 8, &1005u16.to_be_bytes()),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                frame(true, 8, &999u16.to_be_bytes()),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                frame(true, 8, &5000u16.to_be_bytes()),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                frame(true, 8, &[0x0f, 0xa0, 0xff]),
                CloseCode::INVALID_PAYLOAD,
            ),
            (
                frame(false, 9, b"fragmented ping"),
                CloseCode::PROTOCOL_ERROR,
            ),
            (vec![0xf1, 0x80, 0, 0, 0, 0], CloseCode::PROTOCOL_ERROR),
            (vec![0x81, 0x02, b'h', b'i'], CloseCode::PROTOCOL_ERROR),
        ];
        for (wire, code) in cases {
            let got = read_all(wire, 150).await;
            assert_eq!(got.last(), Some(&Err(ReadEnd::Violation(code))), "{code}");
        }
    }

    #[tokio::test]
    async fn up_to_the_fragment_bound_and_valid_closes_are_read() {
        let wire: Vec<u8> = std::iter::once(frame(false, 1, b"a"))
            .chain((2..MAX_FRAGMENTS).map(|_| frame(false, 0, b"")))
            .chain(std::iter::once(frame(true, 0, b"b")))
            .flatten()
            .collect();
        assert_eq!(read_all(wire, 1024).await[0], Ok("ab".into()));
        for payload in [
            vec![],
            1000u16.to_be_bytes().to_vec(),
            [&3000u16.to_be_bytes()[..], "fin ✓".as_bytes()].concat(),
            4999u16.to_be_bytes().to_vec(),
        ] {
            assert_eq!(
                read_all(frame(true, 8, &payload), 1024).await[0],
                Ok("Close".into()),
                "{payload:?}"
            );
        }
    }

    /// A compressed message's first frame: RSV1 set.
    fn squeezed(fin: bool, opcode: u8, text: &[u8]) -> Vec<u8> {
        let mut out = frame(fin, opcode, &crate::compression::compress(text, 6).unwrap());
        out[0] |= 0x40;
        out
    }

    #[tokio::test]
    async fn compressed_messages_are_inflated_whole_or_in_fragments() {
        let text = r#"{"type":"subscribe","data":{"events":["orders","orders.eu","orders.us"]}}"#;
        let whole = squeezed(true, 1, text.as_bytes());
        // The same compressed bytes cut in two: the second half as a continuation.
        let compressed = crate::compression::compress(text.as_bytes(), 6).unwrap();
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut split = [&frame(false, 1, a)[..], &frame(true, 0, b)].concat();
        split[0] |= 0x40;
        let wire = [whole, frame(true, 9, b"p"), split, frame(true, 1, b"plain")].concat();
        let got = read_all_with(wire, 1024, true).await;
        assert_eq!(got[0], Ok(text.into()));
        assert_eq!(got[1], Ok("Ping(b\"p\")".into()));
        assert_eq!(got[2], Ok(text.into()));
        assert_eq!(got[3], Ok("plain".into()));
    }

    #[tokio::test]
    async fn bad_compressed_messages_map_to_close_codes() {
        let bomb = squeezed(true, 1, &vec![b' '; 60_000]);
        assert!(bomb.len() < 200, "{}", bomb.len());
        let mut garbage = frame(true, 1, &[0xff; 20]);
        garbage[0] |= 0x40;
        let cases: Vec<(Vec<u8>, bool, ReadEnd)> = vec![
            (bomb, true, ReadEnd::Inflate(InflateError::TooBig)),
            (
                garbage.clone(),
                true,
                ReadEnd::Inflate(InflateError::Corrupt),
            ),
            (
                squeezed(true, 1, &[0xff; 300]),
                true,
                ReadEnd::Violation(CloseCode::INVALID_PAYLOAD),
            ),
            // Not negotiated: RSV1 is a protocol error.
            (
                garbage,
                false,
                ReadEnd::Violation(CloseCode::PROTOCOL_ERROR),
            ),
            (
                [vec![0xc9, 0x80], vec![0; 4]].concat(),
                true,
                ReadEnd::Violation(CloseCode::PROTOCOL_ERROR),
            ),
            (
                [&frame(false, 1, b"{")[..], &squeezed(true, 0, &[b'a'; 200])].concat(),
                true,
                ReadEnd::Violation(CloseCode::PROTOCOL_ERROR),
            ),
        ];
        for (wire, deflate, end) in cases {
            let got = read_all_with(wire, 1024, deflate).await;
            assert_eq!(got.last(), Some(&Err(end)), "{end:?}");
            assert_eq!(got.len(), 1, "{got:?}");
        }
    }

    #[tokio::test]
    async fn eof_is_gone() {
        assert_eq!(
            read_all(frame(true, 1, b"x")[..3].to_vec(), 100).await,
            vec![Err(ReadEnd::Gone)]
        );
    }
}
