// Many real socket.io-client sockets in one process, for tests/socketio.rs: opens
// SIO_CLIENTS sockets to SIO_URL (options in SIO_OPTIONS), subscribes each to SIO_CHANNEL
// with an ack, prints {"ready": n} once all are subscribed, then checks that every socket
// receives events n = 0 .. SIO_EVENTS-1 on that channel exactly once and in order, and
// prints {"done": sockets that did, "bad": [first problems]}. Bounded: it gives up after
// SIO_TIMEOUT_MS and prints what it has.
import { io } from "socket.io-client";

const url = process.env.SIO_URL;
const clients = Number(process.env.SIO_CLIENTS);
const events = Number(process.env.SIO_EVENTS);
const channel = process.env.SIO_CHANNEL;
const options = JSON.parse(process.env.SIO_OPTIONS || "{}");
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");

let subscribed = 0;
let done = 0;
const bad = [];
const sockets = [];
const finish = () => {
  print({ done, bad: bad.slice(0, 10) });
  for (const socket of sockets) socket.close();
  setTimeout(() => process.exit(0), 200);
};
setTimeout(finish, Number(process.env.SIO_TIMEOUT_MS || 60000));

for (let i = 0; i < clients; i++) {
  const socket = io(url, { ...options, forceNew: true, reconnection: false });
  sockets.push(socket);
  let next = 0;
  socket.on(channel, (event) => {
    if (event.data.n !== next) {
      bad.push({ client: i, expected: next, got: event.data.n });
    }
    next = event.data.n + 1;
    if (next === events) {
      done += 1;
      if (done === clients) finish();
    }
  });
  socket.on("connect_error", (err) => bad.push({ client: i, connect_error: err.message }));
  socket.on("connect", () => {
    socket.emit("subscribe", { events: [channel] }, (reply) => {
      if (!reply.success) bad.push({ client: i, subscribe: reply });
      subscribed += 1;
      if (subscribed === clients) print({ ready: subscribed });
    });
  });
}
