"""Watches a presence channel's joins and leaves for the presence benchmark (perf/README,
issue 19): subscribes to `presence:{channel}` on a sigmahub server and, once it has seen
`--expect` leaves (or `--timeout` passes), prints how many joins and leaves arrived and
how fast, as JSON.

    python3 perf/presence-watch.py --url ws://127.0.0.1:13080/ws --channel perf --expect 10000

Needs the `websockets` package (tests/skreaver/setup.sh installs it into
tests/skreaver/.venv). The rate is the watcher's: what the server published and this
client read, one connection, so it is a lower bound on what the server sustains.
"""
import argparse
import asyncio
import json
import time

import websockets


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="ws://127.0.0.1:13080/ws")
    p.add_argument("--channel", default="perf")
    p.add_argument("--expect", type=int, default=10000)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    seen = {"join": [], "leave": []}
    async with websockets.connect(a.url, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "data": {"channels": [f"presence:{a.channel}"]}}))
        print(json.dumps({"watching": f"presence:{a.channel}"}), flush=True)
        deadline = time.monotonic() + a.timeout
        while len(seen["leave"]) < a.expect and time.monotonic() < deadline:
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
            message = json.loads(text)
            if message.get("type") == f"presence:{a.channel}":
                seen[message["data"]["action"]].append(time.monotonic())
    report = {}
    for action, times in seen.items():
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        report[action] = {
            "events": len(times),
            "first_to_last_s": round(span, 3),
            "per_s": round(len(times) / span) if span > 0 else None,
        }
    print(json.dumps(report), flush=True)


asyncio.run(main())
