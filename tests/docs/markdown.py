"""Code blocks of the docs, with the test directives written just before them.

The conventions (also in docs/how-to and checked by tests/docs/test_docs.py):

* every ```python block is parsed, and its imports are executed, so a renamed
  name fails the suite;
* `<!-- test -->` before a python block: run it, in page order, in one
  namespace per page, in a fresh working directory;
* `<!-- file: NAME -->` before any block: write its text to NAME there first;
* `<!-- test: background -->` before a console block: start its `$`
  commands in the background for the rest of the page;
* `<!-- test: run -->` before a console block: run its `$` commands; every
  output line shown after a command must appear in its output (`...` is a wildcard);
* `<!-- test: background output -->` before a block: each of its lines must appear
  in what the background commands have printed so far;
* `<!-- test: ports 8001 8002 -->` in a page: those ports become free ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "Command", "Page", "commands", "matches", "read_page"]

_DIRECTIVE = re.compile(r"^<!--\s*(test(?::\s*[^>]*?)?|file:\s*\S+)\s*-->\s*$")
_PORTS = re.compile(r"<!--\s*test:\s*ports\s+([\d ]+?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One fenced code block: language, text, the directive before it, and where it starts."""

    lang: str
    code: str
    directive: str | None
    line: int


@dataclass(frozen=True)
class Page:
    """A docs page's blocks and the ports its test replaces."""

    path: Path
    blocks: tuple[Block, ...]
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Command:
    """A `$ command` of a console block and the output lines shown after it."""

    command: str
    expected: tuple[str, ...]


def read_page(path: Path, text: str | None = None) -> Page:
    """Parse a page's top-level fenced blocks (fences at column 0)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    ports = tuple(int(p) for m in _PORTS.finditer(text) for p in m.group(1).split())
    blocks: list[Block] = []
    lines = text.splitlines()
    directive: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DIRECTIVE.match(line)
        if match and not _PORTS.match(line):
            directive = re.sub(r"\s+", " ", match.group(1).strip())
        elif line.startswith("```") and len(line) > 3:
            lang = line[3:].strip().split()[0]
            start = i + 1
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                i += 1
            blocks.append(Block(lang, "\n".join(lines[start:i]) + "\n", directive, start + 1))
            directive = None
        elif line.strip():
            directive = None
        i += 1
    return Page(path, tuple(blocks), ports)


def commands(block: Block) -> list[Command]:
    """The `$ ` commands of a console block, each with the output lines shown after it."""
    found: list[Command] = []
    current: str | None = None
    expected: list[str] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            if current is not None:
                found.append(Command(current, tuple(expected)))
            current, expected = line[2:].strip(), []
        elif current is not None and line.strip():
            expected.append(line.rstrip())
    if current is not None:
        found.append(Command(current, tuple(expected)))
    return found


def matches(expected: str, output: str) -> bool:
    """Whether the shown line `expected` appears in `output` (`...` matches anything)."""
    pattern = ".*?".join(re.escape(part.strip()) for part in expected.split("..."))
    return any(re.search(pattern, line) for line in output.splitlines())
