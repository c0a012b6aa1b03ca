//! `sigmahub-perf`: a load generator for sigmahub.
//!
//! It opens real WebSocket connections over loopback (spread over 127.0.0.x source
//! addresses) to one server or to each node of a cluster, subscribes each to one channel,
//! publishes through the HTTP API at a given rate and batch size, and reports delivered events
//! per second, loss, publish-to-receipt latency (p50/p99/p999), the servers' CPU seconds per
//! million delivered frames and their resident memory per connection: as a table, and as one
//! JSON line. The clients of each server address live in a worker process of their own (see
//! `worker`), so that no process needs more than the open-file limit. See perf/README.md.

mod clients;
mod inflating;
mod publisher;
mod server;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Spawn this sigmahub binary once per --addr as the servers under test (else use
    /// --server-pid).
    #[arg(long, value_name = "PATH", conflicts_with = "server_pid")]
    spawn: Option<String>,
    /// Extra arguments for every spawned server (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Pid of an already running server, for its CPU and memory figures (one per --addr, in
    /// the same order).
    #[arg(long, value_name = "PID")]
    server_pid: Vec<u32>,
    /// Server address (repeatable: one per cluster node). Events are published to the first.
    #[arg(long, default_value = "127.0.0.1:12080")]
    addr: Vec<SocketAddr>,
    /// Pid of the nats-server the nodes share, to report its CPU beside theirs.
    #[arg(long, value_name = "PID")]
    nats_pid: Option<u32>,
    /// Number of subscriber connections per server address.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Source addresses to spread connections over: 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Channel to subscribe and publish on.
    #[arg(long, default_value = "perf")]
    channel: String,
    /// The protocol the clients speak: `sigmavault` (`/ws`), `skreaver` (`/skreaver/ws`),
    /// `socketio` (`/socket.io/`, WebSocket transport), or `mixed` (the three in turn).
    #[arg(long, value_enum, default_value_t = clients::Dialect::Sigmavault)]
    dialect: clients::Dialect,
    /// Events per second to publish; 0 publishes as fast as the server answers (saturation);
    /// with --idle nothing is published.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Events per publish request.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Padding added to each event's data, in bytes (`--shape padding`).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// What each event's data looks like: padding, or a SigmaVault event's (seed 000), or
    /// about 1 KB of JSON. Matters for compression (`--deflate`).
    #[arg(long, value_enum, default_value_t = publisher::Shape::Padding)]
    shape: publisher::Shape,
    /// How long to publish (or, with --idle, to hold the connections).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Hold idle connections instead of publishing: measures memory per connection.
    #[arg(long)]
    idle: bool,
    /// How long to wait, once every client is ready, before reading the servers' memory:
    /// the allocator gives back what connecting used a second or two after it was freed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    settle: Duration,
    /// Clients offer permessage-deflate and inflate what comes compressed.
    #[arg(long)]
    deflate: bool,
    /// Each client connects with a JWT of its own (`?token=`): HS256 signed with this
    /// secret, `sub` perf-N, an hour to live. The server needs the same secret
    /// (`--server-arg=--auth-jwt-secret=…`).
    #[arg(long, env = "SIGMAHUB_PERF_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Run as a worker process holding one address's clients (used by the generator itself).
    #[arg(long, hide = true)]
    worker: bool,
    /// The worker's source addresses, comma-separated.
    #[arg(long, hide = true, value_delimiter = ',')]
    source_list: Vec<IpAddr>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    if args.worker {
        return worker::serve(clients::Plan {
            server: args.addr[0],
            sources: args.source_list,
            channel: args.channel,
            clients: args.clients,
            dialect: args.dialect,
            deflate: args.deflate,
            jwt_secret: args.jwt_secret,
        })
        .await;
    }
    coordinate(args).await
}

/// Starts the servers and workers, publishes, waits for delivery and reports.
async fn coordinate(args: Args) -> Result<(), Error> {
    let fleet = match (&args.spawn, args.server_pid.as_slice()) {
        (Some(binary), _) => {
            let mut servers = Vec::new();
            for addr in &args.addr {
                let listen = addr.to_string();
                servers.push(server::Server::spawn(binary, &listen, &args.server_args).await?);
            }
            server::Fleet { servers }
        }
        (None, pids) if pids.len() == args.addr.len() => server::Fleet {
            servers: pids
                .iter()
                .map(|&pid| server::Server::existing(pid))
                .collect(),
        },
        (None, []) => return Err("give --spawn PATH or --server-pid PID".into()),
        (None, _) => return Err("give one --server-pid per --addr, in the same order".into()),
    };
    let nats = args.nats_pid.map(server::Server::existing);
    let sources: Vec<IpAddr> = (1..=args.sources.max(1))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();

    let (before, before_each) = fleet.usage();
    let connect_start = Instant::now();
    let mut workers = args
        .addr
        .iter()
        .map(|&addr| {
            worker::Worker::spawn(
                addr,
                args.clients,
                &sources,
                &args.channel,
                args.dialect,
                args.deflate,
                args.jwt_secret.as_deref(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ready_each = Vec::new();
    for worker in &mut workers {
        ready_each.push(worker.ready().await?.0);
    }
    let ready: usize = ready_each.iter().sum();
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    // Let allocator and kernel settle before reading memory.
    tokio::time::sleep(args.settle).await;
    let (connected, connected_each) = fleet.usage();
    let nats_connected = nats.as_ref().map(server::Server::usage);
    eprintln!("{ready} clients ready in {connect_seconds:.1}s");

    let published = if args.idle {
        tokio::time::sleep(args.duration).await;
        None
    } else {
        let published = publisher::run(
            args.addr[0],
            &args.channel,
            args.rate,
            args.batch,
            args.duration,
            args.payload,
            args.shape,
        )
        .await?;
        drain(&workers, published.events * ready as u64).await;
        Some(published)
    };
    let (after, after_each) = fleet.usage();
    let nats_after = nats.as_ref().map(server::Server::usage);

    let mut tally = worker::Report::default();
    for worker in workers {
        tally.merge(worker.finish().await?);
    }
    fleet.stop().await;

    let latency = tally.histogram();
    let cpu = after.cpu_seconds - connected.cpu_seconds;
    let per_connection =
        |grown: server::Usage, ready: usize| (grown.rss_bytes as f64 / ready.max(1) as f64).round();
    let mut report = serde_json::json!({
        "label": args.label,
        "dialect": args.dialect.as_str(),
        "servers": args.addr.len(),
        "clients": args.clients * args.addr.len(),
        "ready": ready,
        "connect_seconds": round(connect_seconds),
        "still_connected_at_end": tally.still_connected,
        "server_rss_before_bytes": before.rss_bytes,
        "server_rss_connected_bytes": connected.rss_bytes,
        "server_rss_per_connection_bytes": per_connection(connected - before, ready),
        "server_rss_end_bytes": after.rss_bytes,
        // With --idle, what the connections hold at the end (the figure above is read
        // `--settle` after the last welcome).
        "server_rss_per_connection_end_bytes": per_connection(after - before, ready),
        "server_cpu_seconds": round(cpu),
        "closed": tally.closed,
    });
    if args.addr.len() > 1 {
        report["nodes"] = args
            .addr
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                serde_json::json!({
                    "addr": addr.to_string(),
                    "ready": ready_each[i],
                    "cpu_seconds": round(after_each[i].cpu_seconds - connected_each[i].cpu_seconds),
                    "rss_per_connection_bytes":
                        per_connection(connected_each[i] - before_each[i], ready_each[i]),
                })
            })
            .collect();
    }
    if let (Some(from), Some(to)) = (nats_connected, nats_after) {
        report["nats_cpu_seconds"] = round(to.cpu_seconds - from.cpu_seconds).into();
    }
    if let Some(p) = &published {
        let expected = p.events * ready as u64;
        let received = tally.received;
        report["rate"] = args.rate.into();
        report["batch"] = args.batch.into();
        report["payload_bytes"] = args.payload.into();
        report["shape"] = args.shape.as_str().into();
        report["events_published"] = p.events.into();
        report["publish_seconds"] = round(p.elapsed.as_secs_f64()).into();
        report["events_per_second"] = round(p.events as f64 / p.elapsed.as_secs_f64()).into();
        report["queued_by_server"] = p.queued.into();
        report["delivered"] = received.into();
        report["expected"] = expected.into();
        report["lost"] = expected.saturating_sub(received).into();
        report["gaps"] = tally.gaps.into();
        if args.deflate {
            report["received_compressed"] = tally.compressed.into();
        }
        report["duplicates"] = tally.duplicates.into();
        report["slow_consumer_closes"] = p.slow_consumers.into();
        report["delivered_per_second"] = round(received as f64 / p.elapsed.as_secs_f64()).into();
        report["latency_ms"] = serde_json::json!({
            "p50": ms(latency.value_at_quantile(0.5)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
        });
        let per_million = |seconds: f64| round(seconds / (received.max(1) as f64) * 1e6);
        report["server_cpu_seconds_per_million_frames"] = per_million(cpu).into();
        let written = (after - connected).written_bytes;
        report["server_bytes_written_per_frame"] =
            round(written as f64 / received.max(1) as f64).into();
        if let (Some(from), Some(to)) = (nats_connected, nats_after) {
            let with_nats = cpu + to.cpu_seconds - from.cpu_seconds;
            report["server_and_nats_cpu_seconds_per_million_frames"] =
                per_million(with_nats).into();
        }
    }
    print_table(&report);
    println!("{report}");
    Ok(())
}

/// Waits, up to 10 s, for the queued events to arrive: until every worker's clients have
/// received `expected` in all, or nothing more has arrived for a second.
async fn drain(workers: &[worker::Worker], expected: u64) {
    let start = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    while start.elapsed() < Duration::from_secs(10) {
        let now: u64 = workers.iter().map(worker::Worker::received).sum();
        if now >= expected {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
