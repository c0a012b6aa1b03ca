// Runs the SigmaVault protocol's own JavaScript client (seed 000, "Client Implementation
// Guide": the SigmaVaultWebSocket class, its TypeScript types removed, nothing else changed
// but what its "update" hook does with the data) in headless Chromium against sigmahub
// polling an engine, and checks what a SigmaVault frontend reads from system.status:
// `memory_pct`, `load_average[0]` and `new Date(data.timestamp * 1000)`.
//
// Usage: node seed_client.mjs <server base URL>
// Exits 0 on success; on failure prints why and exits 1.
import { chromium } from "playwright-core";

const [base] = process.argv.slice(2);
if (!base) {
  console.error("usage: node seed_client.mjs <base URL>");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failure = null;
try {
  const page = await browser.newPage();
  const response = await page.goto(base, { waitUntil: "load" });
  if (response.status() !== 200) throw new Error(`the page: status ${response.status()}`);
  const seen = await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        // Seed 000's class, as printed there (types removed).
        class SigmaVaultWebSocket {
          ws;
          reconnectAttempts = 0;
          maxReconnectAttempts = 10;

          connect(url = "ws://localhost:12080/ws") {
            this.ws = new WebSocket(url);

            this.ws.onopen = () => {
              console.log("Connected to SigmaVault");
              this.reconnectAttempts = 0;
            };

            this.ws.onmessage = (event) => {
              const msg = JSON.parse(event.data);
              this.handleEvent(msg);
            };

            this.ws.onclose = () => {
              this.attemptReconnect();
            };
          }

          handleEvent(event) {
            switch (event.type) {
              case "system.status":
                if (event.data.stale) {
                  console.warn("Serving stale data:", event.data.error_code);
                }
                this.updateSystemStatus(event.data);
                break;
              case "rpc_error":
                console.error("RPC Error:", event.data);
                break;
              // ... handle other event types
            }
          }

          subscribe(events) {
            this.ws.send(JSON.stringify({ type: "subscribe", data: { events } }));
          }

          unsubscribe(events) {
            this.ws.send(JSON.stringify({ type: "unsubscribe", data: { events } }));
          }
        }

        // What a dashboard does with it.
        const client = new SigmaVaultWebSocket();
        client.attemptReconnect = () => reject(new Error("the socket closed"));
        client.updateSystemStatus = (data) => {
          client.ws.onclose = null;
          client.ws.close();
          const when = new Date(data.timestamp * 1000);
          const valid = !Number.isNaN(when.getTime());
          resolve({
            memory_pct: data.memory_pct,
            load1: data.load_average ? data.load_average[0] : undefined,
            valid_date: valid,
            date: valid ? when.toISOString() : String(when),
          });
        };
        setTimeout(() => reject(new Error("no system.status within 20 s")), 20_000);
        client.connect(url);
      }).catch((e) => ({ error: e.message })),
    base.replace(/^http/, "ws").replace(/\/$/, "") + "/ws",
  );
  console.log(JSON.stringify(seen));
  if (seen.error) throw new Error(seen.error);
  if (typeof seen.memory_pct !== "number") throw new Error(`memory_pct is ${seen.memory_pct}`);
  if (typeof seen.load1 !== "number") throw new Error(`load_average[0] is ${seen.load1}`);
  if (!seen.valid_date) throw new Error("new Date(data.timestamp * 1000) is not a date");
  if (!seen.date.startsWith("2026-12-01T06:51:12")) throw new Error(`the date is ${seen.date}`);
  console.log("ok: the seed's client reads memory_pct, load_average[0] and a valid date");
} catch (e) {
  failure = e;
} finally {
  await browser.close();
}
if (failure) {
  console.error(`FAILED: ${failure.message}`);
  process.exit(1);
}
