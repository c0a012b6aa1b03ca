//! The servers under test: spawned by the generator, or existing processes by pid. Their CPU
//! time and resident memory are read from /proc.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// CPU seconds (user + system) and resident set size of a process, or of several summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Bytes the process has written with write-family calls (`wchar` of /proc/PID/io):
    /// on a broadcast server, almost all of it to client sockets.
    pub written_bytes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            rss_bytes: self.rss_bytes + other.rss_bytes,
            written_bytes: self.written_bytes + other.written_bytes,
        }
    }
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, other: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds - other.cpu_seconds,
            rss_bytes: self.rss_bytes.saturating_sub(other.rss_bytes),
            written_bytes: self.written_bytes.saturating_sub(other.written_bytes),
        }
    }
}

pub struct Server {
    pub pid: u32,
    child: Option<Child>,
    ticks_per_second: f64,
}

impl Server {
    /// Spawns `binary` listening on `listen` with `args`, and waits until it accepts.
    pub async fn spawn(binary: &str, listen: &str, args: &[String]) -> std::io::Result<Self> {
        let child = Command::new(binary)
            .arg("--listen")
            .arg(listen)
            // The generator opens thousands of connections from a few addresses.
            .args([
                "--max-connections-per-ip",
                "0",
                "--connection-rate-per-ip",
                "0",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().expect("a spawned child has a pid");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                return Ok(Self {
                    pid,
                    child: Some(child),
                    ticks_per_second: ticks_per_second(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(std::io::Error::other(format!(
            "{binary} did not start listening on {listen}"
        )))
    }

    /// An already running server.
    pub fn existing(pid: u32) -> Self {
        Self {
            pid,
            child: None,
            ticks_per_second: ticks_per_second(),
        }
    }

    pub fn usage(&self) -> Usage {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = (ticks(11) + ticks(12)) / self.ticks_per_second;
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid)).unwrap_or_default();
        let written_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Usage {
            cpu_seconds,
            rss_bytes: rss_kib * 1024,
            written_bytes,
        }
    }

    /// Stops a spawned server with SIGTERM and waits for it; leaves an existing one alone.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        }
    }
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Several servers (the nodes of a cluster, or one), measured together.
pub struct Fleet {
    pub servers: Vec<Server>,
}

impl Fleet {
    /// The summed usage of every server, and each one's.
    pub fn usage(&self) -> (Usage, Vec<Usage>) {
        let each: Vec<Usage> = self.servers.iter().map(Server::usage).collect();
        (
            each.iter().copied().fold(Usage::default(), |a, b| a + b),
            each,
        )
    }

    /// Stops every spawned server.
    pub async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }
}
