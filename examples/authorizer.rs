//! Embedding sigmahub with your own [`Authorizer`]: your service decides who connects,
//! which rooms they may join, and what they may say (seed 004's `AuthHandler`).
//!
//! ```text
//! cargo run --example authorizer
//! ```
//!
//! It serves on 127.0.0.1:12082. The "database" here is two maps behind an async lookup,
//! standing in for yours: sessions `alice-session` and `bob-session`, and the members of
//! `room.*` channels. Alice may join `room.kitchen`, Bob may not; both may publish in the
//! rooms they are in, and what they say is filtered. In a browser console:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:12082/ws?token=alice-session");
//! ws.onopen = () => ws.send(JSON.stringify({type: "subscribe", data: {channels: ["room.kitchen"]}}));
//! ws.onmessage = (m) => console.log(m.data);
//! ```
//!
//! With `--once` it connects Alice and Bob itself, shows what each may do, and exits: a
//! self-check that runs in CI.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::{to_raw_value, RawValue};
use sigmahub::auth::permissions::{Identity, Patterns};
use sigmahub::hooks::{
    Attempt, Authorizer, Caller, Connected, Decision, Hook, HookError, Request, Ruling, Verdict,
};
use sigmahub::{Channel, Config, Event, Server};

/// Your application's data: who holds which session, who is in which room.
struct Database {
    sessions: HashMap<&'static str, &'static str>,
    members: HashMap<&'static str, HashSet<&'static str>>,
}

impl Database {
    /// A lookup, as a query to your database would be: it takes a moment.
    async fn user_of(&self, session: &str) -> Option<&'static str> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.sessions.get(session).copied()
    }

    async fn is_member(&self, user: &str, room: &str) -> bool {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.members.get(room).is_some_and(|m| m.contains(user))
    }
}

/// The rules of this application, over its database.
struct Rooms {
    db: Arc<Database>,
}

impl Authorizer for Rooms {
    fn checks(&self, hook: Hook, channel: Option<&Channel>) -> bool {
        match hook {
            Hook::Connect | Hook::Request => true,
            // Only the rooms are the application's business; every other channel is
            // decided by the grant alone.
            Hook::Subscribe | Hook::Publish => channel.is_some_and(|c| c.starts_with("room.")),
        }
    }

    fn authenticate(&self, attempt: Attempt) -> Decision<Result<Connected, HookError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let session = attempt.token.unwrap_or_default();
            let user = db
                .user_of(&session)
                .await
                .ok_or_else(|| HookError::Refused("no such session".into()))?;
            Ok(Connected {
                identity: Identity {
                    publish: Patterns::new(&["room.*"]).expect("a valid pattern"),
                    ..Identity::user(user)
                },
                // Everyone gets their own channel, joined at once.
                join: vec![Channel::new(&format!("user.{user}")).expect("a valid name")],
            })
        })
    }

    fn check_subscribe(&self, caller: Caller, channel: Channel) -> Decision<Ruling> {
        let db = self.db.clone();
        Box::pin(async move {
            let room = channel.strip_prefix("room.").unwrap_or_default();
            let verdict = match db.is_member(&caller.identity.subject, room).await {
                true => Verdict::Allow,
                false => Verdict::Refuse(format!("you are not a member of {room}")),
            };
            // Membership changes rarely: the same answer holds for a minute.
            Ruling {
                verdict,
                cache_for: Duration::from_secs(60),
            }
        })
    }

    fn check_publish(&self, caller: Caller, event: Event) -> Decision<Ruling> {
        let db = self.db.clone();
        Box::pin(async move {
            let room = event.channel().strip_prefix("room.").unwrap_or_default();
            if !db.is_member(&caller.identity.subject, room).await {
                return Ruling::once(Verdict::Refuse("you are not in this room".into()));
            }
            // What is said is the application's to shape: a word filter, and the author.
            let text = serde_json::from_str::<serde_json::Value>(event.data().get())
                .ok()
                .and_then(|d| d["text"].as_str().map(|t| t.replace("darn", "d**n")))
                .unwrap_or_default();
            let data = serde_json::json!({"text": text, "from": caller.identity.subject});
            Ruling::once(Verdict::Rewrite(to_raw_value(&data).expect("JSON")))
        })
    }

    fn request(&self, request: Request) -> Decision<Result<Box<RawValue>, HookError>> {
        let db = self.db.clone();
        Box::pin(async move {
            // The one question this application answers: which rooms am I in?
            let user = request.caller.identity.subject.clone();
            let mut rooms: Vec<&str> = db
                .members
                .iter()
                .filter(|(_, members)| members.contains(user.as_str()))
                .map(|(room, _)| *room)
                .collect();
            rooms.sort_unstable();
            Ok(to_raw_value(&serde_json::json!({ "rooms": rooms })).expect("JSON"))
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let mut config = Config::default();
    config.listen = if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:12082"
    }
    .parse()?;
    config.host.enabled = !once;
    config.default_subscriptions.clear();

    let db = Arc::new(Database {
        sessions: HashMap::from([("alice-session", "alice"), ("bob-session", "bob")]),
        members: HashMap::from([
            ("kitchen", HashSet::from(["alice"])),
            ("garden", HashSet::from(["alice", "bob"])),
        ]),
    });
    let server = Server::bind_with(config, Arc::new(Rooms { db })).await?;
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    println!("serving ws://{addr}/ws");

    if once {
        self_check(addr).await?;
        let _ = stop.send(());
    } else {
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(());
    }
    serving.await??;
    Ok(())
}

/// Alice and Bob try what the rules allow and forbid; every answer is printed.
async fn self_check(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
    async fn next(
        ws: &mut Ws,
        kind: &str,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        loop {
            let message = ws.next().await.ok_or("closed")??;
            if let Message::Text(text) = message {
                let value: serde_json::Value = serde_json::from_str(&text)?;
                if value["type"] == kind {
                    return Ok(value);
                }
            }
        }
    }
    async fn send(ws: &mut Ws, value: serde_json::Value) -> Result<(), Box<dyn std::error::Error>> {
        Ok(ws.send(Message::text(value.to_string())).await?)
    }

    let url = |session: &str| format!("ws://{addr}/ws?token={session}");
    let (mut alice, _) = tokio_tungstenite::connect_async(url("alice-session")).await?;
    let granted = next(&mut alice, "auth_response").await?;
    println!("alice: {}", granted["data"]);
    let joined = next(&mut alice, "subscribe_response").await?;
    println!("alice joined: {}", joined["data"]["subscribed"]);
    send(
        &mut alice,
        serde_json::json!({"type": "subscribe", "data": {"channels": ["room.kitchen", "room.garden"]}}),
    )
    .await?;
    let reply = next(&mut alice, "subscribe_response").await?;
    println!("alice subscribed: {}", reply["data"]["subscribed"]);

    let (mut bob, _) = tokio_tungstenite::connect_async(url("bob-session")).await?;
    next(&mut bob, "subscribe_response").await?;
    send(
        &mut bob,
        serde_json::json!({"type": "subscribe", "data": {"channels": ["room.kitchen", "room.garden"]}}),
    )
    .await?;
    let reply = next(&mut bob, "subscribe_response").await?;
    println!(
        "bob subscribed: {}, refused: {}",
        reply["data"]["subscribed"], reply["data"]["rejected"]
    );
    if reply["data"]["rejected"][0]["channel"] != "room.kitchen" {
        return Err("bob was let into the kitchen".into());
    }

    send(
        &mut bob,
        serde_json::json!({"type": "publish", "data": {"type": "room.garden", "data": {"text": "darn slugs"}}}),
    )
    .await?;
    let said = next(&mut alice, "room.garden").await?;
    println!("alice heard in the garden: {}", said["data"]);
    if said["data"] != serde_json::json!({"text": "d**n slugs", "from": "bob"}) {
        return Err("the publish was not rewritten".into());
    }
    send(
        &mut bob,
        serde_json::json!({"type": "publish", "data": {"type": "room.kitchen", "data": {"text": "hi"}}}),
    )
    .await?;
    let refused = next(&mut bob, "error").await?;
    println!("bob in the kitchen: {}", refused["data"]["message"]);

    // A Skreaver agent asks the application a question.
    let agent_url = format!("ws://{addr}/skreaver/ws?token=alice-session");
    let (mut agent, _) = tokio_tungstenite::connect_async(agent_url).await?;
    next(&mut agent, "auth_response").await?;
    send(
        &mut agent,
        serde_json::json!({"type": "request", "data": {"q": "rooms"}, "correlation_id": "q1"}),
    )
    .await?;
    let answer = next(&mut agent, "response").await?;
    println!("alice's agent asked for her rooms: {}", answer["data"]);
    if answer["data"]["rooms"] != serde_json::json!(["garden", "kitchen"]) {
        return Err("the request was not answered".into());
    }

    let (mut stranger, _) = tokio_tungstenite::connect_async(url("forged")).await?;
    let refused = next(&mut stranger, "auth_response").await?;
    println!("a forged session: {}", refused["data"]["error"]["message"]);
    Ok(())
}
