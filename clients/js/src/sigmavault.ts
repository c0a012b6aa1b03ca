/**
 * The SigmaVault event types of seed 000, as sigmahub sends them (docs/protocol.md,
 * "Server messages"). `timestamp` inside `data` is in Unix seconds.
 */

/** Fields a status type carries while its upstream fails. */
export interface Staleness {
  stale?: true;
  error_code?: string;
  last_update?: string;
}

export interface SystemStatus extends Staleness {
  hostname: string;
  uptime: number;
  cpu_usage: number;
  memory_used: number;
  memory_total: number;
  memory_pct: number;
  load_average: [number, number, number];
  timestamp: number;
  [extra: string]: unknown;
}

export interface AgentStatus extends Staleness {
  agent_id: string;
  status: string;
  current_task: string | null;
  memory_usage: number;
  timestamp: number;
  [extra: string]: unknown;
}

export interface CompressionJob {
  job_id: string;
  status: string;
  job_type: string;
  priority: number | string;
  progress: number;
  phase: string;
  bytes_processed: number;
  bytes_total: number;
  compression_ratio: number;
  elapsed_seconds: number;
  eta_seconds: number | null;
  input_path: string;
  output_path: string;
  timestamp: number;
  [extra: string]: unknown;
}

/** One job, or the summary that follows them. */
export type CompressionUpdate =
  | (CompressionJob & Staleness)
  | ({
      jobs: CompressionJob[];
      total_running: number;
      total_pending: number;
      total_jobs: number;
      timestamp: number;
    } & Staleness);

export interface StorageUpdate extends Staleness {
  disks: {
    mount_point: string;
    file_system: string;
    total: number;
    available: number;
    used_pct: number;
  }[];
  timestamp: number;
}

export interface Heartbeat {
  server_time: number;
}

export interface RpcError {
  reason: "rpc_disconnect" | "rpc_failed" | (string & {});
  error_code: string;
  consecutive_failures: number;
  method: string;
  message: string;
  timestamp: number;
}

export interface ConnectionError {
  reason: "cluster_disconnected" | (string & {});
  message: string;
  node: string;
  timestamp: number;
}

export interface Notification {
  message: string;
  level: "info" | "warning" | "error" | (string & {});
  breaker?: {
    method: string;
    state: "closed" | "open" | "half_open";
    previous: string;
    consecutive_failures: number;
  };
  cluster?: { node: string; connected: true };
  [extra: string]: unknown;
}

/** Channel → data type of the SigmaVault channels: the default of `Client`'s type parameter. */
export interface SigmaVaultEvents {
  "system.status": SystemStatus;
  "agent.status": AgentStatus;
  "compression.update": CompressionUpdate;
  "storage.update": StorageUpdate;
  heartbeat: Heartbeat;
  rpc_error: RpcError;
  connection_error: ConnectionError;
  notification: Notification;
}
