#!/usr/bin/env node
// `node-ws`: the usual Node broadcast server, for issue 17's compression comparison. The
// `ws` package with permessage-deflate on, as its README shows it: each message is
// compressed for each connection, in that connection's own deflate context (ws's default
// context takeover), by zlib on Node's thread pool. It speaks just enough of sigmahub's
// protocol for `sigmahub-perf`, as perf/src/bin/axum-baseline.rs does: `subscribe`
// (answered with `subscribe_response`) and `POST /api/v1/publish` with an event or an array
// of events, each serialized once into a string that every subscriber is sent.
//
// Usage: server.mjs --listen 127.0.0.1:12090 [--deflate on|off] [--threshold 128]
// (sigmahub-perf --spawn passes its admission flags too; they are ignored.)
import http from "node:http";
import { WebSocketServer } from "ws";

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 ? args[at + 1] : fallback;
};
const [host, port] = flag("listen", "127.0.0.1:12090").split(":");
const deflate = flag("deflate", "on") === "on";
const threshold = Number(flag("threshold", "128"));

/** Channel name → set of sockets. */
const channels = new Map();

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/api/v1/publish") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks));
    } catch {
      res.writeHead(400).end('{"success":false}');
      return;
    }
    let delivered = 0;
    for (const event of Array.isArray(body) ? body : [body]) {
      const sockets = channels.get(event.type);
      if (!sockets) continue;
      const frame = JSON.stringify({ type: event.type, timestamp: new Date().toISOString(), data: event.data });
      for (const ws of sockets) {
        ws.send(frame);
        delivered++;
      }
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ success: true, delivered }));
  });
});

const wss = new WebSocketServer({
  server,
  path: "/ws",
  perMessageDeflate: deflate ? { threshold } : false,
});
wss.on("connection", (ws) => {
  const mine = [];
  ws.on("message", (data) => {
    let request;
    try {
      request = JSON.parse(data);
    } catch {
      return;
    }
    if (request.type !== "subscribe") return;
    const names = request.data?.channels ?? request.data?.events ?? [];
    for (const name of names) {
      if (!channels.has(name)) channels.set(name, new Set());
      channels.get(name).add(ws);
      mine.push(name);
    }
    ws.send(JSON.stringify({ type: "subscribe_response", data: { success: true, subscribed: names } }));
  });
  ws.on("close", () => mine.forEach((name) => channels.get(name)?.delete(ws)));
  ws.on("error", () => {});
});

server.listen(Number(port), host);
