"""Hostile policy documents: alias bombs, deep nesting and oversized files, through every reader.

Each is refused as a PolicyError naming its source, in under 2 s and 50 MiB,
by `load_policy`, the CLI, the file source and a control-plane publish: the
same guarded parser everywhere.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from meshlib import PolicyError, load_policy, parse_policy
from meshlib.cli import main
from meshlib.policy.limits import MAX_NODES, MAX_POLICY_BYTES
from meshlib.policy.sources import FileSource
from meshlib.policy.store import PolicyStore
from tests.controlplane.conftest import POLICY_V1, PUBLISH_HEADERS, serve_plane

from .measure import bounded


def _laughs(levels: int) -> str:
    """A billion-laughs document: each level is a list of nine aliases of the one before."""
    lines = ["version: 1", 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BILLION_LAUGHS = _laughs(10)
# The 349-byte shape from the issue: few bytes, hundreds of thousands of values once expanded.
SMALL_ALIAS_BOMB = _laughs(7)
MERGE_BOMB = "version: 1\nm0: &m0 {a: 1, b: 2, c: 3, d: 4}\n" + "".join(
    f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}\n" for i in range(1, 12)
)
DEEP = 10_000
DOCS: dict[str, str] = {
    "laughs.yaml": BILLION_LAUGHS,
    "small-bomb.yaml": SMALL_ALIAS_BOMB,
    "merge-bomb.yaml": MERGE_BOMB,
    "deep-flow.yaml": "version: 1\nx: " + "[" * DEEP + "]" * DEEP + "\n",
    "deep-map.yaml": "version: 1\nx: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n",
    "deep.json": '{"version": 1, "x": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
    "deep-list.json": '{"version": 1, "x": ' + "[" * DEEP + "]" * DEEP + "}",
    "deep.toml": "version = 1\nx = " + "[" * DEEP + "]" * DEEP + "\n",
    "self-alias.yaml": "version: 1\nx: &x [1, *x]\n",
}
WHY = {
    "laughs.yaml": "values once YAML aliases are expanded",
    "small-bomb.yaml": "values once YAML aliases are expanded",
    "merge-bomb.yaml": "values once YAML aliases are expanded",
    "self-alias.yaml": "refers to a value that contains it",
}


def _why(name: str) -> str:
    return WHY.get(name, "deep")


def _explains(why: str, message: str) -> bool:
    """Whether `message` gives the reason; libyaml's scanner words its own depth limit."""
    return why in message or (why == "deep" and "maximum nesting depth" in message)


@pytest.fixture(params=sorted(DOCS))
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """Each hostile document, written to a file, with the words its error must contain."""
    name = str(request.param)
    path = tmp_path / name
    path.write_text(DOCS[name])
    return path, _why(name)


@pytest.fixture
def oversized(tmp_path: Path) -> Path:
    """A 20 MB policy file (valid YAML: one long comment)."""
    path = tmp_path / "huge.yaml"
    with path.open("w") as file:
        file.write("version: 1\n# ")
        file.write("x" * (20 * 1024 * 1024))
        file.write("\n")
    return path


def test_load_policy_refuses_each_bomb(hostile: tuple[Path, str]) -> None:
    """load_policy turns every bomb into a PolicyError naming the file, fast and small."""
    path, why = hostile
    with bounded(), pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert exc.value.source == str(path)
    assert _explains(why, str(exc.value))


def test_parse_policy_refuses_each_bomb_from_text(hostile: tuple[Path, str]) -> None:
    """Text from anywhere (a publish, the network) goes through the same bounds."""
    path, why = hostile
    text = path.read_text()
    with bounded(), pytest.raises(PolicyError) as exc:
        parse_policy(
            text,
            source="https://cp.internal/v1/policy",
            fmt=None if path.suffix == ".yaml" else path.suffix[1:],
        )
    assert exc.value.source == "https://cp.internal/v1/policy"
    assert _explains(why, str(exc.value))


def test_oversized_file_is_not_read_whole(oversized: Path) -> None:
    """A 20 MB file is refused after reading just past the 1 MiB limit, naming its size."""
    with bounded(megabytes=8), pytest.raises(PolicyError) as exc:
        load_policy(oversized)
    assert exc.value.source == str(oversized)
    assert f"more than the {MAX_POLICY_BYTES}-byte limit" in str(exc.value)
    assert str(oversized.stat().st_size) in str(exc.value)


def test_cli_validate_reports_each_bomb(
    hostile: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`meshlib policy validate` exits 1 with a located message, never a traceback."""
    path, why = hostile
    with bounded():
        assert main(["policy", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(str(path))
    assert _explains(why, err)


def test_cli_validate_reports_an_oversized_file(
    oversized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meshlib policy validate` refuses the 20 MB file with its size."""
    with bounded(megabytes=8):
        assert main(["policy", "validate", str(oversized)]) == 1
    assert "byte limit" in capsys.readouterr().err


def test_file_source_keeps_the_last_good_policy(tmp_path: Path) -> None:
    """A watched file replaced by each bomb in turn is refused; the good policy stays in force."""
    path = tmp_path / "mesh.yaml"
    path.write_text(POLICY_V1)
    store = PolicyStore()
    source = FileSource(path, poll_interval=3600)
    source.start(store)
    try:
        good = store.current
        for name, text in [*DOCS.items(), ("huge", "version: 1\n#" + "x" * (3 * MAX_POLICY_BYTES))]:
            path.write_text(text)
            with bounded(), pytest.raises(PolicyError) as exc:
                source.load_into(store)
            assert exc.value.source == str(path), name
            assert store.current is good
        assert store.reload_failures == len(DOCS) + 1
    finally:
        source.close()


@pytest.mark.parametrize("name", sorted(DOCS))
def test_control_plane_publish_refuses_each_bomb(name: str, policy_dir: Path) -> None:
    """A publish of a bomb is a 422 naming the bound; the version in force stays."""
    fmt = {".json": "application/json", ".toml": "application/toml"}.get(
        Path(name).suffix, "application/yaml"
    )
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        with bounded():
            answer = client.put(
                "/v1/policy",
                content=DOCS[name].encode(),
                headers={**PUBLISH_HEADERS, "Content-Type": fmt},
            )
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert "version 1 stays in force" in body["error"]
        assert _explains(_why(name), body["issues"][0]["message"])
        assert client.get("/v1/policy").json()["version"] == 1


def test_control_plane_publish_refuses_an_oversized_body(policy_dir: Path) -> None:
    """A publish above the shared 1 MiB limit is a 413 before any parsing."""
    body = b"version: 1\n#" + b"x" * (MAX_POLICY_BYTES + 1)
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        answer = client.put("/v1/policy", content=body, headers=PUBLISH_HEADERS)
        assert answer.status_code == 413
        assert client.get("/v1/policy").json()["version"] == 1


def test_a_document_at_the_bounds_still_loads() -> None:
    """The bounds refuse bombs, not big honest policies: depth 8 and many services load."""
    services = "".join(
        f'  svc-{i}:\n    endpoints: ["http://127.0.0.1:{8000 + i}"]\n    retry: {{attempts: 2}}\n'
        for i in range(2000)
    )
    text = "version: 1\ndefaults: &d {retry: {attempts: 2}}\nservices:\n" + services
    policy = parse_policy(text, source="big.yaml")
    assert len(policy.services) == 2000


def test_aliases_are_kept_when_they_stay_small() -> None:
    """Anchors, aliases and merge keys are ordinary YAML a policy may use."""
    text = (
        "version: 1\n"
        "defaults:\n  retry: &retry {attempts: 2}\n"
        "services:\n"
        "  a: {endpoints: [http://127.0.0.1:8001], retry: *retry}\n"
        "  b: {endpoints: [http://127.0.0.1:8002], retry: {<<: *retry, retry_on: [503]}}\n"
    )
    policy = parse_policy(text, source="aliases.yaml")
    assert policy.services["b"].retry is not None
    assert policy.services["b"].retry.attempts == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("version: 1\nx: !!python/object:os.system {}\n", "could not determine a constructor"),
        ("version: 1\nx: !!int 'abc'\n", "not valid YAML"),
        ("version: 1\nx: " + "9" * 5000 + "\n", "not valid YAML"),
        ("version: 1\nx: !!float 'abc'\n", "not valid YAML"),
        ("version: 1\n---\nversion: 1\n", "expected a single document"),
        ("version: 1\nx: *nowhere\n", "undefined alias"),
        ("version: 1\na: &x 1\nb: &x 2\n", "duplicate anchor"),
        ("\ufeffversion: [\n", "not valid YAML"),
        ("version: 1\nx: \x00\n", "not valid YAML"),
    ],
)
def test_every_parser_failure_is_a_policy_error(text: str, words: str) -> None:
    """Unsafe tags, bad scalars, several documents, bad aliases and control bytes: PolicyError."""
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="x.yaml")
    assert words in str(exc.value)
    assert exc.value.source == "x.yaml"


def test_the_node_limit_counts_aliases_at_full_size() -> None:
    """9**5 values expand and reach validation; 9**6 (past MAX_NODES) are refused first."""
    assert 9**5 < MAX_NODES < 9**6
    with pytest.raises(PolicyError, match="values once YAML aliases"):
        parse_policy(_laughs(6), source="x.yaml")
    with pytest.raises(PolicyError) as exc:  # small enough: refused by validation, not the bound
        parse_policy(_laughs(5), source="x.yaml")
    assert "unknown key" in str(exc.value)


def test_libyaml_is_used_where_pyyaml_has_it() -> None:
    """The C parser reads policies when PyYAML was built with libyaml (as its wheels are)."""
    import yaml

    from meshlib.policy import yamldoc

    assert yaml.__with_libyaml__
    assert yamldoc.yaml_loader is yaml.CSafeLoader


@pytest.mark.parametrize("name", sorted(DOCS))
def test_the_pure_python_parser_is_bounded_too(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libyaml, PyYAML's pure-Python parser meets the same bounds."""
    from meshlib.policy import yamldoc

    monkeypatch.setattr(yamldoc, "yaml_loader", yamldoc.BoundedSafeLoader)
    suffix = Path(name).suffix
    with bounded(), pytest.raises(PolicyError) as exc:
        parse_policy(DOCS[name], source=name, fmt=None if suffix == ".yaml" else suffix[1:])
    assert _explains(_why(name), str(exc.value))
