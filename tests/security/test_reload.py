"""Reloading: files re-read when they change, at most once per interval, keeping the last good value."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib.clock import FakeClock
from meshlib.errors import CertificateError
from meshlib.security.reload import Reloading


def _reader(path: Path, calls: list[str]) -> Callable[[], str]:
    def build() -> str:
        text = path.read_text()
        calls.append(text)
        if text.startswith("bad"):
            raise CertificateError(f"{path}: {text}")
        return text

    return build


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode, as an atomic rotation makes


def test_first_build_errors_propagate(tmp_path: Path) -> None:
    """With nothing to fall back on, a bad first build raises."""
    path = tmp_path / "f"
    path.write_text("bad start")
    with pytest.raises(CertificateError, match="bad start"):
        Reloading(_reader(path, []), [path], clock=FakeClock())


def test_checks_at_most_once_per_interval(tmp_path: Path) -> None:
    """A change is seen only once the interval has passed since the last check."""
    path, calls, clock = tmp_path / "f", list[str](), FakeClock()
    path.write_text("one")
    material = Reloading(_reader(path, calls), [path], interval=1.0, clock=clock)
    _replace(path, "two")
    clock.advance(0.5)
    assert material.current() == "one"
    clock.advance(0.5)
    assert material.current() == "two"
    assert material.generation == 1
    assert calls == ["one", "two"]
    clock.advance(5)
    assert material.current() == "two"
    assert calls == ["one", "two"]  # unchanged files are not re-read


def test_a_bad_rotation_keeps_the_last_good_value_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbage file keeps the previous value, logs once, and a later good file is picked up."""
    path, calls, clock = tmp_path / "f", list[str](), FakeClock()
    path.write_text("good")
    material = Reloading(_reader(path, calls), [path], interval=1.0, clock=clock, name="test files")
    _replace(path, "bad half-written")
    for _ in range(3):
        clock.advance(1)
        assert material.current() == "good"
    assert material.failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "test files changed but cannot be loaded, keeping the previous ones"
        in warnings[0].getMessage()
    )
    _replace(path, "fixed")
    clock.advance(1)
    assert material.current() == "fixed"
    assert material.generation == 1


def test_a_missing_file_keeps_the_last_good_value(tmp_path: Path) -> None:
    """A file deleted mid-rotation does not take the value away."""
    path, clock = tmp_path / "f", FakeClock()
    path.write_text("good")

    def build() -> str:
        try:
            return path.read_text()
        except OSError as exc:
            raise CertificateError(str(exc)) from None

    material = Reloading(build, [path], interval=1.0, clock=clock)
    path.unlink()
    clock.advance(1)
    assert material.current() == "good"
    assert material.failures == 1


def test_unexpected_errors_never_escape(tmp_path: Path) -> None:
    """Even a bug in the builder leaves the old value in place rather than failing a connection."""
    path, clock, state = tmp_path / "f", FakeClock(), {"n": 0}
    path.write_text("a")

    def build() -> int:
        state["n"] += 1
        if state["n"] > 1:
            raise RuntimeError("boom")
        return 1

    material = Reloading(build, [path], interval=1.0, clock=clock)
    _replace(path, "b")
    clock.advance(1)
    assert material.current() == 1
    assert material.failures == 1
