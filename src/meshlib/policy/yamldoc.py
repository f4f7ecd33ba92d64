"""YAML to data within the policy limits, keeping each value's position for error messages.

PyYAML's own composer recurses once per nesting level (in C with libyaml,
where a deep enough document overflows the C stack) and expands nothing
itself, but everything that walks its result as a tree (validation, a
position map) meets every alias once per path to it: nine lines of nested
aliases make a billion values. So this module builds the node graph itself,
iteratively, from the parser's events (libyaml's C parser when available),
and refuses a document as soon as it nests deeper than
[`MAX_DEPTH`][meshlib.policy.limits.MAX_DEPTH], expands (aliases counted at
their full size) past [`MAX_NODES`][meshlib.policy.limits.MAX_NODES], or
refers to an alias recursively. PyYAML's safe constructor then turns the
bounded graph into data.

Positions are not copied into a map (which costs one entry per expanded
value); [`YamlDocument.locate`][meshlib.policy.yamldoc.YamlDocument.locate]
walks the graph along a field path only when an error needs one:

```python
doc = compose_yaml(text, source="mesh.yaml", issues=issues)
doc.data                                   # plain dicts and lists
doc.locate(("services", "payments"))       # (line, column), 1-based
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from meshlib.errors import PolicyError, PolicyIssue
from meshlib.policy.limits import MAX_DEPTH, MAX_NODES, too_deep, too_many
from meshlib.policy.resolve import format_loc

__all__ = [
    "KEY",
    "BoundedSafeLoader",
    "Loc",
    "Locator",
    "YamlDocument",
    "compose_yaml",
    "yaml_loader",
]

Loc = tuple[str | int, ...]
Locator = Callable[[Loc], tuple[int, int] | None]

KEY = "<key>"
"""Appended to a path, asks a locator for the key's position rather than the value's."""


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, its scanner refusing flow collections nested past `MAX_DEPTH`.

    Its scanner reads a run of `[` or `{` to the end before the first event
    (each may start a simple key), in time quadratic in the run; libyaml's
    stops at 1000 levels by itself.
    """

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        """Refuse a flow collection nested deeper than the policy limit, then scan it as usual."""
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None,
                None,
                f"the document nests mappings and lists more than {MAX_DEPTH} deep",
                self.get_mark(),
            )
        super().fetch_flow_collection_start(TokenClass)


yaml_loader: type[Any] = getattr(yaml, "CSafeLoader", BoundedSafeLoader)
"""libyaml's C parser with the safe constructor where PyYAML was built with it, else pure Python."""


class _Open:
    """A mapping or sequence whose end event has not come yet."""

    __slots__ = ("anchor", "children", "node", "size")

    def __init__(self, node: yaml.CollectionNode, anchor: str | None) -> None:
        self.node = node
        self.anchor = anchor
        self.children: list[yaml.Node] = []
        self.size = 1


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class YamlDocument:
    """A composed YAML document: its data and a way back from field paths to positions."""

    __slots__ = ("data", "root")

    def __init__(self, root: yaml.Node | None, data: Any) -> None:
        self.root = root
        self.data = data

    def locate(self, loc: Loc) -> tuple[int, int] | None:
        """The (line, column) of the value at `loc`, of its key when `loc` ends in `KEY`.

        A mapping's entry is reported at its value when that is a scalar and
        at its key otherwise, so a message points at the line a reader looks at.
        """
        node = self.root
        if node is None:
            return None
        where = _position(node.start_mark)
        for i, part in enumerate(loc):
            if part == KEY and i == len(loc) - 1:
                return where
            if isinstance(node, yaml.MappingNode):
                found = None
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                        found = key_node, value_node
                if found is None:
                    return None
                key_node, node = found
                if i + 1 < len(loc) and loc[i + 1] == KEY:
                    where = _position(key_node.start_mark)
                else:
                    mark = (
                        node.start_mark
                        if isinstance(node, yaml.ScalarNode)
                        else key_node.start_mark
                    )
                    where = _position(mark)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    return None
                node = node.value[part]
                where = _position(node.start_mark)
            else:
                return None
        return where


def _path(stack: list[_Open]) -> Loc:
    """The field path of the value being composed (for duplicate-key messages)."""
    path: list[str | int] = []
    for entry in stack:
        if isinstance(entry.node, yaml.MappingNode):
            key = entry.children[-1] if len(entry.children) % 2 else None
            path.append(key.value if isinstance(key, yaml.ScalarNode) else "?")
        else:
            path.append(len(entry.children))
    return tuple(path)


def _duplicates(
    pairs: list[tuple[yaml.Node, yaml.Node]], loc: Loc, source: str, issues: list[PolicyIssue]
) -> None:
    seen: dict[str, int] = {}
    for key_node, _ in pairs:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue
        key = key_node.value
        line = key_node.start_mark.line + 1
        if key in seen:
            issues.append(
                PolicyIssue(
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                    format_loc((*loc, key)),
                    source,
                    line,
                    key_node.start_mark.column + 1,
                )
            )
        seen[key] = line


def _anchor(
    anchors: dict[str, tuple[yaml.Node, int | None]], event: Any, node: yaml.Node, size: int | None
) -> None:
    first = anchors.get(event.anchor)
    if first is not None:
        raise yaml.composer.ComposerError(
            "found duplicate anchor; first occurrence",
            first[0].start_mark,
            "second occurrence",
            event.start_mark,
        )
    anchors[event.anchor] = (node, size)


def _compose(loader: Any, source: str, issues: list[PolicyIssue]) -> yaml.Node | None:
    """The single document's node graph, composed without recursion and within the limits."""
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    loader.get_event()  # DocumentStart
    anchors: dict[str, tuple[yaml.Node, int | None]] = {}
    stack: list[_Open] = []
    root: yaml.Node | None = None
    while root is None:
        event: Any = loader.get_event()
        kind = type(event)  # compared by identity: no narrowing of the untyped marks
        size: int
        if kind is yaml.AliasEvent:
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            node, known = anchors[event.anchor]
            if known is None:
                raise PolicyError.single(
                    f"alias *{event.anchor} refers to a value that contains it",
                    source=source,
                    line=event.start_mark.line + 1,
                    column=event.start_mark.column + 1,
                )
            size = known
        elif kind is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            size = 1
            if event.anchor is not None:
                _anchor(anchors, event, node, 1)
        elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
            node_kind = yaml.SequenceNode if kind is yaml.SequenceStartEvent else yaml.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(node_kind, None, event.implicit)
            collection = node_kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if len(stack) >= MAX_DEPTH:
                mark = event.start_mark
                raise too_deep(source, mark.line + 1, mark.column + 1)
            if event.anchor is not None:
                _anchor(anchors, event, collection, None)
            stack.append(_Open(collection, event.anchor))
            continue
        else:  # SequenceEnd / MappingEnd
            done = stack.pop()
            node = done.node
            node.end_mark = event.end_mark
            if isinstance(node, yaml.MappingNode):
                items = done.children
                node.value = list(zip(items[::2], items[1::2], strict=True))
                _duplicates(node.value, _path(stack), source, issues)
            else:
                node.value = done.children
            size = done.size
            if done.anchor is not None:
                anchors[done.anchor] = (node, size)
        if not stack:
            root = node
            break
        parent = stack[-1]
        parent.children.append(node)
        parent.size += size
        if parent.size > MAX_NODES:
            mark = event.start_mark
            raise too_many(source, mark.line + 1, mark.column + 1)
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise yaml.composer.ComposerError(
            "expected a single document in the stream",
            None,
            "but found another document",
            event.start_mark,
        )
    return root


def compose_yaml(text: str, *, source: str, issues: list[PolicyIssue]) -> YamlDocument:
    """Parse `text` as one YAML document within the limits; duplicate keys go to `issues`.

    Raises:
        PolicyError: the document exceeds a limit or aliases itself.
        yaml.YAMLError: the text is not YAML, or uses a tag the safe constructor refuses.
    """
    loader = yaml_loader(text)
    try:
        root = _compose(loader, source, issues)
        data = None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()
    return YamlDocument(root, data)
