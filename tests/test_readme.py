"""The README as a newcomer meets it: its two commands, its taste, and what they stand on.

The two commands run for real (`readme` marker, `nox -s readme`, in CI): with
Debian's own /usr/bin/python3 (externally managed, PEP 668) in a fresh HOME,
on a copy of this clone. The bootstrap's paths for a Python without ensurepip
(a fresh Debian or Ubuntu without python3-venv), with and without pip, run too.
The taste runs in the ordinary suite against a real flaky server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEBIAN_PYTHON = Path("/usr/bin/python3")
_KEPT = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE")


def readme_commands() -> list[str]:
    """The commands of the README's first console block, comments stripped."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```console\n(.*?)```", text, re.S)
    assert block is not None, "the README has no console block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_gives_two_commands_one_for_the_demo() -> None:
    """Exactly two commands, both through tools/nox.py with python3: the demo and the whole suite."""
    demo, suite = readme_commands()
    assert demo == "python3 tools/nox.py -s demo"
    assert suite == "python3 tools/nox.py"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run calls the README's test command as written, and installs nox no other way."""
    _, suite = readme_commands()
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(suite)}$", script, re.M), script
    assert "pip install" not in script


def test_the_readme_docs_path_is_where_the_docs_session_builds() -> None:
    """The README's `site/` is the --site-dir of the docs session."""
    assert "builds it into `site/`" in README.read_text(encoding="utf-8")
    assert '"--site-dir", "site"' in (ROOT / "noxfile.py").read_text(encoding="utf-8")


@pytest.fixture
def flaky_payments() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A payments server whose first charge answers 503, then 201; it records each request's headers."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.support.servers import serve_asgi

    seen: list[dict[str, str]] = []

    async def charge(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({"ok": len(seen) > 1}, status_code=503 if len(seen) == 1 else 201)

    app = Starlette(routes=[Route("/v1/charges", charge, methods=["POST"])])
    with serve_asgi(app) as server:
        yield server.url, seen


def test_the_taste_retries_the_post_because_it_carries_an_idempotency_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flaky_payments: tuple[str, list[Any]]
) -> None:
    """The README's taste, run as written: its POST meets a 503, is retried, and is paid."""
    url, seen = flaky_payments
    (tmp_path / "mesh.yaml").write_text(
        f"version: 1\nservices:\n  payments:\n    endpoints: ['{url}']\n"
        "  orders:\n    endpoints: ['http://127.0.0.1:1']\n"
    )
    monkeypatch.chdir(tmp_path)
    taste = _python_blocks()[0]
    namespace: dict[str, Any] = {}
    try:
        exec(compile(taste, "README.md", "exec"), namespace)
        response = namespace["response"]
        attempts = response.extensions["meshlib.attempts"]
        assert response.status_code == 201
        assert len(attempts) == 2  # the 503, then the retry that was paid
        assert [h["idempotency-key"] for h in seen] == ["order-7", "order-7"]
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()


def test_the_same_post_without_the_key_is_not_retried_after_a_503(
    tmp_path: Path, flaky_payments: tuple[str, list[Any]]
) -> None:
    """What the taste's comment says: without an Idempotency-Key, the POST's 503 is returned."""
    from meshlib import MeshClient, parse_policy

    url, seen = flaky_payments
    policy = parse_policy(f"version: 1\nservices:\n  payments:\n    endpoints: ['{url}']\n")
    with MeshClient(policy, service_name="orders") as client:
        response = client.post("http://payments/v1/charges", json={"order": 7})
    assert response.status_code == 503
    assert len(response.extensions["meshlib.attempts"]) == 1
    assert len(seen) == 1


# --- the two commands, for real (CI: `nox -s readme`) ---------------------------------------


def _debian_python() -> Path:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("needs the distribution's /usr/bin/python3 (Debian/Ubuntu; CI has it)")
    version = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 10))"],
        capture_output=True,
        text=True,
        check=True,
    )
    if version.stdout.strip() != "True":
        pytest.skip("the distribution's python3 is older than meshlib's minimum, 3.10")
    return DEBIAN_PYTHON


def _copy_of_the_clone(destination: Path) -> Path:
    """The clone's files as git knows them (tracked and new, not ignored), without any venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _fresh_environment(tmp_path: Path, python: Path) -> dict[str, str]:
    """A new HOME, `python3` meaning the distribution's, and only the machine's pip settings."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    env = {
        k: v for k, v in os.environ.items() if k.startswith(_KEPT) or k.lower().endswith("_proxy")
    }
    env.update(
        HOME=str(home), PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", LANG="C.UTF-8"
    )
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"`{shlex.join(command)}` exited {done.returncode}:\n{done.stdout}"
    return done.stdout


@pytest.mark.readme
@pytest.mark.timeout(1500)
def test_the_two_commands_with_debians_python3_in_a_fresh_home(tmp_path: Path) -> None:
    """Both README commands work with Debian's externally managed python3 and an empty HOME.

    The demo runs for 5 s (its minimum); the suite command runs the tests session on one file,
    so this test does not run itself again.
    """
    python = _debian_python()
    clone = _copy_of_the_clone(tmp_path / "clone")
    env = _fresh_environment(tmp_path, python)
    demo, suite = (shlex.split(c) for c in readme_commands())

    out = _run([*demo, "--", "--duration", "5"], clone, env, timeout=900)
    assert "All demo processes stopped." in out, out
    config = (clone / ".venv-nox" / "pyvenv.cfg").read_text()
    assert f"executable = {python.resolve()}" in config, config  # nox runs on Debian's python3
    out = _run([*suite, "-s", "tests", "--", "tests/test_public_api.py"], clone, env, timeout=900)
    assert re.search(r"\d+ passed", out), out
    user_site = Path(env["HOME"]) / ".local"
    assert not user_site.exists(), list(user_site.rglob("*"))[:20]  # nothing installed --user


_WITHOUT_ENSUREPIP = """
import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("bootstrap", sys.argv[1])
bootstrap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bootstrap)
bootstrap.VENV = pathlib.Path(sys.argv[2])
bootstrap._has_ensurepip = lambda: False  # a Debian or Ubuntu without python3-venv
if sys.argv[3] == "no-pip":
    bootstrap._system_pip = lambda: False  # ... and without python3-pip
print(bootstrap.create())
"""


@pytest.mark.readme
@pytest.mark.parametrize("pip", ["system-pip", "no-pip"])
def test_the_bootstrap_without_ensurepip(tmp_path: Path, pip: str) -> None:
    """Without ensurepip (no python3-venv), nox still lands in .venv-nox: by the system's pip, or pip's wheel."""
    python = _debian_python()
    env = _fresh_environment(tmp_path, python)
    venv = tmp_path / ".venv-nox"
    script = ["python3", "-c", _WITHOUT_ENSUREPIP, str(ROOT / "tools" / "nox.py"), str(venv), pip]
    out = _run(script, tmp_path, env, timeout=300)
    assert ("fetching pip's wheel" in out) is (pip == "no-pip"), out
    made = venv / "bin" / "python"
    assert out.strip().endswith(str(made)), out
    versions = _run([str(made), "-m", "nox", "--version"], tmp_path, env, timeout=60)
    assert re.match(r"\d{4}\.", versions.strip().splitlines()[-1]), versions
    pip_home = _run([str(made), "-m", "pip", "--version"], tmp_path, env, timeout=60)
    assert str(venv) in pip_home, pip_home  # pip lives in the new environment, not borrowed
