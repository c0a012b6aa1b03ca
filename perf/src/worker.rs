//! Worker processes. Each holds the clients of one server address, so that no process goes
//! past the open-file limit (about 19,900 sockets here) and a cluster's nodes can each have
//! their ~19,000 clients.
//!
//! The coordinator (the `sigmahub-perf` command) starts one worker per `--addr` by running
//! its own binary with `--worker`, and talks to it one line at a time:
//!
//! - worker → `ready <ready> <failed>` once every client has subscribed or failed;
//! - worker → `received <n>` every 200 ms after that (events received so far);
//! - coordinator closes the worker's stdin to stop it;
//! - worker → `done <json>`: its [`Report`], then it exits.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::clients::{self, Plan, Tally};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a worker may take to connect and subscribe all its clients.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);

/// What a worker measured, sent to the coordinator when it stops.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub ready: usize,
    pub failed: usize,
    pub received: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Events that arrived compressed (`--deflate`).
    #[serde(default)]
    pub compressed: u64,
    /// Clients still connected when the stop came (the others were closed by the server).
    pub still_connected: usize,
    /// Why clients ended before the stop: close codes and errors, with counts.
    pub closed: BTreeMap<String, u64>,
    /// Publish-to-receipt latency in microseconds, as (value, count) pairs.
    pub latency: Vec<(u64, u64)>,
}

impl Report {
    /// Adds `other`'s figures to these.
    pub fn merge(&mut self, other: Report) {
        self.ready += other.ready;
        self.failed += other.failed;
        self.received += other.received;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.compressed += other.compressed;
        self.still_connected += other.still_connected;
        for (why, n) in other.closed {
            *self.closed.entry(why).or_default() += n;
        }
        self.latency.extend(other.latency);
    }

    /// The latency pairs as one histogram.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut all = clients::histogram();
        for &(value, count) in &self.latency {
            let _ = all.record_n(value, count);
        }
        all
    }
}

/// The worker side: connects `plan.clients` clients, speaks the line protocol on
/// stdin/stdout and exits when stdin closes.
pub async fn serve(plan: Plan) -> Result<(), Error> {
    let clients = plan.clients;
    let tally = Tally::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handles = clients::spawn_all(plan, tally.clone(), stopped).await;
    let start = Instant::now();
    while tally.ready.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed) < clients {
        if start.elapsed() > CONNECT_LIMIT {
            return Err(format!("connecting {clients} clients took over {CONNECT_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = tokio::io::stdout();
    let line = format!(
        "ready {} {}\n",
        tally.ready.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;

    // Report progress until the coordinator closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            read = stdin.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { break },
            _ = tick.tick() => {
                let line = format!("received {}\n", tally.received.load(Ordering::Relaxed));
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
        }
    }

    // Clients that ended before the stop were closed by the server (see `closed`).
    let still_connected = handles.iter().filter(|h| !h.is_finished()).count();
    let _ = stop.send(true);
    for handle in handles {
        let _ = handle.await;
    }
    let latency = tally.latency();
    let report = Report {
        ready: tally.ready.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        received: tally.received.load(Ordering::Relaxed),
        gaps: tally.gaps.load(Ordering::Relaxed),
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        compressed: tally.compressed.load(Ordering::Relaxed),
        still_connected,
        closed: tally.closed.lock().unwrap().clone(),
        latency: latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    };
    let line = format!("done {}\n", serde_json::to_string(&report)?);
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// The coordinator's handle on one worker process.
pub struct Worker {
    pub server: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    received: Arc<AtomicU64>,
    done: tokio::sync::oneshot::Receiver<Result<Report, String>>,
    ready: tokio::sync::oneshot::Receiver<(usize, usize)>,
}

impl Worker {
    /// Starts a worker that connects `clients` clients to `server` from `sources`.
    pub fn spawn(
        server: SocketAddr,
        clients: usize,
        sources: &[IpAddr],
        channel: &str,
        dialect: clients::Dialect,
        deflate: bool,
        jwt_secret: Option<&str>,
    ) -> Result<Self, Error> {
        let sources: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--worker")
            .args(["--addr", &server.to_string()])
            .args(["--clients", &clients.to_string()])
            .args(["--source-list", &sources.join(",")])
            .args(["--channel", channel])
            .args(["--dialect", dialect.as_str()])
            .args(deflate.then_some("--deflate"))
            .args(jwt_secret.map(|secret| format!("--jwt-secret={secret}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let received = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let progress = received.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            let outcome = loop {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break Err(format!("worker for {server} ended early")),
                    Err(e) => break Err(format!("worker for {server}: {e}")),
                };
                let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
                match word {
                    "ready" => {
                        let mut counts = rest.split(' ').map(|n| n.parse().unwrap_or(0));
                        let counts = (counts.next().unwrap_or(0), counts.next().unwrap_or(0));
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(counts);
                        }
                    }
                    "received" => progress.store(rest.parse().unwrap_or(0), Ordering::Relaxed),
                    "done" => break serde_json::from_str(rest).map_err(|e| e.to_string()),
                    _ => {}
                }
            };
            let _ = done_tx.send(outcome);
        });
        Ok(Self {
            server,
            child,
            stdin,
            received,
            done,
            ready,
        })
    }

    /// Waits until every client of this worker has subscribed or failed: (ready, failed).
    pub async fn ready(&mut self) -> Result<(usize, usize), Error> {
        (&mut self.ready).await.map_err(|_| {
            format!(
                "worker for {} ended before its clients were ready",
                self.server
            )
            .into()
        })
    }

    /// Events received so far, as of the worker's last progress line.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the worker's clients and returns what it measured.
    pub async fn finish(mut self) -> Result<Report, Error> {
        drop(self.stdin.take());
        let report = tokio::time::timeout(Duration::from_secs(60), self.done)
            .await
            .map_err(|_| format!("worker for {} did not stop within 60 s", self.server))?
            .map_err(|_| format!("worker for {} ended without a report", self.server))??;
        let _ = self.child.wait().await;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(received: u64, latencies: &[u64]) -> Report {
        let mut histogram = clients::histogram();
        for &us in latencies {
            histogram.record(us).unwrap();
        }
        Report {
            ready: 2,
            received,
            closed: BTreeMap::from([("close 4000".to_owned(), 1)]),
            latency: histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn reports_merge_into_one_histogram_and_summed_counts() {
        let mut all = report(10, &[100, 200]);
        all.merge(report(5, &[300, 300_000]));
        assert_eq!((all.ready, all.received), (4, 15));
        assert_eq!(all.closed["close 4000"], 2);
        let histogram = all.histogram();
        assert_eq!(histogram.len(), 4);
        assert_eq!(histogram.value_at_quantile(0.5), 200);
        assert!(histogram.equivalent(histogram.max(), 300_000));
    }

    #[test]
    fn a_report_survives_its_line() {
        let sent = report(7, &[42]);
        let line = serde_json::to_string(&sent).unwrap();
        assert!(!line.contains('\n'));
        let got: Report = serde_json::from_str(&line).unwrap();
        assert_eq!((got.received, got.latency), (7, sent.latency));
    }
}
