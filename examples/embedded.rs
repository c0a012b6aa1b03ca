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
//! client received, then uses the control API as a service would (subscribes the client
//! to `kitchen` server-side, publishes there, disconnects it with a reason) and exits: a
//! self-check that runs in CI.

use std::time::Duration;

use sigmahub::{Channel, Config, Event, Farewell, Server, Target};

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
    // The self-check reads its messages one by one: no host status in between.
    config.host.enabled = !once;

    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    let hub = server.hub();
    let control = server.control();
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

        // The control API: the id is the one the welcome gave the client.
        let welcome: serde_json::Value = serde_json::from_str(welcome.to_text()?)?;
        let id: u64 = welcome["data"]["client_id"]
            .as_str()
            .ok_or("no client id")?
            .parse()?;
        let kitchen = Channel::new("kitchen")?;
        let told = control
            .subscribe(&Target::Client(id), std::slice::from_ref(&kitchen))
            .await;
        println!("subscribed {} connection(s) to kitchen", told.connections);
        let reply = ws.next().await.ok_or("closed")??;
        println!("client got: {reply}");
        hub.publish(&Event::new("kitchen", &serde_json::json!({"order": 1}))?);
        let received = ws.next().await.ok_or("closed")??;
        println!("client got: {received}");
        control
            .disconnect(&Target::Client(id), &Farewell::new(4000, "closing time")?)
            .await;
        let close = ws.next().await.ok_or("closed")??;
        println!("client got: {close}");
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
