//! A real application backend for the hook tests: an HTTP server on an ephemeral port that
//! answers each call with what the test's function decides (which it may change while the
//! server runs), and keeps every call it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One call the backend received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request path, e.g. `/connect`.
    pub path: String,
    /// Its `Authorization` header.
    pub authorization: Option<String>,
    /// Its JSON body.
    pub body: Value,
}

/// How the backend answers a call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with this JSON body.
    Json(Value),
    /// This status, with an empty body.
    Status(u16),
    /// The reply, after this long.
    After(Duration, Box<Reply>),
}

type Answer = Arc<dyn Fn(&Call) -> Reply + Send + Sync>;

struct State {
    answer: Answer,
    calls: Vec<Call>,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// A backend answering every call with `answer`.
    pub async fn start(answer: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            answer: Arc::new(answer),
            calls: Vec::new(),
        }));
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
                        async move { Ok::<_, std::convert::Infallible>(serve(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The URL of `path` on this backend, for a `hooks.*_url`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers every later call with `answer`.
    pub fn set(&self, answer: impl Fn(&Call) -> Reply + Send + Sync + 'static) {
        self.state.lock().unwrap().answer = Arc::new(answer);
    }

    /// The calls received on `path`, in order.
    pub fn calls(&self, path: &str) -> Vec<Call> {
        let state = self.state.lock().unwrap();
        state
            .calls
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    state: &Mutex<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let call = Call {
        path,
        authorization,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.calls.push(call.clone());
        (state.answer)(&call)
    };
    let mut reply = reply;
    loop {
        match reply {
            Reply::After(delay, then) => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Json(body) => {
                return hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
            Reply::Status(status) => {
                return hyper::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        }
    }
}
