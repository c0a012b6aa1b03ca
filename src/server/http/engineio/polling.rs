//! Engine.IO's HTTP long-polling transport, as a byte stream of WebSocket frames.
//!
//! A long-polling session runs the same [`session`](crate::server::session) as a WebSocket:
//! its reader reads client frames from a [`PollRead`], its writer writes server frames into
//! a [`PollWrite`]. In between, [`Polling`] turns HTTP requests into frames and back:
//!
//! - a `POST` body's packets (separated by `\x1e`) become masked text frames for the
//!   reader;
//! - a `GET` waits until the writer has written something, then answers with the payloads
//!   of the frames written so far, separated by `\x1e` (a close frame is Engine.IO's close
//!   packet `1`).
//!
//! The writer's frames wait in a queue of at most `client_queue_bytes`: a client that stops
//! polling fills it, the writer blocks, and the client's outbox fills behind it, so the
//! slow-consumer policy applies as on a socket. Keep-alive is the session's own: the
//! Engine.IO ping `2` is a frame like any other, and a client that stops answering it is
//! closed.
//!
//! # Upgrade
//! When the client upgrades (see [`probe`](super::probe)), the WebSocket's two halves are
//! handed over: the reader first reads what was posted before, the writer's waiting frames
//! are written to the socket, and from then on both use the socket directly.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::{eio_error, EioError};
use crate::protocol::close::CloseCode;
use crate::server::http::ResponseBody;
use crate::server::Shared;

use crate::server::http::upgrade::{BoxRead, BoxWrite};

/// Engine.IO's record separator between packets of one long-polling body.
const SEPARATOR: u8 = 0x1e;

/// The longest a `GET` waits with nothing to say: past it, a noop. The session's pings
/// (every `ping_interval`) normally answer it first.
const MAX_POLL: Duration = Duration::from_secs(60);

/// One long-polling session's requests, seen from both sides.
pub(crate) struct Polling {
    sid: Box<str>,
    /// Most bytes of frames that may wait for a `GET`.
    out_limit: usize,
    state: parking_lot::Mutex<State>,
    /// Wakes a waiting `GET`.
    output: Notify,
    /// Wakes [`end`](Self::end) when a `GET` has taken the waiting frames.
    drained: Notify,
}

#[derive(Default)]
struct State {
    /// Whole server frames, waiting for a `GET`.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// The start of a server frame not yet whole.
    writing: BytesMut,
    /// The writer, waiting for room in `out` (or for the handover).
    writer: Option<Waker>,
    /// The writer shut down: nothing more comes.
    shut: bool,
    /// The session has ended.
    ended: bool,
    /// A `GET` is waiting.
    polling: bool,
    /// Client frames (masked, as a socket would carry them), for the reader.
    inbound: BytesMut,
    /// The reader, waiting for a `POST`.
    reader: Option<Waker>,
    /// The probe was answered: a `GET` returns at once, so the client can finish the
    /// upgrade.
    upgrading: bool,
    /// The upgrade is writing the waiting frames to the socket: the writer waits.
    flushing: bool,
    /// The socket, handed over by the upgrade, for the reader and the writer to take.
    socket_read: Option<BoxRead>,
    socket_write: Option<BoxWrite>,
    /// The session moved to the WebSocket: no more `GET` or `POST`.
    upgraded: bool,
}

impl Polling {
    /// A session `sid` whose unread frames may hold `out_limit` bytes.
    pub(crate) fn new(sid: &str, out_limit: usize) -> Self {
        Self {
            sid: sid.into(),
            out_limit: out_limit.max(64 * 1024),
            state: parking_lot::Mutex::default(),
            output: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// The session id.
    pub(crate) fn sid(&self) -> &str {
        &self.sid
    }

    /// The session's two halves, for [`session::run`](crate::server::session::run).
    pub(crate) fn transport(self: &Arc<Self>) -> (PollRead, PollWrite) {
        (
            PollRead::Polling(self.clone()),
            PollWrite::Polling(self.clone()),
        )
    }

    /// The session task has ended: a waiting `GET` is answered. Returns once the client
    /// has fetched what was left for it (its last messages, a connect error), or after
    /// `grace`: until then the session id stays known. Pings and the close packet are not
    /// waited for, nor is anything for a client closed for not answering pings: it
    /// stopped polling, and finds the session gone, as Engine.IO's own servers answer it.
    pub(crate) async fn end(&self, grace: Duration) {
        self.state.lock().ended = true;
        self.output.notify_one();
        let fetched = async {
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                let fetched = {
                    let state = self.state.lock();
                    state.upgraded
                        || !state.out.iter().any(is_message)
                        || state
                            .out
                            .iter()
                            .any(|frame| is_close(frame, CloseCode::KEEPALIVE_TIMEOUT))
                };
                if fetched {
                    return;
                }
                drained.await;
            }
        };
        let _ = tokio::time::timeout(grace, fetched).await;
    }

    /// Whether the session is on long-polling now (not upgraded, not ended).
    pub(crate) fn is_polling(&self) -> bool {
        let state = self.state.lock();
        !(state.ended || state.upgraded)
    }

    /// Whether the session may still upgrade (not ended, not upgraded or upgrading).
    pub(crate) fn may_upgrade(&self) -> bool {
        let state = self.state.lock();
        !(state.ended || state.upgraded || state.upgrading)
    }

    /// A `GET`: waits for frames, answers with their payloads.
    pub(crate) async fn poll(&self, shared: &Shared) -> Response<ResponseBody> {
        {
            let mut state = self.state.lock();
            if state.upgraded {
                return eio_error(EioError::BadRequest);
            }
            if state.polling {
                // Engine.IO closes a session whose client polls twice at once.
                tracing::debug!(sid = %self.sid, "overlapping GET; closing the session");
                state.ended = true;
                wake(&mut state.reader);
                return eio_error(EioError::BadRequest);
            }
            state.polling = true;
        }
        let _polling = PollingFlag(self);
        let deadline = tokio::time::Instant::now() + MAX_POLL.max(shared.config.ping_interval);
        loop {
            let notified = self.output.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(body) = self.take_output() {
                return text(StatusCode::OK, body);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return text(StatusCode::OK, Bytes::from_static(b"6"));
            }
        }
    }

    /// The body of a `GET`, if there is something to say.
    fn take_output(&self) -> Option<Bytes> {
        let mut state = self.state.lock();
        if state.out.is_empty() {
            return match () {
                _ if state.ended || state.shut => Some(Bytes::from_static(b"1")),
                _ if state.upgrading || state.upgraded => Some(Bytes::from_static(b"6")),
                _ => None,
            };
        }
        let mut body = BytesMut::with_capacity(state.out_bytes);
        for frame in state.out.drain(..) {
            let Some(packet) = packet_of(&frame) else {
                continue;
            };
            if !body.is_empty() {
                body.put_u8(SEPARATOR);
            }
            body.extend_from_slice(&packet);
        }
        state.out_bytes = 0;
        wake(&mut state.writer);
        self.drained.notify_one();
        Some(if body.is_empty() {
            Bytes::from_static(b"6")
        } else {
            body.freeze()
        })
    }

    /// A `POST`: the client's packets, for the reader.
    pub(crate) async fn post<B>(&self, shared: &Shared, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = shared.config.max_message_size;
        let collect = Limited::new(req.into_body(), limit).collect();
        let body = match tokio::time::timeout(shared.config.body_timeout, collect).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Bytes::from(format!("a POST carries at most {limit} bytes (maxPayload)")),
                );
            }
            _ => return eio_error(EioError::BadRequest),
        };
        let mut state = self.state.lock();
        if state.ended || state.upgraded {
            return eio_error(EioError::BadRequest);
        }
        // A client that posts faster than the session reads: the reader is far behind.
        if state.inbound.len() > 4 * limit {
            return eio_error(EioError::BadRequest);
        }
        for packet in body.split(|&b| b == SEPARATOR) {
            client_frame(&mut state.inbound, packet);
        }
        wake(&mut state.reader);
        drop(state);
        text(StatusCode::OK, Bytes::from_static(b"ok"))
    }

    /// The probe was answered: let a waiting `GET` return, so the client can send `5`.
    pub(crate) fn upgrading(&self) {
        self.state.lock().upgrading = true;
        self.output.notify_one();
    }

    /// The probe failed: carry on polling.
    pub(crate) fn upgrade_failed(&self) {
        self.state.lock().upgrading = false;
    }

    /// The client sent `5`: writes the frames still waiting for a `GET` to the socket, then
    /// hands the socket to the reader and the writer.
    pub(crate) async fn hand_over(&self, read: BoxRead, mut write: BoxWrite) {
        let waiting: Vec<Bytes> = {
            let mut state = self.state.lock();
            state.flushing = true;
            state.out_bytes = 0;
            let mut waiting: Vec<Bytes> = state.out.drain(..).collect();
            // The start of a frame the writer has not finished: it writes the rest to the
            // socket.
            if !state.writing.is_empty() {
                waiting.push(state.writing.split().freeze());
            }
            waiting
        };
        let mut written = Ok(());
        for frame in waiting {
            written = tokio::io::AsyncWriteExt::write_all(&mut write, &frame).await;
            if written.is_err() {
                break;
            }
        }
        let mut state = self.state.lock();
        state.flushing = false;
        state.upgrading = false;
        state.upgraded = true;
        if written.is_ok() {
            state.socket_read = Some(read);
            state.socket_write = Some(write);
        } else {
            // The socket failed at once: the session ends as if the client had gone.
            state.ended = true;
        }
        wake(&mut state.reader);
        wake(&mut state.writer);
        drop(state);
        self.output.notify_one();
    }
}

/// Clears the `polling` flag when a `GET` ends (answered, or dropped by its client).
struct PollingFlag<'a>(&'a Polling);

impl Drop for PollingFlag<'_> {
    fn drop(&mut self) {
        self.0.state.lock().polling = false;
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

/// A plain-text answer (`GET` and `POST` bodies are Engine.IO text).
fn text(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// Appends `packet` as a masked text frame (mask key zero: the payload as is), which is
/// what the reader expects from a client.
fn client_frame(out: &mut BytesMut, packet: &[u8]) {
    out.reserve(14 + packet.len());
    out.put_u8(0x81);
    match packet.len() {
        n @ 0..=125 => out.put_u8(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.put_u32(0);
    out.extend_from_slice(packet);
}

/// The length of the first whole server frame (unmasked) at the start of `bytes`, if it
/// is all there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len7 = *bytes.get(1)? & 0x7f;
    let (header, len) = match len7 {
        126 => (
            4,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    let total = header + len;
    (bytes.len() >= total).then_some(total)
}

/// Whether a server frame carries an Engine.IO message (`4…`: Socket.IO packets).
fn is_message(frame: &Bytes) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == 0x1)
        && crate::frame::payload_of(frame).first() == Some(&b'4')
}

/// Whether a server frame is a close frame with `code`.
fn is_close(frame: &Bytes, code: CloseCode) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == 0x8)
        && crate::frame::payload_of(frame).get(..2) == Some(&code.code.to_be_bytes()[..])
}

/// The Engine.IO packet a server frame carries: a text frame's payload, `1` for a close
/// frame, nothing for a control frame.
fn packet_of(frame: &Bytes) -> Option<Bytes> {
    match frame.first()? & 0x0f {
        0x1 => Some(crate::frame::payload_of(frame)),
        0x8 => Some(Bytes::from_static(b"1")),
        _ => None,
    }
}

/// The session's reading half: posted packets, then the socket once upgraded.
pub(crate) enum PollRead {
    Polling(Arc<Polling>),
    Socket(BoxRead),
}

/// A long-polling session never goes dormant: its posts arrive through its own task.
impl crate::server::reader::Readiness for PollRead {}

impl AsyncRead for PollRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let polling = match this {
                PollRead::Socket(socket) => return Pin::new(socket).poll_read(cx, buf),
                PollRead::Polling(polling) => polling.clone(),
            };
            let mut state = polling.state.lock();
            if !state.inbound.is_empty() {
                let n = state.inbound.len().min(buf.remaining());
                buf.put_slice(&state.inbound[..n]);
                state.inbound.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(socket) = state.socket_read.take() {
                drop(state);
                *this = PollRead::Socket(socket);
                continue;
            }
            if state.ended {
                // End of stream: the client is gone.
                return Poll::Ready(Ok(()));
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

/// The session's writing half: frames for `GET`s, then the socket once upgraded.
pub(crate) enum PollWrite {
    Polling(Arc<Polling>),
    Socket(BoxWrite),
}

impl PollWrite {
    /// Takes `bufs` whole into the `GET` queue, or says to wait.
    fn poll_queue(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let polling = match self {
                PollWrite::Socket(socket) => return Pin::new(socket).poll_write_vectored(cx, bufs),
                PollWrite::Polling(polling) => polling.clone(),
            };
            let mut state = polling.state.lock();
            if let Some(socket) = state.socket_write.take() {
                drop(state);
                *self = PollWrite::Socket(socket);
                continue;
            }
            if state.ended {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if state.flushing || state.out_bytes >= polling.out_limit {
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut taken = 0;
            for buf in bufs {
                state.writing.extend_from_slice(buf);
                taken += buf.len();
            }
            let mut added = false;
            while let Some(len) = frame_len(&state.writing) {
                let frame = state.writing.split_to(len).freeze();
                state.out_bytes += frame.len();
                state.out.push_back(frame);
                added = true;
            }
            drop(state);
            if added {
                polling.output.notify_one();
            }
            return Poll::Ready(Ok(taken));
        }
    }
}

impl AsyncWrite for PollWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_queue(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_queue(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PollWrite::Socket(socket) => Pin::new(socket).poll_flush(cx),
            PollWrite::Polling(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PollWrite::Socket(socket) => Pin::new(socket).poll_shutdown(cx),
            PollWrite::Polling(polling) => {
                polling.state.lock().shut = true;
                polling.output.notify_one();
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn client_frames_carry_the_packet_masked_with_a_zero_key() {
        for len in [0, 125, 126, 70_000] {
            let packet = vec![b'x'; len];
            let mut out = BytesMut::new();
            client_frame(&mut out, &packet);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0x80, "masked");
            assert!(out.ends_with(&packet));
            assert_eq!(
                out.len() - packet.len() - 4,
                match len {
                    0..=125 => 2,
                    126..=0xffff => 4,
                    _ => 10,
                }
            );
        }
    }

    #[tokio::test]
    async fn frames_written_come_out_as_packets_and_posts_as_frames() {
        let polling = Arc::new(Polling::new("s", 1 << 20));
        let (mut read, mut write) = polling.transport();
        // Written in two pieces, the second completing the first frame and adding two.
        let mut wire = crate::frame::text(b"42[\"a\",1]").to_vec();
        wire.extend_from_slice(&crate::frame::text(&[b'x'; 300]));
        wire.extend_from_slice(&crate::frame::close(crate::CloseCode::NORMAL));
        write.write_all(&wire[..3]).await.unwrap();
        assert!(polling.take_output().is_none(), "no whole frame yet");
        write.write_all(&wire[3..]).await.unwrap();
        let body = polling.take_output().unwrap();
        let packets: Vec<&[u8]> = body.split(|&b| b == SEPARATOR).collect();
        assert_eq!(packets[0], b"42[\"a\",1]");
        assert_eq!(packets[1], &[b'x'; 300][..]);
        assert_eq!(packets[2], b"1");

        polling.state.lock().inbound.clear();
        client_frame(&mut polling.state.lock().inbound, b"3");
        let mut frame = [0u8; 7];
        read.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame, [0x81, 0x81, 0, 0, 0, 0, b'3']);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_writer_until_a_get_drains_it() {
        let polling = Arc::new(Polling::new("s", 0));
        let (_read, mut write) = polling.transport();
        let frame = crate::frame::text(&vec![b'y'; 70_000]);
        write.write_all(&frame).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), write.write_all(&frame));
        assert!(blocked.await.is_err(), "the writer waits for room");
        assert!(polling.take_output().is_some());
        tokio::time::timeout(Duration::from_secs(5), write.write_all(&frame))
            .await
            .expect("room again")
            .unwrap();
    }
}
