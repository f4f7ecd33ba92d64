"""nox is the single entry point: `nox` runs the test suite, `nox -s demo` the demo.

Default sessions: tests, lint, typing, docs. Others: browser (needs Debian's chromium),
readme (the README's two commands with Debian's python3), demo, bench, soak. From a bare clone,
`python3 tools/nox.py ...` runs nox without installing it anywhere but `.venv-nox/`.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
# virtualenv (a nox dependency) carries its own pip: sessions need no ensurepip, which a fresh
# Debian or Ubuntu lacks (python3-venv), and which `python -m venv` would.
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests", "lint", "typing", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = os.environ.get("MESH_NOX_PYTHON") or None


def _install(session: nox.Session, *groups: str, extras: str = "all") -> None:
    requirements = [
        req for group in groups for req in nox.project.dependency_groups(PYPROJECT, group)
    ]
    session.install("-q", f".[{extras}]" if extras else ".", *requirements)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage (browser and README tests excluded: see below).

    `nox -s tests -- tests/test_cli.py` runs a part; coverage is then reported, not judged.
    """
    _install(session, "tests")
    session.run("coverage", "erase")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        "-m",
        "not browser and not readme",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )
    session.run("coverage", "combine", "-q", success_codes=[0, 1])
    session.run("coverage", "report", *(["--fail-under=0"] if session.posargs else []))


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """Tests that drive Debian's headless chromium (apt-get install chromium chromium-driver)."""
    _install(session, "tests")
    session.run("pytest", "-m", "browser", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def readme(session: nox.Session) -> None:
    """The README's two commands, run with Debian's /usr/bin/python3 in a fresh HOME (CI)."""
    _install(session, "tests")
    session.run("pytest", "-m", "readme", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _install(session, "lint", extras="")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on src/ and on tests/typing (the public API as users call it)."""
    _install(session, "typing")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation strictly (warnings are errors)."""
    _install(session, "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")  # README: open site/index.html


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo mesh on 127.0.0.1 for a bounded time (`nox -s demo -- --keep-running`)."""
    _install(session, "demo")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against bare httpx and sidecar proxies (`nox -s bench -- --quick`; `-- --soak` adds the soak).

    First the cost of `import meshlib` (fresh interpreters), then the request tables.
    """
    _install(session, "bench")
    args = [arg for arg in session.posargs if arg != "--soak"]
    rounds = "5" if "--quick" in args else "15"
    session.run("python", "benchmarks/bench_import.py", "--rounds", rounds)
    session.run("python", "benchmarks/run.py", *args)
    if "--soak" in session.posargs:  # minutes, not seconds: only when asked
        session.run("python", "benchmarks/soak.py", "--out", "benchmarks/results")


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The soak benchmark alone: 100,000 calls per client kind, failures and swaps, watched for growth."""
    _install(session, "bench")
    session.run("python", "benchmarks/soak.py", "--out", "benchmarks/results", *session.posargs)
