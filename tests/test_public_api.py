"""The public surface: exported names, version, and a side-effect-free import."""

from __future__ import annotations

import subprocess
import sys

import meshlib


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and lists exactly the public names of the package."""
    public = {name for name in vars(meshlib) if not name.startswith("_")} - {"annotations"}
    modules = {name for name in public if type(getattr(meshlib, name)).__name__ == "module"}
    assert meshlib.__all__ == sorted(set(meshlib.__all__))
    assert set(meshlib.__all__) - {"__version__"} == public - modules


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert meshlib.__version__ == version("meshlib")


def test_import_starts_nothing_and_imports_no_framework() -> None:
    """Importing meshlib imports no web framework and starts no thread."""
    code = (
        "import sys, threading, meshlib\n"
        "meshlib.load_policy; meshlib.MeshSettings\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi','flask','starlette','uvicorn','werkzeug','cryptography','aiohttp')]\n"
        "assert not bad, bad\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
