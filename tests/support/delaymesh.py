"""A callee behind a delaying proxy, in a child process: `python -m tests.support.delaymesh DELAY HANDLER [middleware]`.

One asyncio loop runs uvicorn with the flaky app (behind `MeshMiddleware`
when asked) and the `DelayProxy` in front of it, so the injected delay and
the handler's time are the truth a test compares meshlib's split with. It
prints `PORTS <proxy port> <server port>` once listening, and serves
`GET /held` (directly on the server port) with the proxy's hold times and the
handler's own times since the last look, as JSON.
Stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any

import uvicorn

from tests.support.delayproxy import DelayProxy


class Flaky:
    """`/flaky/<n>/<key>` sleeps the handler time, then 503 for the first n hits of key, else 200."""

    def __init__(self, handler: float, proxy: DelayProxy) -> None:
        self.handler = handler
        self.proxy = proxy
        self.hits: dict[str, int] = {}
        self.handled: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/held":
            handled, self.handled = self.handled, []
            body = json.dumps({"held": self.proxy.take_held(), "handled": handled}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        _, _, failures, key = scope["path"].split("/")
        self.hits[key] = count = self.hits.get(key, 0) + 1
        began = time.monotonic()
        await asyncio.sleep(self.handler)
        self.handled.append(time.monotonic() - began)
        status = 503 if count <= int(failures) else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})


async def main(delay: float, handler: float, middleware: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    server_port = int(sock.getsockname()[1])
    proxy = DelayProxy(server_port, delay)
    app: Any = Flaky(handler, proxy)
    if middleware:
        from meshlib.inbound.asgi import MeshMiddleware
        from meshlib.policy.model import Policy

        policy = Policy.model_validate(
            {"version": 1, "services": {"payments": {"endpoints": ["http://127.0.0.1:1"]}}}
        )
        app = MeshMiddleware(app, policy=policy, service_name="payments")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    proxy_port = await proxy.serve()
    print(f"PORTS {proxy_port} {server_port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:] == ["middleware"]))
