//! The publisher: batches of events over one keep-alive HTTP connection, at a fixed rate or
//! as fast as the server answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub struct Published {
    pub events: u64,
    pub requests: u64,
    /// Frames the server said it queued; `None` when it did not say (a cluster node answers
    /// before the event has gone round the cluster).
    pub queued: Option<u64>,
    pub slow_consumers: u64,
    pub elapsed: Duration,
}

/// What each event's data looks like, besides the `seq` and `t` the clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// `pad`: `--payload` bytes of `x` (compresses to almost nothing).
    Padding,
    /// SigmaVault's `system.status` data (seed 000).
    SystemStatus,
    /// SigmaVault's `compression.update` data for one job (seed 000).
    CompressionUpdate,
    /// SigmaVault's `agent.status` data (seed 000).
    AgentStatus,
    /// About 1 KB of JSON: twelve agents' status records.
    Json1kb,
}

impl Shape {
    /// The data of every event, before `seq` and `t` are set.
    fn data(self, payload: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Padding => json!({"pad": "x".repeat(payload)}),
            Self::SystemStatus => json!({"hostname": "The_Plug", "uptime": 123456.78,
                "cpu_usage": 65.3, "memory_used": 4294967296u64, "memory_total": 17179869184u64,
                "memory_pct": 25.0, "load_average": [1.5, 1.2, 0.9], "timestamp": 1703337717}),
            Self::CompressionUpdate => json!({"job_id": "job-abc123", "status": "running",
                "job_type": "compress_file", "priority": "normal", "progress": 45.2,
                "phase": "compressing", "bytes_processed": 52428800, "bytes_total": 116000000,
                "compression_ratio": 0.23, "elapsed_seconds": 120.5, "eta_seconds": 147.3,
                "input_path": "/data/file.tar", "output_path": "/data/file.tar.sigma",
                "timestamp": 1703337717}),
            Self::AgentStatus => json!({"agent_id": "TENSOR-07", "status": "active",
                "current_task": "compression_analysis", "memory_usage": 256.5,
                "timestamp": 1703337717}),
            Self::Json1kb => {
                let agents: Vec<_> = (0..12)
                    .map(|a| {
                        json!({"agent_id": format!("agent-{a}"), "status": "busy",
                                    "load": a * 7 % 100, "queue": a * 3})
                    })
                    .collect();
                json!({"agents": agents})
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Padding => "padding",
            Self::SystemStatus => "system-status",
            Self::CompressionUpdate => "compression-update",
            Self::AgentStatus => "agent-status",
            Self::Json1kb => "json1kb",
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    server: SocketAddr,
    channel: &str,
    rate: f64,
    batch: u64,
    duration: Duration,
    payload: usize,
    shape: Shape,
) -> Result<Published, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let data = shape.data(payload);
    let mut out = Published {
        events: 0,
        requests: 0,
        queued: Some(0),
        slow_consumers: 0,
        elapsed: Duration::ZERO,
    };
    let start = Instant::now();
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(batch as f64 / rate));
    let mut next = tokio::time::Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < duration {
        if let Some(period) = period {
            tokio::time::sleep_until(next).await;
            next += period;
        }
        let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
        let events: Vec<_> = (0..batch)
            .map(|i| {
                let mut data = data.clone();
                data["seq"] = (seq + i).into();
                data["t"] = t.into();
                serde_json::json!({"type": channel, "data": data})
            })
            .collect();
        seq += batch;
        let body = serde_json::to_vec(&events)?;
        let request = hyper::Request::post("/api/v1/publish")
            .header("host", server.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let reply: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
        if !status.is_success() {
            return Err(format!("publish failed: {status} {reply}").into());
        }
        out.events += batch;
        out.requests += 1;
        out.queued = match (out.queued, reply["delivered"].as_u64()) {
            (Some(sum), Some(n)) => Some(sum + n),
            _ => None,
        };
        out.slow_consumers += reply["slow_consumers"].as_u64().unwrap_or(0);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}
