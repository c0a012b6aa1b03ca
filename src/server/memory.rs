//! What the server holds in memory, for `GET /metrics` and `GET /api/v1/stats`: the
//! process's resident size, and what the clients' queues hold together.
//!
//! Both are read when asked for (a scrape, a stats call), never kept up to date on the
//! publish path: the queues are summed by walking the clients, and the resident size is
//! read from the operating system through sysinfo.

use serde::Serialize;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use crate::engine::hub::{Hub, Queued};

/// Memory figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Memory {
    /// The process's resident set size in bytes, where the platform reports it.
    pub(crate) resident_bytes: Option<u64>,
    /// Frames waiting in client queues, over every client.
    pub(crate) queued_frames: u64,
    /// Their bytes, a broadcast frame counted once per client holding it (an upper bound).
    pub(crate) queued_bytes: u64,
}

impl Memory {
    /// Reads the figures now.
    pub(crate) fn now(hub: &Hub) -> Self {
        let Queued { frames, bytes } = hub.queued();
        Self {
            resident_bytes: resident_bytes(),
            queued_frames: frames,
            queued_bytes: bytes,
        }
    }
}

/// This process's resident set size in bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = System::new().ok()?;
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map(|p| p.memory())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use bytes::Bytes;

    #[test]
    fn resident_size_is_read() {
        let rss = resident_bytes().expect("Linux reports it");
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn queues_are_summed_over_clients() {
        let hub = Hub::new(&Config::default());
        let mut a = hub.connect().unwrap();
        let mut b = hub.connect().unwrap();
        a.subscribe(["x"]);
        b.subscribe(["x"]);
        hub.publish_frame("x", &Bytes::from(vec![0u8; 100]));
        a.send(Bytes::from(vec![0u8; 10]));
        let m = Memory::now(&hub);
        assert_eq!((m.queued_frames, m.queued_bytes), (3, 210));
    }
}
