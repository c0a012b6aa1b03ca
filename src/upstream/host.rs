//! The host source: `system.status` and `storage.update` data from the local machine
//! (sysinfo), the embedded default when no engine is configured.

use std::time::SystemTime;

use serde::Serialize;
use sysinfo::{Disks, System};

use crate::event::unix_seconds;

/// Reads the host's status. Keeps the previous CPU reading, so `cpu_usage` is the average
/// since the last call (0 on the first).
pub(crate) struct HostProbe {
    system: System,
    disks: Disks,
}

/// The host could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read host status: {0}")]
pub(crate) struct HostError(String);

/// `system.status` data, with exactly the fields of SigmaVault's protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SystemStatus {
    /// The machine's host name.
    pub(crate) hostname: String,
    /// Seconds since boot.
    pub(crate) uptime: u64,
    /// CPU usage since the previous reading, in percent of all cores.
    pub(crate) cpu_usage: f64,
    /// Used memory, bytes.
    pub(crate) memory_used: u64,
    /// Total memory, bytes.
    pub(crate) memory_total: u64,
    /// Used memory, percent of total.
    pub(crate) memory_pct: f64,
    /// 1, 5 and 15 minute load averages.
    pub(crate) load_average: [f64; 3],
    /// Unix seconds of the reading.
    pub(crate) timestamp: u64,
}

/// One disk of `storage.update`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DiskStatus {
    /// Where it is mounted.
    pub(crate) mount_point: String,
    /// Its file system (`ext4`, `xfs`, …).
    pub(crate) file_system: String,
    /// Size, bytes.
    pub(crate) total: u64,
    /// Free space available, bytes.
    pub(crate) available: u64,
    /// Used space, percent of total.
    pub(crate) used_pct: f64,
}

/// `storage.update` data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StorageStatus {
    /// Every mounted disk.
    pub(crate) disks: Vec<DiskStatus>,
    /// Unix seconds of the reading.
    pub(crate) timestamp: u64,
}

fn err(e: impl std::fmt::Display) -> HostError {
    HostError(e.to_string())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl HostProbe {
    /// Opens the host's status sources.
    pub(crate) fn new() -> Result<Self, HostError> {
        let mut system = System::new().map_err(err)?;
        system.refresh_cpu_usage();
        Ok(Self {
            system,
            disks: Disks::new().map_err(err)?,
        })
    }

    /// A `system.status` reading.
    pub(crate) fn system_status(&mut self, now: SystemTime) -> Result<SystemStatus, HostError> {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let memory_total = self.system.total_memory();
        let memory_used = self.system.used_memory();
        let load = System::load_average().map_err(err)?;
        Ok(SystemStatus {
            hostname: System::host_name().map_err(err)?,
            uptime: System::uptime().map_err(err)?,
            cpu_usage: round2(f64::from(self.system.global_cpu_usage())),
            memory_used,
            memory_total,
            memory_pct: if memory_total == 0 {
                0.0
            } else {
                round2(memory_used as f64 * 100.0 / memory_total as f64)
            },
            load_average: [load.one, load.five, load.fifteen].map(round2),
            timestamp: unix_seconds(now),
        })
    }

    /// A `storage.update` reading.
    pub(crate) fn storage(&mut self, now: SystemTime) -> Result<StorageStatus, HostError> {
        self.disks
            .refresh_specifics(true, sysinfo::DiskRefreshKind::nothing().with_storage());
        let disks = self
            .disks
            .iter()
            .map(|d| {
                let (total, available) = (d.total_space(), d.available_space());
                DiskStatus {
                    mount_point: d.mount_point().to_string_lossy().into_owned(),
                    file_system: d.file_system().to_string_lossy().into_owned(),
                    total,
                    available,
                    used_pct: if total == 0 {
                        0.0
                    } else {
                        round2((total - available.min(total)) as f64 * 100.0 / total as f64)
                    },
                }
            })
            .collect();
        Ok(StorageStatus {
            disks,
            timestamp: unix_seconds(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_plausible() {
        let mut probe = HostProbe::new().unwrap();
        let status = probe.system_status(SystemTime::now()).unwrap();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(status.hostname, hostname.trim());
        assert!(status.memory_total > 0);
        assert!(status.memory_used <= status.memory_total);
        assert!((0.0..=100.0).contains(&status.memory_pct));
        assert!(status.uptime > 0);
        assert!(status.load_average.iter().all(|l| *l >= 0.0));
        let value = serde_json::to_value(&status).unwrap();
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "cpu_usage",
                "hostname",
                "load_average",
                "memory_pct",
                "memory_total",
                "memory_used",
                "timestamp",
                "uptime"
            ]
        );
        let storage = probe.storage(SystemTime::now()).unwrap();
        for disk in &storage.disks {
            assert!((0.0..=100.0).contains(&disk.used_pct), "{disk:?}");
        }
    }
}
