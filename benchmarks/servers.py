"""Upstreams and sidecar pairs on loopback: nginx `return 200`, uvicorn, nginx and HAProxy pairs.

A sidecar pair is the seed's "solution 2": client -> egress proxy (its own
sidecar) -> ingress proxy (the callee's sidecar) -> upstream, each proxy its own
process with one worker, keep-alive pools between hops as a production sidecar
keeps them. The mTLS pair speaks mutual TLS between the two proxies; its
ingress also serves MeshClient's mTLS path directly:

```python
tools = system_tools()
up = start_nginx_upstream(procs, tools)
egress, ingress = start_nginx_pair(procs, tools, up.port)
```
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.certs import Pki
from benchmarks.procs import ProcessSet, Started, free_port

__all__ = [
    "INSTALL_HINT",
    "Pair",
    "SystemTools",
    "start_haproxy_pair",
    "start_nginx_pair",
    "start_nginx_upstream",
    "start_uvicorn_upstream",
    "system_tools",
]

INSTALL_HINT = (
    "install them from the system's package manager, e.g. on Debian/Ubuntu "
    "`sudo apt-get install -y nginx haproxy`, on Fedora `sudo dnf install nginx haproxy`, "
    "on macOS `brew install nginx haproxy`"
)
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SystemTools:
    """Where nginx and haproxy are, or None when missing."""

    nginx: str | None
    haproxy: str | None

    def missing(self) -> list[str]:
        """Names of the tools not found."""
        return [name for name in ("nginx", "haproxy") if getattr(self, name) is None]


@dataclass(frozen=True)
class Pair:
    """A sidecar pair: the client talks to `egress`; `ingress` forwards to the upstream."""

    egress: Started
    ingress: Started

    @property
    def pids(self) -> tuple[int, int]:
        """Both proxies' PIDs, for CPU accounting."""
        return (self.egress.pid, self.ingress.pid)


def system_tools() -> SystemTools:
    """Look nginx and haproxy up on PATH and in the usual sbin directories."""
    extra = "/usr/sbin:/usr/local/sbin:/sbin:/opt/homebrew/bin:/usr/local/bin"
    return SystemTools(
        nginx=shutil.which("nginx") or shutil.which("nginx", path=extra),
        haproxy=shutil.which("haproxy") or shutil.which("haproxy", path=extra),
    )


def _nginx_conf(procs: ProcessSet, name: str, http_block: str) -> Path:
    root = procs.workdir / name
    root.mkdir()
    conf = root / "nginx.conf"
    temps = "\n".join(
        f"    {kind}_temp_path {root}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{temps}
{http_block}
}}
"""
    )
    return conf


def _start_nginx(
    procs: ProcessSet, tools: SystemTools, name: str, port: int, http_block: str
) -> Started:
    assert tools.nginx is not None
    conf = _nginx_conf(procs, name, http_block)
    argv = [
        tools.nginx,
        "-p",
        str(conf.parent),
        "-c",
        str(conf),
        "-e",
        str(conf.parent / "error.log"),
    ]
    return procs.start(name, argv, port=port)


def start_nginx_upstream(procs: ProcessSet, tools: SystemTools) -> Started:
    """The cheap upstream: nginx answering `200 ok` without touching disk."""
    port = free_port()
    block = f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}"""
    return _start_nginx(procs, tools, "upstream-nginx", port, block)


def start_uvicorn_upstream(procs: ProcessSet, *, mesh: bool = False) -> Started:
    """The realistic upstream: `benchmarks.upstream_app` under uvicorn, one worker.

    `mesh`: the same app behind `MeshMiddleware` (`upstream_app.mesh_app`).
    """
    port = free_port()
    app = (
        ["benchmarks.upstream_app:mesh_app", "--factory"]
        if mesh
        else ["benchmarks.upstream_app:app"]
    )
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        *app,
        "--app-dir",
        str(_REPO),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    name = "upstream-uvicorn-mesh" if mesh else "upstream-uvicorn"
    return procs.start(name, argv, port=port, cwd=_REPO)


def _proxy_block(
    listen: str, target: str, upstream_extra: str = "", location_extra: str = ""
) -> str:
    return f"""    upstream next_hop {{
        server {target};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass {upstream_extra}://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{location_extra}
        }}
    }}"""


def start_nginx_pair(
    procs: ProcessSet, tools: SystemTools, upstream_port: int, *, label: str, pki: Pki | None = None
) -> Pair:
    """Egress nginx -> ingress nginx -> upstream; with `pki` the middle hop is mutual TLS."""
    in_port, out_port = free_port(), free_port()
    if pki is None:
        ingress_block = _proxy_block(f"127.0.0.1:{in_port}", f"127.0.0.1:{upstream_port}", "http")
        egress_block = _proxy_block(f"127.0.0.1:{out_port}", f"127.0.0.1:{in_port}", "http")
    else:
        tls_server = f"""    ssl_certificate {pki.server_cert};
    ssl_certificate_key {pki.server_key};
    ssl_client_certificate {pki.ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:1m;
"""
        ingress_block = tls_server + _proxy_block(
            f"127.0.0.1:{in_port} ssl", f"127.0.0.1:{upstream_port}", "http"
        )
        egress_block = _proxy_block(
            f"127.0.0.1:{out_port}",
            f"127.0.0.1:{in_port}",
            "https",
            f"""            proxy_ssl_certificate {pki.client_cert};
            proxy_ssl_certificate_key {pki.client_key};
            proxy_ssl_trusted_certificate {pki.ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;""",
        )
    ingress = _start_nginx(procs, tools, f"{label}-ingress", in_port, ingress_block)
    egress = _start_nginx(procs, tools, f"{label}-egress", out_port, egress_block)
    return Pair(egress, ingress)


def _haproxy(procs: ProcessSet, tools: SystemTools, name: str, port: int, target: int) -> Started:
    assert tools.haproxy is not None
    cfg = procs.workdir / f"{name}.cfg"
    cfg.write_text(
        f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend listen_{port}
    bind 127.0.0.1:{port}
    default_backend next_hop

backend next_hop
    server hop 127.0.0.1:{target}
"""
    )
    return procs.start(name, [tools.haproxy, "-db", "-f", str(cfg)], port=port)


def start_haproxy_pair(
    procs: ProcessSet, tools: SystemTools, upstream_port: int, *, label: str
) -> Pair:
    """Egress HAProxy -> ingress HAProxy -> upstream, one thread each."""
    in_port, out_port = free_port(), free_port()
    ingress = _haproxy(procs, tools, f"{label}-ingress", in_port, upstream_port)
    egress = _haproxy(procs, tools, f"{label}-egress", out_port, in_port)
    return Pair(egress, ingress)
