//! The binary's allocator: mimalloc, on 4 KiB pages, told once a second to give back
//! what it can.
//!
//! # No transparent huge pages
//! mimalloc asks the kernel for transparent huge pages on its arenas (`MADV_HUGEPAGE`).
//! The kernel then backs a 2 MiB range with one huge page at the first touch of any part
//! of it, and keeps it resident while any part is in use; mimalloc gives memory back in
//! 64 KiB pieces, which a huge page does not shrink by. An idle server that writes a
//! status update to 19,000 resting clients touches a few ranges each time, so its RSS rose
//! by 4-11 MB at some updates and stayed there: 43 MB grew to 55-73 MB within a minute,
//! with live allocations unchanged (perf/README.md, "Huge pages"). [`small_pages`] turns
//! them off for the process (`PR_SET_THP_DISABLE`), unless `MIMALLOC_ALLOW_THP` is set.
//!
//! # Collection
//! mimalloc returns a page to the OS some time after the page fell empty, but only when it
//! next looks (on a later allocation in the same arena). A server whose clients are mostly
//! idle allocates in bursts (a status update written to every client, a thousand
//! handshakes) and then hardly at all, so what a burst freed could stay resident until the
//! next one: idle RSS per connection varied by a third from run to run (perf/README.md,
//! "Idle memory"). A collection every second makes it look.

use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (see the [module docs](self)),
/// unless the environment sets `MIMALLOC_ALLOW_THP` (mimalloc's own switch for them). Call
/// it first thing in `main`: memory touched before keeps its huge pages.
#[allow(unsafe_code)]
pub(crate) fn small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag of this process
        // and reads no memory.
        let failed = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
        if failed {
            // Before logging starts: a kernel without the call keeps huge pages.
            eprintln!(
                "sigmahub: cannot turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

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
