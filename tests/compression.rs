//! permessage-deflate against a real server: Python's `websockets` with and without the
//! extension, and hand-written frames for what no client library sends (deflate bombs,
//! corrupt streams, RSV1 where it does not belong). A broadcast is compressed once,
//! whatever the number of subscribers that take it compressed, and every client gets the
//! same events.

mod common;

use std::path::Path;
use std::time::Duration;

use common::raw::{close_code, frame, raw_ws_with, read_frame};
use common::{within, TestServer};
use serde_json::{json, Value};
use sigmahub::compression::negotiate::ANSWER;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A payload of about 1 KB, as JSON events are: repetitive keys, varied values.
fn kilobyte(i: usize) -> Value {
    let agents: Vec<Value> = (0..12)
        .map(|a| json!({"agent_id": format!("agent-{a}"), "status": "busy", "load": (a * 7 + i) % 100, "queue": a * i}))
        .collect();
    json!({"i": i, "agents": agents})
}

/// Inflates a compressed server message as a client does (RFC 7692 §7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 16);
    flate2::Decompress::new(false)
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("valid deflate");
    out
}

/// A compressed client message: RSV1 set, masked.
fn compressed(text: &[u8]) -> Vec<u8> {
    let payload = sigmahub::compression::compress(text, 6).expect("compressible");
    frame(0xc1, &payload, true)
}

async fn stats(server: &TestServer) -> Value {
    let (status, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(status, 200);
    stats
}

/// Runs tests/compression/client.py in the `websockets` virtualenv.
fn python(server: &TestServer, deflate: bool, events: usize) -> tokio::process::Child {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    tokio::process::Command::new(root.join("tests/skreaver/.venv/bin/python"))
        .arg("-u")
        .arg(root.join("tests/compression/client.py"))
        .arg(server.ws_url())
        .arg(if deflate { "deflate" } else { "none" })
        .arg("orders")
        .arg(events.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python")
}

/// What a client.py prints: its extension line, then its events.
struct Printed {
    extensions: String,
    events: Vec<Value>,
}

async fn printed(child: &mut tokio::process::Child, events: usize) -> Printed {
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Printed {
        extensions: String::new(),
        events: Vec::new(),
    };
    while out.events.len() < events {
        let line = within(lines.next_line())
            .await
            .unwrap()
            .expect("client.py ended early");
        if let Some(rest) = line.strip_prefix("extensions") {
            out.extensions = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("event ") {
            out.events.push(serde_json::from_str(rest).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_with_and_without_deflate_get_the_same_events() {
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/skreaver/setup.sh");
    let status = std::process::Command::new(setup)
        .status()
        .expect("setup.sh");
    assert!(status.success(), "tests/skreaver/setup.sh failed");
    let server = TestServer::start().await;
    const EVENTS: usize = 40;
    let mut clients = vec![
        python(&server, true, EVENTS),
        python(&server, true, EVENTS),
        python(&server, false, EVENTS),
    ];
    common::eventually("the three clients subscribed", || {
        server.hub.subscriber_count("orders") == 3
    })
    .await;
    assert_eq!(server.hub.stats().deflate_clients, 2);
    assert_eq!(stats(&server).await["compression"]["connections"], 2);
    let before = server.hub.compression();
    let mut published = Vec::new();
    for i in 0..EVENTS {
        // Every other event is too small to be worth compressing.
        let data = match i % 2 {
            0 => kilobyte(i),
            _ => json!({"i": i}),
        };
        let (status, _) = server
            .publish(&json!({"type": "orders", "data": data}))
            .await;
        assert_eq!(status, 200);
        published.push(data);
    }
    let mut seen = Vec::new();
    for child in &mut clients {
        seen.push(printed(child, EVENTS).await);
    }
    assert_eq!(seen[0].extensions, ANSWER);
    assert_eq!(seen[1].extensions, ANSWER);
    assert_eq!(
        seen[2].extensions, "",
        "declined nothing, was offered nothing"
    );
    for client in &seen {
        assert_eq!(client.events, published);
    }
    let after = server.hub.compression();
    // Once per broadcast, not once per subscriber.
    assert_eq!(after.messages - before.messages, EVENTS as u64);
    assert_eq!(after.compressed - before.compressed, EVENTS as u64 / 2);
    let saved = 1.0
        - (after.bytes_out - before.bytes_out) as f64 / (after.bytes_in - before.bytes_in) as f64;
    assert!(saved > 0.6, "saved {saved:.2} of the bytes");
    let saved = &stats(&server).await["compression"]["bytes_saved_share"];
    assert!(saved.as_f64().unwrap() > 0.6, "{saved}");
    for mut child in clients {
        let status = within(child.wait()).await.unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn frames_are_compressed_once_and_shared_and_client_messages_inflated() {
    let server = TestServer::start().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut tcp, head) = raw_ws_with(server.addr, "/ws", OFFER).await;
        assert!(
            head.contains(&format!("sec-websocket-extensions: {ANSWER}")),
            "{head}"
        );
        let (first, welcome) = read_frame(&mut tcp).await;
        assert_eq!(first, 0x81, "replies go uncompressed");
        assert!(String::from_utf8_lossy(&welcome).contains("notification"));
        // A compressed subscribe, answered.
        let subscribe = br#"{"type":"subscribe","data":{"events":["orders","orders.eu","orders.us","orders.asia"]}}"#;
        tcp.write_all(&compressed(subscribe)).await.unwrap();
        let (_, reply) = read_frame(&mut tcp).await;
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["type"], "subscribe_response", "{reply}");
        assert_eq!(reply["data"]["success"], true, "{reply}");
        sockets.push(tcp);
    }
    let before = server.hub.compression();
    server
        .publish(&json!({"type": "orders", "data": kilobyte(1)}))
        .await;
    server
        .publish(&json!({"type": "orders", "data": {"small": true}}))
        .await;
    let after = server.hub.compression();
    assert_eq!(after.messages - before.messages, 2, "once per broadcast");
    assert_eq!(after.compressed - before.compressed, 1);
    let mut frames = Vec::new();
    for tcp in &mut sockets {
        let (first, big) = read_frame(tcp).await;
        assert_eq!(first, 0xc1, "FIN, RSV1, text");
        let event: Value = serde_json::from_slice(&inflate(&big)).unwrap();
        assert_eq!(event["data"], kilobyte(1));
        assert!(big.len() * 3 < serde_json::to_vec(&event).unwrap().len());
        let (first, small) = read_frame(tcp).await;
        assert_eq!(first, 0x81, "under the threshold: plain");
        let event: Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(event["data"], json!({"small": true}));
        frames.push(big);
    }
    assert!(
        frames.windows(2).all(|w| w[0] == w[1]),
        "the same bytes for all"
    );
}

#[tokio::test]
async fn bad_compressed_input_gets_its_documented_close_and_is_counted() {
    let server = TestServer::start().await;
    let bomb = {
        // 20 MiB of spaces in about 20 KB: far past the 64 KiB message limit once
        // inflated, well within it as sent.
        let payload = sigmahub::compression::compress(&vec![b' '; 20 << 20], 9).unwrap();
        assert!(payload.len() < 30_000, "{}", payload.len());
        frame(0xc1, &payload, true)
    };
    let corrupt = frame(0xc1, &[0xff; 64], true);
    let not_utf8 = compressed(&[0xc3; 400]);
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("a deflate bomb", bomb, 1009),
        ("a corrupt stream", corrupt, 1007),
        ("inflated text that is not UTF-8", not_utf8, 1007),
        ("RSV1 on a ping", frame(0xc9, b"", true), 1002),
        (
            "RSV1 on a continuation",
            [frame(0x01, b"{", true), frame(0xc0, b"}", true)].concat(),
            1002,
        ),
    ];
    for (what, wire, code) in cases {
        let (mut tcp, _) = raw_ws_with(server.addr, "/ws", OFFER).await;
        read_frame(&mut tcp).await; // the welcome
        tcp.write_all(&wire).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, Some(code), "{what}");
    }
    let stats = stats(&server).await;
    assert_eq!(
        stats["limits"]["inflated_too_big"], 1,
        "{}",
        stats["limits"]
    );
    assert_eq!(stats["limits"]["bad_compression"], 1, "{}", stats["limits"]);
    // The server is fine: a new client is served.
    let mut ok = server.client().await;
    ok.subscribe(&["orders"]).await;
}

/// Inflates `payload` (a compressed message) as a client with a `bits`-bit window that
/// streams its output does: C zlib (Python's), 16 bytes at a time, so that it can look back
/// through its window only. `None` if the message reaches further back than that.
fn inflate_within(payload: &[u8], bits: u8) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const SCRIPT: &str = "import sys, zlib
d = zlib.decompressobj(-int(sys.argv[1]))
buf = sys.stdin.buffer.read() + b'\\x00\\x00\\xff\\xff'
out = b''
while True:
    chunk = d.decompress(buf, 16)
    out += chunk
    buf = d.unconsumed_tail
    if not buf and not chunk:
        break
sys.stdout.buffer.write(out)
";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, &bits.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let output = child.wait_with_output().unwrap();
    output.status.success().then_some(output.stdout)
}

/// Text that repeats itself only 1,500 bytes back: out of reach of a small window.
fn far_repeat() -> String {
    let mut seed = 7u32;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                char::from(b'a' + (seed >> 16) as u8 % 26)
            })
            .collect()
    };
    let chunk = noise(700);
    format!("{chunk}{}{chunk}", noise(800))
}

#[tokio::test]
async fn a_client_asking_for_a_smaller_window_gets_frames_made_within_it() {
    let server = TestServer::start().await;
    let small = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let mut sockets = Vec::new();
    for (offer, answer) in [
        (OFFER, ANSWER.to_owned()),
        (small, format!("{ANSWER}; server_max_window_bits=9")),
    ] {
        let (mut tcp, head) = raw_ws_with(server.addr, "/ws", offer).await;
        assert!(
            head.contains(&format!("sec-websocket-extensions: {answer}\r\n")),
            "{head}"
        );
        read_frame(&mut tcp).await;
        let subscribe = json!({"type": "subscribe", "data": {"events": ["orders"]}});
        tcp.write_all(&frame(0x81, subscribe.to_string().as_bytes(), true))
            .await
            .unwrap();
        let (_, reply) = read_frame(&mut tcp).await;
        assert!(String::from_utf8_lossy(&reply).contains("subscribe_response"));
        sockets.push(tcp);
    }
    let before = server.hub.compression();
    let data = json!({"text": far_repeat()});
    let (status, _) = server
        .publish(&json!({"type": "orders", "data": data}))
        .await;
    assert_eq!(status, 200);
    let after = server.hub.compression();
    assert_eq!(after.compressed - before.compressed, 2, "once per window");

    let (first, full) = read_frame(&mut sockets[0]).await;
    let (_, nine) = read_frame(&mut sockets[1]).await;
    assert_eq!(first, 0xc1);
    let event = |text: Vec<u8>| serde_json::from_slice::<Value>(&text).unwrap()["data"].clone();
    assert_eq!(event(inflate_within(&full, 15).unwrap()), data);
    assert_eq!(
        inflate_within(&full, 10),
        None,
        "the full window reaches the repeat"
    );
    assert_eq!(event(inflate_within(&nine, 10).unwrap()), data);
    assert_eq!(event(inflate_within(&nine, 9).unwrap()), data);
}

#[tokio::test]
async fn offers_the_server_cannot_honour_or_a_server_with_it_off_decline_it() {
    let server = TestServer::start().await;
    let small_window = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n";
    let (mut tcp, head) = raw_ws_with(server.addr, "/ws", small_window).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    read_frame(&mut tcp).await;
    // Not negotiated: RSV1 is a protocol error.
    let subscribe = json!({"type": "subscribe", "data": {"events": vec!["orders.eu"; 10]}});
    let wire = compressed(subscribe.to_string().as_bytes());
    tcp.write_all(&wire).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(1002));

    let off =
        TestServer::with(|c| c.compression.mode = sigmahub::config::CompressionMode::Off).await;
    let (_tcp, head) = raw_ws_with(off.addr, "/ws", OFFER).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(off.hub.stats().deflate_clients, 0);
}
