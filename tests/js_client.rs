//! The TypeScript client (`clients/js`, npm package `sigmahub-client`): its own suite
//! (`node --test clients/js/test/`) against this build's `sigmahub` binary and a real
//! nats-server, in Node and in headless Chromium: subscribe, receive, publish with an ack;
//! cut connections, a killed and restarted server, a gap beyond the history, a stopped
//! cluster node, a dead link, offline/online; token refresh; 4003; `Retry-After` (with the
//! `ws` package); async handlers and their bound; backoff timings on mocked timers; the
//! events one tab consumes (printed).

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

#[test]
fn the_typescript_client_passes_its_suite_against_the_real_server() {
    // Chromium for the browser half (the same installer as the dashboard's tests).
    let browser = Command::new(dir().join("../../tests/browser/setup.sh"))
        .status()
        .expect("run tests/browser/setup.sh");
    assert!(browser.success(), "tests/browser/setup.sh failed");
    let setup = Command::new(dir().join("setup.sh"))
        .status()
        .expect("run clients/js/setup.sh");
    assert!(setup.success(), "clients/js/setup.sh failed");
    // Node 22 has a WebSocket built in; Node 20 has it behind a flag.
    let built_in = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node");
    let mut node = Command::new("node");
    if !built_in.success() {
        node.arg("--experimental-websocket");
    }
    let output = node
        .args([
            "--test",
            "--test-force-exit",
            "--test-reporter=tap",
            "test/",
        ])
        .current_dir(dir())
        .env("SIGMAHUB_BIN", env!("CARGO_BIN_EXE_sigmahub"))
        .output()
        .expect("run node --test");
    let report = String::from_utf8_lossy(&output.stdout);
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("not ok")).collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "node --test failed: {failed:?}\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = report.lines().filter(|l| l.starts_with("ok ")).count();
    let in_chromium = report
        .lines()
        .filter(|l| l.starts_with("ok ") && l.contains("Chromium:"))
        .count();
    assert!(
        passed >= 17 && in_chromium >= 6,
        "only {passed} tests ran ({in_chromium} in Chromium):\n{report}"
    );
    // The figure for the closing note and perf/README.md, shown with --nocapture.
    for line in report.lines().filter(|l| l.contains("browser consumption")) {
        println!("{line}");
    }
}
