"""meshlib.headers.set_header leaves a request's headers exactly as httpx's own setter would."""

from __future__ import annotations

import httpx
import pytest

from meshlib.headers import set_header


@pytest.mark.parametrize(
    "before",
    [
        [("Accept", "*/*")],
        [("Accept", "*/*"), ("X-Mesh-Attempt", "1")],
        [("x-mesh-attempt", "1"), ("Accept", "*/*"), ("X-MESH-ATTEMPT", "0")],
    ],
    ids=["absent", "present", "duplicated"],
)
def test_set_header_matches_httpx(before: list[tuple[str, str]]) -> None:
    """Absent, present once or several times: the same raw list, values and order as Headers[...] = v."""
    ours, theirs = httpx.Headers(before), httpx.Headers(before)
    set_header(ours, b"x-mesh-attempt", "2")
    theirs["x-mesh-attempt"] = "2"
    assert ours.raw == theirs.raw
    assert ours.get_list("x-mesh-attempt") == ["2"]
    assert ours == theirs
