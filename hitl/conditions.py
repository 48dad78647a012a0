"""The conditions of an approval rule: JSON data validated by these models, never code.

A rule's ``conditions`` is one object; every part it has must hold (an empty object
matches every call)::

    {
      "arguments": [{"arg": "environment", "op": "equals", "value": "production"},
                    {"arg": "salary", "op": "gt", "value": 100000}],
      "caller": {"users": ["ci@example.com"], "groups": ["ops"], "tokens": ["qmcp_ab12"],
                 "clients": ["claude-code"]},
      "time": {"zone": "Europe/Berlin", "weekdays": [1, 2, 3, 4, 5], "hours": [9, 17],
               "windows": [{"start": "2026-12-20T00:00", "end": "2027-01-04T00:00"}]}
    }

- ``arguments``: every test holds. ``arg`` is an argument's name, or a dotted path into
  nested objects. Ops: ``equals`` / ``not_equals`` (``value``), ``in`` / ``not_in``
  (``values``), ``lt`` ``le`` ``gt`` ``ge`` (a number; a non-numeric argument fails the test),
  ``matches`` (``pattern``, Python ``re.search`` on a string argument), ``present``,
  ``absent``.
- ``caller``: each list given must contain the caller (user email, a group the user is in,
  the token's prefix, the MCP client's ``clientInfo.name``).
- ``time``: in ``zone`` (IANA, default UTC), the weekday (ISO: 1 is Monday) is listed, the
  hour is within ``hours`` [from, to) (to < from spans midnight), and now is inside one of
  the dated ``windows`` [start, end) (a naive time is read in ``zone``).

Patterns are bounded: at most PATTERN_MAX_LENGTH characters, compiled when the rule is
saved, and searched in at most SUBJECT_MAX_LENGTH characters of the argument. Only people
with the admin's rule permission write them.

Every test is also compiled, once, into a closure (``predicate()``) that does only what
its own op and value need: a call tested against 50 rules pays for 50 small calls, not for
50 walks through these models (``hitl.rules`` keeps the compiled rules).
"""

import operator
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

PATTERN_MAX_LENGTH = 200
SUBJECT_MAX_LENGTH = 10_000
LIST_MAX = 200

Number = StrictInt | StrictFloat
Json = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_MISSING = object()


def _lookup(arguments: dict[str, Any], path: str) -> Any:
    value: Any = arguments
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


Predicate = Callable[[dict[str, Any]], bool]  # the validated arguments -> the test holds


def _getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """The argument at ``path`` (or _MISSING) in the arguments' JSON object."""
    if "." not in path:
        return lambda arguments: arguments.get(path, _MISSING)
    return lambda arguments: _lookup(arguments, path)


class _ArgTest(_Strict):
    arg: str = Field(min_length=1, max_length=200)

    def holds(self, arguments: dict[str, Any]) -> bool:
        return self.test(_lookup(arguments, self.arg))

    def predicate(self) -> Predicate:
        """``holds`` as a closure made once; the ops override it with cheaper ones."""
        get, test = _getter(self.arg), self.test
        return lambda arguments: test(get(arguments))

    def test(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Equals(_ArgTest):
    op: Literal["equals", "not_equals"]
    value: Json

    def test(self, value: Any) -> bool:
        same = _same(value, self.value)
        return same if self.op == "equals" else not same

    def predicate(self) -> Predicate:
        expected, equal = self.value, self.op == "equals"
        if not isinstance(expected, str) or "." in self.arg:
            return super().predicate()
        name = self.arg  # a string equals only a string: no bool or number subtlety
        return lambda arguments: (arguments.get(name, _MISSING) == expected) is equal

    def describe(self) -> str:
        return f"{self.arg} {'=' if self.op == 'equals' else '!='} {self.value!r}"


class In(_ArgTest):
    op: Literal["in", "not_in"]
    values: list[Json] = Field(min_length=1, max_length=LIST_MAX)

    def test(self, value: Any) -> bool:
        found = any(_same(value, v) for v in self.values)
        return found if self.op == "in" else not found

    def predicate(self) -> Predicate:
        if not all(isinstance(v, str) for v in self.values):
            return super().predicate()
        get, values, inside = _getter(self.arg), frozenset(self.values), self.op == "in"
        return lambda arguments: (type(v := get(arguments)) is str and v in values) is inside

    def describe(self) -> str:
        return f"{self.arg} {'in' if self.op == 'in' else 'not in'} {self.values!r}"


class Compare(_ArgTest):
    op: Literal["lt", "le", "gt", "ge"]
    value: Number

    def test(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        return {
            "lt": value < self.value,
            "le": value <= self.value,
            "gt": value > self.value,
            "ge": value >= self.value,
        }[self.op]

    def predicate(self) -> Predicate:
        get, limit = _getter(self.arg), self.value
        compare = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}[
            self.op
        ]
        return lambda arguments: _is_number(v := get(arguments)) and compare(v, limit)

    def describe(self) -> str:
        sign = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}[self.op]
        return f"{self.arg} {sign} {self.value!r}"


class Matches(_ArgTest):
    op: Literal["matches"]
    pattern: str = Field(min_length=1, max_length=PATTERN_MAX_LENGTH)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    def test(self, value: Any) -> bool:
        return isinstance(value, str) and (
            re.search(self.pattern, value[:SUBJECT_MAX_LENGTH]) is not None
        )

    def predicate(self) -> Predicate:
        get, search = _getter(self.arg), re.compile(self.pattern).search
        return lambda arguments: (
            isinstance(v := get(arguments), str) and search(v[:SUBJECT_MAX_LENGTH]) is not None
        )

    def describe(self) -> str:
        return f"{self.arg} matches /{self.pattern}/"


class Presence(_ArgTest):
    op: Literal["present", "absent"]

    def test(self, value: Any) -> bool:
        present = value is not _MISSING and value is not None
        return present if self.op == "present" else not present

    def predicate(self) -> Predicate:
        get, present = _getter(self.arg), self.op == "present"
        return (
            lambda arguments: ((v := get(arguments)) is not _MISSING and v is not None) is present
        )

    def describe(self) -> str:
        return f"{self.arg} is {self.op}"


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1 (as it is in Python)."""
    if value is _MISSING:
        return False
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return value == expected


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


ArgTest = Annotated[Equals | In | Compare | Matches | Presence, Field(discriminator="op")]
Names = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=254)]], Field(max_length=LIST_MAX)
]


class CallerTest(_Strict):
    users: Names | None = None
    groups: Names | None = None
    tokens: Names | None = None
    clients: Names | None = None

    @field_validator("users")
    @classmethod
    def _emails_folded(cls, users: list[str] | None) -> list[str] | None:
        return None if users is None else [email.casefold() for email in users]


class Window(_Strict):
    start: datetime
    end: datetime


class TimeTest(_Strict):
    zone: str = "UTC"
    weekdays: list[Annotated[int, Field(ge=1, le=7)]] | None = Field(None, min_length=1)
    hours: tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=1, le=24)]] | None = (
        None
    )
    windows: list[Window] | None = Field(None, min_length=1, max_length=LIST_MAX)

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        return zone

    def holds(self, now: datetime) -> bool:
        return self.predicate()(now)

    def predicate(self) -> Callable[[datetime], bool]:
        """``holds`` with the zone, weekdays and windows prepared once."""
        zone = ZoneInfo(self.zone)
        weekdays = None if self.weekdays is None else frozenset(self.weekdays)
        hours = self.hours
        windows = None
        if self.windows is not None:
            windows = [(_aware(w.start, zone), _aware(w.end, zone)) for w in self.windows]

        def holds(now: datetime) -> bool:
            if windows is not None and not any(start <= now < end for start, end in windows):
                return False
            local = now.astimezone(zone)
            if weekdays is not None and local.isoweekday() not in weekdays:
                return False
            if hours is not None:
                start, end = hours
                hour = local.hour
                return start <= hour < end if start < end else not end <= hour < start
            return True

        return holds


def _aware(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


class Conditions(_Strict):
    """A rule's conditions; see the module's docstring."""

    arguments: list[ArgTest] = Field(default_factory=list, max_length=LIST_MAX)
    caller: CallerTest | None = None
    time: TimeTest | None = None


def conditions_parse(data: Any) -> Conditions:
    """The validated conditions; raises ``ValueError`` with one readable line per problem."""
    try:
        return Conditions.model_validate(data if data is not None else {})
    except pydantic.ValidationError as exc:
        lines = [
            f"{'.'.join(str(part) for part in error['loc']) or 'conditions'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise ValueError("; ".join(lines)) from None
