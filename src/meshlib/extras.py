"""The name meshlib installs under, and the line that adds an optional extra.

The distribution is `servicemeshlib` (PyPI's `meshlib` is an unrelated
3D-geometry project); the import name stays `meshlib`. Every error that asks
for an extra words its advice here, so it names a package that exists:

```python
install_hint("otlp")   # "pip install 'servicemeshlib[otlp]' (in a clone: pip install '.[otlp]')"
```
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "install_hint"]

DISTRIBUTION = "servicemeshlib"
"""The distribution name: what `pip install` and `importlib.metadata` know meshlib as."""


def install_hint(extra: str) -> str:
    """The command that installs `extra`, from the index or from a clone of the repository."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (in a clone: pip install '.[{extra}]')"
