//! A real nats-server with JetStream for cluster tests, on free ports with its own store,
//! stopped when dropped. The binary is Debian's `nats-server` (scripts/test-all.sh installs
//! it when missing).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    /// Whether it runs with JetStream (`-js`); on unless a test turns it off before a
    /// (re)start.
    pub jetstream: bool,
    pub port: u16,
    pub monitor_port: u16,
    store: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two different free ports (both held until both are chosen).
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

impl NatsServer {
    /// Starts a fresh server and waits until it accepts connections.
    ///
    /// A port found free can be taken again before the server binds it (a parallel test's
    /// client connection gets it as its source port): a server that exits at once is
    /// started again on other ports.
    pub fn start() -> Self {
        let mut server = Self::reserve();
        for _ in 0..5 {
            if server.try_spawn() {
                return server;
            }
            (server.port, server.monitor_port) = two_free_ports();
        }
        panic!("nats-server did not start on any of 5 pairs of free ports");
    }

    /// A server whose ports are chosen (free now) but which is not started: start it
    /// with [`NatsServer::restart`], after whatever is to find no NATS there.
    pub fn reserve() -> Self {
        let store = std::env::temp_dir().join(format!(
            "sigmahub-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        let (port, monitor_port) = two_free_ports();
        Self {
            child: None,
            jetstream: true,
            port,
            monitor_port,
            store,
        }
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "nats-server did not start on its ports");
    }

    /// Starts the server on its ports; false if it exited (a port taken meanwhile).
    fn try_spawn(&mut self) -> bool {
        let mut child = Command::new("nats-server")
            .args(self.jetstream.then_some("-js"))
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed (apt-get install nats-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if child.try_wait().expect("waiting on nats-server").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start in 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `GET /connz?subs=1` of the monitoring endpoint: every connection with its name and
    /// subscriptions.
    pub async fn connections(&self) -> serde_json::Value {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let (status, _, body) =
            super::request_raw_at(addr, "GET", "/connz?subs=1", Vec::new(), &[]).await;
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// The subjects the connection named `name` is subscribed to.
    pub async fn subscriptions_of(&self, name: &str) -> Vec<String> {
        let connz = self.connections().await;
        let connection = connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no NATS connection named {name:?}: {connz}"));
        connection["subscriptions_list"]
            .as_array()
            .map(|subs| {
                subs.iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A TCP proxy in front of a nats-server, to cut one node off while the server stays up:
/// `cut` closes every connection through it and refuses new ones until `restore`; `stall`
/// stops passing bytes either way without closing anything (a silent network cut: no
/// reset, no FIN); `restore` ends both, closing the stalled connections. Small writes go through
/// at once (no Nagle delay), as they would on a direct connection.
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, holding each chunk for `latency`. A chunk read while `stalled`
/// is held until the stall ends, and then the connection is closed.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    latency: Duration,
    stalled: &AtomicBool,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tokio::time::sleep(latency).await;
        if stalled.load(Ordering::Acquire) {
            while stalled.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // What was held is dropped with the connection.
            return Err(std::io::Error::other("stalled"));
        }
        to.write_all(&buf[..n]).await?;
    }
}

impl Proxy {
    pub async fn start(target_port: u16) -> Self {
        Self::with_latency(target_port, Duration::ZERO).await
    }

    /// A proxy that holds every chunk from the client for `latency` before passing it on:
    /// a slow link from one node to NATS.
    pub async fn with_latency(target_port: u16, latency: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let cuts = generation.clone();
        let (is_open, is_stalled) = (open.clone(), stalled.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !is_open.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let mut cut = cuts.subscribe();
                let stalled = is_stalled.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (from_client, to_client) = inbound.split();
                    let (from_server, to_server) = outbound.split();
                    let up = pump(from_client, to_server, latency, &stalled);
                    let down = pump(from_server, to_client, Duration::ZERO, &stalled);
                    tokio::select! {
                        _ = async { tokio::try_join!(up, down) } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            stalled,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Passes no more bytes, and closes nothing.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Release);
    }

    /// Lets connections through again; connections that were stalled are closed.
    pub fn restore(&self) {
        self.stalled.store(false, Ordering::Release);
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
