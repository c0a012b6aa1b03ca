// The TypeScript client (its ESM build) against the real sigmahub binary, over Node's
// built-in WebSocket (undici) and the `ws` package.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import WS from "ws";

import { Client, SigmahubError } from "../dist/index.js";
import { collector, next, publishAt, publishSteadily, SECRET, sleep, startProxy, startServer, token } from "./harness.mjs";

// Quick retries, and a short handshake deadline: Node 20's built-in WebSocket never reports
// a connection refused or dropped during the handshake (it stays CONNECTING, and its
// handle keeps the process alive). The tests that take servers away use the `ws` package;
// the others run over the built-in one.
const quick = { backoff: { min: 20, max: 200, factor: 2 }, connectTimeout: 1000 };
const churn = { ...quick, WebSocket: WS };
const servers = [];
/** An event's number; a gap fails the test with what it was. */
const number = (item) => {
  assert.ok(item.gap === undefined, `a gap: ${JSON.stringify(item.gap)}`);
  return item.n;
};
async function server(args, listen) {
  const s = await startServer(args, listen);
  servers.push(s);
  return s;
}
after(async () => {
  for (const s of servers) await s.kill();
});

test("subscribe, receive, publish with an ack, refusals", async () => {
  const s = await server(["--auth-jwt-secret", SECRET]);
  const client = new Client(s.url, { ...quick, token: token("alice", 3600) });
  await client.ready();
  const got = collector();
  const sub = client.subscribe("orders.alice", got.handler, { onGap: got.onGap });
  await sub.ready;
  await s.publish("orders.alice", { n: 1 });
  const first = await got.next();
  assert.equal(first.n, 1);
  assert.equal(first.event.channel, "orders.alice");
  assert.equal(typeof first.event.offset, "number");

  const ack = await client.publish("orders.alice", { n: 2 });
  assert.equal(ack.accepted, 1);
  assert.equal(ack.delivered, 1);
  assert.equal((await got.next()).n, 2);

  await assert.rejects(client.publish("billing", {}), (e) => e instanceof SigmahubError && e.code === "forbidden");
  await assert.rejects(client.subscribe("bad name", () => {}).ready, (e) => e.code === "invalid_channel");

  // A handler that throws is reported; the next event still comes.
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const throwing = client.subscribe("orders.boom", (event) => {
    if (event.data.n === 1) throw new Error("boom");
    got.handler(event);
  });
  await throwing.ready;
  await s.publish("orders.boom", { n: 1 });
  await s.publish("orders.boom", { n: 2 });
  assert.equal((await got.next()).n, 2);
  assert.equal(errors[0]?.code, "handler_failed");

  sub.unsubscribe();
  throwing.unsubscribe();
  client.close();
  assert.equal(client.state.kind, "closed");
  await assert.rejects(client.ready(), (e) => e.code === "closed");
});

test("cut connections resume without loss, repetition or reordering", async () => {
  // A history that covers the outages: they last up to the handshake deadline.
  const s = await server(["--default-subscriptions", "notification", "--history-size", "2000"]);
  const proxy = await startProxy(s.port);
  const client = new Client(proxy.url, churn);
  const orders = collector();
  const notices = collector();
  await Promise.all([
    client.subscribe("orders", orders.handler, { onGap: orders.onGap }).ready,
    client.subscribe("notification", notices.handler, { onGap: notices.onGap }).ready,
  ]);
  const EVENTS = 300;
  const publisher = publishSteadily(s, ["orders", "notification"], EVENTS);
  const cutter = (async () => {
    for (let i = 0; i < 4; i++) {
      if (client.state.kind !== "connected") await next(client, "state", (st) => st.kind === "connected");
      await sleep(150);
      proxy.cut();
      await sleep(50);
      proxy.restore();
    }
  })();
  for (let n = 1; n <= EVENTS; n++) {
    assert.deepEqual(number(await orders.next()), n, "orders");
    assert.deepEqual(number(await notices.next()), n, "notification");
  }
  await publisher;
  await cutter;
  client.close();
  proxy.close();
});

test("a gap beyond the history is reported with its range, then what the history kept", async () => {
  const s = await server(["--history-size", "3"]);
  const proxy = await startProxy(s.port);
  const client = new Client(proxy.url, churn);
  const got = collector();
  await client.subscribe("orders", got.handler, { onGap: got.onGap }).ready;
  await s.publish("orders", { n: 1 });
  const first = await got.next();
  proxy.cut();
  await next(client, "state", (st) => st.kind === "reconnecting");
  for (let n = 2; n <= 10; n++) await s.publish("orders", { n });
  proxy.restore();
  const { gap } = await got.next();
  assert.equal(gap.reason, "history_truncated");
  assert.equal(gap.after, first.event.offset);
  const replayed = await got.next();
  assert.equal(replayed.n, 8);
  assert.equal(gap.before, replayed.event.offset);
  assert.equal((await got.next()).n, 9);
  assert.equal((await got.next()).n, 10);
  client.close();
  proxy.close();
});

test("a server that degrades a slow client: a slow_consumer gap, and nothing else lost", async () => {
  const s = await server(["--slow-consumer", "degrade", "--client-queue-capacity", "16"]);
  const proxy = await startProxy(s.port);
  const client = new Client(proxy.url, churn);
  const got = collector();
  await client.subscribe("feed", got.handler, { onGap: got.onGap }).ready;
  // The client stops reading: the socket buffers fill, then its queue on the server.
  proxy.freeze();
  const BATCHES = 20;
  const PER_BATCH = 100;
  const pad = "x".repeat(4096);
  for (let b = 0; b < BATCHES; b++) {
    const events = Array.from({ length: PER_BATCH }, (_, i) => ({ type: "feed", data: { n: b * PER_BATCH + i + 1, pad } }));
    await publishAt(s.addr, events);
  }
  // The last one is critical: never held back, so it marks the end.
  const total = BATCHES * PER_BATCH + 1;
  await publishAt(s.addr, { type: "feed", data: { n: total }, priority: "critical" });
  proxy.thaw();
  let received = 0;
  let missed = 0;
  let last = 0;
  let gap;
  let gaps = 0;
  // A gap comes each time the client has read everything queued, the last one after the
  // critical event; a client that caught up midway and fell behind again gets several.
  // Read until every event is accounted for: one lost for good times this out.
  while (received + missed < total || gap === undefined) {
    const item = await got.next().catch((e) => {
      throw new Error(`received ${received}, missed ${missed} in ${gaps} gaps, of ${total}: ${e.message}`);
    });
    if (item.gap) {
      gap = item.gap;
      gaps++;
      missed += gap.missed;
      continue;
    }
    assert.ok(item.n > last, `out of order: ${item.n} after ${last}`);
    last = item.n;
    received++;
  }
  assert.ok(gap, "no gap was reported");
  assert.equal(last, total, "the critical event came last");
  assert.equal(gap.reason, "slow_consumer");
  assert.ok(gap.after < gap.through, JSON.stringify(gap));
  assert.equal(received + missed, total, `received ${received}, missed ${missed} in ${gaps} gaps`);
  assert.equal(client.state.kind, "connected", "the client stayed connected");
  client.close();
  proxy.close();
});

test("a server killed and restarted: epoch_changed, then the new server's events", async () => {
  const s = await server([]);
  const client = new Client(s.url, churn);
  const got = collector();
  await client.subscribe("orders", got.handler, { onGap: got.onGap }).ready;
  const gaps = [];
  client.on("gap", (g) => gaps.push(g));
  await s.publish("orders", { n: 1 });
  const seen = await got.next();
  await s.kill();
  const again = await server([], s.addr);
  const { gap } = await got.next();
  assert.equal(gap.reason, "epoch_changed");
  assert.equal(gap.after, seen.event.offset);
  await again.publish("orders", { n: 2 });
  assert.equal((await got.next()).n, 2);
  assert.deepEqual(gaps, [gap]);
  client.close();
});

test("async handlers: one event at a time, in order; past maxQueued a slow_handler gap", async () => {
  const s = await server([]);
  const client = new Client(s.url, { ...quick, maxQueued: 5 });
  const slow = [];
  const errors = [];
  client.on("slow", (value) => slow.push(value));
  client.on("error", (e) => errors.push(e.code));
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  let running = 0;
  const got = collector();
  await client.subscribe(
    "orders",
    async (event) => {
      running += 1;
      assert.equal(running, 1, "one handler call at a time");
      if (event.data.n === 1) await gate;
      if (event.data.n === 3) {
        running -= 1;
        throw new Error("a failing handler");
      }
      await sleep(1);
      running -= 1;
      got.handler(event);
    },
    { onGap: got.onGap },
  ).ready;
  for (let n = 1; n <= 20; n++) await s.publish("orders", { n });
  await sleep(200); // everything has arrived; the handler still waits on event 1
  assert.deepEqual(slow, [{ channel: "orders" }]);
  release();
  // 1 and the five queued (3 failed), then nothing until the next event brings the gap.
  let sixth;
  for (const n of [1, 2, 4, 5, 6]) {
    sixth = await got.next();
    assert.equal(number(sixth), n);
  }
  await s.publish("orders", { n: 21 });
  const { gap } = await got.next();
  const next21 = await got.next();
  assert.equal(number(next21), 21);
  assert.deepEqual(gap, { channel: "orders", reason: "slow_handler", after: sixth.event.offset, before: next21.event.offset });
  assert.deepEqual(errors, ["handler_failed"]);
  client.close();
});

test("keep-alive: pings keep a quiet connection; a dead link is left after deadAfter", async () => {
  const s = await server(["--history-size", "100"]);
  const proxy = await startProxy(s.port);
  const client = new Client(proxy.url, { ...churn, pingAfter: 200, deadAfter: 700 });
  const states = [];
  client.on("state", (st) => states.push(st));
  const got = collector();
  await client.subscribe("orders", got.handler, { onGap: got.onGap }).ready;
  const id = client.state.clientId;

  // Quiet (no event, heartbeats every 30 s): the pongs to the client's pings keep it.
  await sleep(2000);
  assert.equal(client.state.kind, "connected");
  assert.equal(client.state.clientId, id, `one connection: ${JSON.stringify(states)}`);

  // The link goes dead without a close: given up after deadAfter, then resumed.
  proxy.freeze();
  const lost = await next(client, "state", (st) => st.kind === "reconnecting", 5000);
  assert.match(lost.reason, /no message from the server/);
  for (let n = 1; n <= 5; n++) await s.publish("orders", { n });
  proxy.restore();
  for (let n = 1; n <= 5; n++) assert.equal(number(await got.next()), n);
  assert.notEqual(client.state.clientId, id);
  client.close();
  proxy.close();
});

test("tokens: refreshed before they expire on one connection, and after 4004", async () => {
  const s = await server(["--auth-jwt-secret", SECRET, "--auth-leeway", "0s"]);
  let issued = 0;
  const client = new Client(s.url, {
    ...quick,
    token: token("alice", -60), // expired: the server closes with 4004
    getToken: async () => {
      issued += 1;
      return token("alice", 3);
    },
  });
  const got = collector();
  await client.subscribe("orders.x", got.handler).ready;
  assert.equal(client.state.kind, "connected");
  const id = client.state.clientId;
  assert.equal(issued, 1);
  for (let n = 1; n <= 6; n++) {
    await sleep(1000);
    await s.publish("orders.x", { n });
    assert.equal((await got.next()).n, n);
  }
  assert.ok(issued >= 3, `refreshed ${issued} times`);
  assert.equal(client.state.clientId, id, "one connection throughout");
  client.close();
});

test("an invalid token (4003) closes the client for good", async () => {
  const s = await server(["--auth-jwt-secret", SECRET]);
  const client = new Client(s.url, { ...quick, token: "not-a-jwt" });
  await assert.rejects(client.ready(), (e) => e.code === "closed" && e.message.includes("4003"));
});

test("Retry-After is honoured where the WebSocket shows it (the ws package)", async () => {
  const s = await startServer(["--connection-rate-per-ip", "30", "--connection-burst-per-ip", "1"]);
  servers.push(s);
  const proxy = await startProxy(s.port);
  const client = new Client(proxy.url, { ...quick, WebSocket: WS });
  const states = [];
  client.on("state", (st) => states.push(st));
  await client.ready();
  proxy.cut();
  proxy.restore();
  await next(client, "state", (st) => st.kind === "reconnecting" && st.reason.includes("429"));
  await next(client, "state", (st) => st.kind === "connected");
  const refused = states.filter((st) => st.kind === "reconnecting" && st.reason.includes("429"));
  assert.equal(refused.length, 1, JSON.stringify(states));
  assert.ok(refused[0].delay >= 1000, JSON.stringify(refused));
  const stats = await s.stats();
  assert.equal(stats.refused.connection_rate_exceeded, 1);
  client.close();
  proxy.close();
});

test("a stopped cluster node is replaced by another, without loss", async () => {
  const { startNats } = await import("./nats.mjs");
  const nats = await startNats();
  try {
    const node = (name) =>
      server(["--cluster-nats-url", nats.url, "--cluster-node-name", name, "--history-size", "1000"]);
    const a = await node("a");
    const b = await node("b");
    const client = new Client(a.url, { ...churn, fallbackUrls: [b.url] });
    const got = collector();
    await client.subscribe("orders", got.handler, { onGap: got.onGap }).ready;
    assert.equal(client.state.url, a.url);
    const EVENTS = 200;
    const publisher = (async () => {
      for (let n = 1; n <= EVENTS; n++) {
        await publishAt(b.addr, { type: "orders", data: { n } });
        await sleep(3);
      }
    })();
    for (let n = 1; n <= EVENTS / 4; n++) assert.equal(number(await got.next()), n);
    await a.kill();
    for (let n = EVENTS / 4 + 1; n <= EVENTS; n++) assert.equal(number(await got.next()), n);
    await publisher;
    assert.equal(client.state.url, b.url);
    client.close();
  } finally {
    await nats.stop();
  }
});

test("presence lists who is subscribed, and a channel without it is refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sigmahub-js-presence-"));
  const config = join(dir, "presence.toml");
  writeFileSync(config, '[[channels]]\npattern = "room.*"\npresence = true\n');
  const s = await server(["--auth-jwt-secret", SECRET, "--config", config]);
  const alice = new Client(s.url, { ...quick, token: token("alice", 3600) });
  const bob = new Client(s.url, { ...quick, token: token("bob", 3600) });
  await alice.subscribe("room.blue", () => {}).ready;
  await bob.subscribe("room.blue", () => {}).ready;
  const presence = await alice.presence("room.blue");
  assert.equal(presence.channel, "room.blue");
  assert.equal(presence.count, 2);
  assert.equal(presence.nodes, 1);
  assert.deepEqual(presence.members.map((m) => m.user).sort(), ["alice", "bob"]);
  await assert.rejects(bob.presence("orders.x"), (e) => e instanceof SigmahubError && e.code === "no_presence");
  alice.close();
  bob.close();
  rmSync(dir, { recursive: true, force: true });
});
