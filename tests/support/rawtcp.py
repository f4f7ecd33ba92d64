"""Raw TCP servers on 127.0.0.1 for transport tests: scripted bytes, stalls, resets and a forward proxy.

Each connection runs `handler(sock)` in a daemon thread; the listener and
every thread stop when the block ends:

```python
with raw_server(lambda sock: sock.close()) as port:
    ...   # every connection is accepted and closed at once
```
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["read_head", "raw_server", "reset", "serve_proxy"]


def read_head(sock: socket.socket) -> bytes:
    """Read up to the end of an HTTP request head (empty if the peer closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextmanager
def raw_server(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """Accept connections on a free port, each handled by `handler` in its own thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def run(sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            handler(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=run, args=(sock,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for thread in threads:
            thread.join(timeout=5)


@contextmanager
def serve_proxy() -> Iterator[tuple[int, list[bytes]]]:
    """A forward HTTP proxy (absolute-form requests, one per connection) recording each request head."""
    seen: list[bytes] = []

    def handle(sock: socket.socket) -> None:
        head = read_head(sock)
        if not head:
            return
        seen.append(head)
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ")
        rest = target.split(b"://", 1)[1]
        authority, _, path = rest.partition(b"/")
        host, _, port = authority.partition(b":")
        headers = [
            line
            for line in lines[1:]
            if line and not line.lower().startswith((b"proxy-", b"connection:"))
        ]
        request = b"\r\n".join(
            [method + b" /" + path + b" " + version, *headers, b"Connection: close", b"", b""]
        )
        with socket.create_connection((host.decode(), int(port or b"80")), timeout=10) as up:
            up.sendall(request)
            while chunk := up.recv(65536):
                sock.sendall(chunk)

    with raw_server(handle) as port:
        yield port, seen
