/**
 * The sigmahub client for browsers and Node.
 *
 * ```ts
 * import { Client } from "sigmahub-client";
 * const client = new Client("ws://127.0.0.1:12080/ws", { token });
 * const sub = client.subscribe("system.status", (event) => console.log(event.data.cpu_usage));
 * client.on("gap", (gap) => console.warn("lost", gap));
 * await sub.ready;
 * ```
 * @packageDocumentation
 */
export { Client } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  Handler,
  SubscribeOptions,
  Subscription,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { DEFAULT_BACKOFF, ceiling, delay } from "./backoff.js";
export type { Backoff } from "./backoff.js";
export { SigmahubError } from "./types.js";
export type { ClientError, Event, Gap, GapReason, Member, Presence, PublishAck, State } from "./types.js";
export type * from "./sigmavault.js";
