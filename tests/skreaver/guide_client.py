# The Python client sample of Skreaver's guide (seed 004, "Client Libraries"), verbatim.
# tests/skreaver.rs runs it with the URL replaced by the test server's.
import asyncio
import websockets
import json

async def connect():
    uri = "ws://localhost:8080/ws?token=abc123"
    async with websockets.connect(uri) as ws:
        # Subscribe
        await ws.send(json.dumps({
            "type": "subscribe",
            "data": {"channels": ["agent-updates"]}
        }))

        # Receive messages
        async for message in ws:
            msg = json.loads(message)
            if msg["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif msg["type"] == "event":
                print(f"Event: {msg['data']}")

asyncio.run(connect())
