// Test harness: the real sigmahub binary on a free port, a TCP proxy that can cut
// connections, HS256 tokens, and small waiting helpers. No mock of the server anywhere.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import readline from "node:readline";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SIGMAHUB_BIN ?? path.join(here, "../../../target/debug/sigmahub");
export const SECRET = "js-client-test-secret-0123456789ab";

/** Starts `sigmahub --listen <listen> <args>`; resolves once it listens. */
export async function startServer(args = [], listen = "127.0.0.1:0") {
  // Every test client comes from 127.0.0.1: no per-address limits unless a test sets them.
  const limits = ["--max-connections-per-ip", "--connection-rate-per-ip"].flatMap((flag) =>
    args.includes(flag) ? [] : [flag, "0"],
  );
  const child = spawn(
    BIN,
    ["--listen", listen, "--log-format", "json", ...limits, ...args],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const lines = readline.createInterface({ input: child.stderr });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("sigmahub did not start")), 20_000);
    child.once("exit", (code) => reject(new Error(`sigmahub exited with ${code}`)));
    lines.on("line", (line) => {
      try {
        const entry = JSON.parse(line);
        if (entry.fields?.message === "sigmahub listening") {
          clearTimeout(timer);
          resolve(entry.fields.addr);
        }
      } catch {
        /* not JSON */
      }
    });
  });
  const [host, port] = addr.split(":");
  // A process killed by a signal has no exit code, only a signal code.
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  return {
    child,
    addr,
    port: Number(port),
    url: `ws://${addr}/ws`,
    async publish(channel, data) {
      return publishAt(addr, Array.isArray(channel) ? channel : { type: channel, data });
    },
    async stats() {
      const response = await fetch(`http://${addr}/api/v1/stats`);
      return response.json();
    },
    async kill() {
      if (exited()) return;
      child.kill("SIGKILL");
      await once(child, "exit");
    },
    async stop() {
      if (exited()) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
    host,
  };
}

export async function publishAt(addr, body) {
  const response = await fetch(`http://${addr}/api/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const reply = await response.json();
  if (response.status !== 200) throw new Error(`publish: ${response.status} ${JSON.stringify(reply)}`);
  return reply;
}

/**
 * A TCP proxy to `port`: `cut()` closes every connection and refuses new ones until
 * `restore()`; `freeze()` keeps the connections open but lets nothing through (a dead
 * link, as a client behind a broken NAT sees it, or a client too slow to read), and
 * `thaw()` lets them flow again.
 */
export async function startProxy(port) {
  let open = true;
  let frozen = false;
  const pairs = new Set();
  const server = net.createServer((inbound) => {
    if (!open) return inbound.destroy();
    const outbound = net.connect(port, "127.0.0.1");
    const pair = [inbound, outbound];
    pairs.add(pair);
    if (!frozen) {
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    }
    const end = () => {
      pairs.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on("error", end).on("close", end);
    outbound.on("error", end).on("close", end);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    cut() {
      open = false;
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
    },
    restore() {
      open = true;
      frozen = false;
    },
    /** Lets a frozen link flow again, on the same connections. */
    thaw() {
      frozen = false;
      for (const [a, b] of pairs) {
        a.pipe(b);
        b.pipe(a);
        a.resume();
        b.resume();
      }
    },
    freeze() {
      frozen = true;
      for (const [a, b] of pairs) {
        a.unpipe(b);
        b.unpipe(a);
        a.pause();
        b.pause();
      }
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

export function token(sub, seconds, claims = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    sub,
    exp: Math.floor(Date.now() / 1000) + seconds,
    subscribe: ["*"],
    publish: ["orders.*"],
    ...claims,
  })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** Resolves with the first value `client` emits as `kind` that satisfies `check`. */
export function next(client, kind, check = () => true, ms = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${kind} within ${ms} ms`));
    }, ms);
    const off = client.on(kind, (value) => {
      if (!check(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** An async queue of what a subscription delivers: events' `data.n`, and gaps. */
export function collector() {
  const items = [];
  const waiters = [];
  const push = (item) => {
    const waiter = waiters.shift();
    if (waiter) waiter(item);
    else items.push(item);
  };
  return {
    handler: (event) => push({ n: event.data.n, event }),
    onGap: (gap) => push({ gap }),
    next(ms = 20_000) {
      if (items.length > 0) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms);
        waiters.push((item) => {
          clearTimeout(timer);
          resolve(item);
        });
      });
    },
  };
}

/** Publishes `{n}` for n = 1..count on each of `channels` in turn, 2 ms apart: a steady stream. */
export async function publishSteadily(server, channels, count) {
  for (let n = 1; n <= count; n++) {
    for (const channel of channels) await server.publish(channel, { n });
    await sleep(2);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
