"""Serving a control-plane replica with uvicorn: slow clients dropped, parked long-polls ended cleanly.

Two things uvicorn does not do on its own, and a replica needs:

- **Slow requests.** uvicorn waits for a request's headers as long as the
  client likes (its keep-alive timeout starts only after a response), so a
  few hundred half-sent requests hold as many connections forever.
  [`guarded_protocol`][meshlib.controlplane.server.guarded_protocol] closes a
  connection whose request line and headers did not all arrive within
  `header_timeout` seconds of its first byte (or of the connection). Bodies
  have their own bound (`body_timeout`, in the routes).
- **Stopping.** On SIGTERM uvicorn waits for open requests, and a parked
  long-poll is open for up to `?wait=`; after `timeout_graceful_shutdown` it
  cancels them and every watcher gets a 500. [`ControlPlaneServer`][meshlib.controlplane.server.ControlPlaneServer]
  first wakes every parked long-poll (they answer 304 with the version they
  have and `Connection: close`; their clients go on to another replica), then
  lets uvicorn finish within `shutdown_grace`.

```python
server = ControlPlaneServer(server_config(app, settings), app.state.plane)
server.run()
```
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from meshlib.controlplane.app import ControlPlane
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.telemetry import RateLimitedLog

__all__ = ["ControlPlaneServer", "guarded_protocol", "server_config"]

logger = logging.getLogger("meshlib.controlplane")
_slow_log = RateLimitedLog(logger, every=30.0)


def guarded_protocol(base: type[Any], header_timeout: float) -> type[Any]:
    """A subclass of the uvicorn HTTP protocol `base` that drops clients slow to send headers."""

    class SlowClientGuard(base):  # type: ignore[misc]
        _guard: asyncio.TimerHandle | None = None

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._guard is None:
                self._guard = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._in_request():
                self._arm()
            super().data_received(data)
            if self._in_request():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # uvicorn's keep-alive timeout now closes an idle connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._guard = None
            if self._in_request() or self.transport.is_closing():
                return
            _slow_log.warning(
                "dropped a connection from %s: no complete request within %gs",
                f"{self.client[0]}:{self.client[1]}" if self.client else "?",
                header_timeout,
            )
            self.transport.close()

    SlowClientGuard.__name__ = f"SlowClientGuard{base.__name__}"
    return SlowClientGuard


def server_config(app: Any, settings: ControlPlaneSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of a replica: TLS/mTLS from `settings`, the slow-client guard.

    Args:
        app: The app from [`create_app`][meshlib.controlplane.app.create_app].
        settings: Host, port, TLS files and the timeouts.
        **overrides: More `uvicorn.Config` arguments (`log_level`, `fd`, ...).
    """
    protocol: type[Any] = H11Protocol
    config: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_grace)),
    }
    if settings.tls_cert is not None:
        config.update(
            ssl_certfile=str(settings.tls_cert),
            ssl_keyfile=settings.tls_key and str(settings.tls_key),
        )
        if settings.tls_ca is not None:
            # Optional, not required: token-only clients still connect; identities come from certs.
            config.update(ssl_ca_certs=str(settings.tls_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
            try:
                from meshlib.security.asgi_bridge import bridged_protocol

                protocol = bridged_protocol(H11Protocol)
            except ImportError:  # pragma: no cover - meshlib.security needs cryptography
                logger.warning("mTLS identities need meshlib.security; only tokens work")
    config["http"] = guarded_protocol(protocol, settings.header_timeout)
    config.update(overrides)
    return uvicorn.Config(app, **config)


class ControlPlaneServer(uvicorn.Server):
    """uvicorn's server, which first answers every parked long-poll when it is told to stop."""

    def __init__(self, config: uvicorn.Config, plane: ControlPlane) -> None:
        super().__init__(config)
        self.plane = plane

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Wake parked long-polls (304, `Connection: close`), then stop as uvicorn does."""
        self.plane.begin_shutdown()
        await super().shutdown(sockets)
