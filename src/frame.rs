//! Server-to-client WebSocket frames, encoded once and shared.
//!
//! A server frame is never masked (RFC 6455 §5.1), so its bytes are the same for every
//! recipient: sigmahub encodes each outgoing message once into a complete frame (header and
//! payload in one [`Bytes`]) and hands refcounted clones to every subscriber's queue. The
//! writer task then puts frames on the wire as they are, many per vectored write.
//!
//! [`FrameBuf`] lets a caller serialize a payload straight into the frame's final buffer: it
//! reserves the largest header (10 bytes) in front, and [`FrameBuf::finish`] writes the real
//! header right-aligned into that room and slices the unused prefix off. One allocation, no
//! copy of the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::close::CloseCode;

/// The largest header of an unmasked frame: 2 bytes plus an 8-byte extended length.
pub const MAX_HEADER_LEN: usize = 10;

/// A frame's opcode (RFC 6455 §5.2), limited to those a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A UTF-8 text message: every sigmahub message.
    Text = 0x1,
    /// Close the connection.
    Close = 0x8,
    /// Keep-alive probe.
    Ping = 0x9,
    /// Keep-alive answer.
    Pong = 0xA,
}

/// Writes the header of a final, unmasked frame into `out` and returns its length (2, 4 or 10).
pub fn write_header(opcode: OpCode, payload_len: usize, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    out[0] = 0x80 | opcode as u8;
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// The payload of a frame built here (final, unmasked): the bytes after its header.
pub fn payload_of(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return Bytes::new(),
    };
    frame.slice(header.min(frame.len())..)
}

/// A frame under construction: write the payload, then [`finish`](Self::finish) it.
#[derive(Debug)]
pub struct FrameBuf {
    buf: BytesMut,
}

impl FrameBuf {
    /// Starts a frame whose payload is expected to be about `payload_hint` bytes.
    pub fn with_capacity(payload_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + payload_hint);
        buf.put_bytes(0, MAX_HEADER_LEN);
        Self { buf }
    }

    /// The payload written so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[MAX_HEADER_LEN..]
    }

    /// Appends bytes to the payload.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The payload as an [`std::io::Write`], for serializers.
    pub fn writer(&mut self) -> impl std::io::Write + '_ {
        (&mut self.buf).writer()
    }

    /// Writes the header in front of the payload and returns the complete frame.
    pub fn finish(self, opcode: OpCode) -> Bytes {
        let mut buf = self.buf;
        let start = place_header(&mut buf, opcode, 0);
        let _ = buf.split_to(start);
        buf.freeze()
    }
}

/// Writes the header of a final, unmasked frame right-aligned into the first
/// [`MAX_HEADER_LEN`] bytes of `buf`, which are room left for it before the payload, and
/// returns the offset the frame starts at. `rsv` is or'ed into the first byte (RSV1 for a
/// compressed message).
#[inline]
pub(crate) fn place_header(buf: &mut [u8], opcode: OpCode, rsv: u8) -> usize {
    let mut header = [0u8; MAX_HEADER_LEN];
    let header_len = write_header(opcode, buf.len() - MAX_HEADER_LEN, &mut header);
    header[0] |= rsv;
    let start = MAX_HEADER_LEN - header_len;
    buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
    start
}

impl FrameBuf {
    /// The payload alone, without a header: for a message that travels elsewhere than a
    /// WebSocket (the buffer's unused header room goes with it, uncopied).
    pub fn into_payload(self) -> Bytes {
        let mut buf = self.buf;
        buf.advance(MAX_HEADER_LEN);
        buf.freeze()
    }
}

impl std::fmt::Write for FrameBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A complete text frame carrying `payload`, which must be valid UTF-8 JSON.
pub fn text(payload: &[u8]) -> Bytes {
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.extend_from_slice(payload);
    frame.finish(OpCode::Text)
}

/// A close frame with `code` and its reason.
pub fn close(code: CloseCode) -> Bytes {
    close_with(code.code, code.reason)
}

/// A close frame with `code` and `reason`, cut to the 123 bytes a close frame holds (at a
/// character boundary).
pub fn close_with(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut frame = FrameBuf::with_capacity(2 + end);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&reason.as_bytes()[..end]);
    frame.finish(OpCode::Close)
}

/// A ping control frame (payload at most 125 bytes).
pub fn ping(payload: &[u8]) -> Bytes {
    control(OpCode::Ping, payload)
}

/// A pong control frame answering a ping with `payload` (at most 125 bytes).
pub fn pong(payload: &[u8]) -> Bytes {
    control(OpCode::Pong, payload)
}

fn control(opcode: OpCode, payload: &[u8]) -> Bytes {
    debug_assert!(payload.len() <= 125, "control frame payload over 125 bytes");
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.extend_from_slice(&payload[..payload.len().min(125)]);
    frame.finish(opcode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{Frame, Payload};

    #[test]
    fn a_close_reason_is_cut_to_fit_at_a_character_boundary() {
        let reason = "é".repeat(70); // 140 bytes
        let frame = close_with(4010, &reason);
        let payload = &frame[2..];
        assert_eq!(payload.len(), 2 + 122, "61 whole characters");
        assert_eq!(&payload[..2], &4010u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(&close_with(1000, "bye")[2..], b"\x03\xe8bye");
    }

    /// What fastwebsockets itself writes for the same unmasked frame.
    fn reference(opcode: fastwebsockets::OpCode, payload: &[u8]) -> Vec<u8> {
        let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
        let mut out = Vec::new();
        frame.write(&mut out).to_vec()
    }

    #[test]
    fn text_frames_match_fastwebsockets_at_every_length_boundary() {
        for len in [
            0, 1, 124, 125, 126, 127, 65_534, 65_535, 65_536, 65_537, 200_000,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let ours = text(&payload);
            assert_eq!(
                &ours[..],
                &reference(fastwebsockets::OpCode::Text, &payload)[..],
                "len {len}"
            );
            assert_eq!(&payload_of(&ours)[..], &payload[..], "len {len}");
        }
    }

    #[test]
    fn control_frames_match_fastwebsockets() {
        assert_eq!(
            &ping(b"hi")[..],
            &reference(fastwebsockets::OpCode::Ping, b"hi")[..]
        );
        assert_eq!(
            &pong(b"")[..],
            &reference(fastwebsockets::OpCode::Pong, b"")[..]
        );
        let mut close_payload = 1001u16.to_be_bytes().to_vec();
        close_payload.extend_from_slice(CloseCode::GOING_AWAY.reason.as_bytes());
        assert_eq!(
            &close(CloseCode::GOING_AWAY)[..],
            &reference(fastwebsockets::OpCode::Close, &close_payload)[..]
        );
    }

    #[test]
    fn writer_builds_the_payload_in_place() {
        let mut frame = FrameBuf::with_capacity(4);
        serde_json::to_writer(frame.writer(), &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(frame.payload(), br#"{"a":1}"#);
        assert_eq!(&frame.finish(OpCode::Text)[..], &text(br#"{"a":1}"#)[..]);
    }
}
