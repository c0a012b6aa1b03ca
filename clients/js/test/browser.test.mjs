// The TypeScript client's browser build in headless Chromium, against the real sigmahub
// binary: the page (test/page/index.html) is an application served from its own origin that
// loads dist/sigmahub-client.min.js, as a web application would. The same scenarios as
// client.test.mjs where a browser differs (its own WebSocket, offline/online), the seed-000
// event types, and how many events one tab consumes (printed; no timing is asserted).
//
// Needs Debian's chromium (`tests/browser/setup.sh` or `apt-get install chromium`; the path
// can be set with CHROMIUM) and playwright-core (a dev dependency).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http from "node:http";
import { once } from "node:events";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { publishAt, publishSteadily, SECRET, sleep, startProxy, startServer, token } from "./harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const servers = [];
let app;
let browser;

async function server(args, listen) {
  const s = await startServer(args, listen);
  servers.push(s);
  return s;
}

/** The application's origin: its page and the client's browser build, nothing else. */
async function serveApp() {
  const files = {
    "/": ["page/index.html", "text/html; charset=utf-8"],
    "/sigmahub-client.min.js": ["../dist/sigmahub-client.min.js", "text/javascript"],
  };
  const httpServer = http.createServer(async (request, response) => {
    const file = files[request.url];
    if (!file) return response.writeHead(404).end();
    const body = await readFile(path.join(here, file[0]));
    response.writeHead(200, { "content-type": file[1], "cache-control": "no-store" }).end(body);
  });
  httpServer.listen(0, "127.0.0.1");
  await once(httpServer, "listening");
  return { url: `http://127.0.0.1:${httpServer.address().port}/`, close: () => httpServer.close() };
}

/** A fresh tab with the application loaded; tokens for `refresh` clients come from here. */
async function tab() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.exposeFunction("freshToken", () => token("alice", 3));
  await page.goto(app.url);
  await page.waitForFunction(() => window.appReady === true, null, { timeout: 10_000 });
  page.logs = logs;
  return page;
}

/** Waits until the page's `name` client holds `count` items on `channel`. */
async function items(page, name, channel, count, timeout = 20_000) {
  try {
    await page.waitForFunction(([n, c, k]) => window.app.count(n, c) >= k, [name, channel, count], {
      timeout,
      polling: 50,
    });
  } catch (e) {
    const got = await page.evaluate(([n, c]) => window.app.items(n, c), [name, channel]);
    const record = await page.evaluate((n) => window.app.record(n), name);
    throw new Error(`${channel}: ${got.length} of ${count} items: ${JSON.stringify(got.slice(-5))} ${JSON.stringify(record)} ${page.logs.join("\n")}`);
  }
  return page.evaluate(([n, c]) => window.app.items(n, c), [name, channel]);
}

/** The events' numbers; a gap fails with what it was. */
function numbers(list) {
  return list.map((item) => {
    assert.ok(item.gap === undefined, `a gap: ${JSON.stringify(item.gap)}`);
    return item.n;
  });
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

before(async () => {
  app = await serveApp();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  app?.close();
  for (const s of servers) await s.kill();
});

test("Chromium: the SigmaVault events, publish with an ack, refusals", async () => {
  const s = await server(["--auth-jwt-secret", SECRET, "--host-status-interval", "1s"]);
  const page = await tab();
  await page.evaluate(([url, t]) => window.app.open("a", url, { token: t }), [s.url, token("alice", 3600)]);
  for (const channel of ["system.status", "compression.update", "agent.status", "orders.alice"]) {
    assert.deepEqual(await page.evaluate(([c]) => window.app.subscribe("a", c), [channel]), { ok: true });
  }

  // The host's own system.status, read as a SigmaVault frontend reads it.
  const [status] = await items(page, "a", "system.status", 1);
  assert.equal(typeof status.data.cpu_usage, "number");
  assert.equal(typeof status.data.memory_pct, "number");
  assert.equal(status.data.load_average.length, 3);
  assert.ok(Math.abs(status.data.timestamp - Date.now() / 1000) < 60, "timestamp in Unix seconds");

  // Seed 000's shapes, published by a service, arrive whole.
  const job = {
    job_id: "job-1", status: "running", job_type: "compress", priority: 5, progress: 0.42,
    phase: "encoding", bytes_processed: 420, bytes_total: 1000, compression_ratio: 2.5,
    elapsed_seconds: 12, eta_seconds: 17, input_path: "/in", output_path: "/out", timestamp: 1700000000,
  };
  const agent = { agent_id: "agent-7", status: "busy", current_task: null, memory_usage: 512, timestamp: 1700000000 };
  await s.publish("compression.update", job);
  await s.publish("agent.status", agent);
  assert.deepEqual((await items(page, "a", "compression.update", 1))[0].data, job);
  assert.deepEqual((await items(page, "a", "agent.status", 1))[0].data, agent);

  // A publish from the tab, acknowledged, and delivered back to it.
  const published = await page.evaluate(() => window.app.publish("a", "orders.alice", { n: 2 }));
  assert.equal(published.ack.accepted, 1);
  assert.equal(published.ack.delivered, 1);
  assert.deepEqual(numbers(await items(page, "a", "orders.alice", 1)), [2]);

  // What the token does not allow, and a bad name, are refused with the server's codes.
  assert.deepEqual(await page.evaluate(() => window.app.publish("a", "billing", {})), { code: "forbidden" });
  assert.deepEqual(await page.evaluate(() => window.app.subscribe("a", "bad name")), {
    ok: false,
    code: "invalid_channel",
  });
  await page.context().close();
});

test("Chromium: cut connections resume without loss, repetition or reordering", async () => {
  const s = await server(["--default-subscriptions", "notification", "--history-size", "2000"]);
  const proxy = await startProxy(s.port);
  const page = await tab();
  await page.evaluate((url) => window.app.open("a", url), proxy.url);
  await page.evaluate(() => Promise.all([window.app.subscribe("a", "orders"), window.app.subscribe("a", "notification")]));
  const EVENTS = 300;
  const publisher = publishSteadily(s, ["orders", "notification"], EVENTS);
  for (let cut = 1; cut <= 4; cut++) {
    await page.waitForFunction((k) => window.app.record("a").ids.length >= k, cut, { timeout: 20_000 });
    await sleep(150);
    proxy.cut();
    await sleep(50);
    proxy.restore();
  }
  await publisher;
  assert.deepEqual(numbers(await items(page, "a", "orders", EVENTS)), range(1, EVENTS));
  assert.deepEqual(numbers(await items(page, "a", "notification", EVENTS)), range(1, EVENTS));
  const record = await page.evaluate(() => window.app.record("a"));
  assert.ok(record.ids.length >= 5, `reconnected ${record.ids.length - 1} times: ${JSON.stringify(record.states)}`);
  await page.context().close();
  proxy.close();
});

test("Chromium: a gap beyond the history, then a killed and restarted server", async () => {
  const s = await server(["--history-size", "3"]);
  const proxy = await startProxy(s.port);
  const page = await tab();
  await page.evaluate((url) => window.app.open("a", url), proxy.url);
  await page.evaluate(() => window.app.subscribe("a", "orders"));
  await s.publish("orders", { n: 1 });
  const [first] = await items(page, "a", "orders", 1);

  proxy.cut();
  await page.waitForFunction(() => window.app.record("a").state !== "connected", null, { timeout: 20_000 });
  for (let n = 2; n <= 10; n++) await s.publish("orders", { n });
  proxy.restore();
  const got = await items(page, "a", "orders", 5);
  const { gap } = got[1];
  assert.equal(gap.reason, "history_truncated");
  assert.equal(gap.after, first.offset);
  assert.equal(gap.before, got[2].offset);
  assert.deepEqual(numbers(got.slice(2)), [8, 9, 10]);

  // kill -9 and a new server on the same port: the history is gone with the epoch.
  await s.kill();
  const again = await server(["--history-size", "3"], s.addr);
  const after = await items(page, "a", "orders", 6);
  assert.equal(after[5].gap.reason, "epoch_changed");
  assert.equal(after[5].gap.after, got[4].offset);
  await again.publish("orders", { n: 11 });
  assert.deepEqual(numbers((await items(page, "a", "orders", 7)).slice(6)), [11]);
  const record = await page.evaluate(() => window.app.record("a"));
  assert.deepEqual(record.gaps.map((g) => g.reason), ["history_truncated", "epoch_changed"]);
  await page.context().close();
  proxy.close();
});

test("Chromium: tokens are refreshed before they expire, on one connection", async () => {
  const s = await server(["--auth-jwt-secret", SECRET, "--auth-leeway", "0s"]);
  const page = await tab();
  // No initial token: the first comes from getToken too (3-second tokens, from the test).
  await page.evaluate((url) => window.app.open("a", url, { refresh: true }), s.url);
  await page.evaluate(() => window.app.subscribe("a", "orders.x"));
  for (let n = 1; n <= 6; n++) {
    await sleep(1000);
    await s.publish("orders.x", { n });
    await items(page, "a", "orders.x", n);
  }
  assert.deepEqual(numbers(await items(page, "a", "orders.x", 6)), range(1, 6));
  const record = await page.evaluate(() => window.app.record("a"));
  assert.equal(record.ids.length, 1, `one connection throughout: ${JSON.stringify(record.states)}`);
  assert.deepEqual(record.errors, []);
  await page.context().close();
});

test("Chromium: offline drops the connection, online resumes where it stopped", async () => {
  const s = await server(["--history-size", "100"]);
  const page = await tab();
  await page.evaluate((url) => window.app.open("a", url), s.url);
  await page.evaluate(() => window.app.subscribe("a", "orders"));
  await s.publish("orders", { n: 1 });
  await items(page, "a", "orders", 1);

  await page.context().setOffline(true);
  await page.waitForFunction(() => window.app.record("a").state !== "connected", null, { timeout: 10_000 });
  for (let n = 2; n <= 20; n++) await s.publish("orders", { n });
  await sleep(300);
  assert.equal(await page.evaluate(() => window.app.count("a", "orders")), 1, "nothing while offline");
  await page.context().setOffline(false);

  assert.deepEqual(numbers(await items(page, "a", "orders", 20)), range(1, 20));
  const record = await page.evaluate(() => window.app.record("a"));
  assert.ok(record.states.some((st) => st.includes("offline")), JSON.stringify(record.states));
  assert.equal(record.ids.length, 2);
  await page.context().close();
});

/**
 * One tab receives `total` events on one channel, published as fast as the server takes
 * them (sequential batches, so in order); the tab is the slower end. Returns the rate, and
 * the page's main-thread time per event in script and in all (Chromium's own counters).
 */
async function consume(s, page, mode, total) {
  const channel = `bench.${mode}`;
  await page.evaluate(() => (window.benchReady = false));
  const done = page.evaluate(([url, c, t, m]) => window.app.bench(url, c, t, m), [s.url, channel, total, mode]);
  await page.waitForFunction(() => window.benchReady === true, null, { timeout: 10_000 });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  // Chromium's counters for the page's main thread: time in script, and in all tasks.
  const busy = async () => {
    const { metrics } = await cdp.send("Performance.getMetrics");
    const value = (name) => metrics.find((m) => m.name === name).value;
    return { script: value("ScriptDuration"), task: value("TaskDuration") };
  };
  const before = await busy();
  const BATCH = 1000;
  const started = performance.now();
  for (let n = 1; n <= total; n += BATCH) {
    const batch = range(n, Math.min(n + BATCH - 1, total)).map((k) => ({
      type: channel,
      data: { n: k, agent_id: "agent-7", status: "busy", memory_usage: 512, timestamp: 1700000000 },
    }));
    await publishAt(s.addr, batch);
  }
  const publishedIn = performance.now() - started;
  const result = await done;
  const spent = await busy();
  await cdp.detach();
  assert.equal(result.seen, total);
  assert.ok(result.inOrder, `${mode}: out of order`);
  return {
    mode,
    events: total,
    perSecond: Math.round(total / (result.ms / 1000)),
    // When this is close to the receiving time, the publisher set the pace, not the tab.
    publishedPerSecond: Math.round(total / (publishedIn / 1000)),
    scriptMicrosPerEvent: Number((((spent.script - before.script) * 1e6) / total).toFixed(2)),
    mainThreadMicrosPerEvent: Number((((spent.task - before.task) * 1e6) / total).toFixed(2)),
  };
}

test("Chromium: events one tab consumes, through the client and through a bare WebSocket", async () => {
  const total = Number(process.env.BROWSER_BENCH_EVENTS ?? 20_000);
  const s = await server([
    "--default-subscriptions", "heartbeat",
    "--client-queue-capacity", "1048576",
    "--client-queue-bytes", String(1 << 30),
    "--history-size", "16",
  ]);
  const page = await tab();
  const figures = [];
  for (const mode of ["raw", "client", "raw", "client"]) figures.push(await consume(s, page, mode, total));
  // A figure, not a target: printed for the closing note and perf/README.md.
  console.log(`# browser consumption: ${JSON.stringify(figures)}`);
  await page.context().close();
});
