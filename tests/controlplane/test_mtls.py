"""`meshlib controlplane serve` over mTLS: a client certificate's SPIFFE ID can hold the publish right."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from meshlib.security.ca import DevCA
from tests.controlplane.conftest import POLICY_V2
from tests.support.servers import free_port

DEPLOYER = "spiffe://example.org/deployer"


def test_publish_identity_from_the_client_certificate(policy_dir: Path, tmp_path: Path) -> None:
    """With --tls-ca, a client proving a listed SPIFFE ID publishes without a token; others get 401."""
    ca = DevCA.create("example.org", tmp_path / "ca")
    server = ca.issue("controlplane", dns=["localhost"], ips=["127.0.0.1"])
    deployer = ca.issue("deployer")
    stranger = ca.issue("stranger")
    port = free_port()
    env = {**os.environ, "MESH_CONTROLPLANE_PUBLISH_IDENTITIES": DEPLOYER}
    cmd = [
        sys.executable,
        "-m",
        "meshlib",
        "controlplane",
        "serve",
        "--policy",
        str(policy_dir),
        "--port",
        str(port),
        "--tls-cert",
        str(server.cert_path),
        "--tls-key",
        str(server.key_path),
        "--tls-ca",
        str(ca.cert_path),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"

    def client(cert: Path | None = None, key: Path | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        if cert is not None:
            context.load_cert_chain(cert, key)
        return httpx.Client(base_url=url, verify=context, timeout=10)

    try:
        with (
            client(deployer.cert_path, deployer.key_path) as as_deployer,
            client(stranger.cert_path, stranger.key_path) as as_stranger,
            client() as anonymous,
        ):
            for _ in range(400):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    if as_deployer.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            published = as_deployer.put("/v1/policy", content=POLICY_V2)
            assert published.status_code == 201, published.text
            assert published.json()["who"] == DEPLOYER
            assert as_stranger.put("/v1/policy", content=POLICY_V2).status_code == 401
            assert anonymous.put("/v1/policy", content=POLICY_V2).status_code == 401
            assert anonymous.get("/v1/policy").json()["version"] == 2
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
