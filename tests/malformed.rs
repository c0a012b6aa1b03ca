//! Bad input gets its documented answer and never affects another client.

mod common;

use common::{Read, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Messages answered with an `error` and the connection kept.
#[tokio::test]
async fn bad_messages_get_an_error_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut bystander = server.client().await;
    let mut client = server.client().await;
    let cases = [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ("[1, 2, 3]", "invalid_message"),
        ("\"just a string\"", "invalid_message"),
        (r#"{"data": {}}"#, "missing_type"),
        (r#"{"type": ["subscribe"]}"#, "invalid_message"),
        (r#"{"type": "launch_missiles"}"#, "unknown_type"),
        (r#"{"type": "subscribe"}"#, "invalid_message"),
        (
            r#"{"type": "subscribe", "data": {"events": "orders"}}"#,
            "invalid_message",
        ),
        (
            r#"{"type": "subscribe", "data": {"events": [1, 2]}}"#,
            "invalid_message",
        ),
        (
            r#"{"type": "unsubscribe", "data": null}"#,
            "invalid_message",
        ),
    ];
    for (input, code) in cases {
        client.send_text(input).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{input}: {reply}");
        assert_eq!(reply["data"]["code"], code, "{input}: {reply}");
        assert!(reply["data"]["message"].as_str().unwrap().len() > 3);
    }
    let bomb = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    client.send_text(&bomb).await;
    assert_eq!(client.recv().await["data"]["code"], "invalid_json");

    // Still connected and served.
    client.send(&json!({"type": "ping"})).await;
    assert_eq!(client.recv().await["type"], "pong");
    server
        .publish(&json!({"type": "notification", "data": {"n": 1}}))
        .await;
    assert_eq!(client.recv().await["data"]["n"], 1);
    assert_eq!(bystander.recv().await["data"]["n"], 1);
}

/// Frames that break the protocol close only their own connection, with the documented code.
#[tokio::test]
async fn protocol_violations_close_with_their_code() {
    let server = TestServer::with(|c| c.max_message_size = 64 * 1024).await;
    let mut bystander = server.client().await;

    let text = |payload: Vec<u8>, fin: bool| {
        Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), fin))
    };
    let continuation = |payload: Vec<u8>, fin: bool| {
        Message::Frame(Frame::message(payload, OpCode::Data(Data::Continue), fin))
    };
    let cases: Vec<(&str, Vec<Message>, u16)> = vec![
        ("binary frame", vec![Message::binary(vec![1, 2, 3])], 1003),
        (
            "invalid UTF-8",
            vec![text(vec![b'{', 0xff, 0xfe, b'}'], true)],
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            vec![
                text(vec![0xe2, 0x82], false),
                continuation(vec![0x28], true),
            ],
            1007,
        ),
        (
            "oversize message",
            vec![Message::text("x".repeat(64 * 1024 + 1))],
            1009,
        ),
        (
            "oversize fragmented message",
            (0..5)
                .map(|i| {
                    if i == 0 {
                        text(vec![b' '; 20_000], false)
                    } else {
                        continuation(vec![b' '; 20_000], i == 4)
                    }
                })
                .collect(),
            1009,
        ),
        (
            "continuation without a start",
            vec![continuation(b"x".to_vec(), true)],
            1002,
        ),
    ];
    for (what, messages, code) in cases {
        let mut client = server.client().await;
        for m in messages {
            // The server may close before the last frame is sent.
            let _ = futures_util::SinkExt::send(&mut client.ws, m).await;
        }
        assert_eq!(client.closed().await, Some(code), "{what}");
    }

    // A message of exactly the limit is fine.
    let mut client = server.client().await;
    let padding = 64 * 1024 - r#"{"type":"ping","pad":""}"#.len();
    client
        .send_text(&format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "p".repeat(padding)
        ))
        .await;
    assert_eq!(client.recv().await["type"], "pong");

    server
        .publish(&json!({"type": "notification", "data": {"after": true}}))
        .await;
    assert_eq!(bystander.recv().await["data"]["after"], true);
}

/// WebSocket-level pings from the client are answered in order with everything else.
#[tokio::test]
async fn client_ping_frames_get_pongs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send_message(Message::Ping(b"hello"[..].into()))
        .await;
    loop {
        match futures_util::StreamExt::next(&mut client.ws)
            .await
            .unwrap()
            .unwrap()
        {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hello");
                break;
            }
            Message::Text(_) | Message::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    // A normal close is answered with a normal close.
    futures_util::SinkExt::send(&mut client.ws, Message::Close(None))
        .await
        .unwrap();
    assert!(matches!(
        client.read().await,
        Read::Close(Some(1000)) | Read::Ended
    ));
}
