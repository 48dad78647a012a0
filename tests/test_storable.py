"""qmcp_site.storable: what is refused, and the copy stored in its place."""

import json
import math
import re

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


def _storable_by_definition(value, depth: int = 0) -> bool:
    """The module docstring's rules, written out plainly, for values of JSON's own types."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= 2**63 - 1
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _storable_by_definition(k) for k in value) and all(
            _storable_by_definition(v, depth + 1) for v in value.values()
        )
    return all(_storable_by_definition(v, depth + 1) for v in value)


def _random_value(rng, depth: int = 0):
    """A value of JSON's own types (tuples too), now and then with something unstorable."""
    scalars = [
        lambda: rng.choice(["", "ok", "héllo ✓", "😀", "a\x00b", "x\ud800", "\udfff"]),
        lambda: rng.choice([0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30]),
        lambda: rng.choice([0.5, -2.25, 1e300, math.nan, math.inf, -math.inf]),
        lambda: rng.choice([True, False, None]),
    ]
    if depth > 70 or rng.random() < 0.45:
        return rng.choice(scalars)()
    size = rng.randrange(4)
    if depth > 60 or rng.random() < 0.5:
        children = [_random_value(rng, depth + 1) for _ in range(size)]
        return tuple(children) if rng.random() < 0.2 else children
    keys = ["a", "é", "k\x00", "\ud800", "😀", "long key " * 3]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(size)}


def test_the_quick_walk_passes_exactly_what_the_rules_allow():
    """``_plain`` (the walk every call's arguments and result take) against the rules, on
    random values that are storable or not, deep ones included; and ``storable_check``."""
    import random

    from qmcp_site.storable import _plain

    rng = random.Random(20261203)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        value = _random_value(rng)
        expected = _storable_by_definition(value)
        seen[expected] += 1
        assert _plain(value) is expected, value
        if expected:
            storable_check(value)
        else:
            with pytest.raises(ApplicationError):
                storable_check(value)
    for depth in (MAX_DEPTH, MAX_DEPTH + 1):  # the limit, exactly, with lists and dicts
        innermost_dict: object = {"a": 1}
        for _ in range(depth - 1):
            innermost_dict = [innermost_dict]
        for container in (nested(depth), {"a": nested(depth - 1)}, innermost_dict):
            assert _plain(container) is _storable_by_definition(container) is (depth == MAX_DEPTH)
    assert min(seen.values()) > 300  # both kinds were tried, often


JSON_BODIES = [
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}',
    b'{"a": 1, "b": 2, "a": 3}',  # a repeated key: the last value, at the first key's place
    b'{"id": 18446744073709551615}',  # the largest that orjson reads as an integer
    b'{"id": 18446744073709551616}',  # beyond: orjson would read a float
    b"[-9223372036854775808, -9223372036854775809, 123456789012345678901234567890]",
    b"[1e400, -1e400, 1.7976931348623159e308, 2.2250738585072011e-308, 4.9e-324, -0.0, -0]",
    b"[NaN, Infinity, -Infinity]",
    b'"\\ud800"',
    b'{"\\ud83d\\ude00": "\\u00e9\\u0000"}',
    b"\xef\xbb\xbf{}",  # a byte order mark
    "{}".encode("utf-16"),
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8, which the standard library reads
    b'"\xff"',
    b'"a\nb"',
    b"[1,]",
    b"01",
    b"",
    b"  [true, false, null]  \n",
    b"[" * 2000 + b"]" * 2000,
    b"[" * 100_000 + b"]" * 100_000,
]


def _loaded(loads, body):
    try:
        value = loads(body)
    except Exception as exc:  # the same class and message, or both fail differently
        return ("error", type(exc), str(exc))
    return ("value", repr(value), json.dumps(value, allow_nan=True))


@pytest.mark.parametrize("body", JSON_BODIES + [b.decode("latin-1") for b in JSON_BODIES[:9]])
def test_json_loads_gives_what_the_standard_library_gives(body):
    from qmcp_site.storable import json_loads

    assert _loaded(json_loads, body) == _loaded(json.loads, body)


def test_json_loads_reads_numbers_as_the_standard_library_does():
    """Floats of every kind of text, and integers up to 18 digits, where orjson reads."""
    import random
    import struct

    from qmcp_site.storable import json_loads

    rng = random.Random(7)
    numbers, long_digits = (
        [],
        re.compile("[0-9]{19}"),
    )  # (0.000123... in full: the standard library's)
    for _ in range(20_000):
        numbers.append(repr(struct.unpack("d", rng.randbytes(8))[0]))
        digits, scale = rng.randrange(1, 17), 10.0 ** rng.randrange(-300, 300)
        numbers.append(f"{rng.uniform(-1, 1) * scale:.{digits}e}")
        numbers.append(str(rng.randrange(-(10**18), 10**18)))
    body = (
        "["
        + ", ".join(
            n for n in numbers if n not in ("nan", "inf", "-inf") and not long_digits.search(n)
        )
        + "]"
    ).encode()
    assert re.search(rb"[0-9]{19}", body) is None  # all of it for orjson to read
    assert repr(json_loads(body)) == repr(json.loads(body))


def test_a_run_of_19_digits_is_found_in_bytes_as_in_text():
    """The bytes check (digits made zeros) finds exactly what the regular expression finds."""
    import random

    from qmcp_site.storable import _long_number_in

    rng, found = random.Random(19), 0
    for _ in range(3000):
        text = "".join(rng.choice("0123456789" * 6 + "a-.\u00e9") for _ in range(rng.randrange(60)))
        expected = re.search("[0-9]{19}", text) is not None
        assert _long_number_in(text.encode()) is expected
        assert _long_number_in(text) is expected
        found += expected
    assert 300 < found < 2700  # both kinds, often
    assert _long_number_in(b"x" + b"9" * 19) and not _long_number_in(b"9" * 18 + b"x" + b"9")
