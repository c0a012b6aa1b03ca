//! The writer task's loop: drain the outbox, write everything with vectored writes.
//!
//! A burst of events costs one wake-up and, as long as the socket takes it, one `writev` per
//! batch of up to [`MAX_IOVECS`] frames. The iovec array lives on the stack inside `poll`
//! only, and the batch vector is released whenever the queue runs dry, so an idle client's
//! writer holds no buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::counters::Counters;
use super::session::snapshot_frames;
use crate::dialect::{Dialect, Encoding, ServerMessage};
use crate::engine::degrade::{Book, Held};
use crate::engine::hub::Hub;
use crate::engine::outbox::{Closing, Outbox};
use crate::frame;
use crate::protocol::close::CloseCode;
use crate::protocol::code::ErrorCode;
use crate::snapshot::SnapshotCache;

/// Frames per vectored write (well under every platform's `IOV_MAX`).
pub(crate) const MAX_IOVECS: usize = 64;

/// Frames taken from the queue per round.
pub(crate) const MAX_BATCH: usize = 256;

/// How long a closing connection may take to write its last frames.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why the writer stopped without sending its close frame.
#[derive(Debug)]
pub(crate) struct WriteFailed {
    /// The close the server had decided on (a slow consumer, a shutdown, …), if it had:
    /// the connection ends for that reason even though the client never got the frame.
    pub(crate) closing: Option<CloseCode>,
    /// What the socket said.
    pub(crate) error: io::Error,
}

/// Runs until the connection is closed (close frame written, write side shut down) or the
/// socket fails. Returns the close code sent.
///
/// A close requested with [`Closing::Now`] interrupts a write blocked on a full socket: the
/// frame being written is completed (so the stream stays well-formed), the rest of the
/// batch is discarded, and the close frame follows, all within [`CLOSE_LINGER`]. A client
/// that reads nothing at all is then simply dropped: the error carries the close code it
/// could not be sent, so it is still counted as closed for that reason.
/// Notices of its own (frames lost under the `drop` policy) are written in the outbox's
/// dialect.
/// A client that was degraded (`slow_consumer = "degrade"`) is sent, once it has caught up,
/// what it is owed (see [`CatchUp`]).
///
/// `batch` is where the writer keeps the frames it writes: what it holds at the start (the
/// rest of a write a dormant connection began) is written first. `at_rest` is set while
/// the writer waits for frames with nothing in hand: dropping the future then loses
/// nothing, and the connection may go dormant.
///
/// `farewell`, once set, is the reason the close frame gives instead of its code's own (an
/// operator's disconnect, see `engine::control`).
pub(crate) async fn run<W: AsyncWrite + Unpin, E: WriterEnv>(
    outbox: &Outbox,
    socket: &mut W,
    env: &E,
    batch: &mut Vec<Bytes>,
    at_rest: &AtomicBool,
    farewell: &OnceLock<Box<str>>,
) -> Result<CloseCode, WriteFailed> {
    let code_of = |outbox: &Outbox| match outbox.closing() {
        Some(Closing::Now(code) | Closing::AfterFlush(code)) => Some(code),
        None => None,
    };
    drive(outbox, socket, env, batch, at_rest, farewell)
        .await
        .map_err(|error| WriteFailed {
            closing: code_of(outbox),
            error,
        })
}

async fn drive<W: AsyncWrite + Unpin, E: WriterEnv>(
    outbox: &Outbox,
    socket: &mut W,
    env: &E,
    batch: &mut Vec<Bytes>,
    at_rest: &AtomicBool,
    farewell: &OnceLock<Box<str>>,
) -> io::Result<CloseCode> {
    loop {
        if batch.is_empty() {
            at_rest.store(true, Ordering::Relaxed);
            outbox.ready().await;
            at_rest.store(false, Ordering::Relaxed);
        }
        if let Some(Closing::Now(code)) = outbox.closing() {
            outbox.clear();
            // What a dormant connection left unsent may begin with the rest of a frame:
            // the stream stays well-formed with it.
            let tail = batch.drain(..).take(1).collect();
            return Box::pin(finish(socket, tail, code, farewell.get().map(|r| &**r))).await;
        }
        let dropped = outbox.take_dropped();
        if dropped > 0 {
            env.counters().frames_dropped.add(dropped);
            batch.push(dropped_notice(outbox.dialect(), dropped));
        }
        outbox.drain_into(batch, MAX_BATCH);
        let since = outbox.take_since();
        if let Some(book) = outbox.take_book() {
            // Everything queued is in this batch: what the client is owed follows it.
            env.catch_up()
                .frames(*book, outbox.encoding(), env.counters(), batch);
        }
        if batch.is_empty() {
            if let Some(Closing::AfterFlush(code)) = outbox.closing() {
                return Box::pin(finish(
                    socket,
                    Vec::new(),
                    code,
                    farewell.get().map(|r| &**r),
                ))
                .await;
            }
            // A frame counted but not queued yet (its publisher was preempted mid-push):
            // let other tasks run while it lands.
            tokio::task::yield_now().await;
            continue;
        }
        if let Written::Interrupted { partial } = write_frames(socket, batch, Some(outbox)).await? {
            outbox.clear();
            let code = match outbox.closing() {
                Some(Closing::Now(code) | Closing::AfterFlush(code)) => code,
                None => CloseCode::INTERNAL_ERROR,
            };
            return Box::pin(finish(
                socket,
                partial.into_iter().collect(),
                code,
                farewell.get().map(|r| &**r),
            ))
            .await;
        }
        env.counters().wrote(batch.len(), since);
        if outbox.is_empty() {
            *batch = Vec::new();
        } else {
            batch.clear();
        }
    }
}

/// Writes `tail` (the rest of an interrupted frame, if any) and the close frame, then shuts
/// the write side down, giving up after [`CLOSE_LINGER`]. Callers box this future: it runs
/// once per connection, and keeping it out of line keeps every idle connection smaller.
async fn finish<W: AsyncWrite + Unpin>(
    socket: &mut W,
    mut tail: Vec<Bytes>,
    code: CloseCode,
    reason: Option<&str>,
) -> io::Result<CloseCode> {
    tail.push(frame::close_with(
        code.code,
        reason.map_or(code.reason, |r| r),
    ));
    let close = async {
        write_frames(socket, &mut tail, None).await?;
        socket.shutdown().await
    };
    match tokio::time::timeout(CLOSE_LINGER, close).await {
        Ok(result) => result.map(|()| code),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// What the writer needs beside its outbox and socket: the counters, and where to find what
/// a degraded client is owed. The server's shared state is one; the writer holds a
/// reference to it, one pointer in every connection's future.
pub(crate) trait WriterEnv {
    /// The server's counters.
    fn counters(&self) -> &Counters;
    /// Where the current snapshots are, for a client that caught up.
    fn catch_up(&self) -> CatchUp<'_>;
}

/// Where the writer finds what a degraded client is owed once it has caught up, beside its
/// book (see [`crate::engine::degrade`]): the current snapshots, and the hub that
/// compresses them for a client with permessage-deflate.
#[derive(Clone, Copy)]
pub(crate) struct CatchUp<'a> {
    /// The status types' current values.
    pub(crate) snapshots: &'a SnapshotCache,
    /// The hub, for [`Hub::encode_as`].
    pub(crate) hub: &'a Hub,
}

impl CatchUp<'_> {
    /// Appends to `out`, per channel in `book`: a `gap` marker when events were missed,
    /// the parked events (the newest of each conflation key), and the channel's current
    /// snapshot if it has one. Counts it all.
    fn frames(&self, book: Book, encoding: Encoding, counters: &Counters, out: &mut Vec<Bytes>) {
        let missed = book.counts();
        let (mut gaps, mut parked) = (0, 0);
        let now = SystemTime::now();
        for held in book.into_held() {
            if held.missed > 0 {
                out.push(gap_notice(encoding.dialect, &held, now));
                gaps += 1;
            }
            parked += held.parked.len() as u64;
            out.extend(held.parked);
            if let Some(snapshot) = self.snapshots.get(&held.channel) {
                let encode = |f: &Bytes| self.hub.encode_as(encoding, f);
                out.extend(snapshot_frames(&snapshot, encoding, encode).iter().cloned());
            }
        }
        counters.degraded.caught_up(missed, gaps, parked);
    }
}

/// The `gap` message: what a degraded client missed on one channel.
fn gap_notice(dialect: Dialect, held: &Held, now: SystemTime) -> Bytes {
    let mut data = serde_json::json!({
        "channel": &*held.channel,
        "missed": held.missed,
        "conflated": held.conflated,
    });
    if held.through != 0 {
        data["after"] = held.after.into();
        data["through"] = held.through.into();
    }
    dialect.message(ServerMessage::Gap, None, now, &data)
}

/// The `error` message that tells a client under the `drop` policy how many frames it lost.
fn dropped_notice(dialect: Dialect, dropped: u64) -> Bytes {
    dialect.message(
        ServerMessage::Error,
        None,
        SystemTime::now(),
        &serde_json::json!({
            "code": ErrorCode::FramesDropped,
            "message": "your queue was full; events were dropped",
            "dropped": dropped,
        }),
    )
}

/// How a [`write_frames`] call ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Every frame was written.
    All,
    /// An immediate close was requested while the socket was full; `partial` is the unsent
    /// rest of a frame that may have been partly written.
    Interrupted {
        /// The remainder of the frame cut in the middle, if any: the frame this call cut,
        /// or the first one, which an earlier write may have cut (a dormant connection's,
        /// see `session::dormant`), whole if it was not.
        partial: Option<Bytes>,
    },
}

/// Writes every frame in `frames`, consuming them, with as few syscalls as the socket allows.
/// With `interrupt`, a blocked write gives up when that outbox asks for an immediate close.
///
/// A write that found the socket full and then went through proves that the client is
/// reading (its kernel acknowledged bytes): that outbox's client is marked alive. A slow
/// reader whose ping waits behind megabytes of events is then not closed as silent (4001),
/// while a dead peer, whose socket never drains, still is; an idle one never fills its
/// socket, so it must still answer its pings.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    socket: &mut W,
    frames: &mut [Bytes],
    interrupt: Option<&Outbox>,
) -> io::Result<Written> {
    let mut first = 0;
    let mut in_frame = false;
    let mut waited = false;
    while first < frames.len() {
        let pending = &frames[first..];
        let written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = pending.len().min(MAX_IOVECS);
            for (slice, frame) in slices.iter_mut().zip(pending) {
                *slice = IoSlice::new(frame);
            }
            match Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(result) => Poll::Ready(result.map(Some)),
                Poll::Pending => {
                    waited = true;
                    match interrupt {
                        Some(outbox) if outbox.poll_close_now(cx).is_ready() => {
                            Poll::Ready(Ok(None))
                        }
                        _ => Poll::Pending,
                    }
                }
            }
        })
        .await?;
        let Some(mut written) = written else {
            let partial = (in_frame || first == 0).then(|| std::mem::take(&mut frames[first]));
            return Ok(Written::Interrupted { partial });
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if let (true, Some(outbox)) = (std::mem::take(&mut waited), interrupt) {
            outbox.mark_alive();
        }
        while written > 0 {
            let frame = &mut frames[first];
            if written >= frame.len() {
                written -= frame.len();
                *frame = Bytes::new();
                first += 1;
                in_frame = false;
            } else {
                frame.advance(written);
                written = 0;
                in_frame = true;
            }
        }
    }
    Ok(Written::All)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a writer needs: counters, an empty snapshot cache and a hub.
    struct Parts(Counters, SnapshotCache, Hub);

    impl Parts {
        fn new() -> Self {
            Self(
                Counters::default(),
                SnapshotCache::default(),
                Hub::new(&crate::Config::default()),
            )
        }
    }

    impl WriterEnv for Parts {
        fn counters(&self) -> &Counters {
            &self.0
        }

        fn catch_up(&self) -> CatchUp<'_> {
            CatchUp {
                snapshots: &self.1,
                hub: &self.2,
            }
        }
    }
    use crate::engine::outbox::SlowConsumerPolicy;
    use std::task::Context;

    /// A socket that takes at most `chunk` bytes per write and counts the calls.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.chunk - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| frame::text(format!("{{\"n\":{i}}}").as_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        let frames_in = frames(200);
        let expected: Vec<u8> = frames_in.iter().flat_map(|f| f.to_vec()).collect();
        let mut sock = Trickle {
            out: vec![],
            chunk: 37,
            calls: 0,
        };
        assert_eq!(
            write_frames(&mut sock, &mut frames_in.clone(), None)
                .await
                .unwrap(),
            Written::All
        );
        assert_eq!(sock.out, expected);
    }

    #[tokio::test]
    async fn a_burst_is_one_write_when_the_socket_takes_it() {
        let mut sock = Trickle {
            out: vec![],
            chunk: usize::MAX / 2,
            calls: 0,
        };
        write_frames(&mut sock, &mut frames(MAX_IOVECS), None)
            .await
            .unwrap();
        assert_eq!(sock.calls, 1);
    }

    #[tokio::test]
    async fn flushes_then_closes() {
        let parts = Parts::new();
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        for f in frames(3) {
            outbox.push(f);
        }
        outbox.close(Closing::AfterFlush(CloseCode::GOING_AWAY));
        let mut sock = Trickle {
            out: vec![],
            chunk: 1 << 20,
            calls: 0,
        };
        assert_eq!(
            run(
                &outbox,
                &mut sock,
                &parts,
                &mut Vec::new(),
                &AtomicBool::new(false),
                &OnceLock::new(),
            )
            .await
            .unwrap(),
            CloseCode::GOING_AWAY
        );
        let mut expected: Vec<u8> = frames(3).iter().flat_map(|f| f.to_vec()).collect();
        expected.extend_from_slice(&frame::close(CloseCode::GOING_AWAY));
        assert_eq!(sock.out, expected);
    }

    #[tokio::test]
    async fn an_operators_disconnect_closes_with_its_own_reason() {
        let parts = Parts::new();
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        outbox.push(frames(1).remove(0));
        let code = CloseCode {
            code: 4403,
            reason: CloseCode::DISCONNECTED.reason,
        };
        outbox.close(Closing::AfterFlush(code));
        let farewell = OnceLock::from(Box::<str>::from("banned: spam"));
        let mut sock = Trickle {
            out: vec![],
            chunk: 1 << 20,
            calls: 0,
        };
        let (at_rest, mut batch) = (AtomicBool::new(false), Vec::new());
        let sent = run(&outbox, &mut sock, &parts, &mut batch, &at_rest, &farewell);
        assert_eq!(sent.await.unwrap().code, 4403);
        let mut expected = frames(1)[0].to_vec();
        expected.extend_from_slice(&frame::close_with(4403, "banned: spam"));
        assert_eq!(sock.out, expected);
    }

    #[tokio::test]
    async fn close_now_discards_the_queue() {
        let parts = Parts::new();
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        for f in frames(3) {
            outbox.push(f);
        }
        outbox.close(Closing::Now(CloseCode::SLOW_CONSUMER));
        let mut sock = Trickle {
            out: vec![],
            chunk: 1 << 20,
            calls: 0,
        };
        run(
            &outbox,
            &mut sock,
            &parts,
            &mut Vec::new(),
            &AtomicBool::new(false),
            &OnceLock::new(),
        )
        .await
        .unwrap();
        assert_eq!(sock.out, frame::close(CloseCode::SLOW_CONSUMER).to_vec());
    }

    /// Takes `budget` bytes, then blocks forever (a client that stopped reading).
    struct Stuck {
        out: Vec<u8>,
        budget: usize,
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.budget);
            if n == 0 {
                return Poll::Pending;
            }
            self.budget -= n;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a write of `batch` to a socket that takes `budget` bytes hands back when an
    /// immediate close interrupts it.
    fn interrupted(budget: usize, mut batch: Vec<Bytes>) -> Option<Bytes> {
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        let mut sock = Stuck {
            out: vec![],
            budget,
        };
        let write = write_frames(&mut sock, &mut batch, Some(&outbox));
        tokio::pin!(write);
        assert!(futures_poll(&mut write).is_pending());
        outbox.close(Closing::Now(CloseCode::SLOW_CONSUMER));
        let Poll::Ready(Ok(Written::Interrupted { partial })) = futures_poll(&mut write) else {
            panic!("not interrupted");
        };
        partial
    }

    #[tokio::test]
    async fn close_now_interrupts_a_blocked_write_mid_frame() {
        let batch = frames(3);
        let first = batch[0].clone();
        assert_eq!(interrupted(5, batch).unwrap(), first.slice(5..));
    }

    #[tokio::test]
    async fn close_now_before_a_write_keeps_the_first_frame_an_earlier_write_may_have_cut() {
        // A dormant connection's write left the rest of a frame first in the batch; the
        // socket takes nothing more before the close: the rest still goes out first, or
        // the close frame would land inside that frame.
        let mut batch = frames(3);
        let rest = batch[0].slice(5..);
        batch[0] = rest.clone();
        assert_eq!(interrupted(0, batch).unwrap(), rest);
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// A socket that is full on the first write (and wakes at once), then takes everything.
    struct FullOnce {
        out: Vec<u8>,
        full: bool,
    }

    impl AsyncWrite for FullOnce {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if std::mem::take(&mut self.full) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_full_socket_that_drains_marks_a_slow_reader_alive() {
        // Its ping is unanswered, but the socket took bytes after being full: alive.
        let outbox = Outbox::new(16, SlowConsumerPolicy::Degrade);
        outbox.ping(frame::ping(b""));
        let mut sock = FullOnce {
            out: vec![],
            full: true,
        };
        let mut batch = frames(3);
        write_frames(&mut sock, &mut batch, Some(&outbox))
            .await
            .unwrap();
        assert!(
            !outbox.expire_if_silent(),
            "a slow reader was closed as silent"
        );
        // A socket that never filled proves nothing: the ping must still be answered.
        outbox.ping(frame::ping(b""));
        let mut sock = FullOnce {
            out: vec![],
            full: false,
        };
        write_frames(&mut sock, &mut frames(3), Some(&outbox))
            .await
            .unwrap();
        assert!(outbox.expire_if_silent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_dropped_after_the_linger() {
        let parts = Parts::new();
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        for f in frames(3) {
            outbox.push(f);
        }
        let mut sock = Stuck {
            out: vec![],
            budget: 5,
        };
        let at_rest = AtomicBool::new(false);
        let mut batch = Vec::new();
        let farewell = OnceLock::new();
        let run = run(&outbox, &mut sock, &parts, &mut batch, &at_rest, &farewell);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("finished while the socket is stuck"),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        outbox.close(Closing::Now(CloseCode::SLOW_CONSUMER));
        let failed = run.await.unwrap_err();
        assert_eq!(failed.error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(failed.closing, Some(CloseCode::SLOW_CONSUMER));
    }
}
