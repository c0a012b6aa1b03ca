//! Headless Chromium for the tests, driven by playwright-core from npm through the scripts
//! in tests/browser/ (`setup.sh` installs Debian's `chromium` and playwright-core when they
//! are missing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Installs the browser and playwright-core if they are missing.
pub fn setup() {
    let setup = Command::new(dir().join("setup.sh"))
        .status()
        .expect("run tests/browser/setup.sh");
    assert!(
        setup.success(),
        "installing chromium and playwright-core failed"
    );
}

/// Runs `node tests/browser/<script> <args>` off the runtime; its output, and whether it
/// succeeded.
pub async fn run(script: &str, args: Vec<String>) -> (bool, String) {
    let script = dir().join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}
