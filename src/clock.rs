//! The one clock everything time-driven reads: the runtime's.
//!
//! Limits, backoffs, admission, analytics windows and cluster interest take an `Instant`
//! from here rather than from `std::time::Instant::now()`, so that a test running with
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`) moves all of them at once
//! instead of sleeping for real. Outside a paused runtime this is the monotonic clock.
//! (Latency stamps measure real elapsed time and read the system clock on purpose.)

use std::time::Instant;

/// Now, on the runtime's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
