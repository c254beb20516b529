"""Parse FHIR search parameters (GET query or POST form) into a SearchQuery, checked against the registry.

Everything the URL can say is validated here, so the SQL layer only ever sees known parameters, known
modifiers and well-formed values. Pure, in the domain: a SMART granular scope's query (domain.scopes) is
parsed by the same rules as a search's."""

from __future__ import annotations

from collections.abc import Iterable

from domain.search import DEFAULT_COUNT, Criterion, DateValue, Include, SearchQuery, SortKey
from domain.search_parameters import BY_TYPE, DATE, REFERENCE, STRING, TOKEN, URI, precision_range

MAX_COUNT = 200
MAX_INCLUDED = 1000  # per page; past it the request is refused (never cut silently)
# Bounds on what one search may ask (CONTRACT §6 pinning, README "Search limits"): the SQL grows with
# each value, and parsing and compiling run on the event loop that serves every other caller. Past any of
# them the search is a 400 naming the cap, never a silent cut.
MAX_OR_VALUES = 100  # comma-separated values of one parameter
MAX_CRITERIA = 20  # search parameters (each occurrence counts) of one search
MAX_INCLUDES = 10  # _include and _revinclude together
MAX_SORT_KEYS = 5
MAX_ELEMENTS = 50
MAX_PARAMETERS = 60  # every name=value pair of the request, unknown lenient ones included
MAX_VALUE_CHARS = 512  # one value of a string, uri, token or reference parameter
MAX_PARAMETER_CHARS = 16 * 1024  # one parameter's whole value, before it is split
MAX_SEARCH_BODY_BYTES = 64 * 1024  # a POST _search form body (a GET's query line is bounded by aiohttp)
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUMMARY_MODES = ("true", "count", "false")
TOTAL_MODES = ("none", "accurate", "estimate")
# Parameters on every resource that we support, beside the type's own.
COMMON = {"_id": TOKEN, "_lastUpdated": DATE}
RESULT_PARAMETERS = {
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
}


class SearchError(ValueError):
    """The request is not a search we can run: a 400 OperationOutcome with this message."""


def parse_search(resource_type: str, params: Iterable[tuple[str, str]], *, lenient: bool) -> SearchQuery:
    params = list(params)
    _within_caps(params)
    registry = BY_TYPE[resource_type]
    criteria: list[Criterion] = []
    sort: list[SortKey] = []
    count, total, summary = DEFAULT_COUNT, "none", None
    elements: tuple[str, ...] = ()
    includes: list[Include] = []
    revincludes: list[Include] = []
    ignored: list[str] = []
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in RESULT_PARAMETERS or raw_name in ("_include:iterate", "_revinclude:iterate"):
            match name:
                case "_count":
                    count = _count(value)
                case "_sort":
                    sort = _sort(resource_type, value)
                case "_total":
                    total = _one_of("_total", value, TOTAL_MODES)
                case "_summary":
                    summary = _one_of("_summary", value, SUMMARY_MODES)
                    summary = None if summary == "false" else summary
                case "_elements":
                    elements = tuple(e.strip() for e in value.split(",") if e.strip())
                case "_include":
                    includes.append(_include(resource_type, value, iterate=modifier == "iterate"))
                case "_revinclude":
                    revincludes.append(_revinclude(resource_type, value))
            continue
        type_ = COMMON.get(name) or (registry[name].type if name in registry else None)
        if type_ is None:
            if lenient:
                ignored.append(raw_name)
                continue
            raise SearchError(f"unknown search parameter {raw_name!r} for {resource_type}")
        criteria.append(_criterion(resource_type, name, type_, modifier or None, value))
    _at_most(len(criteria), MAX_CRITERIA, "search parameters")
    _at_most(len(includes) + len(revincludes), MAX_INCLUDES, "_include and _revinclude parameters")
    _at_most(len(sort), MAX_SORT_KEYS, "_sort keys")
    _at_most(len(elements), MAX_ELEMENTS, "_elements names")
    return SearchQuery(
        resource_type,
        tuple(criteria),
        tuple(sort),
        count,
        total,
        summary,
        elements,
        tuple(includes),
        tuple(revincludes),
        tuple(ignored),
    )


def _within_caps(params: list[tuple[str, str]]) -> None:
    """The caps that bound the work before any of it is done: how many pairs, how long a value."""
    _at_most(len(params), MAX_PARAMETERS, "parameters")
    for name, value in params:
        if len(value) > MAX_PARAMETER_CHARS:
            raise SearchError(f"{name}: the value is longer than {MAX_PARAMETER_CHARS} characters (the cap)")


def _at_most(count: int, cap: int, what: str) -> None:
    if count > cap:
        raise SearchError(f"{count} {what}; a search takes at most {cap}")


def _criterion(resource_type: str, code: str, type_: str, modifier: str | None, value: str) -> Criterion:
    if modifier is not None:
        allowed = (
            ("missing", "not") if code == "_id" else ("missing",) if code == "_lastUpdated" else None
        ) or BY_TYPE[resource_type][code].modifiers
        if modifier not in allowed:
            raise SearchError(
                f"modifier :{modifier} is not supported on {code} (supported: {', '.join(allowed)})"
            )
    if modifier == "missing":
        if value not in ("true", "false"):
            raise SearchError(f"{code}:missing takes true or false")
        return Criterion(code, type_, modifier, (value,))
    values = tuple(v.strip() for v in _split_or(value))
    if len(values) > MAX_OR_VALUES:
        raise SearchError(f"{code}: {len(values)} values; a parameter takes at most {MAX_OR_VALUES}")
    if not values or any(v == "" for v in values):
        raise SearchError(f"{code} needs a value")
    if any(not v.isprintable() for v in values):
        raise SearchError(f"{code}: control characters are not allowed in a value")
    if type_ == DATE:
        return Criterion(code, type_, modifier, values, tuple(_date_value(code, v) for v in values))
    if type_ in (STRING, URI, TOKEN, REFERENCE) and any(len(v) > MAX_VALUE_CHARS for v in values):
        raise SearchError(f"{code}: a value is longer than {MAX_VALUE_CHARS} characters")
    return Criterion(code, type_, modifier, values)


def _split_or(value: str) -> list[str]:
    """Comma means OR; `\\,` is a literal comma."""
    if "\\" not in value:
        return value.split(",")
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _date_value(code: str, value: str) -> DateValue:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        return DateValue(prefix, precision_range(text))  # in UTC; an overflowing offset is a ValueError
    except ValueError as exc:
        raise SearchError(f"{code}: {text!r} is not a FHIR date, dateTime or instant") from exc


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError as exc:
        raise SearchError("_count must be a whole number") from exc
    if count < 0:
        raise SearchError("_count must not be negative")
    return min(count, MAX_COUNT)


def _sort(resource_type: str, value: str) -> list[SortKey]:
    keys: list[SortKey] = []
    for raw in (v.strip() for v in value.split(",")):
        descending = raw.startswith("-")
        code = raw.removeprefix("-")
        type_ = COMMON.get(code) or (
            BY_TYPE[resource_type][code].type if code in BY_TYPE[resource_type] else None
        )
        if type_ is None:
            raise SearchError(f"cannot sort {resource_type} by {code!r}")
        keys.append(SortKey(code, type_, descending))
    return keys


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SearchError(f"{name} must be one of {', '.join(allowed)}")
    return value


def _include(resource_type: str, value: str, *, iterate: bool) -> Include:
    source, code, target = _include_parts(value)
    if not iterate and source != resource_type:
        raise SearchError(f"_include={value}: the source must be {resource_type} (or use _include:iterate)")
    return _checked_include(value, source, code, target, iterate)


def _revinclude(resource_type: str, value: str) -> Include:
    source, code, target = _include_parts(value)
    if source == "Provenance" and code == "target":
        return Include("Provenance", "target", target)
    include = _checked_include(value, source, code, target, False)
    parameter = BY_TYPE[source][code]
    if resource_type not in parameter.targets:
        raise SearchError(f"_revinclude={value}: {source}.{code} does not point at {resource_type}")
    return include


def _include_parts(value: str) -> tuple[str, str, str | None]:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SearchError(f"{value!r} is not Type:parameter[:TargetType]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _checked_include(value: str, source: str, code: str, target: str | None, iterate: bool) -> Include:
    parameter = BY_TYPE.get(source, {}).get(code)
    if parameter is None or parameter.type != REFERENCE:
        raise SearchError(f"{value!r}: {source} has no reference parameter {code!r}")
    if target is not None and target not in parameter.targets:
        raise SearchError(f"{value!r}: {source}.{code} cannot point at {target}")
    return Include(source, code, target, iterate)
