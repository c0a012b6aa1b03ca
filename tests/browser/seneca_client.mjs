// Runs Seneca's Vue.js frontend client (seed 002, "Client-Side Implementation": the
// WebSocketClient class, its io(...) options unchanged) in headless Chromium against
// sigmahub's /socket.io/, with the real socket.io-client browser bundle
// (tests/socketio/node_modules/socket.io-client/dist/socket.io.min.js). What the seed
// imports and leaves undefined is supplied around it, not changed in it: `io` is the
// bundle's global, `useWorkflowStore()` is a Pinia-like store that records what the class
// hands it, and animateChange/showNotification/showAlert (called by the class, never
// defined in the seed) record their calls.
//
// Usage: node seneca_client.mjs <server base URL>
// Publishes agent_update, project_update and health_update over HTTP once the class has
// connected, and checks that its handlers handed each event's data to the store.
// Exits 0 on success; on failure prints why and exits 1.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const [base] = process.argv.slice(2);
if (!base) {
  console.error("usage: node seneca_client.mjs <base URL>");
  process.exit(2);
}
const bundle = fileURLToPath(
  new URL("../socketio/node_modules/socket.io-client/dist/socket.io.min.js", import.meta.url),
);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failure = null;
try {
  const page = await browser.newPage();
  const response = await page.goto(base, { waitUntil: "load" });
  if (response.status() !== 200) throw new Error(`the page: status ${response.status()}`);
  // The page's CSP refuses inline scripts; evaluating is the page's own code running.
  await page.evaluate(readFileSync(bundle, "utf8"));
  await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        // What the seed imports: the store its component would get from Pinia.
        const seen = (window.seen = { store: [], ui: [] });
        const useWorkflowStore = () => ({
          updateAgent: (data) => seen.store.push(["agent", data]),
          updateProject: (data) => seen.store.push(["project", data]),
          updateSystemHealth: (data) => seen.store.push(["health", data]),
        });

        // Seed 002's class, as printed there.
        class WebSocketClient {
          constructor() {
            this.socket = null
            this.reconnectAttempts = 0
            this.maxReconnectAttempts = 5
            this.workflowStore = useWorkflowStore()
          }

          connect() {
            this.socket = io('http://localhost:8000', {
              transports: ['websocket'],
              timeout: 20000
            })

            this.setupEventHandlers()
          }

          setupEventHandlers() {
            // Connection events
            this.socket.on('connect', () => {
              console.log('Connected to Seneca server')
              this.reconnectAttempts = 0
            })

            // Agent updates
            this.socket.on('agent_update', (event) => {
              this.workflowStore.updateAgent(event.data)
              this.animateChange('agent', event.data.agent_id)
            })

            // Project updates
            this.socket.on('project_update', (event) => {
              this.workflowStore.updateProject(event.data)
              this.showNotification('Project status changed')
            })

            // System health updates
            this.socket.on('health_update', (event) => {
              this.workflowStore.updateSystemHealth(event.data)
              if (event.data.severity === 'critical') {
                this.showAlert(event.data.message)
              }
            })
          }
        }

        // The seed's URL is its own server's; the test's server is elsewhere.
        const realIo = io;
        window.io = (_seedUrl, options) => realIo(url, options);
        // Called by the class, defined nowhere in the seed.
        WebSocketClient.prototype.animateChange = (kind, id) => seen.ui.push(["animate", kind, id]);
        WebSocketClient.prototype.showNotification = (text) => seen.ui.push(["notify", text]);
        WebSocketClient.prototype.showAlert = (text) => seen.ui.push(["alert", text]);

        const client = (window.client = new WebSocketClient());
        client.connect();
        client.socket.on('connect', () => resolve(client.socket.io.engine.transport.name));
        client.socket.on('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
        setTimeout(() => reject(new Error("not connected within 20 s")), 20_000);
      }),
    base.replace(/\/$/, ""),
  );

  const events = [
    { type: "agent_update", data: { agent_id: "agent-7", status: "working", change_type: "started" } },
    { type: "project_update", data: { project_id: "p-1", status: "blocked" } },
    { type: "health_update", data: { severity: "critical", message: "disk almost full" } },
  ];
  const published = await fetch(base.replace(/\/$/, "") + "/api/v1/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(events),
  });
  const reply = await published.json();
  // The dashboard page itself is a subscriber too: at least our client and it.
  if (reply.accepted !== 3 || reply.delivered < 3) throw new Error(`publish: ${JSON.stringify(reply)}`);

  const seen = await page.evaluate(
    () =>
      new Promise((resolve) => {
        const check = () =>
          window.seen.store.length >= 3 ? resolve(window.seen) : setTimeout(check, 20);
        check();
        setTimeout(() => resolve(window.seen), 20_000);
      }),
  );
  console.log(JSON.stringify(seen));
  const expect = [
    ["agent", events[0].data],
    ["project", events[1].data],
    ["health", events[2].data],
  ];
  if (JSON.stringify(seen.store) !== JSON.stringify(expect)) {
    throw new Error(`the store got ${JSON.stringify(seen.store)}`);
  }
  const ui = JSON.stringify(seen.ui);
  if (ui !== JSON.stringify([["animate", "agent", "agent-7"], ["notify", "Project status changed"], ["alert", "disk almost full"]])) {
    throw new Error(`the UI hooks got ${ui}`);
  }
  console.log("ok: seed 002's WebSocketClient received agent_update, project_update and health_update");
} catch (e) {
  failure = e;
} finally {
  await browser.close();
}
if (failure) {
  console.error(`FAILED: ${failure.message}`);
  process.exit(1);
}
