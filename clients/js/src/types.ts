/** An event published on a channel. */
export interface Event<T = unknown> {
  /** The channel (the SigmaVault message `type`). */
  channel: string;
  /** The same, under the protocol's name. */
  type: string;
  /** When the server stamped it (RFC 3339, milliseconds, UTC). */
  timestamp: string;
  /** Its place in the server's sequence; absent for status types and without history. */
  offset?: number;
  /** The event's data. */
  data: T;
}

/** Why events were lost (docs/protocol.md, "Recovery after a reconnect"). */
export type GapReason =
  | "history_truncated"
  | "epoch_changed"
  | "unknown_offset"
  | "too_much_to_replay"
  | "already_subscribed"
  | "no_history"
  | "not_resumed"
  | "slow_handler"
  | "slow_consumer"
  | (string & {});

/** Events on a channel this client will never deliver, reported where they would have been. */
export interface Gap {
  channel: string;
  reason: GapReason;
  /** The offset of the last event delivered before the gap, if any. */
  after?: number;
  /** The offset of the first event delivered after it, when the server replayed some. */
  before?: number;
  /** `slow_consumer`: the offset of the last event missed (docs/protocol.md, "Slow consumers"). */
  through?: number;
  /** `slow_consumer`: how many events of the channel were missed. */
  missed?: number;
}

/** Where the connection stands. */
export type State =
  | { kind: "connecting"; url: string; attempt: number }
  | { kind: "connected"; url: string; clientId: string }
  | { kind: "reconnecting"; reason: string; delay: number }
  | { kind: "closed"; reason: string };

/** The server's answer to a publish. */
export interface PublishAck {
  success: boolean;
  accepted: number;
  /** Clients delivered to on this node; `null` in a cluster. */
  delivered: number | null;
  offsets?: number[];
}

/** Who is subscribed to a channel that keeps presence: the answer to `presence`. */
export interface Presence {
  channel: string;
  /** How many members. */
  count: number;
  members: Member[];
  /** How many server nodes answered (1 without a cluster). */
  nodes: number;
}

/** One subscriber of a channel that keeps presence. */
export interface Member {
  /** Its client id. */
  client: string;
  /** Its user: its token's `sub`, or `anonymous`. */
  user: string;
  /** What its token says about it (the `info` claim), if anything. */
  info?: unknown;
}

/** An error the client reports: an `error` from the server, or a failed token refresh. */
export interface ClientError {
  code: string;
  message: string;
}

/** A refusal of a request (subscribe, publish) by the server, or the client closed. */
export class SigmahubError extends Error {
  constructor(
    /** The server's code (`forbidden`, `invalid_channel`, …), or `closed`, `disconnected`, `invalid`. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SigmahubError";
  }
}
