//! The `sigmahub` binary as a user runs it: spawned with flags, JSON logs on stderr, its
//! address read from its own "listening" line, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// Starts `sigmahub --listen 127.0.0.1:0 --log-format json <args>` and waits until it
    /// listens.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_on("127.0.0.1:0".parse().unwrap(), args)
    }

    /// Starts `sigmahub --listen <listen> --log-format json <args>` (a server restarted
    /// on the port its clients know) and waits until it listens.
    pub fn spawn_on(listen: SocketAddr, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sigmahub"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGMAHUB_")) {
            command.env_remove(k);
        }
        let mut child = command
            .args(["--listen", &listen.to_string(), "--log-format", "json"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sigmahub");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                if value["fields"]["message"] == "sigmahub listening" {
                    let _ = tx.send(value["fields"]["addr"].as_str().unwrap().to_owned());
                }
                sink.lock().unwrap().push(value);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sigmahub did not log its listening address")
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            lines,
            reader: Some(reader),
        }
    }

    /// Its resident set size now (`VmRSS` in `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a log line satisfies `check`, and returns it.
    pub fn wait_for_log(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| check(l)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): no shutdown, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM; fails the test unless it exits with success within `limit`.
    /// Returns every log line and how long it took.
    pub fn stop_within(mut self, limit: Duration) -> (Vec<Value>, Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "sigmahub still running {limit:?} after SIGTERM; its last lines: {:?}",
                    self.logs().iter().rev().take(5).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = start.elapsed();
        assert!(status.success(), "sigmahub exited with {status}");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (self.logs(), took)
    }

    /// Stops it with SIGTERM and returns every log line.
    pub fn stop(mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sigmahub exited with {status}");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.logs()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
