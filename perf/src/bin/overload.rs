//! The overload run: fast clients and slow ones (each pausing after every message, so that
//! it reads a fraction of the publish rate) on one channel of a sigmahub server this
//! command starts, under the server's `--slow-consumer` policy. Reports the fast clients'
//! publish-to-receipt latency and losses, what became of the slow clients (still connected,
//! closed, events received, `gap` markers and what they said was missed), and the server's
//! RSS and CPU time.
//!
//! ```sh
//! target/release/overload --server target/release/sigmahub --policy degrade \
//!     --fast 1000 --slow 100 --rate 1000 --duration 30s
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Fast and slow clients on one channel, under a slow-consumer policy")]
struct Args {
    /// The sigmahub binary to start.
    #[arg(long)]
    server: String,
    /// Where it listens.
    #[arg(long, default_value = "127.0.0.1:13100")]
    addr: SocketAddr,
    /// Its `--slow-consumer` policy: close, drop or degrade.
    #[arg(long, default_value = "degrade")]
    policy: String,
    /// Clients that read everything at once.
    #[arg(long, default_value_t = 1000)]
    fast: usize,
    /// Clients that pause `--slow-pause` after each message.
    #[arg(long, default_value_t = 100)]
    slow: usize,
    /// The slow clients' pause after each message.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    slow_pause: Duration,
    /// Events per second, published in batches of `--batch`.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    batch: u64,
    /// Bytes of padding per event.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// How long to publish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// A further argument for the server, repeatable (`--server-arg=--socket-unsent-limit=0`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// What the fast clients saw.
#[derive(Default)]
struct Fast {
    received: AtomicU64,
    out_of_order: AtomicU64,
    closed: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

/// What the slow clients saw.
#[derive(Default)]
struct Slow {
    received: AtomicU64,
    gaps: AtomicU64,
    missed: AtomicU64,
    closed: Mutex<Vec<String>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The number after `"key":` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn client(
    addr: SocketAddr,
    pause: Option<Duration>,
    fast: Arc<Fast>,
    slow: Arc<Slow>,
    until: Instant,
) {
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(ws) => ws,
        Err(e) => {
            slow.closed.lock().unwrap().push(format!("connect: {e}"));
            return;
        }
    };
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut last = None;
    loop {
        let next = tokio::time::timeout_at(until.into(), ws.next()).await;
        let text = match next {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                let why = format!("close {}", frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                match pause {
                    Some(_) => slow.closed.lock().unwrap().push(why),
                    None => _ = fast.closed.fetch_add(1, Ordering::Relaxed),
                }
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => {
                match pause {
                    Some(_) => slow.closed.lock().unwrap().push("error".into()),
                    None => _ = fast.closed.fetch_add(1, Ordering::Relaxed),
                }
                break;
            }
        };
        if text.starts_with("{\"type\":\"gap\"") {
            slow.gaps.fetch_add(1, Ordering::Relaxed);
            slow.missed.fetch_add(
                number_after(&text, "\"missed\":").unwrap_or(0),
                Ordering::Relaxed,
            );
            continue;
        }
        if !text.starts_with("{\"type\":\"load\"") {
            continue;
        }
        let seq = number_after(&text, "\"seq\":");
        match pause {
            Some(pause) => {
                slow.received.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
            None => {
                fast.received.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = number_after(&text, "\"t\":") {
                    let _ = histogram.record(now_micros().saturating_sub(sent).max(1));
                }
                if seq <= last {
                    fast.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = seq;
            }
        }
    }
    if pause.is_none() {
        let mut all = fast.latency.lock().unwrap();
        match all.as_mut() {
            Some(all) => all.add(&histogram).unwrap(),
            None => *all = Some(histogram),
        }
    }
}

/// The server's RSS (bytes) and CPU time (user + system, seconds) from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    (rss, ticks / 100.0)
}

/// One HTTP request on a new connection: the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, String), Error> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn publish(addr: SocketAddr, body: String) -> Result<(), Error> {
    match request(addr, "POST", "/api/v1/publish", body).await? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("publish: {status} {body}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut server = tokio::process::Command::new(&args.server)
        .args(["--listen", &args.addr.to_string(), "--log", "warn"])
        .args(["--slow-consumer", &args.policy])
        .args([
            "--max-connections-per-ip",
            "0",
            "--connection-rate-per-ip",
            "0",
        ])
        .args(["--default-subscriptions", "load"])
        .args(&args.server_args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().ok_or("the server exited")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(args.addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fast, slow) = (Arc::new(Fast::default()), Arc::new(Slow::default()));
    // Every client reads until the publishing is over and 10 s after it.
    let until = Instant::now() + Duration::from_secs(2) + args.duration + Duration::from_secs(10);
    let mut handles = Vec::new();
    for i in 0..args.fast + args.slow {
        let pause = (i >= args.fast).then_some(args.slow_pause);
        handles.push(tokio::spawn(client(
            args.addr,
            pause,
            fast.clone(),
            slow.clone(),
            until,
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_before, cpu_before) = usage(pid);

    let pad = "x".repeat(args.payload);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        args.batch as f64 / args.rate as f64,
    ));
    let (mut seq, mut rss_most) = (0u64, rss_before);
    while start.elapsed() < args.duration {
        tick.tick().await;
        let t = now_micros();
        let events: Vec<String> = (0..args.batch)
            .map(|i| {
                format!(
                    r#"{{"type":"load","data":{{"seq":{},"t":{t},"pad":"{pad}"}}}}"#,
                    seq + i
                )
            })
            .collect();
        seq += args.batch;
        publish(args.addr, format!("[{}]", events.join(","))).await?;
        if seq % (args.rate / 2).max(1) < args.batch {
            rss_most = rss_most.max(usage(pid).0);
        }
    }
    let elapsed = start.elapsed();
    let (rss_end, cpu_end) = usage(pid);
    let expected = seq * args.fast as u64;
    for handle in handles {
        handle.await?;
    }
    let latency = fast.latency.lock().unwrap().take();
    let slow_closed = slow.closed.lock().unwrap().clone();
    println!(
        "policy {} | {} fast + {} slow clients (pause {:?}) | {} events in {:.1} s ({:.0}/s), {} B each",
        args.policy, args.fast, args.slow, args.slow_pause, seq, elapsed.as_secs_f64(),
        seq as f64 / elapsed.as_secs_f64(), args.payload
    );
    println!(
        "fast: received {} of {} ({} out of order, {} closed)",
        fast.received.load(Ordering::Relaxed),
        expected,
        fast.out_of_order.load(Ordering::Relaxed),
        fast.closed.load(Ordering::Relaxed)
    );
    if let Some(h) = latency {
        println!(
            "fast latency ms: p50 {:.1} p99 {:.1} p999 {:.1} max {:.1}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "slow: {} still connected of {}, closed {:?}; received {}, {} gap markers saying {} missed",
        args.slow - slow_closed.len(),
        args.slow,
        slow_closed,
        slow.received.load(Ordering::Relaxed),
        slow.gaps.load(Ordering::Relaxed),
        slow.missed.load(Ordering::Relaxed)
    );
    println!(
        "server: RSS {:.1} MB before publishing, {:.1} MB most, {:.1} MB at the end; CPU {:.2} s",
        rss_before as f64 / 1e6,
        rss_most as f64 / 1e6,
        rss_end as f64 / 1e6,
        cpu_end - cpu_before
    );
    // What the server counted: its closes by code, and each degrade step.
    let (_, metrics) = request(args.addr, "GET", "/metrics", String::new()).await?;
    for line in metrics.lines().filter(|l| {
        (l.starts_with("sigmahub_closes_total")
            || l.starts_with("sigmahub_degrade")
            || l.starts_with("sigmahub_gap_markers"))
            && !l.ends_with(" 0")
    }) {
        println!("server: {line}");
    }
    server.kill().await?;
    Ok(())
}
