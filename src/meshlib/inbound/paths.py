"""Request paths in normal form: the authz decision and the app's router must see the same path.

An ASGI server hands the app `scope["path"]` percent-decoded and nothing
more (uvicorn, hypercorn, daphne); a WSGI server does the same with
`PATH_INFO`. Starlette, FastAPI and Flask route that string as it is. So
`/v1/../admin`, `/v1/%2e%2e/admin` and `/v1%2f..%2fadmin` all reach the
app as `/v1/../admin`, which a router may match as a route under `/v1/`
or under `/admin`, depending on its patterns, while a decision made on a
cleaned-up path sees something else. Rather than guess how each framework
routes a path that is not in normal form, the middleware refuses it with
400 before the app runs (when a rule or route depends on the path at all);
every path it lets through is one on which every router and the policy agree.

A path is in normal form when, after the server's percent-decoding, it:

- starts with `/` (not `*` or an absolute URL);
- has no empty segment (`//`) and no `.` or `..` segment;
- holds no backslash, NUL or other control character, and no U+FFFD
  (the server's stand-in for bytes that are not UTF-8, such as overlong
  encodings of `.` and `/`);
- and its raw form has no encoded slash or backslash (`%2F`, `%5C`),
  which a router on the raw path would see as one segment and the policy as two.

Envoy, a proxy, rewrites instead: `normalize_path` resolves dot segments,
`merge_slashes` collapses `//`, and `path_with_escaped_slashes_action`
rejects, redirects or unescapes `%2F`, all before both its own decisions
and the request it forwards, so the upstream sees the path that was judged.
A middleware cannot make a router agree with a rewrite it did not see (a
framework may read `raw_path`, `REQUEST_URI` or its own copy), so meshlib
takes Envoy's `REJECT_REQUEST` for every ambiguous form. Clients do not
send these forms on their own (httpx, browsers and curl resolve dot segments
before sending), so only a hostile or broken caller meets the 400:

```python
path_problem("/v1/orders/7", b"/v1/orders/7")      # None
path_problem("/v1/../admin", b"/v1/%2e%2e/admin")   # 'dot-segment'
```
"""

from __future__ import annotations

import re

__all__ = ["PATH_PROBLEMS", "path_problem"]

PATH_PROBLEMS = {
    "not-absolute": "does not start with '/'",
    "empty-segment": "has an empty segment ('//')",
    "dot-segment": "has a '.' or '..' segment",
    "backslash": "has a backslash",
    "control-character": "has a NUL or control character",
    "not-utf8": "has percent-encoded bytes that are not UTF-8",
    "escaped-slash": "has an encoded '/' or '\\' (%2F, %5C)",
}
"""Each reason a path is refused, and how the access log says it."""

_BAD = re.compile(r"(//)|/\.\.?(?:/|\Z)|(\\)|([\x00-\x1f\x7f])|(\ufffd)")
_REASONS = (None, "empty-segment", "backslash", "control-character", "not-utf8")
_ESCAPED = re.compile(rb"%(?:2[fF]|5[cC])")


def path_problem(path: str, raw: bytes | str | None = None) -> str | None:
    """Why `path` (percent-decoded) is not in normal form, or `None` when it is.

    `raw` is the path as it came on the wire (the ASGI `raw_path`, the path
    part of a WSGI `REQUEST_URI`), checked for encoded slashes; without it,
    only the decoded path is judged.

    Returns:
        A key of [`PATH_PROBLEMS`][meshlib.inbound.paths.PATH_PROBLEMS], or `None`.
    """
    if not path.startswith("/"):
        return "not-absolute"
    # The common case in a few C-level scans; the regex only runs on paths with something odd.
    if not (
        path.isascii()
        and path.isprintable()
        and "//" not in path
        and "/." not in path
        and "\\" not in path
    ):
        bad = _BAD.search(path)
        if bad is not None:
            return _REASONS[bad.lastindex or 0] or "dot-segment"
    if raw:
        data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
        if b"%" in data and _ESCAPED.search(data):
            return "escaped-slash"
    return None
