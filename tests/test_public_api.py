"""The public surface: what `meshlib` exports, what the docs use of it, and a cheap, inert import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import meshlib

ROOT = Path(__file__).resolve().parents[1]

TOP_LEVEL = [
    "AsyncMeshClient",
    "AsyncMeshTransport",
    "CertificateError",
    "CircuitOpenError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "MeshClient",
    "MeshError",
    "MeshMiddleware",
    "MeshSettings",
    "MeshTransport",
    "MeshWSGIMiddleware",
    "NoEndpointsError",
    "PeerIdentityError",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyStore",
    "SettingsError",
    "TLSRequiredError",
    "TLSVerificationError",
    "__version__",
    "load_policy",
    "parse_policy",
]
"""The clients, middleware, policy, settings and errors a service uses; a change here is deliberate."""


def _user_texts() -> list[tuple[str, str]]:
    """The README, the docs pages and the examples: the code users read and copy."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    paths += sorted((ROOT / "examples").glob("*.py"))
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths]


def test_top_level_is_exactly_the_user_names() -> None:
    """`__all__` is sorted and holds only the names a service needs."""
    assert meshlib.__all__ == TOP_LEVEL
    assert meshlib.__all__ == sorted(meshlib.__all__)


def test_every_top_level_name_resolves_and_is_listed_by_dir() -> None:
    """Each exported name imports from its home module; `dir()` shows exactly them (and submodules)."""
    for name in TOP_LEVEL:
        value = getattr(meshlib, name)
        if name != "__version__":
            assert value.__module__.startswith("meshlib."), name
    public = {n for n in dir(meshlib) if not n.startswith("_")}
    modules = {n for n in public if isinstance(getattr(meshlib, n), types.ModuleType)}
    assert public - modules == set(TOP_LEVEL) - {"__version__"}


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("resolve", "meshlib.policy.resolve"),
        ("EffectivePolicy", "meshlib.policy.resolve"),
        ("PolicySnapshot", "meshlib.policy.store"),
        ("FileSource", "meshlib.policy.sources"),
        ("ControlPlaneSource", "meshlib.controlplane.client"),
        ("configure_telemetry", "meshlib.telemetry.setup"),
        ("set_testing", "meshlib.testing"),
        ("deadline_scope", "meshlib.deadline"),
    ],
)
def test_internals_live_in_their_modules_only(name: str, home: str) -> None:
    """Names moved off the top level raise AttributeError there and import from their module."""
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(meshlib, name)
    assert hasattr(__import__(home, fromlist=[name]), name)


def test_meshlib_serve_is_the_module_its_docstring_shows() -> None:
    """`import meshlib.serve; meshlib.serve.serve(...)` works: no top-level function shadows the module."""
    code = (
        "import meshlib, meshlib.serve\n"
        "for name in meshlib.__all__: getattr(meshlib, name)\n"
        "assert callable(meshlib.serve.serve), meshlib.serve\n"
        "assert meshlib.serve.__name__ == 'meshlib.serve'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_readme_and_examples_use_only_exported_names() -> None:
    """Every `meshlib.Name` and `from meshlib import name` users read is in `__all__` (or a submodule)."""
    missing: list[str] = []
    for where, text in _user_texts():
        for match in re.finditer(r"\bmeshlib\.([A-Z]\w*)", text):
            if match.group(1) not in TOP_LEVEL:
                missing.append(f"{where}: meshlib.{match.group(1)}")
        for match in re.finditer(r"^\s*from meshlib import (\([^)]*\)|.*)$", text, re.M):
            names = [n.strip().split(" as ")[0] for n in match.group(1).strip("()").split(",")]
            missing += [
                f"{where}: from meshlib import {n}" for n in names if n and n not in TOP_LEVEL
            ]
    assert not missing, missing


def test_examples_import_only_exported_names_from_the_top_level() -> None:
    """The examples' `from meshlib import ...` statements, parsed, use only `__all__`."""
    for path in sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "meshlib":
                assert {a.name for a in node.names} <= set(TOP_LEVEL), path


def test_version_comes_from_the_distribution_metadata() -> None:
    """`__version__` is the installed distribution's (servicemeshlib) version."""
    from importlib.metadata import version

    assert meshlib.__version__ == version("servicemeshlib")


def test_import_is_inert_and_light() -> None:
    """`import meshlib` imports none of its dependencies or submodules and starts no thread."""
    code = (
        "import sys, threading\n"
        "before = set(sys.modules)\n"
        "import meshlib\n"
        "new = sorted(set(sys.modules) - before)\n"
        "heavy = [m for m in new if m.split('.')[0] in ('httpx', 'tenacity', 'pybreaker', "
        "'pydantic', 'pydantic_settings', 'opentelemetry', 'yaml', 'anyio', 'typing')]\n"
        "assert not heavy, heavy\n"
        "assert [m for m in new if m.startswith('meshlib')] == ['meshlib'], new\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_policy_and_settings_import_no_framework() -> None:
    """Loading a policy and settings imports no web framework, no cryptography and starts no thread."""
    code = (
        "import sys, threading, meshlib\n"
        "meshlib.load_policy; meshlib.MeshSettings\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi','flask','starlette','uvicorn','werkzeug','cryptography','aiohttp')]\n"
        "assert not bad, bad\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
