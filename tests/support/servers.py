"""Real servers on 127.0.0.1 for tests: uvicorn (ASGI) and werkzeug (WSGI) in a thread.

After httpx's `tests/conftest.py` (`TestServer`, `serve_in_thread`):

```python
with serve_asgi(app) as server:
    httpx.get(server.url + "/")
```
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from werkzeug.serving import make_server


@dataclass
class RunningServer:
    """A server started by a test: where it listens and how to stop it."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321."""
        return f"{self.scheme}://{self.host}:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ThreadedUvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass


@contextmanager
def serve_asgi(app: Any, *, port: int | None = None, **config: Any) -> Iterator[RunningServer]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread until the block ends."""
    port = port or free_port()
    server = _ThreadedUvicorn(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **config
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    scheme = "https" if config.get("ssl_certfile") else "http"
    try:
        yield RunningServer("127.0.0.1", port, scheme)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_wsgi(
    app: Callable[..., Any], *, port: int | None = None, ssl_context: ssl.SSLContext | None = None
) -> Iterator[RunningServer]:
    """Run a WSGI `app` under werkzeug's threaded server on 127.0.0.1 until the block ends."""
    server = make_server("127.0.0.1", port or 0, app, threaded=True, ssl_context=ssl_context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningServer("127.0.0.1", server.server_port, "https" if ssl_context else "http")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
