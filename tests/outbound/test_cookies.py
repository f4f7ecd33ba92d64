"""MeshCookies: the mesh clients keep httpx's cookie behaviour while skipping its no-op jar pass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib.outbound.cookies import MeshCookies
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.servers import RunningServer, serve_asgi


async def _cookie_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/set/<name>/<value>` sets a cookie (header name spelled as in `?case=`), `/plain`
    sets none, anything else echoes the Cookie header it received."""
    assert scope["type"] == "http"
    query = scope["query_string"].decode()
    parts = scope["path"].strip("/").split("/")
    headers = [(b"content-type", b"text/plain")]
    body = b""
    if parts[0] == "set":
        name = b"SET-COOKIE" if query == "case=upper" else b"set-cookie"
        headers.append((name, f"{parts[1]}={parts[2]}; Path=/".encode()))
    elif parts[0] != "plain":
        cookie = dict(scope["headers"]).get(b"cookie", b"")
        body = cookie
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def cookie_server() -> Iterator[RunningServer]:
    with serve_asgi(_cookie_app) as server:
        yield server


def test_cookies_set_by_responses_are_sent_back(
    driver: Driver, cookie_server: RunningServer
) -> None:
    client = driver.client(mesh_policy([cookie_server.url]))
    assert isinstance(client.cookies, MeshCookies)
    driver.request(client, "GET", "http://payments/set/session/abc")
    driver.request(client, "GET", "http://payments/set/theme/dark?case=upper")
    driver.request(client, "GET", "http://payments/plain")  # sets nothing, changes nothing
    echoed = driver.request(client, "GET", "http://payments/echo").text
    assert sorted(echoed.split("; ")) == ["session=abc", "theme=dark"]
    assert dict(client.cookies) == {"session": "abc", "theme": "dark"}


def test_assigned_cookies_stay_mesh_cookies_and_are_sent(
    driver: Driver, cookie_server: RunningServer
) -> None:
    client = driver.client(mesh_policy([cookie_server.url]), cookies={"a": "1"})
    assert driver.request(client, "GET", "http://payments/echo").text == "a=1"
    client.cookies = {"b": "2"}
    assert isinstance(client.cookies, MeshCookies)
    driver.request(client, "GET", "http://payments/set/c/3")
    assert sorted(driver.request(client, "GET", "http://payments/echo").text.split("; ")) == [
        "b=2",
        "c=3",
    ]


def test_jar_ends_as_httpx_leaves_it(cookie_server: RunningServer) -> None:
    paths = ["/set/x/1", "/plain", "/set/y/2?case=upper", "/plain", "/set/x/3"]
    with httpx.Client(base_url=cookie_server.url) as plain:
        for path in paths:
            plain.get(path)
        expected = dict(plain.cookies)
    jar = MeshCookies()
    with httpx.Client(base_url=cookie_server.url) as client:
        for path in paths:
            jar.extract_cookies(client.get(path))
    assert dict(jar) == expected == {"x": "3", "y": "2"}


def test_response_without_set_cookie_never_reaches_the_jar() -> None:
    # httpx's own pass needs response.request (it raises without one); ours must not look.
    bare = httpx.Response(200, headers={"content-type": "text/plain"})
    MeshCookies().extract_cookies(bare)
    with pytest.raises(RuntimeError):
        httpx.Cookies().extract_cookies(bare)
    with pytest.raises(RuntimeError):  # and a Set-Cookie takes httpx's path
        MeshCookies().extract_cookies(httpx.Response(200, headers={"Set-Cookie": "a=1"}))
