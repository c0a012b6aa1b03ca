// Prints every event of the channels named on the command line, across reconnects.
//   cargo run --release                      (the server, in another terminal)
//   node --experimental-websocket examples/tail.mjs ws://127.0.0.1:12080/ws orders notification
// (Node 22 and later need no flag.) Set SIGMAHUB_TOKEN to authenticate; Ctrl-C stops it.
import { Client } from "sigmahub-client";

const [url = "ws://127.0.0.1:12080/ws", ...channels] = process.argv.slice(2);
const client = new Client(url, { token: process.env.SIGMAHUB_TOKEN });
client.on("state", (state) => console.error(`[${state.kind}${state.reason ? `: ${state.reason}` : ""}]`));
client.on("gap", (gap) => console.error(`lost on ${gap.channel}: ${gap.reason} after ${gap.after}`));
for (const channel of channels.length > 0 ? channels : ["notification"]) {
  client
    .subscribe(channel, (event) => console.log(event.channel, event.offset, JSON.stringify(event.data)))
    .ready.catch((e) => {
      console.error(`${channel}: ${e.message}`);
      process.exit(1);
    });
}
process.on("SIGINT", () => {
  client.close();
  process.exit(0);
});
