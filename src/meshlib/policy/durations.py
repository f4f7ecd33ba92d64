"""The `Duration` type: `250ms`, `2s`, `1.5s`, `1m`, `1h` in documents, seconds in code."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)$"


def parse_duration(value: Any) -> float:
    """Turn `"250ms"` into `0.25`; a bare number is refused because its unit is a guess.

    ```pycon
    >>> parse_duration("1m")
    60.0
    ```
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms' or '2s', got {value!r}")
    if isinstance(value, int | float):
        raise ValueError(
            f"a duration needs a unit: write '{value}s' for seconds or '{value}ms' for milliseconds"
        )
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '250ms' or '2s', got {value!r}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration: write a number and one of the units ms, s, m, h "
            "(for example '250ms', '2s', '1m')"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds` in the document syntax.

    ```pycon
    >>> format_duration(0.25)
    '250ms'
    ```
    """
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    millis = seconds * 1000
    if millis.is_integer():
        return f"{int(millis)}ms"
    return f"{seconds:g}s"


def _coerce(value: Any) -> float:
    # Code may pass a timedelta; documents must spell the unit out.
    if isinstance(value, timedelta):
        return value.total_seconds()
    return parse_duration(value)


Duration = Annotated[
    float,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "examples": ["250ms", "2s", "1m"],
            "description": "A duration: a number and a unit (ms, s, m, h).",
        }
    ),
]
"""Seconds as a float once validated; a string with a unit (or a `timedelta`) as input."""
