//! A real JSON-RPC 2.0 engine for tests: an HTTP server on an ephemeral port whose answer
//! per method can be changed while it runs, counting the calls it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// How the engine answers one method.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// `{"result": value}`.
    Answer(Value),
    /// An HTTP error status with no JSON-RPC body.
    HttpError(u16),
    /// Never answers.
    Hang,
    /// `{"error": {"code", "message"}}`.
    RpcError(i64),
}

#[derive(Default)]
struct State {
    behavior: HashMap<String, Behavior>,
    calls: HashMap<String, usize>,
}

pub struct Engine {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// The real engine's answer to `method`, as captured from SigmaVault's `engined`
/// (tests/fixtures/sigmavault-engine, from ../shared/fixtures): never a shape we wrote.
pub fn default_answer(method: &str) -> Option<Value> {
    let text = match method {
        "system.status" => include_str!("../fixtures/sigmavault-engine/system.status.json"),
        "compression.queue.running" => {
            include_str!("../fixtures/sigmavault-engine/compression.queue.running.json")
        }
        "agents.list" => include_str!("../fixtures/sigmavault-engine/agents.list.json"),
        "health.check" => include_str!("../fixtures/sigmavault-engine/health.check.json"),
        _ => return None,
    };
    let answer: Value = serde_json::from_str(text).expect("a fixture is JSON");
    Some(answer["result"].clone())
}

impl Engine {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The base URL to configure as `engine.url`.
    pub fn url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn set(&self, method: &str, behavior: Behavior) {
        self.state
            .lock()
            .unwrap()
            .behavior
            .insert(method.into(), behavior);
    }

    pub fn calls(&self, method: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: &Mutex<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let path_ok = req.uri().path() == "/api/v1/rpc";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = request["method"].as_str().unwrap_or("").to_owned();
    let id = request["id"].clone();
    let behavior = {
        let mut state = state.lock().unwrap();
        *state.calls.entry(method.clone()).or_default() += 1;
        state.behavior.get(&method).cloned()
    };
    let behavior = behavior.unwrap_or_else(|| match default_answer(&method) {
        Some(v) => Behavior::Answer(v),
        None => Behavior::RpcError(-32601),
    });
    let reply = |status: u16, body: Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    if !path_ok {
        // What the real engine (FastAPI) answers for any other path.
        return reply(404, json!({"detail": "Not Found"}));
    }
    if request["jsonrpc"] != "2.0" {
        return reply(
            400,
            json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "bad request"}, "id": id}),
        );
    }
    match behavior {
        Behavior::Answer(result) => {
            reply(200, json!({"jsonrpc": "2.0", "result": result, "id": id}))
        }
        Behavior::HttpError(status) => hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"engine exploded")))
            .unwrap(),
        Behavior::Hang => std::future::pending().await,
        Behavior::RpcError(code) => reply(
            200,
            json!({"jsonrpc": "2.0", "error": {"code": code, "message": format!("error {code}")}, "id": id}),
        ),
    }
}
