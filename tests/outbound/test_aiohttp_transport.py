"""AiohttpTransport, AsyncMeshClient's default pool, against real servers on 127.0.0.1.

Each test pins one promise of httpx's transport contract: timeouts, errors,
limits, streaming, cancellation, closing, proxies and the `trace` extension.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from meshlib.outbound import AsyncMeshClient, MeshClient
from meshlib.outbound.aiohttp_transport import AiohttpTransport
from meshlib.outbound.client import _async_endpoint_factory
from tests.outbound.conftest import mesh_policy
from tests.support.rawtcp import raw_server, read_head, reset, serve_proxy
from tests.support.servers import RunningServer, free_port, serve_asgi


class App:
    """Echo, stream, sleep and cookie paths; counts requests in flight and the peak."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started = 0
        self.clients: list[tuple[str, int]] = []
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.in_flight += 1
        self.started += 1
        self.peak = max(self.peak, self.in_flight)
        self.clients.append(scope["client"])
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        try:
            await self._answer(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"text/plain")]
        if path.startswith("/sleep/"):
            await asyncio.sleep(float(path.split("/")[2]) / 1000)
        if path == "/echo":
            answer = f"{len(body)} {hash(body)}".encode()
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(5):
                await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b""})
            return
        elif path == "/set-cookie":
            headers.append((b"set-cookie", b"session=abc; Path=/"))
            answer = b"set"
        elif path == "/cookie":
            answer = dict(scope["headers"]).get(b"cookie", b"-")
        else:
            answer = b"ok"
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[App, RunningServer]]:
    """One uvicorn server for the module."""
    app = App()
    with serve_asgi(app) as server:
        yield app, server


@pytest.fixture
def app(served: tuple[App, RunningServer]) -> App:
    """The app, its counters reset."""
    a = served[0]
    a.peak = a.started = 0
    a.clients.clear()
    a.headers.clear()
    return a


@pytest.fixture
def url(served: tuple[App, RunningServer], app: App) -> str:
    """The server's base URL."""
    return served[1].url


def run(coroutine: Any) -> Any:
    """Run a coroutine in a fresh event loop."""
    return asyncio.run(coroutine)


# -- the choice of transport -----------------------------------------------------------------


def test_async_mesh_client_uses_aiohttp_by_default_and_httpcore_for_http2() -> None:
    """No endpoint_transport: aiohttp's pool (endpoints and base); http2=True: httpcore's."""
    client = AsyncMeshClient(mesh_policy(["http://127.0.0.1:1"]))
    try:
        assert isinstance(client.mesh_transport.router.base, AiohttpTransport)
        assert client.mesh_transport.outbound.pools._factory is AiohttpTransport
    finally:
        run(client.aclose())
    assert _async_endpoint_factory(None, http2=True) is httpx.AsyncHTTPTransport
    assert _async_endpoint_factory(httpx.AsyncHTTPTransport, http2=False) is (
        httpx.AsyncHTTPTransport
    )
    http2 = AsyncMeshClient(mesh_policy(["http://127.0.0.1:1"]), http2=True)
    try:
        assert type(http2.mesh_transport.router.base) is httpx.AsyncHTTPTransport
    finally:
        run(http2.aclose())


def test_refuses_what_aiohttp_cannot_do() -> None:
    """HTTP/2, SOCKS proxies, uds, socket options and connect retries are refused, naming the way out."""
    with pytest.raises(ValueError, match=r"HTTP/1\.1 only"):
        AiohttpTransport(http2=True)
    with pytest.raises(ValueError, match="socks5"):
        AiohttpTransport(proxy="socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="uds"):
        AiohttpTransport(uds="/tmp/x.sock")
    with pytest.raises(ValueError, match="socket_options"):
        AiohttpTransport(socket_options=[])
    with pytest.raises(ValueError, match="retry"):
        AiohttpTransport(retries=2)


# -- streaming ---------------------------------------------------------------------------------


def test_streams_request_and_response_bodies(url: str) -> None:
    """A generator upload arrives whole (chunked), a large byte body too, and a response streams in pieces."""
    blob = bytes(range(256)) * 1024  # 256 KiB: sent in timed chunks with its Content-Length

    async def parts() -> AsyncIterator[bytes]:
        for i in range(20):
            yield b"%03d" % i * 1000

    async def main() -> tuple[str, str, list[bytes]]:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            streamed = await client.post(f"{url}/echo", content=parts())
            sized = await client.post(f"{url}/echo", content=blob)
            async with client.stream("GET", f"{url}/stream") as response:
                pieces = [chunk async for chunk in response.aiter_raw()]
            return streamed.text, sized.text, pieces

    streamed, sized, pieces = run(main())
    expected = b"".join(b"%03d" % i * 1000 for i in range(20))
    assert streamed == f"{len(expected)} {hash(expected)}"
    assert sized == f"{len(blob)} {hash(blob)}"
    assert b"".join(pieces) == b"01234"
    assert len(pieces) > 1


# -- timeouts ----------------------------------------------------------------------------------


def test_read_timeout(url: str) -> None:
    """Headers slower than the read timeout: httpx.ReadTimeout."""

    async def main() -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.get(f"{url}/sleep/2000", timeout=httpx.Timeout(5.0, read=0.1))

    with pytest.raises(httpx.ReadTimeout):
        run(main())


def test_connect_timeout_covers_the_tls_handshake() -> None:
    """A server that accepts TCP but never answers the TLS hello: httpx.ConnectTimeout."""

    def silent(sock: socket.socket) -> None:
        sock.recv(65536)
        time.sleep(1.0)

    async def main(port: int) -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport(verify=False)) as client:
            await client.get(f"https://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, connect=0.2))

    with raw_server(silent) as port, pytest.raises(httpx.ConnectTimeout):
        run(main(port))


def test_write_timeout_when_the_server_stops_reading() -> None:
    """An upload to a server that never reads: httpx.WriteTimeout, not a read timeout."""

    def deaf(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(2.0)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(4096):
            yield b"x" * 65536

    async def main(port: int) -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.post(
                f"http://127.0.0.1:{port}/",
                content=endless(),
                timeout=httpx.Timeout(5.0, write=0.2),
            )

    with raw_server(deaf) as port, pytest.raises(httpx.WriteTimeout):
        run(main(port))


def test_pool_timeout_and_max_connections(url: str, app: App) -> None:
    """max_connections bounds requests in flight; a full pool raises PoolTimeout after the pool timeout."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as client:
            await asyncio.gather(*(client.get(f"{url}/sleep/50") for _ in range(8)))
            assert app.peak == 2
            async with client.stream("GET", f"{url}/stream"), client.stream("GET", f"{url}/stream"):
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(f"{url}/", timeout=httpx.Timeout(5.0, pool=0.1))
            assert (await client.get(f"{url}/")).status_code == 200  # slots came back

    run(main())


def test_mesh_deadline_caps_an_aiohttp_attempt(url: str) -> None:
    """An AsyncMeshClient call to a slow endpoint ends at the policy's attempt timeout."""
    policy = mesh_policy([url], retry={"attempts": 1}, timeouts={"attempt": "100ms", "total": "2s"})

    async def main() -> float:
        async with AsyncMeshClient(policy) as client:
            start = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await client.get("http://payments/sleep/3000")
            return time.monotonic() - start

    assert run(main()) < 2.0


# -- errors ------------------------------------------------------------------------------------


def _status_then(body: bytes) -> Any:
    def handle(sock: socket.socket) -> None:
        read_head(sock)
        sock.sendall(body)

    return handle


def _reset_mid_body(sock: socket.socket) -> None:
    read_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    time.sleep(0.05)
    reset(sock)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (_status_then(b""), httpx.RemoteProtocolError),  # closed (FIN) before any answer
        (lambda sock: (read_head(sock), reset(sock)), httpx.ReadError),  # reset, no answer
        (_status_then(b"SSH-2.0-OpenSSH_9.2\r\n"), httpx.RemoteProtocolError),
        (
            _status_then(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nshort"),
            httpx.RemoteProtocolError,
        ),
        (_reset_mid_body, httpx.ReadError),
    ],
    ids=["closed", "reset", "not-http", "truncated-body", "reset-mid-body"],
)
def test_errors_map_onto_httpx_tree(handler: Any, expected: type[Exception]) -> None:
    """Each failure raises the httpx exception httpcore raises for it."""

    async def main(port: int) -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with raw_server(handler) as port, pytest.raises(httpx.TransportError) as info:
        run(main(port))
    assert type(info.value) is expected


def test_connection_refused_and_unsupported_scheme() -> None:
    """Nothing listening: ConnectError; a scheme aiohttp cannot speak: UnsupportedProtocol."""

    async def main(target: str) -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.get(target)

    with pytest.raises(httpx.ConnectError):
        run(main(f"http://127.0.0.1:{free_port()}/"))
    with pytest.raises(httpx.UnsupportedProtocol):
        run(main("ftp://127.0.0.1/"))


# -- connections: keep-alive, cancellation, close ------------------------------------------------


def test_keepalive_limit_closes_extra_idle_connections(url: str) -> None:
    """After a burst of 6, at most max_keepalive_connections idle connections stay open."""
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=1)
    transport = AiohttpTransport(limits=limits)

    async def main() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.gather(*(client.get(f"{url}/sleep/50") for _ in range(6)))
            assert transport._session is not None
            connector: Any = transport._session.connector
            return sum(len(idle) for idle in connector._conns.values())

    assert run(main()) == 1


def test_cancelled_requests_leak_no_task_slot_or_connection(url: str, app: App) -> None:
    """Cancelling requests in flight frees every slot, leaves no task behind, and the pool works on."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=4))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            tasks = [asyncio.create_task(client.get(f"{url}/sleep/5000")) for _ in range(4)]
            deadline = time.monotonic() + 5
            while app.started < 4 and time.monotonic() < deadline:  # noqa: ASYNC110 - server thread
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert all(task.cancelled() for task in tasks)
            await asyncio.sleep(0)
            assert asyncio.all_tasks() == {asyncio.current_task()}
            assert transport.is_idle()
            assert transport._slots is not None
            assert transport._slots._value == 4
            assert transport._session is not None
            assert not transport._session.connector._acquired  # type: ignore[union-attr]
            assert (await client.get(f"{url}/")).text == "ok"

    run(main())


def test_aclose_closes_connections_and_refuses_new_requests(url: str) -> None:
    """After aclose the pooled connections are closed and a new request raises RuntimeError."""
    transport = AiohttpTransport()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(f"{url}/")
            session = transport._session
            assert session is not None
        assert session.closed
        assert session.connector is None
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", f"{url}/"))

    run(main())


def test_aiohttp_keeps_no_cookie_jar_of_its_own(url: str) -> None:
    """Cookies live in httpx's jar only: cleared there, they are not sent again."""

    async def main() -> str:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.get(f"{url}/set-cookie")
            assert client.cookies.get("session") == "abc"
            client.cookies.clear()
            return (await client.get(f"{url}/cookie")).text

    assert run(main()) == "-"


# -- proxies -----------------------------------------------------------------------------------


def test_forward_proxy_with_credentials(url: str) -> None:
    """proxy= sends absolute-form requests through the proxy, with Proxy-Authorization."""

    async def main(port: int) -> str:
        transport = AiohttpTransport(proxy=f"http://user:secret@127.0.0.1:{port}")
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get(f"{url}/")).text

    with serve_proxy() as (port, seen):
        assert run(main(port)) == "ok"
    assert seen[0].startswith(f"GET {url}/ HTTP/1.1".encode())
    assert b"\r\nProxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n" in seen[0]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_mesh_client_proxy_carries_only_non_mesh_urls(url: str, kind: str) -> None:
    """MeshClient(proxy=...): mesh services are dialled directly, other URLs go through the proxy."""
    policy = mesh_policy([url])

    async def go_async(proxy: str) -> list[str]:
        async with AsyncMeshClient(policy, proxy=proxy) as client:
            return [(await client.get(u)).text for u in ("http://payments/", f"{url}/")]

    with serve_proxy() as (port, seen):
        proxy = f"http://127.0.0.1:{port}"
        if kind == "sync":
            with MeshClient(policy, proxy=proxy) as client:
                texts = [client.get(u).text for u in ("http://payments/", f"{url}/")]
        else:
            texts = run(go_async(proxy))
    assert texts == ["ok", "ok"]
    assert len(seen) == 1
    assert seen[0].startswith(f"GET {url}/ ".encode())
    with pytest.raises(ValueError, match="not both"):
        MeshClient(policy, proxy="http://127.0.0.1:1", transport=httpx.HTTPTransport())


# -- the trace extension -------------------------------------------------------------------------


def test_trace_extension_reports_httpx_event_names(url: str) -> None:
    """A request with a trace hook gets httpx's event names; the next reuses the connection."""
    events: list[list[str]] = [[], []]

    def hook(into: list[str]) -> Any:
        async def record(name: str, info: dict[str, Any]) -> None:
            into.append(name)

        return record

    async def main() -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            for into in events:
                await client.get(f"{url}/", extensions={"trace": hook(into)})
            await client.get(f"{url}/")  # no hook: the untraced session, same pool

    run(main())
    assert events[0] == [
        "connection.connect_tcp.started",
        "connection.connect_tcp.complete",
        "http11.send_request_headers.started",
        "http11.send_request_headers.complete",
        "http11.receive_response_headers.complete",
    ]
    assert events[1] == [
        "http11.send_request_headers.started",
        "http11.send_request_headers.complete",
        "http11.receive_response_headers.complete",
    ]


def test_sampled_mesh_call_takes_its_wire_window_from_aiohttp(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampled AsyncMeshClient call over aiohttp marks the wire window from the trace events."""
    from meshlib.telemetry.latency import AttemptMarks
    from tests.support.otel import LocalTelemetry

    marked: list[AttemptMarks] = []
    original = AttemptMarks.mark

    def mark(self: AttemptMarks, name: str) -> None:
        original(self, name)
        if self not in marked:
            marked.append(self)

    monkeypatch.setattr(AttemptMarks, "mark", mark)
    telemetry = LocalTelemetry()

    async def main() -> httpx.Response:
        async with AsyncMeshClient(mesh_policy([url]), **telemetry.kwargs()) as client:
            return await client.get("http://payments/")

    try:
        response = run(main())
    finally:
        telemetry.close()
    assert response.status_code == 200
    assert len(marked) == 1
    assert 0 < marked[0].first < marked[0].done  # connect/send started, then headers in
    assert response.extensions["meshlib.latency"].total >= marked[0].done - marked[0].first
