//! permessage-deflate for the generator's clients (`--deflate`).
//!
//! tungstenite has no permessage-deflate: it refuses a frame with RSV1 set. [`Inflating`]
//! sits between it and the socket. It passes the HTTP handshake through untouched, then
//! reads the server's frames whole and hands tungstenite each compressed one inflated, as
//! the plain frame it stands for. When the server answers with `server_no_context_takeover`
//! (sigmahub does) each message inflates on its own; otherwise (node `ws`'s default) the
//! inflater keeps its window from message to message, as the server's deflater does. The
//! client itself sends uncompressed, as RFC 7692 allows. The inflating is real client work, as a browser does it, so the generator's CPU
//! figures include it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The offer the generator's clients make.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

const RSV1: u8 = 0x40;
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A client socket that inflates compressed server frames (see the module docs).
pub struct Inflating<S> {
    inner: S,
    /// Bytes read from the socket, not yet handed on.
    raw: Vec<u8>,
    /// Bytes ready for tungstenite.
    ready: Vec<u8>,
    ready_at: usize,
    /// Still in the HTTP handshake: bytes pass through until its end.
    in_handshake: bool,
    /// The server compresses each message on its own (`server_no_context_takeover`).
    no_context_takeover: bool,
    decompress: Decompress,
    /// Messages that came compressed, counted for the report.
    compressed: Arc<AtomicU64>,
}

impl<S> Inflating<S> {
    pub fn new(inner: S, compressed: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            in_handshake: true,
            no_context_takeover: false,
            decompress: Decompress::new(false),
            compressed,
        }
    }

    /// Moves what can be handed on from `raw` to `ready`.
    fn process(&mut self) -> io::Result<()> {
        if self.in_handshake {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            self.no_context_takeover = head.contains("server_no_context_takeover");
            self.ready.extend(self.raw.drain(..end + 4));
            self.in_handshake = false;
        }
        while let Some((header, len)) = frame_len(&self.raw) {
            if self.raw.len() < header + len {
                break;
            }
            let first = self.raw[0];
            if first & RSV1 == 0 {
                self.ready.extend(self.raw.drain(..header + len));
                continue;
            }
            let mut input = self.raw[header..header + len].to_vec();
            input.extend_from_slice(&TAIL);
            self.raw.drain(..header + len);
            let message = self.inflate(&input)?;
            self.compressed.fetch_add(1, Ordering::Relaxed);
            self.ready.push(first & !RSV1);
            match message.len() {
                n if n < 126 => self.ready.push(n as u8),
                n if n < 65536 => {
                    self.ready.push(126);
                    self.ready.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    self.ready.push(127);
                    self.ready.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            self.ready.extend_from_slice(&message);
        }
        Ok(())
    }

    fn inflate(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        if self.no_context_takeover {
            self.decompress.reset(false);
        }
        let start = self.decompress.total_in();
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let consumed = (self.decompress.total_in() - start) as usize;
            let status = self
                .decompress
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (self.decompress.total_in() - start) as usize;
            if status == Status::StreamEnd
                || (consumed == input.len() && out.len() < out.capacity())
            {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// The header length and payload length of the server frame `raw` starts with, once its
/// header is complete.
fn frame_len(raw: &[u8]) -> Option<(usize, usize)> {
    let second = *raw.get(1)?;
    match second & 0x7f {
        126 => Some((
            4,
            u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            10,
            u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((2, n as usize)),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_at < this.ready.len() {
                let n = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.raw.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
