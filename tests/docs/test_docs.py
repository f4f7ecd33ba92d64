"""The docs' code blocks run: every python block's imports, marked blocks in full, the tutorial for real.

Conventions are in tests/docs/markdown.py: `<!-- test -->` runs a python
block, `<!-- file: NAME -->` writes a block to a file, `<!-- test: background -->`
and `<!-- test: run -->` run a console block's commands, `<!-- test: background
output -->` checks a block's lines against what the background commands printed,
and `<!-- test: ports ... -->` swaps a page's ports for free ones.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docs.markdown import Block, Page, commands, matches, read_page
from tests.support.servers import free_port

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PYTHON = ("python", "py")


def _name(page: Path) -> str:
    return str(page.relative_to(DOCS))


def _python_blocks() -> list[Any]:
    return [
        pytest.param(page, block, id=f"{_name(page)}:{block.line}")
        for page in PAGES
        for block in read_page(page).blocks
        if block.lang in PYTHON
    ]


def _runnable_pages() -> list[Any]:
    return [
        pytest.param(page, id=_name(page))
        for page in PAGES
        if any(b.directive for b in read_page(page).blocks)
    ]


def _local_modules(page: Page) -> set[str]:
    return {
        Path(b.directive.split(":", 1)[1].strip()).stem
        for b in page.blocks
        if b.directive and b.directive.startswith("file:") and b.directive.endswith(".py")
    }


@pytest.mark.parametrize(("page", "block"), _python_blocks())
def test_python_block_parses_and_its_imports_exist(page: Path, block: Block) -> None:
    """Every python block in the docs is valid Python, and every name it imports exists."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(block.code, f"{page}:{block.line}", "exec", flags=flags)
    local = _local_modules(read_page(page))
    imports: list[ast.stmt] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and not (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in local)
        and not (isinstance(node, ast.Import) and node.names[0].name.split(".")[0] in local)
    ]
    module = ast.Module(body=imports, type_ignores=[])
    exec(compile(module, f"{page}:{block.line}", "exec"), {})


def _with_free_ports(page: Path) -> Page:
    text = page.read_text(encoding="utf-8")
    for port in read_page(page, text).ports:
        text = re.sub(rf"\b{port}\b", str(free_port()), text)
    return read_page(page, text)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for_port(command: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    port = re.search(r"--port[ =](\d+)", command)
    if port is None:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"`{command}` exited:\n{log.read_text()}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", int(port.group(1)))) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"`{command}` did not listen on port {port.group(1)}:\n{log.read_text()}")


def _close_clients(namespace: dict[str, Any]) -> None:
    """Close the clients a page left open (at exit, in its words), so no state outlives its test."""
    for value in namespace.values():
        if isinstance(value, httpx.Client) and not value.is_closed:
            atexit.unregister(value.close)
            value.close()
        elif isinstance(value, httpx.AsyncClient) and not value.is_closed:
            asyncio.run(value.aclose())


@pytest.mark.parametrize("page", _runnable_pages())
def test_page_runs_as_written(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's marked blocks run in order, in a fresh directory, and show the output it promises."""
    parsed = _with_free_ports(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    background: list[tuple[subprocess.Popen[bytes], Any]] = []
    env = _environment()
    try:
        for block in parsed.blocks:
            where = f"{_name(page)}:{block.line}"
            directive = block.directive or ""
            if directive.startswith("file:"):
                (tmp_path / directive.split(":", 1)[1].strip()).write_text(block.code)
            elif directive == "test" and block.lang in PYTHON:
                exec(compile(block.code, where, "exec"), namespace)
            elif directive == "test: background":
                for number, command in enumerate(commands(block)):
                    log = tmp_path / f"background-{block.line}-{number}.log"
                    out = log.open("wb")
                    proc = subprocess.Popen(
                        ["bash", "-c", command.command],
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                    background.append((proc, out))
                    _wait_for_port(command.command, proc, log)
            elif directive == "test: run":
                for command in commands(block):
                    result = subprocess.run(
                        ["bash", "-c", command.command],
                        cwd=tmp_path,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                    )
                    output = result.stdout + result.stderr
                    assert result.returncode == 0, f"{where}: `{command.command}`:\n{output}"
                    for line in command.expected:
                        assert matches(line, output), f"{where}: {line!r} not in:\n{output}"
            elif directive == "test: background output":
                logs = "".join(
                    path.read_text(errors="replace")
                    for path in sorted(tmp_path.glob("background-*.log"))
                )
                for line in block.code.splitlines():
                    if line.strip():
                        assert matches(line, logs), f"{where}: {line!r} not in:\n{logs}"
            elif directive not in ("", "test: skip") and not directive.startswith("test: skip "):
                raise AssertionError(f"{where}: unknown directive {directive!r}")
    finally:
        _close_clients(namespace)
        for proc, _out in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the session this test started
        for proc, out in background:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.close()


def test_every_generated_marker_in_the_docs_is_rendered_by_the_hooks() -> None:
    """docs/hooks.py replaces each `<!-- generated: ... -->` marker a page uses, so no section is empty."""
    sys.path.insert(0, str(DOCS))
    try:
        import hooks  # docs/hooks.py, as mkdocs loads it
    finally:
        sys.path.remove(str(DOCS))
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        rendered = hooks.on_page_markdown(text)
        left = re.findall(r"<!-- generated: [\w-]+ -->", rendered)
        assert not left, f"{_name(page)}: docs/hooks.py does not render {left}"


def test_every_docs_page_is_in_the_nav() -> None:
    """mkdocs.yml's nav lists every page under docs/, so none is built but unreachable."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # !!python/name etc.
    config = yaml.load((DOCS.parent / "mkdocs.yml").read_text(), Loader=_Loader)

    def listed(items: Any) -> set[str]:
        found: set[str] = set()
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found |= listed(value) if isinstance(value, list) else {str(value)}
        return found

    pages = {str(page.relative_to(DOCS)) for page in PAGES}
    assert pages - listed(config["nav"]) == set()
