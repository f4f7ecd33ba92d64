"""The built site, as a reader sees it: no raw reStructuredText, no eaten `<...>`, no build files.

The site is built once per session with `mkdocs build --strict` (as `nox -s docs`
does) into a temporary directory; each check reads every HTML page of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HTML_ELEMENTS = frozenset(
    [
        "a",
        "abbr",
        "address",
        "area",
        "article",
        "aside",
        "audio",
        "b",
        "base",
        "bdi",
        "bdo",
        "blockquote",
        "body",
        "br",
        "button",
        "canvas",
        "caption",
        "cite",
        "code",
        "col",
        "colgroup",
        "data",
        "datalist",
        "dd",
        "del",
        "details",
        "dfn",
        "dialog",
        "div",
        "dl",
        "dt",
        "em",
        "embed",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "head",
        "header",
        "hgroup",
        "hr",
        "html",
        "i",
        "iframe",
        "img",
        "input",
        "ins",
        "kbd",
        "label",
        "legend",
        "li",
        "link",
        "main",
        "map",
        "mark",
        "menu",
        "meta",
        "meter",
        "nav",
        "noscript",
        "object",
        "ol",
        "optgroup",
        "option",
        "output",
        "p",
        "picture",
        "pre",
        "progress",
        "q",
        "rp",
        "rt",
        "ruby",
        "s",
        "samp",
        "script",
        "search",
        "section",
        "select",
        "slot",
        "small",
        "source",
        "span",
        "strong",
        "style",
        "sub",
        "summary",
        "sup",
        "table",
        "tbody",
        "td",
        "template",
        "textarea",
        "tfoot",
        "th",
        "thead",
        "time",
        "title",
        "tr",
        "track",
        "u",
        "ul",
        "var",
        "video",
        "wbr",
        "svg",
        "path",
        "g",
        "circle",
        "ellipse",
        "line",
        "polyline",
        "polygon",
        "rect",
        "defs",
        "use",
        "symbol",
        "title",
        "desc",
        "clippath",
        "lineargradient",
        "radialgradient",
        "stop",
        "mask",
        "pattern",
        "text",
        "tspan",
    ]
)
"""HTML5 elements and the SVG ones icons use: any other tag is text the browser swallowed."""

REST_ROLE = re.compile(r"(?<![\w`]):(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|ref|const):`?")
REST_LITERAL_BLOCK = re.compile(r"::\s*$")

_SKIPPED = frozenset({"code", "pre", "script", "style", "kbd", "samp"})


class _Page(HTMLParser):
    """The start tags of a page, and its prose (text outside code, per block element)."""

    _BLOCKS = frozenset({"p", "li", "td", "th", "dd", "dt", "h1", "h2", "h3", "h4", "summary"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.blocks: list[str] = []
        self._skipping = 0
        self._current: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in _SKIPPED:
            self._skipping += 1
            self._current.append("\u00b7")  # code keeps a place: '`x`::' still ends in '::'
        elif tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._current.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._current).split())
        if text:
            self.blocks.append(text)
        self._current = []

    def close(self) -> None:
        super().close()
        self._flush()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation, built strictly as `nox -s docs` builds it."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _pages(site: Path) -> Iterator[tuple[str, _Page]]:
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        page.close()
        yield str(path.relative_to(site)), page


def test_no_angle_brackets_are_eaten(site: Path) -> None:
    """No page has a tag outside HTML and SVG: `<service>` written in text must reach the reader."""
    eaten = {
        f"{name}: <{tag}>"
        for name, page in _pages(site)
        for tag in page.tags
        if tag not in HTML_ELEMENTS
    }
    assert not eaten, sorted(eaten)


def test_the_policy_reference_shows_placeholders(site: Path) -> None:
    """The trust domain's description reads spiffe://<trust_domain>/<service>, brackets and all."""
    text = (site / "reference" / "policy" / "index.html").read_text(encoding="utf-8")
    assert "spiffe://&lt;trust_domain&gt;/&lt;service&gt;" in text


def test_no_raw_restructuredtext_reaches_the_reader(site: Path) -> None:
    """No prose shows reST roles (:class:`...`), `Example::` literal markers or ``double backticks``."""
    raw = []
    for name, page in _pages(site):
        for block in page.blocks:
            if REST_ROLE.search(block) or REST_LITERAL_BLOCK.search(block) or "``" in block:
                raw.append(f"{name}: {block[:160]}")
    assert not raw, "\n".join(raw[:40]) + f"\n({len(raw)} blocks)"


def test_build_files_are_not_published(site: Path) -> None:
    """docs/hooks.py generates pages at build time; it is not itself a file of the site."""
    published = [p.relative_to(site) for p in site.rglob("*.py")]
    assert not published, published
