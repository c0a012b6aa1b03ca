//! Shared test harness: a real sigmahub server on an ephemeral port, real WebSocket and HTTP
//! clients, and `eventually` for waiting without sleeps.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod backend;
pub mod binary;
pub mod browser;
pub mod engine;
pub mod nats;
pub mod openapi;
pub mod raw;
pub mod scrape;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sigmahub::{Config, Hub, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Sends the servers' log lines to the test's captured output, which a failing test
/// prints: warnings, and the cluster's debug lines, unless `SIGMAHUB_TEST_LOG` says which.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("SIGMAHUB_TEST_LOG")
            .unwrap_or_else(|_| "warn,sigmahub::cluster=debug".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    });
}

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    /// The server's control API, as an embedding program gets it.
    pub control: sigmahub::Control,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sigmahub::ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::serve(Server::bind(Self::config(adjust)).await.expect("bind"))
    }

    /// A server whose clients an embedder's `authorizer` decides on.
    pub async fn with_authorizer(
        authorizer: std::sync::Arc<dyn sigmahub::Authorizer>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let config = Self::config(adjust);
        Self::serve(Server::bind_with(config, authorizer).await.expect("bind"))
    }

    /// The tests' configuration, adjusted.
    pub fn config(adjust: impl FnOnce(&mut Config)) -> Config {
        capture_logs();
        let mut config = Config::default();
        config.listen = "127.0.0.1:0".parse().unwrap();
        // Host metrics would interleave with what most tests read; tests/upstream.rs turns
        // them on.
        config.host.enabled = false;
        // Most suites send messages in quick bursts; tests/limits.rs checks the default.
        config.max_inbound_per_minute = 1_000_000;
        config.inbound_burst = 100_000;
        // Every test client comes from 127.0.0.1; tests/limits.rs checks admission.
        config.max_connections_per_ip = 0;
        config.connection_rate_per_ip = 0;
        adjust(&mut config);
        config
    }

    fn serve(server: Server) -> Self {
        let addr = server.local_addr();
        let hub = server.hub();
        let control = server.control();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            hub,
            control,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects a WebSocket client and reads its welcome message.
    pub async fn client(&self) -> Client {
        let mut client = self.raw_client().await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "notification", "{welcome}");
        client
    }

    /// Connects a WebSocket client from the loopback address `source` and reads its
    /// welcome.
    pub async fn client_from(&self, source: std::net::IpAddr) -> Client {
        let mut client = self.connect_from(source, "").await.expect("connect");
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "notification", "{welcome}");
        client
    }

    /// Connects a WebSocket client without reading anything.
    pub async fn raw_client(&self) -> Client {
        let (ws, _) = within(tokio_tungstenite::connect_async(self.ws_url()))
            .await
            .expect("connect");
        Client { ws }
    }

    /// Connects a WebSocket client to `path` (with its query, if any) without reading
    /// anything.
    pub async fn raw_client_at(&self, path: &str) -> Client {
        let url = format!("ws://{}{path}", self.addr);
        let (ws, _) = within(tokio_tungstenite::connect_async(url))
            .await
            .expect("connect");
        Client { ws }
    }

    /// Opens a WebSocket to `/ws{query}` with extra request headers; the handshake's error
    /// (an HTTP refusal) is returned, not a panic.
    pub async fn connect_with(
        &self,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}{query}", self.ws_url())
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = within(tokio_tungstenite::connect_async(request)).await?;
        Ok(Client { ws })
    }

    /// Opens a WebSocket to `/ws{query}` from the loopback address `source` (the server
    /// counts per-address limits by it).
    pub async fn connect_from(
        &self,
        source: std::net::IpAddr,
        query: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = within(socket.connect(self.addr)).await.expect("connect");
        let url = format!("{}{query}", self.ws_url());
        let (ws, _) = within(tokio_tungstenite::client_async(
            url,
            MaybeTlsStream::Plain(stream),
        ))
        .await?;
        Ok(Client { ws })
    }

    /// POSTs JSON to the publish API.
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        self.request("POST", "/api/v1/publish", body.to_string().into_bytes())
            .await
    }

    /// POSTs JSON to the publish API with a publish key.
    pub async fn publish_with_key(&self, key: &str, body: &Value) -> (u16, Value) {
        let bearer = format!("Bearer {key}");
        self.request_with(
            "POST",
            "/api/v1/publish",
            body.to_string().into_bytes(),
            &[("authorization", &bearer)],
        )
        .await
    }

    /// Sends one HTTP/1.1 request from the loopback address `source`; the JSON answer.
    pub async fn request_from(
        &self,
        source: std::net::IpAddr,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, bytes) =
            request_raw_from(Some(source), self.addr, method, path, body, headers).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends one HTTP/1.1 request with a real hyper client.
    pub async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.request_with(method, path, body, &[]).await
    }

    /// As [`request`](Self::request), with extra headers.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, body) = self.request_full(method, path, body, headers).await;
        (status, body)
    }

    /// As [`request_with`](Self::request_with), also returning the response headers.
    pub async fn request_full(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Value) {
        let (status, headers, bytes) = self.request_raw(method, path, body, headers).await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, json)
    }

    /// Sends one HTTP/1.1 request with a real hyper client; the body comes back as bytes.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Bytes) {
        request_raw_at(self.addr, method, path, body, headers).await
    }

    /// Stops the server as SIGTERM would, and waits for it to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        within(task).await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a client read next.
#[derive(Debug)]
pub enum Read {
    Json(Value),
    Ping,
    Pong,
    Close(Option<u16>),
    Ended,
}

impl Client {
    /// The next data or control message.
    pub async fn read(&mut self) -> Read {
        match within(self.ws.next()).await {
            None | Some(Err(_)) => Read::Ended,
            Some(Ok(Message::Text(t))) => {
                Read::Json(serde_json::from_str(&t).expect("server sent invalid JSON"))
            }
            Some(Ok(Message::Ping(_))) => Read::Ping,
            Some(Ok(Message::Pong(_))) => Read::Pong,
            Some(Ok(Message::Close(frame))) => Read::Close(frame.map(|f| u16::from(f.code))),
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }

    /// The next JSON message, skipping pings.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.read().await {
                Read::Json(v) => return v,
                Read::Ping | Read::Pong => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next JSON message of type `kind`, skipping others (heartbeats, pings).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_until(&format!("a {kind} message"), |v| v["type"] == kind)
            .await
    }

    /// The next JSON message for which `wanted` is true, skipping others; fails the test if
    /// none comes within [`DEADLINE`], however many others do.
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = tokio::time::Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            let v = self.recv().await;
            if wanted(&v) {
                return v;
            }
        }
    }

    /// Reads until the server closes, returning the close code (skipping anything before).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.read().await {
                Read::Close(code) => return code,
                Read::Ended => return None,
                _ => continue,
            }
        }
    }

    pub async fn send(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        within(self.ws.send(Message::text(text)))
            .await
            .expect("send");
    }

    pub async fn send_message(&mut self, message: Message) {
        within(self.ws.send(message)).await.expect("send");
    }

    /// Subscribes and returns the `subscribe_response`.
    pub async fn subscribe(&mut self, channels: &[&str]) -> Value {
        self.send(&serde_json::json!({"type": "subscribe", "data": {"channels": channels}}))
            .await;
        self.recv_type("subscribe_response").await
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Awaits `f`, failing the test after [`DEADLINE`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("timed out waiting")
}

/// Polls `check` until it returns true, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the async `check` until it returns true, failing the test after [`DEADLINE`].
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one HTTP/1.1 request to `addr` with a real hyper client; the body comes back as
/// bytes.
pub async fn request_raw_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Bytes) {
    request_raw_from(None, addr, method, path, body, headers).await
}

/// As [`request_raw_at`], from the loopback address `source` when given (the server counts
/// per-address limits by it).
pub async fn request_raw_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Bytes) {
    let stream = match source {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(source) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            within(socket.connect(addr)).await.expect("connect")
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    let req = headers
        .iter()
        .fold(req, |req, (name, value)| req.header(*name, *value))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = within(sender.send_request(req)).await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

/// POSTs `body` as JSON to `addr`; returns the status and the JSON answer.
pub async fn http_post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, bytes) =
        request_raw_at(addr, "POST", path, body.to_string().into_bytes(), &[]).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// GETs `path` from `addr`; returns the status and the JSON answer.
pub async fn http_get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, bytes) = request_raw_at(addr, "GET", path, Vec::new(), &[]).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
