// A logged-in user's browser: headless Chromium holding a session cookie for the server's
// host opens a WebSocket to /ws from the server's own page. Chromium sends the cookie with
// the upgrade by itself (nothing in the page mentions it), as it would for a frontend that
// knows nothing of tokens. Prints what the socket read, up to the welcome or the close, as
// one JSON line.
//
// Usage: node cookie_client.mjs <server base URL> <cookie name> <cookie value>
// Exits 0 once the socket was welcomed or closed; on any other failure prints why, exits 1.
import { chromium } from "playwright-core";

const [base, name, value] = process.argv.slice(2);
if (!base || !name || value === undefined) {
  console.error("usage: node cookie_client.mjs <base URL> <cookie name> <cookie value>");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failure = null;
try {
  const context = await browser.newContext();
  await context.addCookies([{ name, value, url: base }]);
  const page = await context.newPage();
  const response = await page.goto(base, { waitUntil: "load" });
  if (response.status() !== 200) throw new Error(`the page: status ${response.status()}`);
  const socket = new URL("/ws", base);
  socket.protocol = "ws:";
  const seen = await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const seen = [];
        const ws = new WebSocket(url);
        ws.onmessage = (event) => {
          const message = JSON.parse(event.data);
          seen.push(message);
          if (message.type === "notification") {
            ws.close();
            resolve(seen);
          }
        };
        ws.onclose = (event) => resolve(seen.concat([{ closed: event.code }]));
        setTimeout(() => reject(new Error(`nothing decisive in 10 s: ${JSON.stringify(seen)}`)), 10000);
      }),
    socket.href,
  );
  console.log(JSON.stringify(seen));
} catch (e) {
  failure = e;
} finally {
  await browser.close();
}
if (failure) {
  console.error(failure.stack || String(failure));
  process.exit(1);
}
