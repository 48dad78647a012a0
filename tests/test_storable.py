"""qmcp_site.storable: what is refused, and the copy stored in its place."""

import math

import pytest

from qmcp_site.errors import ApplicationError
from qmcp_site.storable import MAX_DEPTH, json_parse, storable_check, storable_copy


class Text(str):
    """A str subclass, as a caller's own type may be."""


def nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value, path, reason",
    [
        ({"message": "a\x00b"}, "$.message", "NUL"),
        ({"message": "a\ud800b"}, "$.message", "surrogate"),
        ({"k\x00": 1}, "$", "key"),
        ({"n": [1, math.nan]}, "$.n[1]", "not a JSON number"),
        ({"n": math.inf}, "$.n", "not a JSON number"),
        ({"n": -(2**63) - 1}, "$.n", "64 bits"),
        ({"n": 2**63}, "$.n", "64 bits"),
        (nested(MAX_DEPTH + 1), "$" + "[0]" * MAX_DEPTH, "deeper"),
        # Past the quick walk for plain values: non-ASCII text, tuples, subclasses, int keys.
        ({"message": "é\x00"}, "$.message", "NUL"),
        ({"t": ("ok", "a\ud800")}, "$.t[1]", "surrogate"),
        ({"s": Text("a\x00")}, "$.s", "NUL"),
        ({"k": {1: "a\x00"}}, "$.k.1", "NUL"),
        ({"k": [True, None, 2.5, {"n": 2**64}]}, "$.k[3].n", "64 bits"),
    ],
)
def test_storable_check_names_the_bad_part(value, path, reason):
    with pytest.raises(ApplicationError) as raised:
        storable_check(value)
    error = raised.value
    assert (error.code, error.http_status, error.details["path"]) == ("unstorable_value", 422, path)
    assert reason in error.details["reason"]


@pytest.mark.parametrize(
    "value",
    [{"message": "héllo ✓ 😀"}, {"n": [2**63 - 1, -(2**63), 1.5, True, None]}, nested(MAX_DEPTH)],
)
def test_storable_check_passes_what_every_database_stores(value):
    storable_check(value)


def test_storable_copy_replaces_what_cannot_be_stored():
    copy = storable_copy(
        {"a\x00": "x\ud800y", "n": [math.nan, math.inf, 10**30, 7], "deep": nested(MAX_DEPTH + 5)}
    )
    storable_check(copy)
    assert copy["a\ufffd"] == "x\ufffdy"
    assert copy["n"] == ["nan", "inf", str(10**30), 7]


def test_json_parse_refuses_json_too_deep_for_the_parser():
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000):
        with pytest.raises(ApplicationError) as raised:
            json_parse(body)
        assert raised.value.code == "malformed_json"


def test_json_parse_keeps_non_numbers_for_the_check():
    parsed = json_parse(b'{"a": NaN, "b": 1e999}')
    assert math.isnan(parsed["a"]) and parsed["b"] == math.inf
