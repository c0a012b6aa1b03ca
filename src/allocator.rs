//! The binary's allocator: mimalloc, told once a second to give back what it can.
//!
//! mimalloc returns a page to the OS some time after the page fell empty, but only when it
//! next looks (on a later allocation in the same arena). A server whose clients are mostly
//! idle allocates in bursts (a status update written to every client, a thousand
//! handshakes) and then hardly at all, so what a burst freed could stay resident until the
//! next one: idle RSS per connection varied by a third from run to run (perf/README.md,
//! "Idle memory"). A collection every second makes it look.

use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often [`collect`] runs.
const EVERY: Duration = Duration::from_secs(1);

/// Runs [`collect`] every [`EVERY`], forever.
pub(crate) async fn collect_periodically() {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        collect();
    }
}

/// Lets mimalloc purge the pages whose delay has passed (and collect this thread's heap).
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` has no preconditions: it only frees memory mimalloc holds and
    // no live allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
