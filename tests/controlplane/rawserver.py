"""A tiny raw TCP server that answers scripted bytes, for garbage and truncated responses."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def good(version: int, document: dict[str, Any]) -> bytes:
    """A well-formed 200 answer carrying `document` as `version`."""
    body = json.dumps(
        {"version": version, "hash": f"sha256:{version:064d}", "document": document}
    ).encode()
    head = f'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "{version}-x"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n'
    return head.encode() + body


ANSWERS: dict[str, bytes] = {
    "not-json": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!",
    "truncated": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"version": 7, "hash"',
    "wrong-shape": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{"hello": 1}',
    "not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "server-error": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
    "invalid-policy": good(8, {"version": 1, "services": {"payments": {"retry": {"attempts": 0}}}}),
}


class _Handler(socketserver.BaseRequestHandler):
    server: RawServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.server.hits += 1
            sock.sendall(self.server.answer)
        except OSError:
            pass


class RawServer(socketserver.ThreadingTCPServer):
    """Answers every request with `answer` and closes the connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = b""
        self.hits = 0

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def raw_server(answer: bytes) -> Iterator[RawServer]:
    """Run a RawServer in a thread until the block ends."""
    server = RawServer()
    server.answer = answer
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
