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

pub async fn run(
    server: SocketAddr,
    channel: &str,
    rate: f64,
    batch: u64,
    duration: Duration,
    payload: usize,
) -> Result<Published, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let pad = "x".repeat(payload);
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
            .map(|i| serde_json::json!({"type": channel, "data": {"seq": seq + i, "t": t, "pad": pad}}))
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
