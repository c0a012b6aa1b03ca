// Drives sigmahub's dashboard in headless Chromium: the page loads, its WebSocket connects,
// the connection tile shows the expected count, the channel tail shows an event published
// through the HTTP API, the charts and the latest system.status are drawn, and the page
// logs no error. Saves a screenshot.
//
// Usage: node dashboard.mjs <server base URL> <expected connections> <screenshot path>
// Exits 0 on success; on failure prints why (and still saves a screenshot) and exits 1.
import { chromium } from "playwright-core";

const [base, expected, screenshot] = process.argv.slice(2);
if (!base || !expected || !screenshot) {
  console.error("usage: node dashboard.mjs <base URL> <expected connections> <screenshot>");
  process.exit(2);
}
const STEP_MS = 20_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("response", (r) => {
  if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`);
});
page.on("console", (m) => {
  if (m.type() === "error") problems.push(`console error: ${m.text()}`);
});

async function step(what, action) {
  try {
    await action();
    console.log(`ok: ${what}`);
  } catch (e) {
    throw new Error(`${what}: ${e.message.split("\n")[0]}`);
  }
}

const text = (id) => page.locator(`#${id}`).textContent();
let failure = null;
try {
  await step("the page loads", async () => {
    const response = await page.goto(base, { waitUntil: "load" });
    if (response.status() !== 200) throw new Error(`status ${response.status()}`);
    if ((await page.title()) !== "sigmahub") throw new Error(`title ${await page.title()}`);
  });
  await step("its WebSocket connects", () =>
    page.waitForSelector('#socket-state[data-state="open"]', { timeout: STEP_MS }),
  );
  await step("the stats load", () =>
    page.waitForSelector('#api-state[data-state="open"]', { timeout: STEP_MS }),
  );
  await step(`it shows ${expected} connections`, () =>
    page.waitForFunction(
      (n) => document.getElementById("connections").textContent === n,
      expected,
      { timeout: STEP_MS },
    ),
  );

  const channel = "dashboard.check";
  await step(`it watches ${channel}`, async () => {
    await page.fill("#tail-channel", channel);
    await page.click("#tail-form button");
    await page.waitForFunction(
      (c) => document.getElementById("tail-state").textContent === `watching ${c}`,
      channel,
      { timeout: STEP_MS },
    );
  });

  const marker = `published-${process.pid}-${Date.now()}`;
  await step("an event published through the HTTP API shows in the tail", async () => {
    const response = await fetch(new URL("/api/v1/publish", base), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: channel, data: { marker } }),
    });
    const body = await response.json();
    if (!response.ok || body.delivered !== 1) {
      throw new Error(`publish answered ${response.status} ${JSON.stringify(body)}`);
    }
    await page.waitForFunction(
      (m) => document.getElementById("tail").textContent.includes(m),
      marker,
      { timeout: STEP_MS },
    );
  });

  await step("the channel table lists it with one subscriber", () =>
    page.waitForFunction(
      (c) =>
        [...document.querySelectorAll("#channels tbody tr")].some(
          (tr) => tr.cells[0].textContent === c && tr.cells[1].textContent === "1",
        ),
      channel,
      { timeout: STEP_MS },
    ),
  );
  await step("the charts are drawn", async () => {
    await page.waitForSelector("#chart-connections canvas", { timeout: STEP_MS });
    await page.waitForSelector("#chart-messages canvas", { timeout: STEP_MS });
  });
  await step("the latest system.status is shown", () =>
    page.waitForFunction(
      () => document.getElementById("system-status").textContent.includes('"hostname"'),
      null,
      { timeout: STEP_MS },
    ),
  );
  await step("the snapshot table shows system.status", () =>
    page.waitForFunction(
      () =>
        [...document.querySelectorAll("#snapshots tbody tr")].some(
          (tr) => tr.cells[0].textContent === "system.status",
        ),
      null,
      { timeout: STEP_MS },
    ),
  );
  console.log(`connections tile: ${await text("connections")}`);
  if (problems.length > 0) throw new Error(problems.join("; "));
} catch (e) {
  failure = e;
} finally {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  await browser.close();
}
if (failure) {
  console.error(`FAILED: ${failure.message}`);
  process.exit(1);
}
console.log(`screenshot: ${screenshot}`);
