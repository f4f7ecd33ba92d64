"""BackgroundLoop: an asyncio event loop in a daemon thread, for the control-plane client.

The watcher parks in a long-poll for up to 30 s; running it on its own loop
lets ``close()`` cancel it at once instead of waiting for the poll to end::

    loop = BackgroundLoop("meshlib-control-plane")
    future = loop.submit(fetch())          # a concurrent.futures.Future
    loop.stop(quiesce(), cleanup())        # cancel every task, then clean up, then stop
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundLoop"]

logger = logging.getLogger("meshlib.controlplane")


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread; coroutines are submitted to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule ``coro`` on the loop from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(
        self,
        quiesce: Coroutine[Any, Any, Any],
        cleanup: Coroutine[Any, Any, Any],
        timeout: float = 5.0,
    ) -> None:
        """Run ``quiesce``, cancel and await every task, run ``cleanup``, then stop and close."""

        async def shutdown() -> None:
            await quiesce
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cleanup

        try:
            self.submit(shutdown()).result(timeout)
        except Exception:
            logger.debug("control-plane client shutdown was not clean", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
