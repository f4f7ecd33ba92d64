"""A TCP proxy on 127.0.0.1 that holds every chunk a known time in each direction: a slow network.

`DelayProxy` runs its own asyncio loop in a thread; `DelayProxy.serve` runs
inside a loop that is already running (`python -m tests.support.delaymesh`
puts the proxy and the server it fronts in one loop of a child process, so
neither competes with the test's client for the GIL). Each chunk read from one side is
written to the other no sooner than `delay` seconds after it arrived
(chunks keep their order; a chunk that arrives while another is held is not
delayed twice). `held` keeps when each chunk arrived and when it was passed
on (`time.monotonic()`, one clock for every process on Linux), so a test
compares what meshlib measured with what the network really did:

```python
with DelayProxy(upstream_port, delay=0.02) as proxy:
    httpx.get(f"http://127.0.0.1:{proxy.port}/")
    proxy.held    # [("up", 10.0000, 10.0201), ("down", 10.0352, 10.0553)]
```

`freeze()` stops every connection open at that moment from passing anything
on, without closing it (a half-open network path); later connections flow.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any


class DelayProxy:
    """A delaying TCP proxy to `127.0.0.1:<upstream_port>` (see the module docstring)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.held: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing: set[asyncio.Event] = set()
        self.port = 0

    def freeze(self) -> None:
        """Stall the connections open now (they stay open); new ones still pass (see above)."""

        def stall() -> None:
            for flowing in self._flowing:
                flowing.clear()
            self._flowing.clear()

        self._loop.call_soon_threadsafe(stall)

    def take_held(self) -> list[tuple[str, float, float]]:
        """The chunks so far (direction, arrived, passed on), forgetting them."""
        with self._lock:
            held, self.held = self.held, []
        return held

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(timeout=10)
        return self

    def __exit__(self, *args: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def serve(self) -> int:
        """Start listening in the running loop; return the port."""
        self.port = await self._start()
        return self.port

    async def _start(self) -> int:
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
        # and a proxy that lets Nagle hold small writes adds a delayed ACK's 40 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._connection, sock=sock)
        return int(sock.getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        flowing = asyncio.Event()
        flowing.set()
        self._flowing.add(flowing)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            for side in (writer, up_writer):
                side.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(
                self._pump("up", reader, up_writer, flowing),
                self._pump("down", up_reader, writer, flowing),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            self._flowing.discard(flowing)
            writer.close()

    async def _pump(
        self,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    writer.close()
                    return
                wait = arrived + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()
                writer.write(data)  # an empty buffer: the bytes are in the socket now
                delivered = time.monotonic()
                with self._lock:
                    self.held.append((direction, arrived, delivered))
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic(), data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
