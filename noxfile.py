"""nox is the single entry point: `nox` runs the test suite, `nox -s demo` the demo.

Default sessions: tests, lint, typing, docs. Others: browser (needs Debian's chromium),
demo, bench.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
nox.options.default_venv_backend = "venv"
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
    """The test suite with branch coverage (browser tests excluded: see `browser`)."""
    _install(session, "tests")
    session.run("coverage", "erase")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        "-m",
        "not browser",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )
    session.run("coverage", "combine", "-q", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """Tests that drive Debian's headless chromium (apt-get install chromium chromium-driver)."""
    _install(session, "tests")
    session.run("pytest", "-m", "browser", "-p", "no:cacheprovider", *session.posargs)


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
    session.run("mkdocs", "build", "--strict", "--site-dir", session.create_tmp() + "/site")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo mesh on 127.0.0.1 for a bounded time (`nox -s demo -- --keep-running`)."""
    _install(session, "demo")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against bare httpx and sidecar proxies (`nox -s bench -- --quick`)."""
    _install(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)
