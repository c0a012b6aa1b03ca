//! Dormant connections: an idle connection holds no task.
//!
//! A connection's task is its largest allocation (about 1.5 KB: the reader's and the
//! writer's futures, side by side). Most connections of a large deployment are idle most
//! of the time, so an idle one gives its task up: the hub's once-a-second sweep asks every
//! client that was sent nothing since the last sweep to go dormant
//! ([`Outbox::ask_to_rest`]), and a connection whose reader and writer are both between
//! frames when it hears drops their futures (which then hold nothing) and rests.
//!
//! A dormant connection is a [`Dormant`] cell holding its [`Conn`], whose waker is
//! registered where the task's was: with the socket's readiness (the client sent, or left),
//! with its outbox (a frame, a close, a ping), and with its deadline timer if it has one.
//! The first of them to fire takes the connection out of the cell:
//! - frames to send, and nothing else (the common case: an event, a status update, a
//!   keep-alive ping) are written at once, by the thread that woke it, with the same
//!   vectored write the writer uses; the queue gives its memory back, and the connection
//!   rests again in the same cell. A dormant client that is sent something now and then
//!   costs no task and no queue block, only the write;
//! - anything else (the client sent something or left, a deadline passed, a close was
//!   asked for, the control API sent a command, the socket was full, frames were dropped or held back) spawns a task that
//!   serves it as before, until the sweep asks it to rest again. So does a stream of
//!   frames: past [`MAX_WRITES_DORMANT`] writes in a second, a client is busy, and its
//!   task's writer takes over, which batches frames into one write and runs on every
//!   worker thread rather than the publisher's.
//!
//! Wakers that fire while the connection is out of the cell find it empty; the one who
//! holds the connection looks again before putting it back (`woken`), so no wake-up is
//! lost. Publishing never waits for any of this beyond the write itself.
//!
//! [`Outbox::ask_to_rest`]: crate::engine::outbox::Outbox::ask_to_rest

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::{conn_span, drive, Conn};
use crate::server::reader::{Peeked, Readiness};
use crate::server::writer;

/// Times a woken connection may find something to write and rest again, in one wake-up,
/// before it is given a task anyway (frames arrive faster than it can rest).
const MAX_WRITES_AWAKE: usize = 4;

/// Writes a dormant connection makes in one second before it is given its task back.
const MAX_WRITES_DORMANT: u8 = 8;

/// A dormant connection, woken by whichever of its wakers fires first.
struct Dormant<R, W> {
    conn: parking_lot::Mutex<Option<Conn<R, W>>>,
    /// Set by every wake-up, also by one that came while the connection was out of the
    /// cell: whoever holds it then looks again before putting it back.
    woken: AtomicBool,
}

/// Lays `conn` to rest in a new cell. Gives it back if it cannot rest (its stream cannot
/// tell readiness, or no runtime is known) or has something to do already; the caller then
/// serves it on.
// The connection comes back by value: boxing it would allocate at every rest.
#[allow(clippy::result_large_err)]
pub(super) fn rest<R, W>(conn: Conn<R, W>) -> Result<(), Conn<R, W>>
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if conn.session.shared.runtime.is_none() {
        return Err(conn);
    }
    let cell = Arc::new(Dormant {
        conn: parking_lot::Mutex::new(None),
        woken: AtomicBool::new(false),
    });
    let outbox = conn.session.client.outbox().clone();
    // Before the outbox's waker is the cell's: the sweep must not wake a dormant connection.
    outbox.set_dormant(true);
    let shared = conn.session.shared.clone();
    match cell.lay(conn, Timer::Register) {
        Ok(()) => {
            // An idle client's queue holds no block while it rests.
            outbox.shrink();
            shared.counters.dormant.add(1);
            Ok(())
        }
        Err(conn) => {
            outbox.set_dormant(false);
            Err(conn)
        }
    }
}

impl<R, W> Dormant<R, W>
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Registers `conn`'s wakers as this cell's and puts it in the cell; gives it back if
    /// something is ready or a waker fired meanwhile.
    #[allow(clippy::result_large_err)] // As for `rest`.
    fn lay(self: &Arc<Self>, mut conn: Conn<R, W>, timer: Timer) -> Result<(), Conn<R, W>> {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // From here on, a wake-up is noticed below. The registrations happen while the
        // connection is ours and no lock is held: a waker may fire at once (on another
        // thread, or within a registration), finds the cell empty, and leaves `woken`.
        self.woken.store(false, Ordering::Relaxed);
        let idle = unbudgeted(&mut cx, |cx| {
            conn.reader.poll_pong(cx, false) == Peeked::Nothing
                && conn.session.client.outbox().poll_ready(cx).is_pending()
                && match timer {
                    Timer::Register => conn.session.deadlines.poll_passed(cx).is_pending(),
                    Timer::Registered => !conn.session.deadlines.has_fired(),
                }
        });
        if !idle {
            return Err(conn);
        }
        let mut slot = self.conn.lock();
        // A waker that fired before took nothing: keep the connection. One that fires
        // from now on finds it in the cell (the lock orders the two).
        if self.woken.load(Ordering::Relaxed) {
            return Err(conn);
        }
        *slot = Some(conn);
        Ok(())
    }

    /// Serves the connection just taken out of the cell: writes what it was sent and lays
    /// it to rest again, or gives it a task.
    fn serve(self: &Arc<Self>, mut conn: Conn<R, W>) {
        for _ in 0..MAX_WRITES_AWAKE {
            let waker = Waker::from(self.clone());
            let mut cx = Context::from_waker(&waker);
            match unbudgeted(&mut cx, |cx| conn.write_at_once(cx)) {
                AtOnce::Written => match self.lay(conn, Timer::Registered) {
                    Ok(()) => return,
                    Err(back) => conn = back,
                },
                AtOnce::NeedsTask => break,
            }
        }
        awaken(conn);
    }
}

impl<R, W> Wake for Dormant<R, W>
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Relaxed);
        let Some(conn) = self.conn.lock().take() else {
            return;
        };
        self.serve(conn);
    }
}

/// Whether [`Dormant::lay`] registers the cell's waker with the connection's deadline
/// timer.
#[derive(Clone, Copy)]
enum Timer {
    /// From the connection's task, as it rests: the task's waker is replaced.
    Register,
    /// From a wake-up, the cell's is registered already. A wake-up may come from the
    /// runtime shutting down (its drivers wake everything), when polling a timer panics:
    /// only whether it fired is looked at.
    Registered,
}

/// Runs `f` with `cx` outside tokio's cooperative budget. A wake-up runs inside whichever
/// task woke the connection (a publisher writing to thousands of clients), whose budget
/// would otherwise run out after 128 operations and make the socket look busy (a pending
/// poll that also wakes the cell), sending every connection after the 128th to a task.
/// What runs here is bounded: one look at each waker source, and one write.
fn unbudgeted<T>(cx: &mut Context<'_>, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
    let mut f = Some(f);
    let run = tokio::task::unconstrained(std::future::poll_fn(|cx| {
        Poll::Ready(f.take().map(|f| f(cx)))
    }));
    match std::pin::pin!(run).poll(cx) {
        Poll::Ready(Some(out)) => out,
        Poll::Ready(None) | Poll::Pending => unreachable!("a ready poll function runs once"),
    }
}

/// What [`Conn::write_at_once`] did.
enum AtOnce {
    /// Everything queued was written (possibly nothing): the connection may rest again.
    Written,
    /// The connection needs its task: see the module docs.
    NeedsTask,
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Readiness + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Writes what the outbox holds without waiting, if that is all there is to do,
    /// having read the client's pongs (a keep-alive's answers). Polls with `cx`, whose
    /// waker is the cell's.
    fn write_at_once(&mut self, cx: &mut Context<'_>) -> AtOnce {
        if !self.read_pongs(cx) {
            return AtOnce::NeedsTask;
        }
        let outbox = self.session.client.outbox();
        let only_frames = outbox.closing().is_none()
            && !outbox.has_commands()
            && !outbox.is_degraded()
            && !outbox.has_dropped()
            && !self.session.deadlines.has_fired();
        if !only_frames {
            return AtOnce::NeedsTask;
        }
        if !outbox.is_empty() && !self.may_write_dormant() {
            return AtOnce::NeedsTask;
        }
        let outbox = self.session.client.outbox();
        let batch = &mut self.unsent;
        debug_assert!(
            batch.is_empty(),
            "a dormant connection has written everything"
        );
        outbox.drain_into(batch, writer::MAX_BATCH);
        let since = outbox.take_since();
        if batch.is_empty() {
            return AtOnce::Written;
        }
        let queued = batch.len();
        let write = std::pin::pin!(writer::write_frames(&mut self.write, batch, None))
            .poll(cx)
            .is_ready();
        // The write consumed what it wrote (emptied frames, the rest of a frame cut
        // short): what is left is the writer's to send first.
        batch.retain(|frame| !frame.is_empty());
        let since = since.filter(|_| batch.is_empty());
        self.session
            .shared
            .counters
            .wrote(queued - batch.len(), since);
        if !write || !batch.is_empty() {
            // The socket is full (or failed: the writer finds out again and says so).
            return AtOnce::NeedsTask;
        }
        *batch = Vec::new();
        // A client written to now and then gives its queue's block back at once, so that
        // an update to thousands of resting clients reuses one block; one written to
        // second after second keeps it, as a busy client does, until the sweep.
        if !self.dormant_writes.steady() {
            outbox.shrink();
        }
        AtOnce::Written
    }
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Readiness + Unpin,
{
    /// Reads the pongs the client sent, as the read loop would (each counts against the
    /// inbound limit and shows the client alive); true if nothing else came.
    fn read_pongs(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            // Only while the limit surely allows it: a refusal is the read loop's to make.
            let allowed = self.session.limit.retry_after().is_zero();
            match self.reader.poll_pong(cx, allowed) {
                Peeked::Nothing => return true,
                Peeked::Pong => {
                    self.session.limit.take(crate::clock::now());
                    self.session.client.outbox().mark_alive();
                }
                Peeked::Other => return false,
            }
        }
    }
}

impl<R, W> Conn<R, W> {
    /// Counts a write made while dormant; false past [`MAX_WRITES_DORMANT`] in a second.
    fn may_write_dormant(&mut self) -> bool {
        let now = crate::clock::now().saturating_duration_since(self.started);
        self.dormant_writes.count(now.as_millis() as u32) <= MAX_WRITES_DORMANT
    }
}

/// The writes a dormant connection made, in windows of a second: the current one and the
/// one just before it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Writes {
    /// When the current window began, in milliseconds since the connection started.
    since: u32,
    /// Writes in the current window.
    now: u8,
    /// Writes in the window before, if it ended where the current one began; else 0.
    before: u8,
}

impl Writes {
    /// Counts a write at `at` (milliseconds since the connection started); returns the
    /// writes in the current window, this one included.
    fn count(&mut self, at: u32) -> u8 {
        let elapsed = at.wrapping_sub(self.since);
        if elapsed >= 1000 {
            self.before = if elapsed < 2000 { self.now } else { 0 };
            (self.since, self.now) = (at, 0);
        }
        self.now = self.now.saturating_add(1);
        self.now
    }

    /// Whether the client is written to steadily: more than once in this second and in
    /// the one before. A burst of a moment (a status update, the heartbeat and a ping in
    /// the same second, to every resting client at once) is not.
    fn steady(&self) -> bool {
        self.now >= 2 && self.before >= 2
    }
}

/// Spawns a task that serves the dormant `conn` again.
fn awaken<R, W>(conn: Conn<R, W>)
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.session.shared.clone();
    shared.counters.awoken.add(1);
    conn.session.client.outbox().set_dormant(false);
    let span = conn_span(conn.session.client.id(), conn.session.address);
    let Some(runtime) = &shared.runtime else {
        unreachable!("a connection rests only where the runtime is known");
    };
    shared.tasks.spawn_on(drive(conn).instrument(span), runtime);
}

#[cfg(test)]
mod tests {
    use super::Writes;

    /// Counts writes at `times` (ms); returns whether the client looked steady after each.
    fn steady_after(times: &[u32]) -> Vec<bool> {
        let mut writes = Writes::default();
        times
            .iter()
            .map(|&at| {
                writes.count(at);
                writes.steady()
            })
            .collect()
    }

    #[test]
    fn a_client_written_to_second_after_second_is_steady() {
        // Five writes a second: the second window on keeps its block from its second write.
        let every_200ms: Vec<u32> = (0..10).map(|i| 1_000 + i * 200).collect();
        let steady = steady_after(&every_200ms);
        assert_eq!(
            steady[..5],
            [false; 5],
            "the first second gives the block back"
        );
        assert_eq!(steady[5..], [false, true, true, true, true]);
    }

    #[test]
    fn a_burst_of_a_moment_is_not_steady() {
        // Four writes in one second every 30 s (a status update, storage, the heartbeat
        // and a ping), a status update alone every 5 s in between.
        let times = [
            30_000, 30_010, 30_020, 30_030, 35_000, 40_000, 60_000, 60_010, 60_020,
        ];
        assert!(steady_after(&times).iter().all(|steady| !steady));
        // Two busy seconds in a row are steady, a gap of a second in between is not.
        assert_eq!(
            steady_after(&[0, 10, 1_000, 1_010]),
            [false, false, false, true]
        );
        assert_eq!(steady_after(&[0, 10, 2_000, 2_010]), [false; 4]);
    }
}
