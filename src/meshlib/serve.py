"""Run an ASGI or WSGI app with mutual TLS from `MESH_TLS_*`, the peer certificate reaching the app.

```python
import meshlib.serve
meshlib.serve.serve(app, host="0.0.0.0", port=8443)   # ASGI -> uvicorn, WSGI -> werkzeug
```

Every launcher takes its certificate, key and client CA from
[`MeshSettings`][meshlib.settings.MeshSettings] (`MESH_TLS_CERT`, `MESH_TLS_KEY`,
`MESH_TLS_CA`), requires a client certificate signed by that CA, picks up
rotated files for new connections (`meshlib.security.reload`), and
hands the verified client certificate to the app where
[`MeshMiddleware`][meshlib.MeshMiddleware] looks for it:

- ASGI under uvicorn: `scope["extensions"]["tls"]["client_cert_chain"][0]`
  (`meshlib.security.asgi_bridge`; uvicorn does not fill it itself);
- WSGI under werkzeug or gunicorn: `environ["SSL_CLIENT_CERT"]`
  (`meshlib.security.wsgi_bridge`).

The lower-level builders return the server object without running it, for
tests and for processes that run several servers:

```python
server = uvicorn_server(app, port=8443)      # a uvicorn.Server; server.run()
server = werkzeug_server(wsgi_app, port=8443)  # a werkzeug server; server.serve_forever()
```
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from meshlib.security.tls import server_context
from meshlib.settings import MeshSettings

if TYPE_CHECKING:
    import uvicorn

    from meshlib.security.wsgi_bridge import MeshWSGIServer

__all__ = ["gunicorn_application", "serve", "uvicorn_server", "werkzeug_server"]

_TLS_OPTIONS = (
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_context_factory",
)


def _is_asgi(app: Any) -> bool:
    # uvicorn's own interface="auto" test: a coroutine function, or an object whose __call__ is one.
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app) or inspect.ismethod(app):
        return inspect.iscoroutinefunction(app)
    return inspect.iscoroutinefunction(type(app).__call__)


def uvicorn_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    settings: MeshSettings | None = None,
    require_client_cert: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    **config: Any,
) -> uvicorn.Server:
    """A `uvicorn.Server` for `app` with mutual TLS and the ASGI `tls` extension filled.

    `config` goes to `uvicorn.Config` (`http="h11"`/`"httptools"`,
    `log_level`, ...); TLS comes from `settings` (or `ssl_context`).

    ```pycon
    >>> uvicorn_server(app, port=8443).run()   # doctest: +SKIP
    ```

    Raises:
        CertificateError: a `MESH_TLS_*` setting is missing or its file unusable.
    """
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    from meshlib.security.asgi_bridge import bridged_protocol

    clashing = [name for name in _TLS_OPTIONS if name in config]
    if clashing:
        raise TypeError(
            f"{', '.join(clashing)}: meshlib.serve takes TLS from MESH_TLS_* settings or ssl_context"
        )
    ctx = ssl_context or server_context(settings, require_client_cert=require_client_cert)
    http = config.pop("http", "auto")
    base = import_from_string(HTTP_PROTOCOLS.get(http, http)) if isinstance(http, str) else http
    ws = config.pop("ws", "auto")
    if isinstance(ws, str):
        name = WS_PROTOCOLS.get(ws, ws)
        ws = import_from_string(name) if name else None
    if ws is not None:  # WebSocket callers carry their identity too
        config["ws"] = bridged_protocol(ws)
    else:
        config["ws"] = "none"
    cfg = uvicorn.Config(app, host=host, port=port, http=bridged_protocol(base), **config)
    cfg.load()
    # uvicorn builds a context only from ssl_certfile & co., once; the loaded config uses ours,
    # whose connections follow certificate rotation.
    cfg.ssl = ctx
    return uvicorn.Server(cfg)


def werkzeug_server(
    app: Callable[..., Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    settings: MeshSettings | None = None,
    require_client_cert: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> MeshWSGIServer:
    """Run werkzeug's threaded server for a WSGI `app` with mutual TLS; `SSL_CLIENT_CERT` set.

    `port=0` picks a free port (`server.server_port`).

    ```pycon
    >>> werkzeug_server(flask_app, port=8443).serve_forever()   # doctest: +SKIP
    ```
    """
    from meshlib.security.wsgi_bridge import MeshWSGIServer

    ctx = ssl_context or server_context(settings, require_client_cert=require_client_cert)
    return MeshWSGIServer(host, port, app, ssl_context=ctx, handshake_timeout=handshake_timeout)


def gunicorn_application(
    app: Callable[..., Any],
    *,
    bind: str = "127.0.0.1:8443",
    settings: MeshSettings | None = None,
    require_client_cert: bool = True,
    **options: Any,
) -> Any:
    """A gunicorn application serving `app` with mutual TLS; `SSL_CLIENT_CERT` set per request.

    `options` are gunicorn settings (`workers`, `worker_class`, ...).
    Each worker builds its own rotating context after the fork, through
    gunicorn's `ssl_context` hook.

    ```pycon
    >>> gunicorn_application(flask_app, bind="0.0.0.0:8443", workers=4).run()   # doctest: +SKIP
    ```
    """
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    from meshlib.security.wsgi_bridge import PeerCertMiddleware

    settings = settings or MeshSettings()
    server_context(settings, require_client_cert=require_client_cert)  # fail early, in the master
    contexts: list[ssl.SSLContext] = []

    def ssl_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        if not contexts:  # once per worker process
            contexts.append(server_context(settings, require_client_cert=require_client_cert))
        return contexts[0]

    wrapped = PeerCertMiddleware(app)
    config = {
        "bind": bind,
        # gunicorn only turns TLS on when these are set; the hook supplies the real context.
        "certfile": str(settings.tls_cert),
        "keyfile": str(settings.tls_key),
        "ssl_context": ssl_context,
        "do_handshake_on_connect": True,
        **options,
    }

    class _Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return wrapped

    return _Application()


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    settings: MeshSettings | None = None,
    interface: Literal["auto", "asgi", "wsgi"] = "auto",
    server: Literal["uvicorn", "werkzeug", "gunicorn"] | None = None,
    require_client_cert: bool = True,
    **options: Any,
) -> None:
    """Serve `app` with mutual TLS until interrupted.

    ASGI apps run under uvicorn, WSGI apps under werkzeug's threaded server
    (or gunicorn with `server="gunicorn"`); `interface="auto"` tells them
    apart as uvicorn does. `options` go to the server.

    ```pycon
    >>> serve(app, host="0.0.0.0", port=8443)   # doctest: +SKIP
    ```
    """
    if interface == "auto":
        interface = "asgi" if _is_asgi(app) else "wsgi"
    server = server or ("uvicorn" if interface == "asgi" else "werkzeug")
    options.update(settings=settings, require_client_cert=require_client_cert)
    if server == "uvicorn":
        uvicorn_server(app, host=host, port=port, **options).run()
    elif server == "werkzeug":
        httpd = werkzeug_server(app, host=host, port=port, **options)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
    elif server == "gunicorn":
        gunicorn_application(app, bind=f"{host}:{port}", **options).run()
    else:
        raise ValueError(f"unknown server {server!r}: use uvicorn, werkzeug or gunicorn")
