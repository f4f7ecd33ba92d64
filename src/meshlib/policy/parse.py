"""Policy documents (YAML, JSON, TOML) to a validated [`Policy`][meshlib.policy.parse.Policy], or a precise PolicyError.

Every problem is reported with the file, line, column and dotted field
where the format lets us know them, and all problems are reported at once:

```python
policy = load_policy("mesh.yaml")
policy = load_policy({"version": 1, "services": {...}})
policy = parse_policy(text, source="https://cp.internal/policy", fmt="json")
```

YAML and JSON positions are exact. TOML positions come from a line scan of
`[table]` headers and `key =` lines, so a key inside an inline table is
reported at the line of its table.

Every document, from a file, a publish or the network, is parsed within the
bounds of `meshlib.policy.limits` (1 MiB, 32 levels, 200,000 values with
YAML aliases expanded); YAML goes through `meshlib.policy.yamldoc`, on
libyaml's C parser where PyYAML has it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from meshlib.errors import PolicyError, PolicyIssue
from meshlib.policy.files import policy_file
from meshlib.policy.limits import check_shape, check_size, read_policy_file, too_deep
from meshlib.policy.model import Policy
from meshlib.policy.resolve import format_loc
from meshlib.policy.yamldoc import KEY, Loc, Locator, compose_yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Format",
    "detect_format",
    "load_policy",
    "parse_document",
    "parse_policy",
    "validate_policy",
]

Format = Literal["yaml", "json", "toml"]

_SUFFIXES: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


def detect_format(name: str, text: str = "") -> Format:
    """The format from a file name's suffix, else a guess from the text (JSON if it starts with '{')."""
    suffix = Path(name).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    return "json" if text.lstrip().startswith("{") else "yaml"


def _no_locator(loc: Loc) -> None:
    return None


# --------------------------------------------------------------------------- YAML


def _yaml_error(exc: yaml.YAMLError, source: str) -> PolicyError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        return PolicyError.single(
            f"not valid YAML: {problem}",
            source=source,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        )
    return PolicyError.single(f"not valid YAML: {exc}", source=source)


def _parse_yaml(text: str, source: str, issues: list[PolicyIssue]) -> tuple[Any, Locator]:
    try:
        doc = compose_yaml(text, source=source, issues=issues)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a tagged scalar the constructor refuses
        raise PolicyError.single(f"not valid YAML: {exc}", source=source) from None
    return doc.data, doc.locate


# --------------------------------------------------------------------------- JSON


def _parse_json(text: str, source: str, issues: list[PolicyIssue]) -> tuple[Any, Locator]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                issues.append(PolicyIssue(f"key {key!r} appears twice; keep one", key, source))
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise PolicyError.single(
            f"not valid JSON: {exc.msg}", source=source, line=exc.lineno, column=exc.colno
        ) from None
    check_shape(data, source=source)
    return data, _lazy_yaml_locator(text, source)


def _lazy_yaml_locator(text: str, source: str) -> Locator:
    """JSON is (nearly) YAML: borrow YAML's node positions, composed only if an error needs them."""
    found: list[Locator] = []

    def locate(loc: Loc) -> tuple[int, int] | None:
        if not found:
            try:
                found.append(compose_yaml(text, source=source, issues=[]).locate)
            except (yaml.YAMLError, PolicyError, ValueError, TypeError, OverflowError):
                found.append(_no_locator)
        return found[0](loc)

    return locate


# --------------------------------------------------------------------------- TOML

_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def _toml_key(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in raw.split("."))


def _toml_lines(text: str) -> Locator:
    lines: dict[Loc, tuple[int, int]] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _TOML_TABLE.match(line):
            table = _toml_key(m.group(1))
            lines.setdefault(table, (number, 1))
        elif m := _TOML_KEY.match(line):
            key = (*table, *_toml_key(m.group(1)))
            lines.setdefault(key, (number, line.index(m.group(1)[0]) + 1))

    def locate(loc: Loc) -> tuple[int, int] | None:
        # Array indices are not tracked: look the path up without them.
        return lines.get(tuple(p for p in loc if isinstance(p, str)))

    return locate


def _parse_toml(text: str, source: str, issues: list[PolicyIssue]) -> tuple[Any, Locator]:
    try:
        data = tomllib.loads(text)
        check_shape(data, source=source)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        raise PolicyError.single(
            f"not valid TOML: {_TOML_AT.sub('', message).strip()}",
            source=source,
            line=int(at.group(1)) if at else None,
            column=int(at.group(2)) if at else None,
        ) from None
    return data, _toml_lines(text)


_PARSERS = {"yaml": _parse_yaml, "json": _parse_json, "toml": _parse_toml}


def parse_document(
    text: str, *, source: str = "<policy>", fmt: Format | None = None
) -> tuple[Any, Locator]:
    """Parse text into plain data and a locator from field paths to (line, column).

    Every document is held to the bounds of [`meshlib.policy.limits`][meshlib.policy.limits]
    (size, depth, values with aliases expanded) before anything walks it, so
    whatever the text, this returns or raises `PolicyError` naming `source`,
    quickly and in little memory; it never lets `RecursionError` or
    `MemoryError` out.
    """
    check_size(text, source=source)
    issues: list[PolicyIssue] = []
    parser = _PARSERS[fmt or detect_format(source, text)]
    try:
        data, locate = parser(text, source, issues)
    except RecursionError:  # the depth bound comes first; this is the last line of defence
        raise too_deep(source) from None
    except MemoryError:
        raise PolicyError.single(
            "the document needs more memory than this process has to parse", source=source
        ) from None
    if issues:
        raise PolicyError([_located(i, locate) for i in issues])
    return data, locate


# --------------------------------------------------------------------------- validation errors


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class that holds the keys at `loc` (for 'did you mean' hints)."""
    current: Any = Policy
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            current = _container_item(current)
        current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Union down to the model or container inside."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                inner = _unwrap(arg)
                if (isinstance(inner, type) and issubclass(inner, BaseModel)) or get_origin(inner):
                    return inner
    return annotation


def _container_item(annotation: Any) -> Any:
    args = get_args(annotation)
    return _unwrap(args[-1] if get_origin(annotation) is not tuple else args[0]) if args else None


def _data_loc(data: Any, loc: Loc, keep_last: bool) -> Loc:
    """Drop pydantic's type tags (`str`, `function-after[...]`) that are not keys in the data."""
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, Mapping):
            found = part in current
        else:
            found = isinstance(current, list) and isinstance(part, int) and part < len(current)
        if found:
            current = current[part]
            out.append(part)
        elif keep_last and i == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _issue_from_error(error: Any, data: Any, source: str, locate: Locator) -> list[PolicyIssue]:
    inner = (error.get("ctx") or {}).get("error")
    if isinstance(inner, PolicyError):
        return [_located(PolicyIssue(i.message, i.field, source), locate) for i in inner.issues]
    kind = error["type"]
    loc = _data_loc(data, tuple(error["loc"]), keep_last=kind == "missing")
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, allowed, n=1)
        message = f"unknown key {key!r}"
        if close:
            message += f"; did you mean {close[0]!r}?"
        if allowed:
            message += f" (allowed here: {', '.join(allowed)})"
    elif kind == "missing":
        message = f"required key {loc[-1]!r} is missing"
    issue = PolicyIssue(message, format_loc(loc), source)
    if kind == "extra_forbidden":
        issue = _located(issue, locate, (*loc, KEY))
    return [_located(issue, locate, loc)]


_LOC_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_field(field: str) -> Loc:
    return tuple(int(index) if index else name for name, index in _LOC_PART.findall(field))


def _located(issue: PolicyIssue, locate: Locator, loc: Loc | None = None) -> PolicyIssue:
    if issue.line is not None:
        return issue
    loc = _parse_field(issue.field) if loc is None else loc
    # A missing key has no position of its own: point at its parent.
    while True:
        where = locate(loc)
        if where is not None or not loc:
            break
        loc = loc[:-1]
    if where is None:
        return issue
    return PolicyIssue(issue.message, issue.field, issue.source, where[0], where[1])


def validate_policy(
    data: Any, *, source: str = "<policy>", locate: Locator = _no_locator
) -> Policy:
    """Validate plain data as a Policy, turning every validation error into a located PolicyIssue."""
    if data is None:
        raise PolicyError.single(
            "the document is empty; it needs at least 'version: 1'", source=source
        )
    if not isinstance(data, Mapping):
        raise PolicyError.single(
            f"a policy document is a mapping at the top, not a {type(data).__name__}",
            source=source,
            line=1,
        )
    check_shape(data, source=source)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        issues = [
            issue
            for error in exc.errors(include_url=False)
            for issue in _issue_from_error(error, data, source, locate)
        ]
        raise PolicyError(issues) from None
    except PolicyError as exc:  # cross-checks when pydantic re-raises them unwrapped
        raise PolicyError(
            [_located(PolicyIssue(i.message, i.field, source), locate) for i in exc.issues]
        ) from None


def parse_policy(text: str, *, source: str = "<policy>", fmt: Format | None = None) -> Policy:
    """Parse and validate a policy document given as text."""
    data, locate = parse_document(text, source=source, fmt=fmt)
    return validate_policy(data, source=source, locate=locate)


def load_policy(path_or_mapping: str | os.PathLike[str] | Mapping[str, Any] | Policy) -> Policy:
    """Load a policy from a YAML, JSON or TOML file (or a policy directory), or validate a mapping.

    A directory stands for its `policy.yaml` (see `meshlib.policy.files`).

        policy = meshlib.load_policy("mesh.yaml")

    Raises:
        PolicyError: naming file, line, column and field of every problem.
    """
    if isinstance(path_or_mapping, Policy):
        return path_or_mapping
    if isinstance(path_or_mapping, Mapping):
        return validate_policy(path_or_mapping, source="<mapping>")
    path = os.fspath(policy_file(path_or_mapping))
    return parse_policy(read_policy_file(path), source=path)
