"""Run nox from a clone with nothing but `python3`: `python3 tools/nox.py [nox arguments]`.

The README's two commands go through this file. It keeps nox in a virtual
environment of its own, `.venv-nox/` in the clone, made on first use, then
runs `nox` from it with the arguments given. It needs only the standard
library, so it works where `pip install --user nox` does not:

- Debian 12 and Ubuntu 24.04 mark their python3 externally managed (PEP 668)
  and refuse installs outside a virtual environment; this installs into one.
- A fresh Debian or Ubuntu also lacks `ensurepip` (package python3-venv) and
  often pip itself (python3-pip). Without ensurepip the environment is made
  without pip, and pip is put into it by the system's pip when there is one,
  else from its wheel on the package index (`PIP_INDEX_URL`, default PyPI),
  checked against the index's sha256.
- pyenv, python.org and other Pythons simply get `python3 -m venv`.

nox then makes each session's environment with virtualenv (a dependency of
nox that carries its own pip), so sessions never need ensurepip either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-nox"
NOX = "nox>=2025.2.9"  # nox.project.dependency_groups, which noxfile.py uses
MINIMUM = (3, 10)


def _say(message: str) -> None:
    print(f"tools/nox.py: {message}", file=sys.stderr, flush=True)


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _works(python: Path) -> bool:
    """Whether `python` exists, runs, and imports nox."""
    if not python.exists():
        return False
    done = subprocess.run([str(python), "-c", "import nox"], capture_output=True, check=False)
    return done.returncode == 0


def _has_ensurepip() -> bool:
    # Debian ships ensurepip only in python3-venv; without it `python3 -m venv` fails.
    return importlib.util.find_spec("ensurepip") is not None


def _system_pip() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, check=False
    )
    return done.returncode == 0


def _version_key(filename: str) -> tuple[int, ...]:
    """`pip-26.3-py3-none-any.whl` -> (26, 3); pre-releases and odd names sort first."""
    version = filename.split("-")[1]
    return tuple(int(p) for p in version.split(".")) if re.fullmatch(r"[\d.]+", version) else ()


def _pip_wheel(directory: Path) -> Path:
    """Download the newest pip wheel from the package index into `directory`, hash checked."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
    request = urllib.request.Request(
        index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        files: list[dict[str, Any]] = json.load(answer)["files"]
    wheels = [
        f
        for f in files
        if f["filename"].endswith("-py3-none-any.whl")
        and not f.get("yanked")
        and "sha256" in f.get("hashes", {})
        and _version_key(f["filename"])
    ]
    if not wheels:
        raise SystemExit(f"tools/nox.py: no pip wheel found at {index}")
    newest = max(wheels, key=lambda f: _version_key(f["filename"]))
    with urllib.request.urlopen(urllib.parse.urljoin(index, newest["url"]), timeout=120) as answer:
        data: bytes = answer.read()
    if hashlib.sha256(data).hexdigest() != newest["hashes"]["sha256"]:
        raise SystemExit(f"tools/nox.py: {newest['filename']} does not match its sha256")
    path = directory / str(newest["filename"])
    path.write_bytes(data)
    return path


def _run(*command: str | Path) -> None:
    subprocess.run([str(c) for c in command], check=True)


def create() -> Path:
    """Make `.venv-nox` with pip and nox in it, whatever this Python lacks; return its python."""
    with_pip = _has_ensurepip()
    _say(f"making {VENV.name}/ for nox ({'venv' if with_pip else 'venv without ensurepip'})")
    venv.EnvBuilder(with_pip=with_pip, clear=True, symlinks=os.name != "nt").create(VENV)
    python = _venv_python()
    if not with_pip:
        if _system_pip():
            # pip >= 22.3 installs into another interpreter's environment: not the managed one.
            _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "pip")
        else:
            _say("no ensurepip and no pip here: fetching pip's wheel from the package index")
            with tempfile.TemporaryDirectory() as tmp:
                wheel = _pip_wheel(Path(tmp))
                _run(python, wheel / "pip", "install", "--quiet", wheel)
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", NOX)
    return python


def main(argv: list[str]) -> int:
    """Run nox from `.venv-nox` (made first if needed) in the clone, with `argv`."""
    if sys.version_info < MINIMUM:
        _say(
            f"meshlib needs Python {'.'.join(map(str, MINIMUM))} or newer; this is "
            f"{sys.version.split()[0]} ({sys.executable})"
        )
        return 2
    python = _venv_python()
    if not _works(python):
        python = create()
    os.chdir(ROOT)
    command = [str(python), "-m", "nox", *argv]
    if os.name == "nt":  # pragma: no cover - exec does not keep the console on Windows
        return subprocess.run(command, check=False).returncode
    os.execv(command[0], command)  # nox becomes this process: Ctrl-C, exit code
    return 0  # pragma: no cover - not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
