"""tools/rest_to_markdown.py: reST docstrings become Google style with Markdown, code untouched."""

from __future__ import annotations

import importlib.util
import textwrap
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "rest_to_markdown.py"


@pytest.fixture(scope="module")
def tool() -> types.ModuleType:
    """The script, imported as a module."""
    spec = importlib.util.spec_from_file_location("rest_to_markdown", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_become_cross_references_when_documented_else_code(tool: types.ModuleType) -> None:
    """`:class:` and friends link to documented objects and fall back to code spans."""
    text = (
        "Uses :class:`~meshlib.policy.store.PolicyStore` and :func:`helper`, see :mod:`meshlib.x`."
    )
    documented = {"meshlib.policy.store.PolicyStore"}
    assert tool.convert_docstring(text, "meshlib.y", documented) == (
        "Uses [`PolicyStore`][meshlib.policy.store.PolicyStore] and `helper`, see `meshlib.x`."
    )
    assert tool.convert_docstring(":meth:`close`", "meshlib.y", {"meshlib.y.close"}) == (
        "[`close`][meshlib.y.close]"
    )


def test_double_backticks_become_single(tool: types.ModuleType) -> None:
    """``literal`` is Markdown's `literal`."""
    assert tool.convert_docstring("set ``MESH_ZONE`` or ``zone=``") == "set `MESH_ZONE` or `zone=`"


def test_literal_blocks_become_fenced_blocks_with_a_language(tool: types.ModuleType) -> None:
    """`text::` + indented block -> `text:` + fenced python (or text when it is not Python)."""
    source = textwrap.dedent(
        """\
        Build one::

            store = PolicyStore()
            store.update(policy)

        The tree ::

            a -> b

        After."""
    )
    assert tool.convert_docstring(source) == textwrap.dedent(
        """\
        Build one:

        ```python
        store = PolicyStore()
        store.update(policy)
        ```

        The tree

        ```text
        a -> b
        ```

        After."""
    )


def test_example_literal_becomes_a_google_example_section(tool: types.ModuleType) -> None:
    """`Example::` becomes `Example:` holding an indented fenced block; closing quotes keep their line."""
    source = "Summary.\n\n    Example::\n\n        client.get('http://payments/')\n    "
    assert tool.convert_docstring(source) == (
        "Summary.\n\n    Example:\n        ```python\n        client.get('http://payments/')\n"
        "        ```\n    "
    )


def test_doctests_become_pycon_blocks(tool: types.ModuleType) -> None:
    """Runs of `>>>` lines and their output are fenced as pycon."""
    source = "Parse.\n\n>>> parse_duration('1m')\n60.0\n"
    assert (
        tool.convert_docstring(source)
        == "Parse.\n\n```pycon\n>>> parse_duration('1m')\n60.0\n```\n"
    )


def test_only_docstrings_change_in_a_source_file(tool: types.ModuleType, tmp_path: Path) -> None:
    """Strings that are not docstrings, comments and code stay byte for byte; --check reports."""
    source = textwrap.dedent(
        '''\
        """Module with ``code``."""

        MESSAGE = "keep ``this`` and :class:`that`"  # and ``this``


        def f() -> None:
            """Call :func:`g`::

                g()
            """
        '''
    )
    path = tmp_path / "meshlib" / "mod.py"
    path.parent.mkdir()
    path.write_text(source)
    assert tool.main([str(path), "--check"]) == 1
    assert tool.main([str(path)]) == 0
    converted = path.read_text()
    assert '"""Module with `code`."""' in converted
    assert 'MESSAGE = "keep ``this`` and :class:`that`"  # and ``this``' in converted
    assert '    """Call `g`:\n\n    ```python\n    g()\n    ```\n    """' in converted
    assert tool.main([str(path), "--check"]) == 0  # converting twice changes nothing
