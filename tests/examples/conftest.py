"""Fixtures for the example mesh: the examples directory importable, and the mesh running."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session", autouse=True)
def examples_importable() -> Iterator[None]:
    """Put examples/ on sys.path, as running `python examples/<service>.py` does."""
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))
