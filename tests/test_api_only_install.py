"""`pip install servicemeshlib` without extras: it imports and works with the OpenTelemetry API only.

OpenTelemetry asks libraries to depend on the API alone. This builds the
project's wheel, makes a fresh virtual environment that holds only the core
dependencies (linked from this environment's installed distributions, so no
network and a few seconds), installs the wheel there with pip, lets
`pip check` confirm the core requirements are complete, and runs a mesh call
and an inbound request in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "servicemeshlib"

SCRIPT = r"""
import http.server, json, threading, importlib.util
import httpx
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
import meshlib
from meshlib import MeshClient, MeshMiddleware
from meshlib.errors import SettingsError
from meshlib.settings import MeshSettings
from meshlib.telemetry.setup import configure_telemetry

seen = {}

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.update({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("server-timing", "app;dur=1.5")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
policy = meshlib.Policy.model_validate(
    {"version": 1, "services": {"payments": {"endpoints": [f"http://127.0.0.1:{server.server_port}"]}}}
)
parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(3))
with MeshClient(policy, service_name="orders") as client:
    with trace.use_span(NonRecordingSpan(parent)):
        response = client.get("http://payments/v1", extensions={"meshlib.latency": True})
split = response.extensions["meshlib.latency"]

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"in"})

import asyncio
async def call():
    middleware = MeshMiddleware(app, policy=policy, service_name="payments")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(middleware), base_url="http://payments") as c:
        return await c.get("/x", headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
inbound_response = asyncio.run(call())
try:
    configure_telemetry(MeshSettings(telemetry="console"))
    error = None
except SettingsError as exc:
    error = str(exc)
server.shutdown()
print(json.dumps({
    "sdk": importlib.util.find_spec("opentelemetry.sdk") is not None,
    "status": response.status_code,
    "traceparent": seen.get("traceparent"),
    "request_id": seen.get("x-request-id"),
    "service": split.service,
    "network": split.network,
    "inbound": [inbound_response.status_code, inbound_response.headers.get("server-timing", "")],
    "error": error,
}))
"""


def _closure(name: str) -> dict[str, metadata.Distribution]:
    """Every installed distribution the core (no extras) of `name` needs, itself excluded."""
    found: dict[str, metadata.Distribution] = {}
    pending = [
        Requirement(r) for r in metadata.distribution(name).requires or () if _core(Requirement(r))
    ]
    while pending:
        requirement = pending.pop()
        key = canonicalize_name(requirement.name)
        if key in found:
            continue
        dist = metadata.distribution(requirement.name)
        found[key] = dist
        pending += [Requirement(r) for r in dist.requires or () if _core(Requirement(r))]
    return found


def _core(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def _link(dist: metadata.Distribution, site: Path) -> None:
    """Make `dist`'s installed files visible in `site`, file by file (namespace packages such
    as `opentelemetry` are shared with distributions that must stay out, the SDK among them)."""
    base = Path(str(dist.locate_file("")))
    for file in dist.files or ():
        relative = Path(str(file))
        if relative.parts[0] == ".." or "__pycache__" in relative.parts:
            continue
        source, target = base / relative, site / relative
        if source.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


def test_core_install_imports_and_runs_with_the_api_only(tmp_path: Path) -> None:
    """No SDK, no instrumentation: pip check passes, a mesh call and an inbound request work, trace
    context flows (flags kept), the split is measured, and configure_telemetry says what to install."""
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import hatchling.build as b; print(b.build_wheel({str(wheels)!r}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    wheel = wheels / built.stdout.strip().splitlines()[-1]
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    closure = _closure(DISTRIBUTION)
    assert "opentelemetry-api" in closure
    assert "opentelemetry-sdk" not in closure
    assert "opentelemetry-instrumentation-httpx" not in closure
    for dist in closure.values():
        _link(dist, site)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    quiet = {"capture_output": True, "text": True, "timeout": 120}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "PIP_"))}
    installed = subprocess.run(
        [*pip, "install", "--no-index", "--no-deps", "--quiet", str(wheel)],
        env=clean,
        check=False,
        **quiet,
    )
    assert installed.returncode == 0, installed.stderr
    checked = subprocess.run([*pip, "check"], env=clean, check=False, **quiet)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    run = subprocess.run(
        [python, "-c", SCRIPT],
        cwd=tmp_path,
        env={**clean, "PYTHONWARNINGS": "error"},
        check=False,
        **quiet,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["sdk"] is False
    assert out["status"] == 200
    trace_id, flags = out["traceparent"].split("-")[1], out["traceparent"].split("-")[3]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert flags == "03"
    assert len(out["request_id"]) == 36
    assert 0.0 < out["service"] <= 0.0015  # the callee's 1.5 ms, capped at the wire time
    assert out["network"] is not None
    assert out["inbound"][0] == 200
    assert out["inbound"][1].startswith("app;dur=")
    assert "pip install 'servicemeshlib[otel]'" in out["error"]
