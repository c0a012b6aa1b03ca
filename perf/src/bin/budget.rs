//! What an idle connection costs the server, allocation by allocation (issue 18).
//!
//! Runs the sigmahub library in this process, as the `sigmahub` binary does (mimalloc, a
//! multi-threaded tokio runtime, the default configuration), under a counting allocator
//! that knows how many allocations of each size are live. It takes a census, has a
//! `sigmahub-perf --idle` generator (another process, so that the clients' allocations are
//! not counted) connect `--clients` clients that subscribe to the default channels, takes
//! a second census once they are all in, and prints the difference per connection, size by
//! size, beside the RSS it grew by; then what was allocated and freed again meanwhile
//! (connecting, the handshake, the welcome), which RSS may keep as the allocator's free
//! space.
//!
//! ```sh
//! target/release/budget --generator target/release/sigmahub-perf --clients 5000
//! # where the live allocations of one size come from, call stack by call stack
//! target/release/budget --generator target/release/sigmahub-perf --clients 100 --trace 256
//! ```
//!
//! The figures are the allocator's view (requested sizes); RSS adds the allocator's size
//! classes and pages, and the kernel's socket buffers are in neither.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;

/// Sizes are counted exactly up to this many bytes, in steps of [`STEP`]; larger ones
/// share the last bucket.
const LARGEST: usize = 64 * 1024;
const STEP: usize = 8;
const BUCKETS: usize = LARGEST / STEP + 1;

static LIVE: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static LIVE_BYTES: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
/// Allocations made, live or not.
static MADE: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static MADE_BYTES: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
/// The size whose allocations are traced (`--trace`), while [`TRACING`].
static TRACE_SIZE: AtomicI64 = AtomicI64::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
/// The traced allocations still live: address to the call stack that made it.
static TRACED: Mutex<Option<HashMap<usize, String>>> = Mutex::new(None);

thread_local! {
    /// Set while this thread prints a backtrace: its own allocations are not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// mimalloc, counting live allocations by size.
struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

fn bucket(size: usize) -> usize {
    size.div_ceil(STEP).min(BUCKETS - 1)
}

fn count(size: usize, sign: i64) {
    let b = bucket(size);
    LIVE[b].fetch_add(sign, Ordering::Relaxed);
    LIVE_BYTES[b].fetch_add(sign * size as i64, Ordering::Relaxed);
    if sign > 0 {
        MADE[b].fetch_add(1, Ordering::Relaxed);
        MADE_BYTES[b].fetch_add(size as i64, Ordering::Relaxed);
    }
}

/// Whether an allocation of `size` is traced now (and this thread is not tracing already).
fn traced(size: usize) -> bool {
    TRACING.load(Ordering::Relaxed)
        && bucket(size) == bucket(TRACE_SIZE.load(Ordering::Relaxed) as usize)
        && !IN_TRACE.with(Cell::get)
}

/// Runs `f` with this thread's own allocations untraced.
fn untraced(f: impl FnOnce()) {
    IN_TRACE.with(|t| t.set(true));
    f();
    IN_TRACE.with(|t| t.set(false));
}

/// Keeps the call stack of a traced allocation at `ptr`: the names of its sigmahub, hyper,
/// tokio, crossbeam and fastwebsockets frames, which are what tell allocations apart.
fn trace_alloc(ptr: *mut u8, size: usize) {
    if ptr.is_null() || !traced(size) {
        return;
    }
    untraced(|| {
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = trace
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("at "))
            .filter_map(|l| l.split_once(": ").map(|(_, name)| name))
            .filter(|name| {
                [
                    "sigmahub",
                    "hyper",
                    "tokio::net",
                    "tokio::io",
                    "crossbeam",
                    "fastwebsockets",
                ]
                .iter()
                .any(|k| name.contains(k))
            })
            .take(8)
            .collect();
        let mut traced = TRACED.lock().unwrap_or_else(|e| e.into_inner());
        traced
            .get_or_insert_with(HashMap::new)
            .insert(ptr as usize, frames.join("\n    "));
    });
}

fn trace_dealloc(ptr: *mut u8, size: usize) {
    if !traced(size) {
        return;
    }
    untraced(|| {
        let mut traced = TRACED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = traced.as_mut() {
            map.remove(&(ptr as usize));
        }
    });
}

// SAFETY: every call is forwarded to mimalloc with the same arguments; the counting beside
// it touches only atomics and a const-initialized thread-local.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: as the caller's contract.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        trace_alloc(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: as the caller's contract.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        trace_alloc(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        trace_dealloc(ptr, layout.size());
        // SAFETY: as the caller's contract.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        trace_dealloc(ptr, layout.size());
        // SAFETY: as the caller's contract.
        let new = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        trace_alloc(new, new_size);
        new
    }
}

/// Per size bucket: the allocations live (count, bytes) and made so far (count, bytes).
#[derive(Clone, Copy)]
struct Bucket {
    live: i64,
    live_bytes: i64,
    made: i64,
    made_bytes: i64,
}

fn census() -> Vec<Bucket> {
    let load = |a: &AtomicI64| a.load(Ordering::Relaxed);
    (0..BUCKETS)
        .map(|b| Bucket {
            live: load(&LIVE[b]),
            live_bytes: load(&LIVE_BYTES[b]),
            made: load(&MADE[b]),
            made_bytes: load(&MADE_BYTES[b]),
        })
        .collect()
}

#[derive(Parser)]
#[command(about = "Allocations an idle connection holds in sigmahub, size by size")]
struct Args {
    /// The load generator (a release build of sigmahub-perf).
    #[arg(long, default_value = "target/release/sigmahub-perf")]
    generator: String,
    /// Idle clients to connect (each subscribes to the default channels).
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// Source addresses the generator spreads its connections over.
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Say where the allocations of this size made after the census and still live at the
    /// end come from: their call stacks, each with its count (slow: use few clients).
    #[arg(long, value_name = "BYTES")]
    trace: Option<usize>,
    /// Seconds the connections idle, once all are welcomed, before the census: past 5, the
    /// census comes after the host's status was published to them.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// The server checks JWTs signed with this secret, and each client connects with one
    /// of its own (the generator's `--jwt-secret`).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Sizes whose count per connection is below this are summed as "other".
    #[arg(long, default_value_t = 0.05)]
    threshold: f64,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the binary (src/allocator.rs): 4 KiB pages, or RSS grows in huge pages.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: sets a flag of this process; reads no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(args))
}

async fn measure(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = sigmahub::Config::default();
    config.listen = "127.0.0.1:0".parse()?;
    // As sigmahub-perf --spawn runs the server: thousands of clients from a few addresses.
    config.max_connections_per_ip = 0;
    config.connection_rate_per_ip = 0;
    config.auth.jwt_secret = args.jwt_secret.clone();
    let server = sigmahub::Server::bind(config).await?;
    let addr = server.local_addr();
    let hub = server.hub();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // A few clients first, so that what the first connection allocates once (tables,
    // thread caches) is out of the difference.
    let warm = generate(&args, addr, 50, "5s")?;
    wait_for_clients(&hub, 50).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = census();
    let rss_before = rss_bytes();
    if let Some(size) = args.trace {
        TRACE_SIZE.store(size as i64, Ordering::Relaxed);
        TRACING.store(true, Ordering::Relaxed);
    }

    let hold = format!("{}s", args.settle + 15);
    let idle = generate(&args, addr, args.clients, &hold)?;
    wait_for_clients(&hub, 50 + args.clients).await;
    // Subscribed and welcomed: let the connections settle as perf/ does.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    TRACING.store(false, Ordering::Relaxed);
    let after = census();
    let rss_after = rss_bytes();

    report(&args, &before, &after, rss_after as f64 - rss_before as f64);
    report_traces();
    let _ = stop.send(());
    for mut child in [warm, idle] {
        let _ = child.kill().await;
    }
    serving.await??;
    Ok(())
}

/// Starts the generator with `clients` idle clients against `addr`.
fn generate(
    args: &Args,
    addr: std::net::SocketAddr,
    clients: usize,
    hold: &str,
) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(&args.generator)
        .args(["--server-pid", &std::process::id().to_string()])
        .args(["--addr", &addr.to_string()])
        .args(["--clients", &clients.to_string()])
        .args(["--sources", &args.sources.to_string()])
        .args(["--idle", "--duration", hold])
        .args(args.jwt_secret.iter().map(|s| format!("--jwt-secret={s}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn wait_for_clients(hub: &sigmahub::Hub, clients: usize) {
    for _ in 0..1200 {
        if hub.stats().clients >= clients {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "only {} of {clients} clients connected within a minute",
        hub.stats().clients
    );
}

fn report(args: &Args, before: &[Bucket], after: &[Bucket], rss_grown: f64) {
    let n = args.clients as f64;
    let per_connection = |count: fn(&Bucket) -> (i64, i64)| {
        let mut rows: Vec<(usize, f64, f64)> = before
            .iter()
            .zip(after)
            .enumerate()
            .map(|(b, (x, y))| {
                let ((xc, xb), (yc, yb)) = (count(x), count(y));
                (b, (yc - xc) as f64 / n, (yb - xb) as f64 / n)
            })
            .filter(|(_, count, bytes)| *count != 0.0 || *bytes != 0.0)
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    };
    println!(
        "{} idle clients, subscribed to the default channels; live allocations per connection:",
        args.clients
    );
    let live = per_connection(|b| (b.live, b.live_bytes));
    table(args, &live);
    println!("{:>12} {:>12} {:>12.0}", "RSS grown", "", rss_grown / n);
    println!("allocated and freed again per connection meanwhile:");
    let freed = per_connection(|b| (b.made - b.live, b.made_bytes - b.live_bytes));
    table(args, &freed);
}

/// Prints `rows` (size bucket, count and bytes per connection) and their total.
fn table(args: &Args, rows: &[(usize, f64, f64)]) {
    println!("{:>12} {:>12} {:>12}", "size (B)", "count", "bytes");
    let (mut other_count, mut other_bytes) = (0.0, 0.0);
    for (b, count, bytes) in rows {
        if count.abs() < args.threshold {
            other_count += count;
            other_bytes += bytes;
            continue;
        }
        let size = match *b == BUCKETS - 1 {
            true => format!(">{LARGEST}"),
            false => format!("{}", b * STEP),
        };
        println!("{size:>12} {count:>12.2} {bytes:>12.0}");
    }
    println!("{:>12} {other_count:>12.2} {other_bytes:>12.0}", "other");
    let total: f64 = rows.iter().map(|r| r.2).sum();
    println!("{:>12} {:>12} {total:>12.0}", "total", "");
}

/// The call stacks of the traced allocations still live, most common first.
fn report_traces() {
    let mut by_stack: HashMap<String, usize> = HashMap::new();
    let traced = TRACED.lock().unwrap_or_else(|e| e.into_inner()).take();
    for stack in traced.into_iter().flat_map(HashMap::into_values) {
        *by_stack.entry(stack).or_default() += 1;
    }
    let mut stacks: Vec<_> = by_stack.into_iter().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.1));
    for (stack, n) in stacks {
        println!("{n} live, from:\n    {stack}");
    }
}
