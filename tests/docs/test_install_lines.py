"""Every `pip install` a reader is told to run works from a clone: nothing names an unpublished meshlib."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
OURS = {"meshlib", "servicemeshlib"}
INSTALL = re.compile(r"pip install ([^`\n]+)")


def _install_lines() -> list[tuple[str, str]]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [
        (f"{path.relative_to(ROOT)}: {match.group(0)}", match.group(1))
        for path in texts
        for match in INSTALL.finditer(path.read_text(encoding="utf-8"))
    ]


def _problems(arguments: str) -> list[str]:
    problems = []
    for spec in shlex.split(arguments.split("#")[0]):
        if spec.startswith("-"):
            continue
        name, _, extras = spec.partition("[")
        wanted = {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}
        if name.startswith((".", "/", "~")):
            problems += [f"no extra {e!r} in pyproject.toml" for e in sorted(wanted - EXTRAS)]
        elif re.sub(r"[-_.]+", "-", name.lower()) in OURS:
            problems.append(
                f"{name!r} is not on PyPI (or is someone else's): install from the clone"
            )
    return problems


def test_the_distribution_is_named_for_a_name_pypi_would_give_us() -> None:
    """The metadata name is servicemeshlib: PyPI's meshlib is an unrelated 3D-geometry project."""
    assert PYPROJECT["project"]["name"] == "servicemeshlib"
    assert all(
        ref.startswith("servicemeshlib[")
        for ref in PYPROJECT["project"]["optional-dependencies"]["all"]
    )


def test_every_install_line_in_the_docs_works_from_a_clone() -> None:
    """`pip install` lines install a path of the clone with real extras, or a third-party package."""
    found = _install_lines()
    assert found, "no install line found: the pattern is wrong"
    bad = [f"{where} -> {problem}" for where, args in found for problem in _problems(args)]
    assert not bad, "\n".join(bad)


def test_the_check_refuses_what_cannot_work() -> None:
    """The check itself: an unpublished name or an unknown extra is caught; a clone path passes."""
    assert _problems("'meshlib[ca]'")
    assert _problems("servicemeshlib")
    assert _problems("'.[nosuchextra]'")
    assert not _problems("'/path/to/clone[controlplane,ca]' nox")


def test_code_words_every_extra_hint_through_install_hint() -> None:
    """No message in src/ hand-writes `meshlib[extra]`: meshlib.extras.install_hint names the real package."""
    from meshlib.extras import install_hint

    hand_written = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        if path.name != "extras.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bmeshlib\[|pip install '?meshlib\b", line)
    ]
    assert not hand_written, hand_written
    hint = install_hint("otlp")  # the name we publish under, and the form that works in a clone
    assert hint.startswith("pip install 'servicemeshlib[otlp]'")
    assert not _problems(hint.split("in a clone: pip install ")[1].rstrip(")"))
