"""A throwaway PKI for the mTLS paths: one CA, a server and a client certificate with SPIFFE IDs.

Issued by meshlib's own dev CA (trustme cannot put a SPIFFE URI in a
certificate's subjectAltName):

```python
pki = make_pki(tmpdir, trust_domain="bench.local")
pki.server_cert, pki.client_key, pki.ca
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshlib.security.ca import DevCA

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files, and the SPIFFE IDs the leaf certificates carry."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_id: str
    client_id: str


def make_pki(directory: Path, *, trust_domain: str = "bench.local") -> Pki:
    """A CA and two leaves (server `upstream` for 127.0.0.1/localhost, client `bench-client`)."""
    ca = DevCA.create(trust_domain, directory, force=True)
    server = ca.issue("upstream", dns=["localhost"], ips=["127.0.0.1"], name="server", force=True)
    client = ca.issue("bench-client", name="client", force=True)
    return Pki(
        ca=ca.cert_path,
        server_cert=server.cert_path,
        server_key=server.key_path,
        client_cert=client.cert_path,
        client_key=client.key_path,
        server_id=server.identity,
        client_id=client.identity,
    )
