"""Drives the real python-socketio client for tests/socketio.rs, like driver.mjs: connects
to SIO_URL with the transports in SIO_TRANSPORTS (comma-separated), the auth in SIO_AUTH
(JSON) and extra request headers in SIO_HEADERS (a JSON object), prints what happens as
JSON lines, and takes the same JSON-line commands on stdin."""
import json
import os
import sys
import threading

import socketio

printing = threading.Lock()


def show(value):
    # Events arrive on the client's threads: one whole line at a time.
    with printing:
        print(json.dumps(value), flush=True)


sio = socketio.Client(reconnection=False)


@sio.event
def connect():
    # `sio.sid` is the Engine.IO session's id; the socket's own (the namespace's, which
    # the welcome's client_id also gives) is get_sid().
    show({"ev": "connect", "id": sio.get_sid(), "engine_sid": sio.sid, "transport": sio.transport()})


@sio.event
def connect_error(data):
    show({"ev": "connect_error", "data": data})


@sio.event
def disconnect(*args):
    show({"ev": "disconnect"})


@sio.on("*")
def any_event(name, *args):
    show({"ev": "event", "name": name, "args": list(args)})


auth = json.loads(os.environ.get("SIO_AUTH", "null"))
transports = os.environ.get("SIO_TRANSPORTS", "polling,websocket").split(",")
headers = json.loads(os.environ.get("SIO_HEADERS", "{}"))
try:
    sio.connect(os.environ["SIO_URL"], transports=transports, auth=auth, headers=headers, wait_timeout=10)
except socketio.exceptions.ConnectionError as e:
    show({"ev": "connect_failed", "message": str(e)})
    sys.exit(0)

seq = 0
for line in sys.stdin:
    command = json.loads(line)
    if command.get("exit"):
        break
    if "emit" in command:
        n, seq = seq, seq + 1
        args = tuple(command.get("args", []))
        if command.get("ack"):
            def acked(*reply, n=n):
                show({"ev": "ack", "seq": n, "args": list(reply)})
            sio.emit(command["emit"], args, callback=acked)
        else:
            sio.emit(command["emit"], args)
sio.disconnect()
