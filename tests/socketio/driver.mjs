// Drives the real socket.io-client for tests/socketio.rs: connects to SIO_URL with the
// options in SIO_OPTIONS (JSON), prints what happens as JSON lines on stdout, and takes
// commands as JSON lines on stdin:
//   {"emit": name, "args": [...], "ack": true}   emit, printing the ack's arguments
//                                                 ("binary": true adds a Buffer argument)
//   {"connect": true} / {"disconnect": true}      the socket's connect() / disconnect()
//   {"exit": true}
// Printed: {"ev":"connect","id":…,"transport":…}, {"ev":"connect_error","message":…,"data":…},
// {"ev":"disconnect","reason":…}, {"ev":"upgrade","transport":…},
// {"ev":"event","name":…,"args":[…]}, {"ev":"ack","seq":n,"args":[…]}.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const options = JSON.parse(process.env.SIO_OPTIONS || "{}");
const socket = io(process.env.SIO_URL, options);

socket.on("connect", () =>
  print({ ev: "connect", id: socket.id, transport: socket.io.engine.transport.name }),
);
socket.on("connect_error", (err) =>
  print({ ev: "connect_error", message: err.message, data: err.data ?? null }),
);
socket.on("disconnect", (reason) => print({ ev: "disconnect", reason }));
socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (transport) => print({ ev: "upgrade", transport: transport.name }));
});
socket.onAny((name, ...args) => print({ ev: "event", name, args }));

let seq = 0;
createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.exit) {
    // Let the close packet out (long-polling posts it) before leaving.
    socket.close();
    setTimeout(() => process.exit(0), 200);
  } else if (command.connect) {
    socket.connect();
  } else if (command.disconnect) {
    socket.disconnect();
  } else if (command.emit) {
    const n = seq++;
    const args = command.args ?? [];
    if (command.binary) args.push(Buffer.from([1, 2, 3]));
    if (command.ack) {
      socket.emit(command.emit, ...args, (...reply) => print({ ev: "ack", seq: n, args: reply }));
    } else {
      socket.emit(command.emit, ...args);
    }
  }
});
