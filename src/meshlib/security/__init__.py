"""Security for the mesh: SPIFFE identities, mutual TLS contexts, rotation, and a dev CA.

- `meshlib.security.identity`: SPIFFE IDs, a peer's identity from its certificate.
- `meshlib.security.tls`: client and server SSLContexts from policy and settings.
- `meshlib.security.handshake`: the checks run at the end of every handshake.
- `meshlib.security.reload`: certificate rotation without restarts.
- `meshlib.security.ca`: a development CA (needs `cryptography`: the `ca` extra).
- `meshlib.security.asgi_bridge`, `meshlib.security.wsgi_bridge`: how servers hand
  the verified peer certificate to apps (used by [`meshlib.serve`][meshlib.serve]).

Importing this package imports neither `cryptography` nor a web server.
"""

from __future__ import annotations

__all__: list[str] = []
