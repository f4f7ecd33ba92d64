"""W3C Trace Context edge cases, after the Recommendation's own test suite (w3c/trace-context test/test.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from meshlib.inbound.tracecontext import (
    TRACESTATE_LIMIT,
    extract_context,
    parent_span_context,
    parse_tracestate,
    truncate_tracestate,
)

TRACE_ID = "12345678901234567890123456789012"
VALID = f"00-{TRACE_ID}-1234567890123456-01"


def trace_id_of(traceparent: list[str], tracestate: list[str] | None = None) -> str | None:
    parent = parent_span_context(traceparent, tracestate or [])
    return None if parent is None else f"{parent.trace_id:032x}"


def state_of(tracestate: list[str]) -> dict[str, str]:
    parent = parent_span_context([f"00-{TRACE_ID}-1234567890123456-00"], tracestate)
    assert parent is not None
    return dict(parent.trace_state)


def test_valid_traceparent_is_continued() -> None:
    """A valid traceparent gives the caller's trace id, span id and sampled flag."""
    parent = parent_span_context([VALID])
    assert parent is not None
    assert f"{parent.trace_id:032x}" == TRACE_ID
    assert f"{parent.span_id:016x}" == "1234567890123456"
    assert parent.trace_flags.sampled
    assert parent.is_remote


def test_missing_traceparent_starts_a_new_trace() -> None:
    """No traceparent: no parent, and tracestate alone is ignored."""
    assert parent_span_context([], ["foo=1"]) is None
    assert trace.get_current_span(extract_context([], ["foo=1"])) is trace.INVALID_SPAN


def test_duplicated_traceparent_starts_a_new_trace() -> None:
    """Two traceparent fields are invalid (test_traceparent_duplicated), even when equal."""
    assert trace_id_of([VALID, VALID.replace("12-", "11-", 1)]) is None
    assert trace_id_of([VALID, VALID]) is None


def test_comma_joined_traceparent_is_invalid() -> None:
    """A server that joins duplicated fields with a comma yields an invalid value."""
    assert trace_id_of([f"{VALID},{VALID}"]) is None


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_ID}-1234567890123456-01.",
        f"00-{TRACE_ID}-1234567890123456-01-what-the-future-will-be-like",
        f"ff-{TRACE_ID}-1234567890123456-01",
        f".0-{TRACE_ID}-1234567890123456-01",
        f"0.-{TRACE_ID}-1234567890123456-01",
        f"000-{TRACE_ID}-1234567890123456-01",
        f"0-{TRACE_ID}-1234567890123456-01",
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        f"00-{TRACE_ID.upper().replace('1', 'A')}-1234567890123456-01",
        f"00-{TRACE_ID}-0000000000000000-01",
        f"00-{TRACE_ID}-.234567890123456-01",
        f"00-{TRACE_ID}-123456789012345.-01",
        f"00-{TRACE_ID}-12345678901234567-01",
        f"00-{TRACE_ID}-123456789012345-01",
        f"00-{TRACE_ID}-1234567890123456-.0",
        f"00-{TRACE_ID}-1234567890123456-0.",
        f"00-{TRACE_ID}-1234567890123456-001",
        f"00-{TRACE_ID}-1234567890123456-1",
        f"cc-{TRACE_ID}-1234567890123456-01.what-the-future-will-be-like",
        "",
        "garbage",
        f"00-{TRACE_ID}-1234567890123456-01-" + "x" * 600,
    ],
)
def test_malformed_traceparent_starts_a_new_trace(value: str) -> None:
    """Every malformed traceparent of the W3C suite is ignored, without raising."""
    assert trace_id_of([value]) is None
    assert trace.get_current_span(extract_context([value])) is trace.INVALID_SPAN


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{TRACE_ID}-1234567890123456-01",
        f"cc-{TRACE_ID}-1234567890123456-01-what-the-future-will-be-like",
    ],
)
def test_future_version_is_parsed_by_the_version_00_rules(value: str) -> None:
    """A higher version is parsed for its first fields (test_traceparent_version_0xcc)."""
    assert trace_id_of([value]) == TRACE_ID


@pytest.mark.parametrize(
    "value", [f" {VALID}", f"\t{VALID}", f"{VALID} ", f"{VALID}\t", f"\t {VALID} \t"]
)
def test_optional_whitespace_around_traceparent_is_allowed(value: str) -> None:
    """Leading and trailing OWS is not part of the value (test_traceparent_ows_handling)."""
    assert trace_id_of([value]) == TRACE_ID


def test_unknown_trace_flags_are_zeroed_sampled_and_random_kept() -> None:
    """Level 2: sampled (0x01) and random (0x02) are kept as sent; reserved bits MUST be zeroed."""
    parent = parent_span_context([f"00-{TRACE_ID}-1234567890123456-09"])
    assert parent is not None
    assert parent.trace_flags == 0x01
    parent = parent_span_context([f"00-{TRACE_ID}-1234567890123456-fe"])
    assert parent is not None
    assert parent.trace_flags == 0x02
    parent = parent_span_context([f"00-{TRACE_ID}-1234567890123456-03"])
    assert parent is not None
    assert parent.trace_flags == 0x03


@pytest.mark.parametrize(
    ("fields", "members"),
    [
        (["a=1,,b=2"], [("a", "1"), ("b", "2")]),  # empty members are skipped
        (["a=1 ,\t b=2"], [("a", "1"), ("b", "2")]),  # optional whitespace around members
        (["t1@sys=x", "k/_*-9=v"], [("t1@sys", "x"), ("k/_*-9", "v")]),
        (["a= 1"], [("a", " 1")]),  # a value may start with a space
        (["a=1,a=2"], None),  # duplicated key
        (["a=1", "a=1"], None),  # duplicated across fields
        (["A=1"], None),  # upper case
        (["1a=1"], None),  # a simple key starts with a letter
        (["@a=1"], None),
        (["a@=1"], None),
        (["a@abcdefghijklmno=1"], None),  # system-id over 14
        ([f"{'a' * 257}=1"], None),  # simple-key over 256
        (["a=1=2"], None),  # '=' in a value
        (["a="], None),  # empty value
        (["a"], None),
        ([",".join(f"k{i}=v" for i in range(33))], None),  # over 32 members
    ],
)
def test_tracestate_grammar(fields: list[str], members: list[tuple[str, str]] | None) -> None:
    """tracestate per the Level 1 grammar (unchanged in Level 2): keys, values, duplicates, size."""
    assert parse_tracestate(fields) == members


def test_tracestate_is_inherited_and_combined_in_order() -> None:
    """Several tracestate fields combine in order (test_tracestate_multiple_headers_different_keys)."""
    state = state_of(["foo=1,bar=2", "rojo=1,congo=2", "baz=3"])
    assert list(state.items()) == [
        ("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3"),
    ]  # fmt: skip


def test_empty_tracestate_members_are_ignored() -> None:
    """Empty and whitespace-only members are allowed (test_tracestate_empty_header)."""
    assert state_of([""]) == {}
    assert state_of(["foo=1", ""]) == {"foo": "1"}
    assert state_of(["", "foo=1"]) == {"foo": "1"}
    assert state_of(["foo=1 \t , \t bar=2, \t baz=3"]) == {"foo": "1", "bar": "2", "baz": "3"}


@pytest.mark.parametrize(
    "fields",
    [
        ["foo=1,foo=1"],
        ["foo=1,foo=2"],
        ["foo=1", "foo=2"],
        ["foo =1"],
        ["FOO=1"],
        ["foo.bar=1"],
        ["foo@=1,bar=2"],
        ["@foo=1,bar=2"],
        ["foo@@bar=1,bar=2"],
        ["foo@bar@baz=1,bar=2"],
        ["foo=bar=baz"],
        ["foo=,bar=3"],
        ["foo=1", "z" * 257 + "=1"],
        ["foo=1", "t" * 242 + "@v=1"],
        ["foo=1", "t@" + "v" * 15 + "=1"],
        [",".join(f"bar{i:02d}={i:02d}" for i in range(1, 34))],
    ],
)
def test_invalid_tracestate_is_discarded_whole(fields: list[str]) -> None:
    """Bad member, duplicated key, 33 members or an oversized value: tracestate dropped, trace kept."""
    assert trace_id_of([f"00-{TRACE_ID}-1234567890123456-00"], fields) == TRACE_ID
    assert state_of(fields) == {}


def test_tracestate_limits_are_inclusive() -> None:
    """32 members, a 256-character key and a 241@14 tenant key are all valid."""
    members = ",".join(f"bar{i:02d}={i:02d}" for i in range(1, 33))
    assert len(state_of([members])) == 32
    assert state_of(["foo=1", "z" * 256 + "=1"])["foo"] == "1"
    assert state_of(["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"])["foo"] == "1"


def test_oversized_tracestate_is_truncated_by_whole_entries() -> None:
    """Over the limit: entries over 128 characters go first, from the end, then any from the end."""
    big = [f"k{i:02d}=" + "v" * 256 for i in range(32)]  # 32 valid members, 8351 characters
    state = state_of([",".join(big)])
    assert list(state) == [f"k{i:02d}" for i in range(31)]
    bigs = [f"b{i:02d}" + "k" * 100 + "=" + "v" * 250 for i in range(30)]  # 354 characters each
    kept = list(state_of(["a=1", ",".join(bigs), "z=2"]))
    assert kept[0] == "a"
    assert kept[-1] == "z"
    big_kept = kept[1:-1]
    assert big_kept == [b.split("=")[0] for b in bigs[: len(big_kept)]]
    assert 7 + len(big_kept) * 355 <= TRACESTATE_LIMIT < 7 + (len(big_kept) + 1) * 355


def test_truncation_drops_small_entries_only_when_needed() -> None:
    """Small entries survive until every big one is gone; then the last ones go."""
    entries = [("a", "1"), ("big", "x" * 200), ("b", "2"), ("c", "3")]
    assert truncate_tracestate(entries, 20) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert truncate_tracestate(entries, 7) == [("a", "1"), ("b", "2")]
    assert truncate_tracestate(entries, 0) == []


def test_prohibitively_large_tracestate_is_dropped() -> None:
    """A tracestate over 64 KiB is not parsed at all."""
    huge = [",".join(f"k{i}=v" for i in range(20000))]
    assert state_of(huge) == {}


def test_tracestate_is_not_parsed_without_a_valid_traceparent() -> None:
    """An invalid traceparent voids tracestate too: no parent at all."""
    assert parent_span_context(["00-bad"], ["foo=1"]) is None


def test_extract_context_holds_a_remote_non_recording_parent() -> None:
    """The extracted context's current span is the caller's, remote and non-recording."""
    span = trace.get_current_span(extract_context([VALID], ["foo=1"]))
    context = span.get_span_context()
    assert not span.is_recording()
    assert context.is_remote
    assert f"{context.trace_id:032x}" == TRACE_ID
    assert context.trace_state["foo"] == "1"
