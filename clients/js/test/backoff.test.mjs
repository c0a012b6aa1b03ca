// Backoff timings with fake timers (node:test's mock.timers), not sleeps: a WebSocket
// whose every attempt fails at once, and the clock moved by hand.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ceiling, Client, delay } from "../dist/index.js";

const backoff = { min: 100, max: 1_000, factor: 2 };

test("the ceiling grows by the factor up to the maximum; the delay lies between the minimum and it", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((n) => ceiling(backoff, n)),
    [100, 200, 400, 800, 1_000, 1_000],
  );
  assert.equal(ceiling(backoff, 10_000), 1_000);
  assert.equal(delay(backoff, 3, () => 0), 100);
  assert.equal(delay(backoff, 3, () => 0.999999), 100 + 700 * 0.999999);
});

test("attempts are spaced by the jittered backoff, on the clock", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const attempts = [];
  let now = 0;
  class Failing {
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor(url) {
      attempts.push({ url, at: now });
      // The connection is refused at once (a microtask: no timer involved).
      queueMicrotask(() => this.onclose?.({ code: 1006, reason: "" }));
    }
    send() {}
    close() {}
  }
  const draws = [0.5, 0.25, 1, 0, 0.5, 0.5];
  const client = new Client(["ws://a/ws", "ws://b/ws"], {
    WebSocket: Failing,
    backoff,
    random: () => draws.shift() ?? 0.5,
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  const advance = async (ms) => {
    now += ms;
    t.mock.timers.tick(ms);
    await new Promise((resolve) => setImmediate(resolve));
  };
  // Expected waits: min + (ceiling(attempt) - min) * draw.
  const expected = [100 + 0 * 0.5, 100 + 100 * 0.25, 100 + 300 * 1, 100 + 700 * 0, 100 + 900 * 0.5];
  return (async () => {
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(attempts.length, 1);
    for (const [i, wait] of expected.entries()) {
      await advance(wait - 1);
      assert.equal(attempts.length, i + 1, `attempt ${i + 2} not before ${wait} ms`);
      await advance(1);
      assert.equal(attempts.length, i + 2, `attempt ${i + 2} after ${wait} ms`);
      assert.equal(attempts[i + 1].at - attempts[i].at, wait);
    }
    // Failed attempts move to the next server and back.
    assert.deepEqual(
      attempts.map((a) => a.url),
      ["ws://a/ws", "ws://b/ws", "ws://a/ws", "ws://b/ws", "ws://a/ws", "ws://b/ws"],
    );
    const delays = states.filter((s) => s.kind === "reconnecting").map((s) => s.delay);
    assert.deepEqual(delays.slice(0, expected.length), expected, "the waits the client reported");
    client.close();
  })();
});
