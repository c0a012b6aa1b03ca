//! Embedding sigmahub in a Rust service: serve `/ws`, publish from your own code.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! It serves on 127.0.0.1:12081 and publishes an `orders` event every second until
//! Ctrl-C. Watch it with any WebSocket client, e.g. in a browser console:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:12081/ws");
//! ws.onopen = () => ws.send(JSON.stringify({type: "subscribe", data: {events: ["orders"]}}));
//! ws.onmessage = (m) => console.log(m.data);
//! ```
//!
//! With `--once` it instead connects a client itself, publishes one event, prints what the
//! client received and exits: a self-check that runs in CI.

use std::time::Duration;

use sigmahub::{Config, Event, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let mut config = Config::default();
    config.listen = if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:12081"
    }
    .parse()?;
    config.default_subscriptions.push("orders".into());

    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    let hub = server.hub();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    println!("serving ws://{addr}/ws");

    if once {
        use futures_util::StreamExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
        let welcome = ws.next().await.ok_or("closed")??;
        println!("client got: {welcome}");
        let event = Event::new("orders", &serde_json::json!({"id": 1, "item": "coffee"}))?;
        let delivery = hub.publish(&event);
        println!("published to {} client(s)", delivery.queued);
        let received = ws.next().await.ok_or("closed")??;
        println!("client got: {received}");
    } else {
        let mut id = 0u64;
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    id += 1;
                    let event = Event::new("orders", &serde_json::json!({"id": id}))?;
                    let delivery = hub.publish(&event);
                    println!("order {id} -> {} client(s)", delivery.queued);
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
