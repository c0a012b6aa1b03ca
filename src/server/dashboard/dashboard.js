// sigmahub's live dashboard: a plain client of the server's own APIs.
//
// - GET /api/v1/stats and /api/v1/stats/history every POLL_MS, for the tiles, the charts,
//   the channel table and the upstream state;
// - one WebSocket on /ws, for the latest system.status and the live tail of a channel.
//
// No build step and no framework: the server embeds this file as it is. Charts are uPlot,
// vendored under vendor/ (MIT). Everything shown is text set through textContent, never
// HTML, so event data cannot inject markup.
"use strict";

const POLL_MS = 2000;
const TAIL_MAX = 200;
const RECONNECT_MAX_MS = 30000;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("sigmahub.token") || "",
  apiKey: sessionStorage.getItem("sigmahub.apiKey") || "",
  socket: null,
  reconnectMs: 1000,
  tailChannel: null,
  charts: null,
  pollTimer: null,
  // The channels the welcome said we were subscribed to on connect.
  initial: new Set(),
};

// ---------------------------------------------------------------------------------------
// Formatting

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function rate(n) {
  return n >= 100 ? integer.format(n) : decimal.format(n);
}

function seconds(s) {
  if (s < 1) return `${integer.format(s * 1000)} ms`;
  if (s < 120) return `${decimal.format(s)} s`;
  if (s < 7200) return `${decimal.format(s / 60)} min`;
  return `${decimal.format(s / 3600)} h`;
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function setPill(id, pillState, text) {
  const el = $(id);
  el.dataset.state = pillState;
  el.textContent = text;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows.map(row));
}

// ---------------------------------------------------------------------------------------
// HTTP: stats and history

async function getJson(path) {
  const headers = state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reason = body.error ? body.error.code : response.statusText;
    throw new Error(`${response.status} ${reason}`);
  }
  return body;
}

async function poll() {
  try {
    const [stats, history] = await Promise.all([
      getJson("/api/v1/stats"),
      getJson("/api/v1/stats/history"),
    ]);
    showStats(stats);
    showHistory(history.samples);
    setPill("api-state", "open", "stats: live");
  } catch (e) {
    const hint = e.message.startsWith("401") ? " (set an API key)" : "";
    setPill("api-state", "closed", `stats: ${e.message}${hint}`);
  } finally {
    state.pollTimer = setTimeout(poll, POLL_MS);
  }
}

function showStats(stats) {
  const analytics = stats.analytics;
  const latency = stats.latency.publish_to_write;
  setText("connections", integer.format(stats.active_connections));
  setText("peak", integer.format(stats.peak_connections));
  setText("total", integer.format(stats.total_connections));
  setText("events-rate", rate(analytics.throughput.events_per_second));
  setText("frames-rate", rate(analytics.throughput.frames_sent_per_second));
  setText(
    "latency-p99",
    latency.observations === 0
      ? "–"
      : latency.p99_ms_at_most === null
        ? "> 10 s"
        : `≤ ${decimal.format(latency.p99_ms_at_most)} ms`,
  );
  setText("reconnect-rate", `${decimal.format(analytics.reconnection_rate * 100)} %`);
  setText(
    "avg-duration",
    analytics.connections_closed === 0 ? "–" : seconds(analytics.connection_duration_avg_seconds),
  );

  const channels = Object.entries(stats.channels).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  fillTable(
    "channels",
    channels.slice(0, 50).map(([name, n]) => [[name], [integer.format(n), "num"]]),
  );

  const breakers = Object.entries(stats.upstream.breakers);
  fillTable(
    "breakers",
    breakers.length === 0
      ? [[["no upstream engine configured"], [""], [""]]]
      : breakers.map(([method, b]) => [
          [method],
          [b.state, `state-${b.state}`],
          [String(b.consecutive_failures), "num"],
        ]),
  );

  const now = Date.now();
  const snapshots = Object.entries(stats.upstream.snapshots);
  fillTable(
    "snapshots",
    snapshots.map(([type, s]) => {
      const age = Math.max(0, (now - Date.parse(s.last_update)) / 1000);
      const label = s.stale ? `stale (${s.error_code})` : "fresh";
      return [[type], [label, s.stale ? "state-open" : "state-closed"], [seconds(age), "num"]];
    }),
  );
}

function showHistory(samples) {
  const time = samples.map((s) => s.time);
  const data = {
    connections: [time, samples.map((s) => s.connections)],
    messages: [
      time,
      samples.map((s) => s.events),
      samples.map((s) => s.frames_sent),
      samples.map((s) => s.messages_received),
    ],
  };
  if (!state.charts) state.charts = makeCharts();
  state.charts.connections.setData(data.connections);
  state.charts.messages.setData(data.messages);
}

function makeCharts() {
  const size = (el) => ({ width: el.clientWidth, height: 180 });
  const make = (id, series) => {
    const el = $(id);
    return new uPlot({ ...size(el), series: [{}, ...series], legend: { live: false } }, [[]], el);
  };
  const charts = {
    connections: make("chart-connections", [{ label: "open", stroke: "#2f7bd8", width: 2 }]),
    messages: make("chart-messages", [
      { label: "events", stroke: "#2f7bd8", width: 2 },
      { label: "frames sent", stroke: "#1c9a5a", width: 2 },
      { label: "received", stroke: "#c0392b", width: 1 },
    ]),
  };
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      chart.setSize(size($(`chart-${name}`)));
    }
  });
  return charts;
}

// ---------------------------------------------------------------------------------------
// WebSocket: system.status and the live tail

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
  return `${scheme}://${location.host}/ws${query}`;
}

function connect() {
  setPill("socket-state", "connecting", "connecting");
  const socket = new WebSocket(socketUrl());
  state.socket = socket;
  socket.onopen = () => {
    state.reconnectMs = 1000;
    setPill("socket-state", "open", "connected");
    if (state.tailChannel) send({ type: "subscribe", data: { channels: [state.tailChannel] } });
  };
  socket.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  };
  socket.onclose = (close) => {
    if (state.socket !== socket) return; // replaced on purpose
    const why = close.reason ? `${close.code} ${close.reason}` : String(close.code);
    setPill("socket-state", "closed", `disconnected (${why}); retrying`);
    setTimeout(connect, state.reconnectMs);
    state.reconnectMs = Math.min(state.reconnectMs * 2, RECONNECT_MAX_MS);
  };
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

function onEvent(event) {
  switch (event.type) {
    case "notification":
      if (Array.isArray(event.data.subscriptions) && event.data.client_id) {
        state.initial = new Set(event.data.subscriptions); // the welcome
      }
      break;
    case "system.status":
      $("system-status").textContent = JSON.stringify(event.data, null, 2);
      break;
    case "subscribe_response":
      showSubscription(event.data);
      break;
    case "auth_response":
      if (!event.data.success) {
        setPill("socket-state", "closed", `refused: ${event.data.error.code}`);
      }
      break;
    case "error":
      $("tail-state").textContent = `error: ${event.data.code} ${event.data.message || ""}`;
      break;
  }
  if (state.tailChannel && event.type === state.tailChannel) addToTail(event);
}

function showSubscription(data) {
  if (!state.tailChannel) return;
  const rejected = (data.rejected || []).find((r) => r.channel === state.tailChannel);
  $("tail-state").textContent = rejected
    ? `refused: ${rejected.code} (${rejected.reason})`
    : `watching ${state.tailChannel}`;
}

function addToTail(event) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = event.timestamp || "";
  const body = document.createElement("code");
  body.textContent = JSON.stringify(event.data);
  item.append(time, " ", body);
  const list = $("tail");
  list.prepend(item);
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
}

function watch(channel) {
  const previous = state.tailChannel;
  if (previous === channel) return;
  // Leave the previous channel unless the server subscribed us to it on connect.
  if (previous && !state.initial.has(previous)) {
    send({ type: "unsubscribe", data: { channels: [previous] } });
  }
  state.tailChannel = channel;
  $("tail").replaceChildren();
  $("tail-state").textContent = `subscribing to ${channel}…`;
  send({ type: "subscribe", data: { channels: [channel] } });
}

// ---------------------------------------------------------------------------------------
// Start

function start() {
  $("token").value = state.token;
  $("api-key").value = state.apiKey;
  $("credentials-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("sigmahub.token", state.token);
    sessionStorage.setItem("sigmahub.apiKey", state.apiKey);
    const old = state.socket;
    state.socket = null;
    if (old) old.close(1000);
    connect();
    clearTimeout(state.pollTimer);
    poll();
  });
  $("tail-form").addEventListener("submit", (e) => {
    e.preventDefault();
    watch($("tail-channel").value.trim());
  });
  connect();
  poll();
}

start();
