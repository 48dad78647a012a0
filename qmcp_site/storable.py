"""Values every database can store and every reader can render: the one check at the edge.

A value that arrives from outside (tool arguments, a request's context, a title) is checked
before anything is written. Refused everywhere, on SQLite and on PostgreSQL alike:

- text with a NUL character (PostgreSQL stores none, in text or in jsonb);
- text with a lone surrogate (``"\\ud800"``, which JSON allows): not UTF-8, so PostgreSQL
  refuses it and every page or API that reads it back from SQLite fails to encode it;
- floats that are not numbers (``NaN``, ``Infinity``, ``1e999`` which parses as infinity):
  not JSON, refused by PostgreSQL's jsonb;
- integers outside 64 bits, which no integer column holds;
- nesting deeper than :data:`MAX_DEPTH` (JSON 100,000 levels deep exhausts the parser, the
  encoder and PostgreSQL's stack).

:func:`storable_check` raises the refusal; :func:`storable_copy` gives a copy that can be
stored in its place (bad characters replaced), for the audit row of a refused call.
"""

import json
import math
import re
from typing import Any

import orjson

from qmcp_site.errors import ApplicationError

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
REPLACEMENT = "\ufffd"
_BAD_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
_TOO_DEEP = "(nested too deep)"


def _text_problem(text: str) -> str | None:
    found = _BAD_CHARACTERS.search(text)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\x00" else "a lone surrogate (not UTF-8)"


def _plain(value: Any) -> bool:
    """True when ``value`` is certainly storable: JSON's own types (exactly, not subclasses)
    with nothing :func:`_problem` refuses. A walk that builds no paths, for the common case,
    with the text of every key and string checked at once at its end; False sends the value
    to :func:`_problem`, which finds (and names) any problem."""
    todo, texts = [(value, 0)], []
    while todo:
        item, depth = todo.pop()
        kind = type(item)
        if kind is dict:
            if depth >= MAX_DEPTH or not set(map(type, item)) <= _STR:
                return False
            texts.extend(item)
            children = item.values()
        elif kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return False
            children = item
        else:
            children = (item,)  # a scalar at the top
        for child in children:
            kind = type(child)
            if kind is str:
                texts.append(child)
            elif kind is dict or kind is list or kind is tuple:
                todo.append((child, depth + 1))
            elif kind is int:
                if not INT_MIN <= child <= INT_MAX:
                    return False
            elif kind is float:
                if not math.isfinite(child):
                    return False
            elif not (child is None or kind is bool):
                return False
    text = "".join(texts)
    return (text.isascii() and "\x00" not in text) or _BAD_CHARACTERS.search(text) is None


_STR = {str}


def _problem(value: Any) -> tuple[str, str] | None:
    """The first unstorable part of ``value``: (its path, what is wrong), or None."""
    if _plain(value):
        return None
    todo = [(value, "$", 0)]
    while todo:
        item, path, depth = todo.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path, f"text with {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return path, "an integer outside 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, f"{item!r}, which is not a JSON number"
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return path, f"nesting deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and (problem := _text_problem(key)):
                        return path, f"a key with {problem}"
                    todo.append((child, f"{path}.{_printable(str(key))}", depth + 1))
            else:
                todo.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def _printable(text: str) -> str:
    return _BAD_CHARACTERS.sub(REPLACEMENT, text)[:100]


def storable_check(value: Any, *, what: str = "arguments") -> None:
    """Raises ApplicationError ``unstorable_value`` (422) if any part of ``value`` cannot be
    stored and read back on every database; the details name the part (``$.a[0]``)."""
    found = None if _plain(value) else _problem(value)
    if found is not None:
        path, reason = found
        raise ApplicationError(
            f"The {what} cannot be stored: {path} holds {reason}.",
            "unstorable_value",
            {"path": path, "reason": reason},
        )


def storable_text(text: str) -> str:
    """``text`` with NUL characters and lone surrogates replaced by U+FFFD."""
    return _BAD_CHARACTERS.sub(REPLACEMENT, text)


def storable_copy(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that passes :func:`storable_check`: bad characters replaced by
    U+FFFD, non-numbers and integers beyond 64 bits as text, nesting cut at ``MAX_DEPTH``.
    Values that are not JSON (a set, an object) become their ``repr``."""
    if isinstance(value, str):
        return storable_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else _int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            return _TOO_DEEP
        if isinstance(value, dict):
            return {storable_text(str(k)): storable_copy(v, depth + 1) for k, v in value.items()}
        return [storable_copy(v, depth + 1) for v in value]
    return storable_text(repr(value))[:1000]


def _int_text(value: int) -> str:
    try:
        text = str(value)
    except ValueError:  # more digits than Python converts by default
        return "(an integer too large to show)"
    return text if len(text) <= 100 else f"{text[:40]}...({len(text)} digits)"


# orjson reads an integer beyond 64 bits as a float (and -2**63 - 1 already, 19 digits): a
# body with that many digits in a row is read by the standard library. Bytes are searched
# with every digit made a 0 (bytes.translate: a quarter of the regular expression's time).
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_ZEROS = b"0" * 19
_LONG_NUMBER_TEXT = re.compile(r"[0-9]{19}")


def _long_number_in(body: bytes | str) -> bool:
    if type(body) is bytes:
        return _NINETEEN_ZEROS in body.translate(_DIGITS_AS_ZEROS)
    return _LONG_NUMBER_TEXT.search(body) is not None


def json_loads(body: bytes | str) -> Any:
    """``json.loads(body)``: the same value, or the same error, for every body; read by
    orjson, several times faster, except where it could differ. The standard library reads
    whatever orjson refuses (``NaN``, a lone surrogate, a byte order mark, nesting past 1024
    levels) and every body with 19 digits in a row (``tests/test_storable.py`` compares
    the two)."""
    if not _long_number_in(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


def json_parse(body: bytes | str) -> Any:
    """A request body parsed as JSON; ApplicationError ``malformed_json`` (400) when it does
    not parse, including JSON nested too deep for the parser. ``NaN``, ``Infinity`` and
    huge numbers parse; :func:`storable_check` refuses them, with the call audited."""
    try:
        return json_loads(body)
    except RecursionError as exc:
        raise ApplicationError(
            "Request body is not valid JSON: nested too deep.", "malformed_json"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApplicationError(f"Request body is not valid JSON: {exc}", "malformed_json") from exc


# How a JSON column holds the characters storable_copy replaces (json.dumps escapes them;
# NaN never got in: SQLite's JSON_VALID check refuses it).
_SUSPECT_JSON = ["\\u0000", *(f"\\ud{c}" for c in "89abcdef")]


def storable_repair(model, fields: list[str], using: str = "default") -> int:
    """Replaces, in ``model``'s JSON ``fields``, every value :func:`storable_check` refuses
    by its :func:`storable_copy`; returns the number of rows changed. For SQLite, which
    stored such values before they were refused (PostgreSQL never did)."""
    from django.db.models import Q

    suspect = Q()
    for name in fields:
        for text in _SUSPECT_JSON:
            suspect |= Q(**{f"{name}__icontains": text})
    changed = 0
    for row in model._default_manager.using(using).filter(suspect).only("pk", *fields):
        updates = {}
        for name in fields:
            value = getattr(row, name)
            if _problem(value) is not None:
                updates[name] = storable_copy(value)
        if updates:
            model._default_manager.using(using).filter(pk=row.pk).update(**updates)
            changed += 1
    return changed
