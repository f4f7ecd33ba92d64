"""Normal-form paths: each reason a path is refused, and the forms that are fine."""

from __future__ import annotations

import pytest

from meshlib.inbound.paths import PATH_PROBLEMS, path_problem


@pytest.mark.parametrize(
    ("path", "raw", "reason"),
    [
        ("/v1/orders/7", b"/v1/orders/7", None),
        ("/", b"/", None),
        ("/v1/", None, None),
        ("/v1/.well-known/x", None, None),
        ("/v1/..a/a..", None, None),
        ("/v1/caf\u00e9", b"/v1/caf%C3%A9", None),
        ("/v1/%2e", b"/v1/%252e", None),
        ("/v1/a;b=..", None, None),
        ("*", b"*", "not-absolute"),
        ("https://h/v1", None, "not-absolute"),
        ("", None, "not-absolute"),
        ("//v1", None, "empty-segment"),
        ("/v1//x", None, "empty-segment"),
        ("/v1/.", None, "dot-segment"),
        ("/v1/..", None, "dot-segment"),
        ("/./v1", None, "dot-segment"),
        ("/v1/../x", b"/v1/%2E%2E/x", "dot-segment"),
        ("/v1\\x", None, "backslash"),
        ("/v1/\x00", b"/v1/%00", "control-character"),
        ("/v1/\x7f", None, "control-character"),
        ("/v1/\t", None, "control-character"),
        ("/v1/\ufffd", b"/v1/%ff", "not-utf8"),
        ("/v1/a/b", b"/v1/a%2fb", "escaped-slash"),
        ("/v1/a/b", "/v1/a%2Fb", "escaped-slash"),
        ("/v1/a\\b", b"/v1/a%5Cb", "backslash"),
        ("/v1/a", b"/v1/%61", None),
    ],
)
def test_path_problem(path: str, raw: bytes | str | None, reason: str | None) -> None:
    """Each ambiguous form has its reason; odd but unambiguous paths pass."""
    assert path_problem(path, raw) == reason
    if reason is not None:
        assert reason in PATH_PROBLEMS
