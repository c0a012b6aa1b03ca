//! The live dashboard at `GET /`, end to end in headless Chromium (Debian's `chromium`,
//! driven by playwright-core from npm; `tests/browser/setup.sh` installs both when they are
//! missing). The browser script is `tests/browser/dashboard.mjs`; its screenshot is saved
//! as `target/test-artifacts/dashboard.png`.

mod common;

use std::path::{Path, PathBuf};

use common::binary::Binary;
use common::engine::Engine;
use common::TestServer;

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_live_server_in_a_real_browser() {
    common::browser::setup();

    // The binary with its embedded defaults, host metrics every second.
    let server = Binary::spawn(&["--host-status-interval", "1s"]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .expect("connect");
        clients.push(ws);
    }

    let screenshot = artifact("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let base = server.url("/");
    // Three clients and the page's own WebSocket.
    let args = vec![base, "4".into(), screenshot.display().to_string()];
    let (ok, output) = common::browser::run("dashboard.mjs", args).await;
    println!("{output}");
    assert!(
        ok,
        "the browser check failed (screenshot: {}):\n{output}",
        screenshot.display()
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("screenshot saved: {}", screenshot.display());
    // Chromium negotiated permessage-deflate (the tungstenite clients cannot) and the page
    // read what came compressed: the status snapshot and the host's updates.
    let (status, _, body) =
        common::request_raw_from(None, server.addr, "GET", "/api/v1/stats", Vec::new(), &[]).await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let compressed = stats["compression"]["compressed"].as_u64().unwrap();
    assert!(compressed >= 1, "{}", stats["compression"]);
    drop(clients);
    server.stop();
}

/// Seed 000's own JavaScript client, in Chromium, against sigmahub polling an engine that
/// answers as the real one does (tests/fixtures/sigmavault-engine): a SigmaVault frontend
/// reads `memory_pct`, `load_average[0]` and a valid date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_client_reads_the_engines_status_in_a_real_browser() {
    common::browser::setup();
    let engine = Engine::start().await;
    let url = engine.url();
    let server = TestServer::with(move |c| c.engine.url = Some(url)).await;
    let (ok, output) =
        common::browser::run("seed_client.mjs", vec![format!("http://{}/", server.addr)]).await;
    println!("{output}");
    assert!(ok, "the seed's client failed:\n{output}");
    // It read system.status compressed: Chromium negotiates permessage-deflate by default.
    let compression = server.hub.compression();
    assert!(compression.compressed >= 1, "{compression:?}");
}

#[tokio::test]
async fn the_assets_are_served_with_a_strict_policy_and_can_be_turned_off() {
    let server = TestServer::start().await;
    let (status, headers, body) = server.request_raw("GET", "/", Vec::new(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(String::from_utf8_lossy(&body).contains("/dashboard/dashboard.js"));
    for path in [
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
        "/dashboard/uPlot.iife.min.js",
        "/dashboard/uPlot.min.css",
    ] {
        let (status, _, body) = server.request_raw("GET", path, Vec::new(), &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, _, _) = server
        .request_raw("GET", "/dashboard/../Cargo.toml", Vec::new(), &[])
        .await;
    assert_eq!(status, 404);

    let off = TestServer::with(|c| c.dashboard = false).await;
    let (status, body) = off.request("GET", "/", Vec::new()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}
