"""Which file a policy path names: the file itself, or the policy file inside a directory.

A policy directory holds `policy.yaml` (or `.yml`, `.json`, `.toml`), as
`meshlib controlplane serve --policy DIR` keeps it, so every command and API
that takes a policy path accepts either:

```python
policy_file("mesh.yaml")      # Path("mesh.yaml")
policy_file("policies/")      # Path("policies/policy.yaml"), the first of POLICY_FILE_NAMES found
```
"""

from __future__ import annotations

import os
from pathlib import Path

from meshlib.errors import PolicyError

__all__ = ["POLICY_FILE_NAMES", "policy_file"]

POLICY_FILE_NAMES = ("policy.yaml", "policy.yml", "policy.json", "policy.toml")
"""The names a policy directory's file may have, in the order they are looked for."""


def policy_file(path: str | os.PathLike[str]) -> Path:
    """The policy file `path` names: `path` itself, or the policy file in the directory `path`.

    Raises:
        PolicyError: `path` is a directory without any of the `POLICY_FILE_NAMES`.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    for name in POLICY_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise PolicyError.single(
        f"a policy directory holds {', '.join(POLICY_FILE_NAMES[:-1])} or "
        f"{POLICY_FILE_NAMES[-1]}, and this one has none",
        source=str(path),
    )
