import { type Backoff, DEFAULT_BACKOFF, delay } from "./backoff.js";
import { afterClose, afterRefusal, type Next } from "./ending.js";
import type { SigmaVaultEvents } from "./sigmavault.js";
import {
  type ClientError,
  type Event,
  type Gap,
  type Presence,
  type PublishAck,
  SigmahubError,
  type State,
} from "./types.js";

/** What the client needs of a WebSocket: the browser's, Node's (≥ 22), or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Options of a {@link Client}. Times are in milliseconds. */
export interface ClientOptions {
  /** A JWT or publish key, sent as `?token=` (browsers cannot set headers on a WebSocket). */
  token?: string;
  /** Gives a fresh token: before the current one expires, after a 4004 close, and for the first connection if `token` is unset. */
  getToken?: () => Promise<string>;
  /** Other servers (nodes of a cluster) to move to when one fails. */
  fallbackUrls?: string[];
  /** The WebSocket implementation; default `globalThis.WebSocket` (browsers, Node ≥ 22). */
  WebSocket?: WebSocketConstructor;
  /** Waits between attempts (default 0.5 s growing twofold up to 20 s, with full jitter). */
  backoff?: Partial<Backoff>;
  /** How long an attempt may take, up to the server's welcome (default 10 s). */
  connectTimeout?: number;
  /** Send a `ping` after this long without a message from the server (default 25 s). */
  pingAfter?: number;
  /** Take the connection as dead after this long without a message (default 60 s). */
  deadAfter?: number;
  /** Ask `getToken` this long before `expires_at` (default 60 s; halfway for shorter tokens). */
  refreshBefore?: number;
  /** Events an async handler may have waiting; beyond it they are dropped and reported as a `slow_handler` gap (default 1,000). */
  maxQueued?: number;
  /** The random source of the jitter (tests make it predictable). */
  random?: () => number;
}

/** Options of one subscription. */
export interface SubscribeOptions {
  /** Called in place when events on the channel were lost (also reported as `gap` on the client). */
  onGap?: (gap: Gap) => void;
}

/** A handler: may return a promise, and then the next event waits for it. */
export type Handler<T> = (event: Event<T>) => void | Promise<void>;

/** A subscription: {@link Subscription.ready} settles when the server answered. */
export interface Subscription {
  readonly channel: string;
  /** Resolves once subscribed; rejects with a {@link SigmahubError} if the server refused the channel. */
  readonly ready: Promise<void>;
  /** Stops delivering to this handler; the last one on a channel unsubscribes it. */
  unsubscribe(): void;
}

/** What {@link Client.on} reports, by kind. */
export interface ClientEvents {
  state: State;
  gap: Gap;
  error: ClientError;
  /** A channel whose async handler fell `maxQueued` events behind. */
  slow: { channel: string };
}

type Item = { event: Event<unknown> } | { gap: Gap };

/** One handler of a channel, with the events it has not taken yet. */
class Subscriber {
  queue: Item[] = [];
  running = false;
  /** Events dropped since the queue was last full: reported before the next one queued. */
  dropped?: { after?: number };
  lastOffset?: number;
  active = true;

  constructor(
    readonly handler: Handler<any>,
    readonly options: SubscribeOptions,
  ) {}
}

interface Channel {
  subscribers: Set<Subscriber>;
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
  /** The last offset delivered, or the position the server gave; in `epoch`. */
  offset?: number;
  /** A gap to report before the first replayed event. */
  pendingGap?: Gap;
  live: boolean;
  requested: boolean;
  wasLive: boolean;
}

type Pending =
  | { kind: "subscribe" | "unsubscribe" | "auth" | "ping" }
  | { kind: "publish"; resolve: (ack: PublishAck) => void; reject: (e: Error) => void }
  | { kind: "presence"; resolve: (presence: Presence) => void; reject: (e: Error) => void };

type Ending =
  | { kind: "closed"; code: number; reason: string }
  | { kind: "refused"; status: number; code?: string; retryAfter?: number }
  | { kind: "lost"; reason: string };

const MAX_URL_SINCE = 256;

/**
 * A connection to sigmahub that keeps itself up: reconnects with jittered backoff,
 * resubscribes, and resumes every channel from the last event it delivered, so handlers
 * see each event once and in order, with a gap reported where the server could not give
 * back what was missed.
 *
 * `Events` maps channel names to their data types. The default types the SigmaVault
 * channels and lets any other name through with `unknown` data; pass your own map (for
 * example `Client<{ orders: Order }>`) to allow only its channels.
 */
export class Client<Events extends object = SigmaVaultEvents & Record<string, unknown>> {
  private readonly urls: string[];
  private readonly options: ClientOptions;
  private readonly backoff: Backoff;
  private readonly WS: WebSocketConstructor;
  private readonly random: () => number;
  private socket?: WebSocketLike;
  private currentState: State;
  private closedByUser = false;
  private attempt = 0;
  private urlAt = 0;
  private welcomed = false;
  private resumeEpoch?: string;
  private skipSince = false;
  private token?: string;
  private epoch?: string;
  private defaults = new Set<string>();
  private unclaimed = new Map<string, number>();
  private channels = new Map<string, Channel>();
  private pending = new Map<string, Pending>();
  private nextCorrelation = 0;
  private listeners: { [K in keyof ClientEvents]: Set<(value: ClientEvents[K]) => void> } = {
    state: new Set(),
    gap: new Set(),
    error: new Set(),
    slow: new Set(),
  };
  private timers: { retry?: any; connect?: any; watch?: any; refresh?: any } = {};
  private lastHeard = 0;
  private readonly onOnline = () => this.online();
  private readonly onOffline = () => this.offline();

  /** Connects to `url` (`ws://host:12080/ws`) at once, in the background. */
  constructor(url: string | string[], options: ClientOptions = {}) {
    this.urls = [...(Array.isArray(url) ? url : [url]), ...(options.fallbackUrls ?? [])];
    if (this.urls.length === 0) throw new SigmahubError("invalid", "no server URL");
    this.options = options;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    const WS = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) {
      throw new SigmahubError(
        "invalid",
        "no WebSocket implementation: pass one as `WebSocket` (Node < 22: the `ws` package, or run with --experimental-websocket)",
      );
    }
    this.WS = WS;
    this.random = options.random ?? Math.random;
    this.token = options.token;
    this.currentState = { kind: "connecting", url: this.url, attempt: 0 };
    const g = globalThis as any;
    if (typeof g.addEventListener === "function" && typeof g.navigator?.onLine === "boolean") {
      g.addEventListener("online", this.onOnline);
      g.addEventListener("offline", this.onOffline);
    }
    void this.connect();
  }

  /** Where the connection stands now. */
  get state(): State {
    return this.currentState;
  }

  /** Listens to `kind`; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(kind: K, listener: (value: ClientEvents[K]) => void): () => void {
    this.listeners[kind].add(listener);
    return () => this.listeners[kind].delete(listener);
  }

  /** Resolves when connected and welcomed; rejects if the client closed instead. */
  ready(): Promise<void> {
    const now = this.currentState;
    if (now.kind === "connected") return Promise.resolve();
    if (now.kind === "closed") return Promise.reject(new SigmahubError("closed", now.reason));
    return new Promise((resolve, reject) => {
      const off = this.on("state", (s) => {
        if (s.kind === "connected") {
          off();
          resolve();
        } else if (s.kind === "closed") {
          off();
          reject(new SigmahubError("closed", s.reason));
        }
      });
    });
  }

  /** Delivers every event of `channel` to `handler`, in order, each once, across reconnects. */
  subscribe<C extends keyof Events & string>(
    channel: C,
    handler: Handler<Events[C]>,
    options: SubscribeOptions = {},
  ): Subscription {
    const subscriber = new Subscriber(handler, options);
    let settle!: { resolve: () => void; reject: (e: Error) => void };
    const ready = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    ready.catch(() => {}); // awaited or not: no unhandled rejection
    const subscription: Subscription = {
      channel,
      ready,
      unsubscribe: () => this.unsubscribe(channel, subscriber),
    };
    if (!validChannel(channel)) {
      settle.reject(new SigmahubError("invalid_channel", `${JSON.stringify(channel)} is not a channel name`));
      return subscription;
    }
    if (this.currentState.kind === "closed") {
      settle.reject(new SigmahubError("closed", this.currentState.reason));
      return subscription;
    }
    let state = this.channels.get(channel);
    if (!state) {
      state = { subscribers: new Set(), waiters: [], live: false, requested: false, wasLive: false };
      this.channels.set(channel, state);
    }
    state.subscribers.add(subscriber);
    if (state.live) {
      settle.resolve();
    } else {
      state.waiters.push(settle);
      if (this.welcomed && !state.requested) this.requestSubscribe([channel], this.epoch);
    }
    return subscription;
  }

  /**
   * Publishes `data` on `channel` over the socket (the token needs the `publish` grant);
   * resolves with the server's ack. Waits for the connection first. A connection lost
   * before the answer rejects with code `disconnected`: the event may or may not have
   * been published, and is not sent again.
   */
  async publish<C extends keyof Events & string>(channel: C, data: Events[C]): Promise<PublishAck> {
    if (!validChannel(channel)) {
      throw new SigmahubError("invalid_channel", `${JSON.stringify(channel)} is not a channel name`);
    }
    await this.ready();
    return new Promise((resolve, reject) => {
      const id = this.correlation({ kind: "publish", resolve, reject });
      if (!this.send("publish", id, { type: channel, data })) {
        this.pending.delete(id);
        reject(new SigmahubError("disconnected", "not connected"));
      }
    });
  }

  /**
   * Who is subscribed to `channel`, a channel that keeps presence (a `[[channels]]` rule
   * with `presence = true`), across every node of a cluster. Waits for the connection
   * first. Rejects with the server's code: `no_presence` for a channel without presence,
   * `forbidden` for one the token may not subscribe to.
   */
  async presence(channel: string): Promise<Presence> {
    if (!validChannel(channel)) {
      throw new SigmahubError("invalid_channel", `${JSON.stringify(channel)} is not a channel name`);
    }
    await this.ready();
    return new Promise((resolve, reject) => {
      const id = this.correlation({ kind: "presence", resolve, reject });
      if (!this.send("presence", id, { channel })) {
        this.pending.delete(id);
        reject(new SigmahubError("disconnected", "not connected"));
      }
    });
  }

  /** Closes the connection and ends every subscription. */
  close(): void {
    if (this.closedByUser) return;
    this.closedByUser = true;
    const socket = this.socket;
    this.detach();
    if (socket && socket.readyState <= 1) socket.close(1000);
    this.finish("closed by the application");
  }

  // ---- connecting ----

  /** The URL this attempt uses: attempts that never reach a welcome move down the list. */
  private get url(): string {
    return this.urls[this.urlAt % this.urls.length]!;
  }

  private async connect(): Promise<void> {
    if (this.closedByUser) return;
    const url = this.url;
    this.setState({ kind: "connecting", url, attempt: this.attempt });
    if (!this.token && this.options.getToken) {
      try {
        this.token = await this.options.getToken();
      } catch (e) {
        this.emit("error", { code: "token_refresh_failed", message: String(e) });
        return this.ended({ kind: "lost", reason: `no token: ${String(e)}` });
      }
      if (this.closedByUser) return;
    }
    let socket: WebSocketLike;
    try {
      socket = new this.WS(this.requestUrl(url));
    } catch (e) {
      return this.finish(`cannot connect to ${url}: ${String(e)}`);
    }
    this.socket = socket;
    this.welcomed = false;
    this.resumeEpoch = this.epoch;
    this.heard();
    this.watch(socket);
    // Some implementations never report a connection dropped during the handshake (Node
    // 20's experimental WebSocket stays CONNECTING): every attempt has a deadline.
    const limit = this.options.connectTimeout ?? 10_000;
    this.timers.connect = setTimeout(() => {
      if (this.socket !== socket || this.welcomed) return;
      this.ended({ kind: "lost", reason: `no welcome within ${limit} ms` });
      try {
        socket.close();
      } catch {
        /* already failed */
      }
    }, limit);
    // Implementations that show a refused upgrade (the `ws` package) give its status and
    // Retry-After; browsers show only a close (1006).
    const emitter = socket as any;
    if (typeof emitter.on === "function") {
      emitter.on("unexpected-response", (request: any, response: any) => {
        const chunks: string[] = [];
        response.setEncoding?.("utf8");
        response.on("data", (chunk: string) => chunks.push(chunk));
        response.on("end", () => {
          request.destroy?.();
          if (this.socket !== socket) return;
          let code: string | undefined;
          try {
            const body = JSON.parse(chunks.join(""));
            code = body?.error?.code ?? body?.code;
          } catch {
            /* not JSON */
          }
          const retryAfter = Number(response.headers?.["retry-after"]);
          this.ended({
            kind: "refused",
            status: response.statusCode,
            code,
            retryAfter: Number.isFinite(retryAfter) ? retryAfter * 1000 : undefined,
          });
        });
      });
    }
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.heard();
      if (typeof event.data === "string") this.onText(event.data);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.ended({ kind: "closed", code: event.code, reason: event.reason });
    };
    socket.onerror = () => {
      /* the close follows */
    };
  }

  /** The URL with the token, and `since`/`epoch` for the channels the server subscribes on connect. */
  private requestUrl(base: string): string {
    const params: string[] = [];
    if (this.token) params.push(`token=${encodeURIComponent(this.token)}`);
    const since: string[] = [];
    for (const [name, channel] of this.channels) {
      if (this.defaults.has(name) && channel.offset !== undefined && since.length < MAX_URL_SINCE) {
        since.push(`${name}:${channel.offset}`);
      }
    }
    if (this.epoch && since.length > 0 && !this.skipSince) {
      params.push(`since=${encodeURIComponent(since.join(","))}`, `epoch=${encodeURIComponent(this.epoch)}`);
    }
    this.skipSince = false;
    if (params.length === 0) return base;
    return base + (base.includes("?") ? "&" : "?") + params.join("&");
  }

  /** A connection ended or could not be made: decide what comes next. */
  private ended(ending: Ending): void {
    const wasWelcomed = this.welcomed;
    this.detach();
    this.disconnected();
    if (this.closedByUser) return;
    let next: Next;
    let reason: string;
    if (ending.kind === "closed") {
      next = afterClose(ending.code, this.backoff.max);
      reason = `closed (${ending.code}${ending.reason ? `: ${ending.reason}` : ""})`;
      if (ending.code === 4002 && !this.token && !this.options.getToken) {
        next = { kind: "stop" };
        reason += ": the server requires a token";
      }
    } else if (ending.kind === "refused") {
      next = afterRefusal(ending.status, ending.code, ending.retryAfter);
      reason = `refused (HTTP ${ending.status}${ending.code ? `, ${ending.code}` : ""})`;
    } else {
      next = { kind: "retry", atLeast: 0 };
      reason = ending.reason;
    }
    if (wasWelcomed) this.attempt = 0;
    else this.urlAt += 1;
    let wait = delay(this.backoff, this.attempt, this.random);
    switch (next.kind) {
      case "stop":
        return this.finish(reason);
      case "refresh_token":
        if (!this.options.getToken) return this.finish(`${reason}; no getToken to refresh it`);
        this.token = undefined;
        wait = 0;
        break;
      case "retry_without_since":
        this.skipSince = true;
        break;
      case "retry":
        wait = Math.max(wait, next.atLeast);
        break;
    }
    this.attempt += 1;
    this.setState({ kind: "reconnecting", reason, delay: wait });
    const g = globalThis as any;
    if (g.navigator?.onLine === false) return; // `online` reconnects
    this.timers.retry = setTimeout(() => void this.connect(), wait);
  }

  private online(): void {
    if (this.currentState.kind !== "reconnecting") return;
    clearTimeout(this.timers.retry);
    void this.connect();
  }

  private offline(): void {
    const socket = this.socket;
    if (!socket) return;
    this.ended({ kind: "lost", reason: "the browser went offline" });
    socket.close(1000);
  }

  /** Stops listening to the current socket, and its timers. */
  private detach(): void {
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      socket.onmessage = socket.onclose = socket.onopen = null;
      // A discarded socket may still report an error, such as the `ws` package's "closed
      // before the connection was established" when a handshake that outlived
      // `connectTimeout` is closed. Without a listener, Node throws it.
      socket.onerror = () => {};
    }
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.timers = {};
  }

  /** Unanswered publishes and presence requests fail; subscriptions wait for the next connection. */
  private disconnected(): void {
    for (const pending of this.pending.values()) {
      if ("reject" in pending) {
        pending.reject(new SigmahubError("disconnected", "the connection was lost before the server answered"));
      }
    }
    this.pending.clear();
    for (const channel of this.channels.values()) {
      channel.live = false;
      channel.requested = false;
    }
    this.welcomed = false;
  }

  /** Closed for good: waiting calls fail, subscriptions end. */
  private finish(reason: string): void {
    this.closedByUser = true;
    this.detach();
    for (const channel of this.channels.values()) {
      for (const waiter of channel.waiters) waiter.reject(new SigmahubError("closed", reason));
      for (const subscriber of channel.subscribers) subscriber.active = false;
    }
    this.channels.clear();
    for (const pending of this.pending.values()) {
      if ("reject" in pending) pending.reject(new SigmahubError("closed", reason));
    }
    this.pending.clear();
    const g = globalThis as any;
    if (typeof g.removeEventListener === "function") {
      g.removeEventListener("online", this.onOnline);
      g.removeEventListener("offline", this.onOffline);
    }
    this.setState({ kind: "closed", reason });
  }

  // ---- keep-alive and tokens ----

  /** A message arrived: the connection is alive. Per message, so only a clock read. */
  private heard(): void {
    this.lastHeard = Date.now();
  }

  /**
   * One timer per connection, not one per message: after `pingAfter` of silence a `ping`
   * (once per silence), after `deadAfter` the connection is given up.
   */
  private watch(socket: WebSocketLike): void {
    const pingAfter = this.options.pingAfter ?? 25_000;
    const deadAfter = this.options.deadAfter ?? 60_000;
    let pingedAfter = -1;
    const check = (): void => {
      if (this.socket !== socket) return;
      const silent = Date.now() - this.lastHeard;
      if (silent >= deadAfter) {
        this.ended({ kind: "lost", reason: "no message from the server" });
        socket.close(1000);
        return;
      }
      if (silent >= pingAfter && pingedAfter !== this.lastHeard && this.welcomed) {
        pingedAfter = this.lastHeard;
        this.send("ping", this.correlation({ kind: "ping" }), {});
      }
      const due = silent < pingAfter ? pingAfter - silent : deadAfter - silent;
      this.timers.watch = setTimeout(check, Math.max(due, 1));
    };
    this.timers.watch = setTimeout(check, pingAfter);
  }

  private scheduleRefresh(expiresAt: string | undefined): void {
    clearTimeout(this.timers.refresh);
    if (!this.options.getToken || !expiresAt) return;
    const left = Date.parse(expiresAt) - Date.now();
    if (!Number.isFinite(left)) return;
    const ahead = Math.min(this.options.refreshBefore ?? 60_000, Math.max(left, 0) / 2);
    const socket = this.socket;
    this.timers.refresh = setTimeout(() => void this.refresh(socket), Math.max(left - ahead, 0));
  }

  private async refresh(socket: WebSocketLike | undefined): Promise<void> {
    try {
      const token = await this.options.getToken!();
      this.token = token;
      if (this.socket === socket) this.send("auth", this.correlation({ kind: "auth" }), { token });
    } catch (e) {
      this.emit("error", { code: "token_refresh_failed", message: String(e) });
      if (this.socket === socket) this.timers.refresh = setTimeout(() => void this.refresh(socket), 5_000);
    }
  }

  // ---- messages ----

  private onText(text: string): void {
    let message: any;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof message !== "object" || message === null || typeof message.type !== "string") return;
    const id = typeof message.correlation_id === "string" ? message.correlation_id : undefined;
    const data = message.data ?? {};
    switch (message.type) {
      case "notification":
        if (!this.welcomed) return this.onWelcome(data);
        return this.deliver(message);
      case "auth_response":
        if (id) this.pending.delete(id);
        if (data.success) this.scheduleRefresh(data.expires_at);
        else this.emit("error", { code: data.error?.code ?? "auth_failed", message: data.error?.message ?? "" });
        return;
      case "subscribe_response":
        if (id) this.pending.delete(id);
        return this.onSubscribed(data);
      case "unsubscribe_response":
      case "pong":
        if (id) this.pending.delete(id);
        return;
      case "publish_response": {
        const pending = id ? this.pending.get(id) : undefined;
        if (id) this.pending.delete(id);
        if (pending?.kind === "publish") pending.resolve(data as PublishAck);
        return;
      }
      case "presence_response": {
        const pending = id ? this.pending.get(id) : undefined;
        if (id) this.pending.delete(id);
        if (pending?.kind === "presence") pending.resolve(data as Presence);
        return;
      }
      case "gap":
        // Events held back while this client was behind (the server's `degrade` policy).
        if (typeof data.channel === "string" && typeof data.missed === "number") {
          return this.reportGap({
            channel: data.channel,
            reason: "slow_consumer",
            after: data.after,
            through: data.through,
            missed: data.missed,
          });
        }
        return this.deliver(message);
      case "error": {
        const pending = id ? this.pending.get(id) : undefined;
        if (id) this.pending.delete(id);
        const error = { code: String(data.code ?? "unknown"), message: String(data.message ?? "") };
        if (pending && "reject" in pending) pending.reject(new SigmahubError(error.code, error.message));
        else this.emit("error", error);
        return;
      }
      default:
        return this.deliver(message);
    }
  }

  private onWelcome(welcome: any): void {
    this.welcomed = true;
    clearTimeout(this.timers.connect);
    const subscriptions: string[] = Array.isArray(welcome.subscriptions) ? welcome.subscriptions : [];
    const recovery: Record<string, any> = welcome.recovery ?? {};
    const offsets: Record<string, number> = welcome.offsets ?? {};
    this.defaults = new Set(subscriptions);
    for (const [name, outcome] of Object.entries(recovery)) this.recovered(name, outcome);
    this.epoch = welcome.epoch;
    this.unclaimed.clear();
    for (const name of subscriptions) {
      const channel = this.channels.get(name);
      if (!channel) {
        if (offsets[name] !== undefined) this.unclaimed.set(name, offsets[name]);
        continue;
      }
      if (channel.offset === undefined && offsets[name] !== undefined) channel.offset = offsets[name];
      if (channel.wasLive && !(name in recovery)) {
        this.reportGap({
          channel: name,
          reason: channel.offset === undefined ? "no_history" : "not_resumed",
          after: channel.offset,
        });
      }
      this.confirm(channel);
    }
    this.setState({ kind: "connected", url: this.url, clientId: String(welcome.client_id) });
    const rest = [...this.channels].filter(([, c]) => !c.live).map(([name]) => name);
    this.requestSubscribe(rest, this.resumeEpoch);
  }

  private requestSubscribe(names: string[], epoch: string | undefined): void {
    if (names.length === 0) return;
    const since: Record<string, number> = {};
    const untracked: Gap[] = [];
    for (const name of names) {
      const channel = this.channels.get(name)!;
      channel.requested = true;
      if (channel.offset !== undefined) since[name] = channel.offset;
      else if (channel.wasLive) untracked.push({ channel: name, reason: "no_history" });
    }
    const data: Record<string, unknown> = { channels: names };
    if (Object.keys(since).length > 0 && epoch) Object.assign(data, { since, epoch });
    this.send("subscribe", this.correlation({ kind: "subscribe" }), data);
    for (const gap of untracked) this.reportGap(gap);
  }

  private onSubscribed(reply: any): void {
    for (const rejected of reply.rejected ?? []) {
      const channel = this.channels.get(rejected.channel);
      if (!channel) continue;
      this.channels.delete(rejected.channel);
      const error = new SigmahubError(rejected.code, rejected.reason ?? "");
      for (const waiter of channel.waiters) waiter.reject(error);
      for (const subscriber of channel.subscribers) subscriber.active = false;
      this.emit("error", { code: rejected.code, message: `${rejected.channel}: ${rejected.reason ?? ""}` });
    }
    for (const [name, outcome] of Object.entries(reply.recovery ?? {})) this.recovered(name, outcome);
    if (reply.epoch) this.epoch = reply.epoch;
    const offsets: Record<string, number> = reply.offsets ?? {};
    for (const name of reply.subscriptions ?? []) {
      const channel = this.channels.get(name);
      if (!channel) continue;
      const at = offsets[name] ?? this.unclaimed.get(name);
      if (channel.offset === undefined && at !== undefined) channel.offset = at;
      this.unclaimed.delete(name);
      this.confirm(channel);
    }
  }

  private confirm(channel: Channel): void {
    channel.live = true;
    channel.wasLive = true;
    channel.requested = false;
    for (const waiter of channel.waiters) waiter.resolve();
    channel.waiters = [];
  }

  /** How the server's recovery of `name` went: a gap now, or before the first replayed event. */
  private recovered(name: string, outcome: any): void {
    const channel = this.channels.get(name);
    if (!channel || outcome?.recovered) return;
    const gap: Gap = { channel: name, reason: outcome?.reason ?? "unknown", after: channel.offset };
    if (gap.reason === "epoch_changed") channel.offset = undefined;
    if ((outcome?.replayed ?? 0) > 0) channel.pendingGap = gap;
    else this.reportGap(gap);
  }

  private deliver(message: any): void {
    const name: string = message.type;
    const offset: number | undefined = typeof message.offset === "number" ? message.offset : undefined;
    const channel = this.channels.get(name);
    if (!channel || !channel.live) {
      // A default channel nobody here subscribed to (yet).
      if (offset !== undefined && this.unclaimed.has(name)) this.unclaimed.set(name, offset);
      return;
    }
    if (offset !== undefined) {
      if (channel.offset !== undefined && offset <= channel.offset) return; // already delivered
      channel.offset = offset;
      const gap = channel.pendingGap;
      if (gap) {
        channel.pendingGap = undefined;
        this.reportGap({ ...gap, before: offset });
      }
    }
    const event: Event<unknown> = {
      channel: name,
      type: name,
      timestamp: message.timestamp,
      offset,
      data: message.data ?? {},
    };
    for (const subscriber of channel.subscribers) this.hand(name, subscriber, { event });
  }

  private reportGap(gap: Gap): void {
    this.emit("gap", gap);
    const channel = this.channels.get(gap.channel);
    if (!channel) return;
    for (const subscriber of channel.subscribers) this.hand(gap.channel, subscriber, { gap });
  }

  /** Gives `item` to a handler; queues it while an async handler runs, dropping (and reporting) past `maxQueued`. */
  private hand(name: string, subscriber: Subscriber, item: Item): void {
    if ("event" in item) {
      const { offset } = item.event;
      if (subscriber.queue.length >= (this.options.maxQueued ?? 1_000)) {
        if (!subscriber.dropped) {
          subscriber.dropped = { after: subscriber.lastOffset };
          this.emit("slow", { channel: name });
        }
        return;
      }
      if (subscriber.dropped) {
        const gap: Gap = { channel: name, reason: "slow_handler", after: subscriber.dropped.after, before: offset };
        subscriber.dropped = undefined;
        this.emit("gap", gap);
        subscriber.queue.push({ gap });
      }
      if (offset !== undefined) subscriber.lastOffset = offset;
    }
    subscriber.queue.push(item);
    if (!subscriber.running) this.drain(subscriber);
  }


  /**
   * Hands queued items to the handler in order. Synchronous while the handler is: a
   * handler that returns a promise gets the next item when it settles.
   */
  private drain(subscriber: Subscriber): void {
    subscriber.running = true;
    while (subscriber.queue.length > 0 && subscriber.active) {
      const item = subscriber.queue.shift()!;
      try {
        if ("gap" in item) subscriber.options.onGap?.(item.gap);
        else {
          const result = subscriber.handler(item.event);
          if (result && typeof (result as Promise<void>).then === "function") {
            (result as Promise<void>).then(
              () => this.drain(subscriber),
              (e) => {
                this.handlerFailed(e);
                this.drain(subscriber);
              },
            );
            return;
          }
        }
      } catch (e) {
        this.handlerFailed(e);
      }
    }
    subscriber.running = false;
  }

  private handlerFailed(e: unknown): void {
    this.emit("error", { code: "handler_failed", message: String(e) });
  }

  private unsubscribe(name: string, subscriber: Subscriber): void {
    subscriber.active = false;
    subscriber.queue = [];
    const channel = this.channels.get(name);
    if (!channel || !channel.subscribers.delete(subscriber) || channel.subscribers.size > 0) return;
    this.channels.delete(name);
    for (const waiter of channel.waiters) waiter.reject(new SigmahubError("unsubscribed", "unsubscribed"));
    if (channel.live || channel.requested) {
      this.send("unsubscribe", this.correlation({ kind: "unsubscribe" }), { channels: [name] });
    }
  }

  // ---- plumbing ----

  private send(type: string, correlationId: string, data: unknown): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return false;
    socket.send(JSON.stringify({ type, correlation_id: correlationId, data }));
    return true;
  }

  private correlation(pending: Pending): string {
    const id = `c${++this.nextCorrelation}`;
    this.pending.set(id, pending);
    return id;
  }

  private setState(state: State): void {
    this.currentState = state;
    this.emit("state", state);
  }

  private emit<K extends keyof ClientEvents>(kind: K, value: ClientEvents[K]): void {
    for (const listener of [...this.listeners[kind]]) {
      try {
        listener(value);
      } catch {
        /* a listener's fault is not the connection's */
      }
    }
  }
}

/** 1 to 128 bytes of `A-Z a-z 0-9 . _ - : /`. */
function validChannel(name: string): boolean {
  return /^[A-Za-z0-9._:/-]{1,128}$/.test(name);
}
