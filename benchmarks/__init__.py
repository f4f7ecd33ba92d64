"""meshlib benchmarks: a library mesh against bare httpx, sidecar proxy pairs and a naive stack.

Run `python benchmarks/run.py` (`--quick` for a sub-minute pass). See
`docs/explanation/benchmarks.md` for what is measured and the latest figures.
"""

from __future__ import annotations

__all__: list[str] = []
