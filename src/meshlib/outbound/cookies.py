"""The mesh clients' cookie jar: httpx's, minus its per-response detour through urllib.

After every response `httpx.Client` calls `cookies.extract_cookies(response)`,
which wraps the request and response in `urllib.request` compatibility
objects (re-serialising the URL and copying the headers) and hands them to
`http.cookiejar` — which then finds no `Set-Cookie` header and does
nothing. That round trip is 7-10% of a loopback call against nginx (py-spy
and an A/B of the same client, see docs/explanation/benchmarks.md), more than
any single mesh feature costs. `MeshCookies` scans the raw header names
first and takes httpx's path only when a `Set-Cookie` or `Set-Cookie2`
header is there, so the jar ends up exactly as httpx would leave it:

```python
client.cookies                 # a MeshCookies; set and read it as httpx.Cookies
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from httpx._types import CookieTypes

__all__ = ["MeshCookies"]

_SETS = (b"set-cookie", b"set-cookie2")


class MeshCookies(httpx.Cookies):
    """`httpx.Cookies` that skips the cookie jar for responses setting no cookie.

    Example:
        ```python
        jar = MeshCookies({"session": "abc"})
        jar.extract_cookies(response)     # free unless response has Set-Cookie
        ```
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Load the cookies the response's `Set-Cookie` headers set (none: nothing to do)."""
        for name, _ in response.headers.raw:
            if name.lower() in _SETS:
                super().extract_cookies(response)
                return


class MeshCookiesMixin:
    """Gives an httpx client a `MeshCookies` jar, also when `client.cookies` is set."""

    _cookies: httpx.Cookies

    @property
    def cookies(self) -> httpx.Cookies:
        """Cookie values included with every request (httpx's attribute, a `MeshCookies`)."""
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: CookieTypes) -> None:
        self._cookies = MeshCookies(cookies)
