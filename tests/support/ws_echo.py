#!/usr/bin/python3
"""A real WebSocket server and client (Debian's python3-websockets) for
tests/upstream_protocols.rs.

  ws_echo.py server PORT                 echoes every message, prints "ready"
  ws_echo.py client URL CA SNI MSG...    sends each MSG over wss:// trusting
                                         CA for name SNI; prints the replies
"""
import asyncio
import json
import ssl
import sys

import websockets


async def echo(ws, path=None):
    async for message in ws:
        await ws.send("echo:" + message)


async def serve(port):
    async with websockets.serve(echo, "127.0.0.1", port):
        print("ready", flush=True)
        await asyncio.Future()


async def client(url, ca, sni, messages):
    ctx = ssl.create_default_context(cafile=ca)
    replies = []
    async with websockets.connect(url, ssl=ctx, server_hostname=sni) as ws:
        for m in messages:
            await ws.send(m)
            replies.append(await asyncio.wait_for(ws.recv(), 10))
    print(json.dumps(replies))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
