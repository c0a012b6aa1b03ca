//! Shutdown: stop accepting, flush what is queued, close every client with 1001.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn shutdown_flushes_queues_then_closes_every_client_with_1001() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    for n in 0..50 {
        server
            .publish(&json!({"type": "notification", "data": {"n": n}}))
            .await;
    }
    let addr = server.addr;
    server.shutdown().await;

    for client in [&mut a, &mut b] {
        for n in 0..50 {
            assert_eq!(
                client.recv().await["data"]["n"],
                n,
                "queued events are flushed first"
            );
        }
        assert_eq!(client.closed().await, Some(1001));
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

/// The real binary: SIGTERM closes clients with 1001 and exits 0.
#[tokio::test]
async fn the_binary_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigmahub"))
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log line "sigmahub listening addr=127.0.0.1:PORT" gives the port.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the binary exited early"
        );
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.trim().to_owned();
        }
    };
    let (ws, _) = common::within(tokio_tungstenite::connect_async(format!("ws://{addr}/ws")))
        .await
        .unwrap();
    let mut client = common::Client { ws };
    assert_eq!(client.recv().await["type"], "notification");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(client.closed().await, Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}
