//! `sigmahub-perf`: a load generator for sigmahub.
//!
//! It opens N real WebSocket connections over loopback (spread over 127.0.0.x source
//! addresses), subscribes each to one channel, publishes through the HTTP API at a given rate
//! and batch size, and reports delivered events per second, loss, publish-to-receipt latency
//! (p50/p99/p999), the server's CPU seconds per million delivered frames and its resident
//! memory per connection: as a table, and as one JSON line. See perf/README.md.

mod clients;
mod publisher;
mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Spawn this sigmahub binary as the server under test (else use --server-pid).
    #[arg(long, value_name = "PATH", conflicts_with = "server_pid")]
    spawn: Option<String>,
    /// Extra arguments for the spawned server (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Pid of an already running server, for its CPU and memory figures.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:12080")]
    addr: SocketAddr,
    /// Number of subscriber connections.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Source addresses to spread connections over: 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Channel to subscribe and publish on.
    #[arg(long, default_value = "perf")]
    channel: String,
    /// Events per second to publish; 0 publishes as fast as the server answers (saturation);
    /// with --idle nothing is published.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Events per publish request.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Padding added to each event's data, in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How long to publish (or, with --idle, to hold the connections).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Hold idle connections instead of publishing: measures memory per connection.
    #[arg(long)]
    idle: bool,
    /// Name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let server = match (&args.spawn, args.server_pid) {
        (Some(binary), _) => {
            server::Server::spawn(binary, &args.addr.to_string(), &args.server_args).await?
        }
        (None, Some(pid)) => server::Server::existing(pid),
        (None, None) => return Err("give --spawn PATH or --server-pid PID".into()),
    };
    let sources: Vec<IpAddr> = (1..=args.sources.max(1))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();

    let before = server.usage();
    let tally = clients::Tally::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connect_start = Instant::now();
    let handles = clients::spawn_all(
        clients::Plan {
            server: args.addr,
            sources,
            channel: args.channel.clone(),
            clients: args.clients,
        },
        tally.clone(),
        stopped,
    )
    .await;
    while tally.ready.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed) < args.clients
    {
        if connect_start.elapsed() > Duration::from_secs(300) {
            return Err("connecting took over 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    // Let allocator and kernel settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = server.usage();
    let ready = tally.ready.load(Ordering::Relaxed);
    eprintln!("{ready} clients ready in {connect_seconds:.1}s");

    let (published, after) = if args.idle {
        tokio::time::sleep(args.duration).await;
        (None, server.usage())
    } else {
        let published = publisher::run(
            args.addr,
            &args.channel,
            args.rate,
            args.batch,
            args.duration,
            args.payload,
        )
        .await?;
        // Wait (up to 10 s) for what was queued to arrive.
        let drain_start = Instant::now();
        let mut last = u64::MAX;
        while drain_start.elapsed() < Duration::from_secs(10) {
            let now = tally.received.load(Ordering::Relaxed);
            if now >= published.queued || now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (Some(published), server.usage())
    };
    // Clients that ended before the stop signal were closed by the server (see `closed`).
    let still_connected = handles.iter().filter(|h| !h.is_finished()).count();
    let _ = stop.send(true);
    for handle in handles {
        let _ = handle.await;
    }
    server.stop().await;

    let received = tally.received.load(Ordering::Relaxed);
    let latency = tally.latency();
    let cpu = after.cpu_seconds - connected.cpu_seconds;
    let rss_per_connection =
        (connected.rss_bytes.saturating_sub(before.rss_bytes)) as f64 / ready.max(1) as f64;
    let closed = tally.closed.lock().unwrap().clone();
    let mut report = serde_json::json!({
        "label": args.label,
        "clients": args.clients,
        "ready": ready,
        "connect_seconds": round(connect_seconds),
        "still_connected_at_end": still_connected,
        "server_rss_before_bytes": before.rss_bytes,
        "server_rss_connected_bytes": connected.rss_bytes,
        "server_rss_per_connection_bytes": rss_per_connection.round(),
        "server_rss_end_bytes": after.rss_bytes,
        "server_cpu_seconds": round(cpu),
        "closed": closed,
    });
    if let Some(p) = &published {
        let expected = p.events * ready as u64;
        report["rate"] = args.rate.into();
        report["batch"] = args.batch.into();
        report["payload_bytes"] = args.payload.into();
        report["events_published"] = p.events.into();
        report["publish_seconds"] = round(p.elapsed.as_secs_f64()).into();
        report["events_per_second"] = round(p.events as f64 / p.elapsed.as_secs_f64()).into();
        report["queued_by_server"] = p.queued.into();
        report["delivered"] = received.into();
        report["expected"] = expected.into();
        report["lost"] = expected.saturating_sub(received).into();
        report["gaps"] = tally.gaps.load(Ordering::Relaxed).into();
        report["duplicates"] = tally.duplicates.load(Ordering::Relaxed).into();
        report["slow_consumer_closes"] = p.slow_consumers.into();
        report["delivered_per_second"] = round(received as f64 / p.elapsed.as_secs_f64()).into();
        report["latency_ms"] = serde_json::json!({
            "p50": ms(latency.value_at_quantile(0.5)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
        });
        report["server_cpu_seconds_per_million_frames"] =
            round(cpu / (received.max(1) as f64) * 1e6).into();
    }
    print_table(&report);
    println!("{report}");
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0)
}

fn print_table(report: &serde_json::Value) {
    let object = report.as_object().unwrap();
    let width = object.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in object {
        eprintln!("{key:width$}  {value}");
    }
}
