//! An application backend for the connect-hook benchmark (issue 19): answers sigmahub's
//! `POST /connect` after `--delay` (1 ms by default), naming the token's holder as the
//! user, and prints how many calls it answered and how long they took when it stops.
//!
//! ```sh
//! target/release/hook-backend --listen 127.0.0.1:13900 --delay 1ms &
//! target/release/sigmahub-perf --spawn target/release/sigmahub --clients 10000 --idle \
//!   --jwt-secret perf-secret-perf-secret-perf-secret \
//!   --server-arg=--hooks-connect-url=http://127.0.0.1:13900/connect
//! ```
//!
//! The clients' tokens are JWTs, but the server has no JWT key: to it they are opaque
//! session tokens, and every connect asks this backend. It stops by itself after
//! `--for` (default 5 min), or on Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:13900")]
    listen: SocketAddr,
    /// How long each answer takes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1ms")]
    delay: Duration,
    /// Stop after this long.
    #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "5m")]
    run_for: Duration,
}

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    /// Sum of the answers' times, in microseconds.
    micros: AtomicU64,
    first: std::sync::OnceLock<Instant>,
    /// When the last answer went, in nanoseconds after the first call.
    last: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tally = Arc::new(Tally::default());
    let delay = args.delay;
    let app = Router::new()
        .route(
            "/connect",
            post(
                move |State(tally): State<Arc<Tally>>, Json(call): Json<Value>| async move {
                    let started = Instant::now();
                    let first = *tally.first.get_or_init(|| started);
                    tokio::time::sleep(delay).await;
                    let user = match call["token"].as_str() {
                        Some(token) => format!("holder-{}", token.len()),
                        None => "nobody".to_owned(),
                    };
                    tally.calls.fetch_add(1, Ordering::Relaxed);
                    let took = started.elapsed();
                    tally
                        .micros
                        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                    tally.last.fetch_max(
                        (Instant::now() - first).as_nanos() as u64,
                        Ordering::Relaxed,
                    );
                    Json(json!({"result": {"user": user}}))
                },
            ),
        )
        .with_state(tally.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "hook-backend on http://{}/connect, answering after {:?}",
        args.listen, delay
    );
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = tokio::time::sleep(args.run_for) => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    let calls = tally.calls.load(Ordering::Relaxed);
    let span = Duration::from_nanos(tally.last.load(Ordering::Relaxed));
    let mean = Duration::from_micros(tally.micros.load(Ordering::Relaxed) / calls.max(1));
    println!(
        "{{\"calls\": {calls}, \"first_to_last_s\": {:.3}, \"calls_per_s\": {:.0}, \"mean_answer_ms\": {:.3}}}",
        span.as_secs_f64(),
        calls as f64 / span.as_secs_f64().max(1e-9),
        mean.as_secs_f64() * 1e3,
    );
    Ok(())
}
