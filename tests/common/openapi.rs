//! docs/openapi.json checked by validators we did not write: openapi-spec-validator and
//! openapi-schema-validator, installed into tests/openapi/.venv by tests/openapi/setup.sh,
//! run through tests/openapi/check.py.

use std::path::{Path, PathBuf};
use std::sync::Once;

use serde_json::Value;

/// The committed document.
pub fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

/// Validates the document, then each of `lines` (see check.py: an HTTP answer, or a
/// webhook's call or answer) against it. Fails the test on any error; returns check.py's
/// report.
pub async fn check(lines: &[Value]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi");
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        let status = std::process::Command::new(dir.join("setup.sh"))
            .status()
            .expect("run tests/openapi/setup.sh");
        assert!(status.success(), "tests/openapi/setup.sh failed");
    });
    let input: String = lines.iter().map(|a| format!("{a}\n")).collect();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(dir.join(".venv/bin/python"))
            .arg(dir.join("check.py"))
            .arg(spec())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run check.py");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{said}{stderr}");
    stderr
}
