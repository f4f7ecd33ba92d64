"""Rewrite reStructuredText docstrings as Google style with Markdown, which mkdocstrings renders.

```console
$ python tools/rest_to_markdown.py src/meshlib --inventory site/objects.inv
$ python tools/rest_to_markdown.py src/meshlib --check      # exit 1 if anything would change
```

The team's docstrings are Google style with Markdown. This converts what
reST left in them, inside docstrings only (module, class, function and
attribute docstrings; code and other strings are untouched):

- roles: ``:class:`~meshlib.policy.store.PolicyStore` `` becomes
  `[PolicyStore][meshlib.policy.store.PolicyStore]` when the built site documents
  that object (its `objects.inv`, from `mkdocs build`, given with `--inventory`),
  else a code span `` `PolicyStore` ``;
- ``` ``literal`` ``` becomes `` `literal` ``;
- a paragraph ending in `::` and the indented block after it become the paragraph
  ending in `:` and a fenced block (`python` when the block parses as Python,
  `console` for `$ ` commands, else `text`); `Example::` becomes a Google
  `Example:` section holding the fenced block;
- runs of `>>>` lines (with their output) become fenced `pycon` blocks.

Kept for branches that still carry reST docstrings: run it on the files they touch.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import textwrap
import tokenize
import zlib
from collections.abc import Iterable
from pathlib import Path

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|exc|data|obj|const):`(~?)([^`]+)`")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+?)``")
SECTION = re.compile(r"^(\s*)(Examples?)::\s*$")


def load_inventory(path: Path) -> set[str]:
    """The object names a Sphinx-format `objects.inv` (as mkdocstrings writes it) lists."""
    header = path.read_bytes().split(b"\n", 4)
    body = zlib.decompress(header[4]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def _role(match: re.Match[str], module: str, documented: set[str]) -> str:
    _kind, tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        title, _, target = target[:-1].partition("<")
        shown = title.strip()
    else:
        shown = target.rsplit(".", 1)[-1] if tilde else target
    name = target.rstrip("()")
    for candidate in (name, f"{module}.{name}", f"meshlib.{name}"):
        if candidate in documented:
            return f"[`{shown}`][{candidate}]"
    return f"`{shown}`"


def _inline(text: str, module: str, documented: set[str]) -> str:
    text = ROLE.sub(lambda m: _role(m, module, documented), text)
    return DOUBLE_BACKTICKS.sub(lambda m: f"`{m.group(1)}`", text)


def _language(block: str) -> str:
    if all(line.lstrip().startswith("$ ") for line in block.splitlines() if line.strip()):
        return "console"
    try:
        ast.parse(block)
    except SyntaxError:
        return "text"
    return "python"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence(lines: list[str], indent: str, language: str | None = None) -> list[str]:
    while lines and not lines[-1].strip():
        lines.pop()
    body = textwrap.dedent("\n".join(lines))
    language = language or _language(body)
    return [
        f"{indent}```{language}",
        *[f"{indent}{line}".rstrip() for line in body.split("\n")],
        f"{indent}```",
    ]


def _body_indent(lines: list[str]) -> int:
    """The indentation of a docstring's body: its closing quotes' line, else its least indented line."""
    if len(lines) > 1 and not lines[-1].strip():
        return len(lines[-1])
    return min((_indent(line) for line in lines[1:] if line.strip()), default=0)


def convert_docstring(text: str, module: str = "meshlib", documented: Iterable[str] = ()) -> str:
    """The docstring `text` (as written in the source) with its reST turned into Markdown."""
    known = set(documented)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if stripped.lstrip().startswith("```"):  # already Markdown: copy the fenced block as is
            out.append(line)
            i += 1
            while i < len(lines):
                out.append(lines[i])
                i += 1
                if lines[i - 1].strip().startswith("```"):
                    break
            continue
        if stripped.lstrip().startswith(">>> "):
            indent = line[: _indent(line)]
            session: list[str] = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(indent):
                session.append(lines[i])
                i += 1
            out += _fence(session, indent, "pycon")
            continue
        if stripped.endswith("::") and not stripped.endswith(":::"):
            # A literal block follows: a blank line, then lines indented deeper than this one.
            base = _indent(line) if i else _body_indent(lines)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block: list[str] = []
            k = j
            while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
                block.append(lines[k])
                k += 1
            if not block:  # not a literal block after all
                out.append(_inline(line, module, known))
                i += 1
                continue
            section = SECTION.match(stripped)
            indent = " " * base
            if section:
                out.append(f"{section.group(1)}Example:")
                out += _fence(block, indent + "    ")
            else:
                head = stripped[:-2].rstrip()
                if head.strip():
                    out.append(
                        _inline(head if stripped.endswith(" ::") else head + ":", module, known)
                    )
                if out and out[-1].strip():
                    out.append("")
                out += _fence(block, indent)
            if k < len(lines):
                out.append("")  # a blank line before the paragraph that follows
            elif not lines[-1].strip():
                out.append(lines[-1])  # the closing quotes keep their own line
            i = k
            continue
        out.append(_inline(line, module, known))
        i += 1
    return "\n".join(out)


def _docstring_nodes(tree: ast.Module) -> list[ast.Constant]:
    """String expression statements: module, class, function and attribute docstrings."""
    found = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if (
                isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                found.append(statement.value)
    return found


def convert_source(source: str, module: str, documented: Iterable[str] = ()) -> str:
    """`source` with every docstring converted; the rest of the file byte for byte."""
    tree = ast.parse(source)
    starts = {(n.lineno, n.col_offset) for n in _docstring_nodes(tree)}
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits: list[tuple[int, int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING or token.start not in starts:
            continue
        literal = token.string
        prefix = re.match(r"[rRbBuU]*", literal).group(0)  # type: ignore[union-attr]
        quote = literal[len(prefix) : len(prefix) + 3]
        if quote not in ('"""', "'''"):
            continue
        inner = literal[len(prefix) + 3 : -3]
        new = convert_docstring(inner, module, documented)
        if new != inner:
            start = offsets[token.start[0] - 1] + token.start[1]
            end = offsets[token.end[0] - 1] + token.end[1]
            edits.append((start, end, f"{prefix}{quote}{new}{quote}"))
    for start, end, text in reversed(edits):
        source = source[:start] + text + source[end:]
    return source


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    if "meshlib" in parts:
        parts = parts[parts.index("meshlib") :]
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def main(argv: list[str] | None = None) -> int:
    """Convert the files or directories given; with --check, only say which would change."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--inventory", type=Path, help="objects.inv of the built site")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if needed")
    args = parser.parse_args(argv)
    documented = load_inventory(args.inventory) if args.inventory else set()
    files = [
        p for path in args.paths for p in ([path] if path.is_file() else sorted(path.rglob("*.py")))
    ]
    changed = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        new = convert_source(source, _module_name(path), documented)
        if new != source:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(f"{'would convert' if args.check else 'converted'} {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
