//! A real nats-server with JetStream for cluster tests, on free ports with its own store,
//! stopped when dropped. The binary is Debian's `nats-server` (scripts/test-all.sh installs
//! it when missing).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
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

impl NatsServer {
    /// Starts a fresh server and waits until it accepts connections.
    pub fn start() -> Self {
        let store = std::env::temp_dir().join(format!(
            "sigmahub-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut server = Self {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            store,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
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
