"""A SigmaVault client on the `websockets` package, with or without permessage-deflate.

Usage: python client.py <ws url> <deflate|none> <channel> <events>

Prints `extensions <the server's Sec-WebSocket-Extensions answer>`, then `subscribed`, then
`event <data as sorted JSON>` for each event on <channel>, and exits after <events> of them.
The subscribe request names many channels, so that with the extension it is sent compressed.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str, compression: str, channel: str, events: int) -> None:
    async with connect(
        url,
        compression=None if compression == "none" else "deflate",
        max_size=2**20,
    ) as ws:
        print("extensions", ws.response.headers.get("Sec-WebSocket-Extensions", ""), flush=True)
        extra = [f"{channel}.shard-{i:02}" for i in range(24)]
        await ws.send(json.dumps({"type": "subscribe", "data": {"events": [channel, *extra]}}))
        received = 0
        while received < events:
            message = json.loads(await ws.recv())
            if message["type"] == "subscribe_response":
                print("subscribed", len(message["data"]["subscribed"]), flush=True)
            elif message["type"] == channel:
                received += 1
                print("event", json.dumps(message["data"], sort_keys=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
