//! The writer task's loop: drain the outbox, write everything with vectored writes.
//!
//! A burst of events costs one wake-up and, as long as the socket takes it, one `writev` per
//! batch of up to [`MAX_IOVECS`] frames. The iovec array lives on the stack inside `poll`
//! only, and the batch vector is released whenever the queue runs dry, so an idle client's
//! writer holds no buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::engine::outbox::{Closing, Outbox};
use crate::event;
use crate::frame;
use crate::protocol::close::CloseCode;

/// Frames per vectored write (well under every platform's `IOV_MAX`).
pub(crate) const MAX_IOVECS: usize = 64;

/// Frames taken from the queue per round.
const MAX_BATCH: usize = 256;

/// Runs until the connection is closed (close frame written, write side shut down) or the
/// socket fails. Returns the close code sent, if any.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    outbox: &Outbox,
    socket: &mut W,
) -> io::Result<CloseCode> {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        outbox.ready().await;
        if let Some(Closing::Now(code)) = outbox.closing() {
            outbox.clear();
            return finish(socket, code).await;
        }
        let dropped = outbox.take_dropped();
        if dropped > 0 {
            batch.push(dropped_notice(dropped));
        }
        outbox.drain_into(&mut batch, MAX_BATCH);
        if batch.is_empty() {
            if let Some(Closing::AfterFlush(code)) = outbox.closing() {
                return finish(socket, code).await;
            }
            continue;
        }
        write_frames(socket, &mut batch).await?;
        if outbox.is_empty() {
            batch = Vec::new();
        } else {
            batch.clear();
        }
    }
}

async fn finish<W: AsyncWrite + Unpin>(socket: &mut W, code: CloseCode) -> io::Result<CloseCode> {
    socket.write_all(&frame::close(code)).await?;
    socket.shutdown().await?;
    Ok(code)
}

/// The `error` message that tells a client under the `drop` policy how many frames it lost.
fn dropped_notice(dropped: u64) -> Bytes {
    event::encode_serialize(
        "error",
        SystemTime::now(),
        None,
        &serde_json::json!({
            "code": "frames_dropped",
            "message": "your queue was full; events were dropped",
            "dropped": dropped,
        }),
    )
}

/// Writes every frame in `frames`, consuming them, with as few syscalls as the socket allows.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    socket: &mut W,
    frames: &mut [Bytes],
) -> io::Result<()> {
    let mut first = 0;
    while first < frames.len() {
        let pending = &frames[first..];
        let mut written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = pending.len().min(MAX_IOVECS);
            for (slice, frame) in slices.iter_mut().zip(pending) {
                *slice = IoSlice::new(frame);
            }
            Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let frame = &mut frames[first];
            if written >= frame.len() {
                written -= frame.len();
                *frame = Bytes::new();
                first += 1;
            } else {
                frame.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use std::task::{Context, Poll};

    /// A socket that takes at most `chunk` bytes per write and counts the calls.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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
        (0..n).map(|i| frame::text(format!("{{\"n\":{i}}}").as_bytes())).collect()
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        let frames_in = frames(200);
        let expected: Vec<u8> = frames_in.iter().flat_map(|f| f.to_vec()).collect();
        let mut sock = Trickle { out: vec![], chunk: 37, calls: 0 };
        write_frames(&mut sock, &mut frames_in.clone()).await.unwrap();
        assert_eq!(sock.out, expected);
    }

    #[tokio::test]
    async fn a_burst_is_one_write_when_the_socket_takes_it() {
        let mut sock = Trickle { out: vec![], chunk: usize::MAX / 2, calls: 0 };
        write_frames(&mut sock, &mut frames(MAX_IOVECS)).await.unwrap();
        assert_eq!(sock.calls, 1);
    }

    #[tokio::test]
    async fn flushes_then_closes() {
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        for f in frames(3) {
            outbox.push(f);
        }
        outbox.close(Closing::AfterFlush(CloseCode::GOING_AWAY));
        let mut sock = Trickle { out: vec![], chunk: 1 << 20, calls: 0 };
        assert_eq!(run(&outbox, &mut sock).await.unwrap(), CloseCode::GOING_AWAY);
        let mut expected: Vec<u8> = frames(3).iter().flat_map(|f| f.to_vec()).collect();
        expected.extend_from_slice(&frame::close(CloseCode::GOING_AWAY));
        assert_eq!(sock.out, expected);
    }

    #[tokio::test]
    async fn close_now_discards_the_queue() {
        let outbox = Outbox::new(16, SlowConsumerPolicy::Close);
        for f in frames(3) {
            outbox.push(f);
        }
        outbox.close(Closing::Now(CloseCode::SLOW_CONSUMER));
        let mut sock = Trickle { out: vec![], chunk: 1 << 20, calls: 0 };
        run(&outbox, &mut sock).await.unwrap();
        assert_eq!(sock.out, frame::close(CloseCode::SLOW_CONSUMER).to_vec());
    }
}
