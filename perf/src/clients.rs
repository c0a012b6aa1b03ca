//! The subscribers: real WebSocket connections, spread over several source addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::inflating::{Inflating, OFFER};

const SHARDS: usize = 16;

/// Counters shared by every client.
pub struct Tally {
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub received: AtomicU64,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub closed: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Messages that arrived compressed (with `--deflate`).
    pub compressed: Arc<AtomicU64>,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Tally {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            closed: Mutex::new(Default::default()),
            compressed: Arc::new(AtomicU64::new(0)),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        })
    }

    /// Publish-to-receipt latency of every event, in microseconds.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.latency {
            all.add(&*shard.lock().unwrap()).unwrap();
        }
        all
    }

    fn closed(&self, why: String) {
        *self.closed.lock().unwrap().entry(why).or_default() += 1;
    }
}

/// An empty latency histogram: 1 µs to 120 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// The number after `"key":` in `text`. The generator reads only its own events, whose
/// layout it knows, so a scan is enough, and keeps the generator's CPU for the server.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

pub struct Plan {
    pub server: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub channel: String,
    pub clients: usize,
    pub dialect: Dialect,
    /// Offer permessage-deflate and inflate what comes compressed ([`crate::inflating`]).
    pub deflate: bool,
    /// Connect with a JWT of each client's own, signed with this (HS256).
    pub jwt_secret: Option<String>,
}

/// The protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// SigmaVault on `/ws`.
    Sigmavault,
    /// Skreaver on `/skreaver/ws`: events `{"type":"event","channel":…}`, JSON pings.
    Skreaver,
    /// Socket.IO over Engine.IO 4's WebSocket transport: events `42["C",{…}]`, pings `2`.
    Socketio,
    /// The three in turn, client by client.
    Mixed,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sigmavault => "sigmavault",
            Self::Skreaver => "skreaver",
            Self::Socketio => "socketio",
            Self::Mixed => "mixed",
        }
    }

    /// The dialect of client `i`.
    fn of_client(self, i: usize) -> Self {
        match self {
            Self::Mixed => [Self::Sigmavault, Self::Skreaver, Self::Socketio][i % 3],
            one => one,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Skreaver => "/skreaver/ws",
            Self::Socketio => "/socket.io/?EIO=4&transport=websocket",
            _ => "/ws",
        }
    }

    /// How an event on `channel` starts on the wire.
    fn event_prefix(self, channel: &str) -> String {
        match self {
            Self::Skreaver => format!("{{\"type\":\"event\",\"channel\":\"{channel}\""),
            Self::Socketio => format!("42[\"{channel}\","),
            _ => format!("{{\"type\":\"{channel}\""),
        }
    }

    /// The answer to a keep-alive ping sent as a text message, if `text` is one.
    fn pong_for(self, text: &str) -> Option<&'static str> {
        match self {
            Self::Skreaver if text.starts_with("{\"type\":\"ping\"") => Some("{\"type\":\"pong\"}"),
            Self::Socketio if text == "2" => Some("3"),
            _ => None,
        }
    }
}

/// Opens every connection (at most 256 handshakes at a time) and runs each until `stop`.
pub async fn spawn_all(
    plan: Plan,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gate = Arc::new(Semaphore::new(256));
    let plan = Arc::new(plan);
    (0..plan.clients)
        .map(|i| {
            let (plan, tally, gate, stop) =
                (plan.clone(), tally.clone(), gate.clone(), stop.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let source = plan.sources[i % plan.sources.len()];
                match run(i, &plan, source, &tally, permit, stop).await {
                    Ok(()) => {}
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally.closed(format!("error: {e}"));
                    }
                }
            })
        })
        .collect()
}

async fn run(
    i: usize,
    plan: &Plan,
    source: IpAddr,
    tally: &Tally,
    permit: tokio::sync::OwnedSemaphorePermit,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(plan.server).await?;
    let dialect = plan.dialect.of_client(i);
    let mut url = format!("ws://{}{}", plan.server, dialect.path());
    if let Some(secret) = &plan.jwt_secret {
        let separator = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{separator}token={}", token(secret, i)?);
    }
    if !plan.deflate {
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        return session(i, plan, dialect, ws, tally, permit, stop).await;
    }
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-extensions", HeaderValue::from_static(OFFER));
    let stream = Inflating::new(stream, tally.compressed.clone());
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    if !response.headers().contains_key("sec-websocket-extensions") {
        return Err("the server declined permessage-deflate".into());
    }
    session(i, plan, dialect, ws, tally, permit, stop).await
}

/// Client `i`'s JWT: `sub` perf-`i`, an hour to live, HS256 with `secret`.
fn token(secret: &str, i: usize) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({ "sub": format!("perf-{i}"), "exp": now + 3600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// One connected client: subscribes, then counts its events until `stop`.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    i: usize,
    plan: &Plan,
    dialect: Dialect,
    mut ws: WebSocketStream<S>,
    tally: &Tally,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if dialect == Dialect::Socketio {
        // The open packet, then the namespace connect.
        ws.send(Message::text("40")).await?;
    }
    let subscribe = match dialect {
        Dialect::Socketio => serde_json::json!(["subscribe", [plan.channel]]).to_string(),
        _ => serde_json::json!({"type": "subscribe", "data": {"channels": [plan.channel]}})
            .to_string(),
    };
    let subscribe = match dialect {
        Dialect::Socketio => format!("42{subscribe}"),
        _ => subscribe,
    };
    ws.send(Message::text(subscribe)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"subscribe_response\"") => break,
            Some(Ok(Message::Text(t))) => {
                if let Some(pong) = dialect.pong_for(&t) {
                    ws.send(Message::text(pong)).await?;
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("closed before subscribing".into()),
        }
    }
    drop(permit);
    tally.ready.fetch_add(1, Ordering::Relaxed);

    let type_prefix = dialect.event_prefix(&plan.channel);
    let shard = &tally.latency[i % SHARDS];
    let mut samples: Vec<u64> = Vec::new();
    let mut last_seq: Option<u64> = None;
    let flush = |samples: &mut Vec<u64>| {
        if !samples.is_empty() {
            let mut h = shard.lock().unwrap();
            for s in samples.drain(..) {
                let _ = h.record(s.max(1));
            }
        }
    };
    loop {
        let message = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                if !text.starts_with(&type_prefix) {
                    if let Some(pong) = dialect.pong_for(&text) {
                        if ws.send(Message::text(pong)).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                let (Some(seq), Some(sent)) = (
                    number_after(&text, "\"seq\":"),
                    number_after(&text, "\"t\":"),
                ) else {
                    continue;
                };
                tally.received.fetch_add(1, Ordering::Relaxed);
                match last_seq {
                    Some(last) if seq <= last => {
                        tally.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(last) if seq > last + 1 => {
                        tally.gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                last_seq = Some(seq);
                samples.push(now.saturating_sub(sent) / 1_000);
                if samples.len() >= 256 {
                    flush(&mut samples);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                flush(&mut samples);
                tally.closed(format!(
                    "close {}",
                    frame.map(|f| u16::from(f.code)).unwrap_or(1005)
                ));
                return Ok(());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                flush(&mut samples);
                tally.closed(format!("error: {e}"));
                return Ok(());
            }
            None => {
                flush(&mut samples);
                tally.closed("eof".into());
                return Ok(());
            }
        }
    }
    flush(&mut samples);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(())
}
