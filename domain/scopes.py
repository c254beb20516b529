"""SMART App Launch 2 scopes on reads (CONTRACT §13): what a token's `scope` claim lets it read, per type.

Accepted: v1 `patient|user|system/<Type|*>.read` (and `.*`, which includes it), v2
`…/<Type|*>.<c r u d s, in order>` — `r` is read, vread and history, `s` is search — and v2 granular
`…/<Type>.<letters>?<param>=<value>[&…]` on any search parameter the service indexes for the type, which
shows only what matches that query. Several scopes of one type are OR-ed. Anything else — an unknown type
or parameter, a malformed query, a query on `*`, a v1 form with a query — is ignored, never widened.
Writes are not scopes' business (roles decide them, CONTRACT §3).

Pure: the claim becomes `ReadScopes`; storage compiles each type's filters into SQL (the search machinery),
and `matches` evaluates them on one stored version (history and vread, which the index does not cover)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from domain.search import Criterion, DateValue
from domain.search_parameters import (
    DATE,
    REFERENCE,
    STRING,
    TOKEN,
    URI,
    DateRange,
    IndexValues,
    extract,
)
from domain.search_query import SearchError, parse_search

# Types a scope may name: what the FHIR surface serves.
SCOPED_TYPES = frozenset({"CarePlan", "Goal", "Task", "CareTeam", "PlanDefinition", "Provenance"})
_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})\."
    r"(?P<permissions>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.+))?"
)
_V1 = {"read": "rs", "*": "rs", "write": ""}
_SCOPE_COMMON = frozenset({"_id", "_lastUpdated"})  # the parameters of every type a scope may narrow by

Filter = tuple[Criterion, ...]  # criteria AND-ed; () shows everything of the type
EVERYTHING: tuple[Filter, ...] = ((),)


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope the service understood."""

    context: str  # patient, user or system
    resource_type: str  # a type, or `*`
    letters: frozenset[str]  # of r and s: what it allows reading
    narrowed_by: Filter  # () for a scope without a query


def parse_scope(text: str) -> Scope | None:
    """The scope, or None when it is not one the service understands (then it grants nothing)."""
    match = _SCOPE.fullmatch(text)
    if match is None or not match.group("permissions"):
        return None
    permissions, query, resource_type = match.group("permissions"), match.group("query"), match.group("type")
    if permissions in _V1:
        if query is not None:
            return None  # granular scopes are v2's
        letters = frozenset(_V1[permissions])
    else:
        letters = frozenset(permissions) & {"r", "s"}
    if resource_type != "*" and resource_type not in SCOPED_TYPES:
        return None
    narrowed_by: Filter = ()
    if query is not None:
        if resource_type == "*" or resource_type == "Provenance":
            return None  # a query names parameters of one type; Provenance has none we index
        parsed = _query(resource_type, query)
        if parsed is None:
            return None
        narrowed_by = parsed
    return Scope(match.group("context"), resource_type, letters, narrowed_by)


def _query(resource_type: str, query: str) -> Filter | None:
    """A granular scope's query as search criteria; None when it is anything but `param=value` pairs on
    parameters the type indexes (no result parameters, includes or chains)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        parsed = parse_search(resource_type, pairs, lenient=False)
    except (ValueError, SearchError):
        return None
    extras = (parsed.sort, parsed.includes, parsed.revincludes, parsed.elements, parsed.summary)
    if any(extras) or any(
        name.startswith("_") and name.partition(":")[0] not in _SCOPE_COMMON for name, _ in pairs
    ):
        return None
    if not parsed.criteria:
        return None
    return parsed.criteria


@dataclass(frozen=True, slots=True)
class TypeGrant:
    """What a token may read of one type: each letter's alternatives (OR-ed filters); none at all when
    empty, everything when one alternative is ()."""

    read: tuple[Filter, ...] = ()
    search: tuple[Filter, ...] = ()


def _any_of(filters: Iterable[Filter]) -> tuple[Filter, ...]:
    """Scopes of one type are OR-ed: an unnarrowed one among them covers everything."""
    unique = tuple(dict.fromkeys(filters))
    return EVERYTHING if () in unique else unique


@dataclass(frozen=True, slots=True)
class ReadScopes:
    """A token's read grants, per type; a type it does not name is not readable at all."""

    grants: Mapping[str, TypeGrant]
    patient_context: bool  # some scope is a `patient/` one

    def __hash__(self) -> int:  # `grants` is a dict: a principal holding these is hashed by what they say
        return hash((self.fingerprint, self.patient_context))

    def may_read(self, resource_type: str) -> bool:
        return bool(self.grant(resource_type).read)

    def may_search(self, resource_type: str) -> bool:
        return bool(self.grant(resource_type).search)

    def grant(self, resource_type: str) -> TypeGrant:
        return self.grants.get(resource_type, TypeGrant())

    def reading(self, resource_type: str) -> tuple[Filter, ...] | None:
        """The filters a read (by id, vread, history, include) of the type must pass: None for all of it."""
        return _restriction(self.grant(resource_type).read)

    def searching(self, resource_type: str) -> tuple[Filter, ...] | None:
        """The filters a search's matches of the type must pass: None for all of it."""
        return _restriction(self.grant(resource_type).search)

    @property
    def fingerprint(self) -> str:
        """A stable text of the grants, to bind paging cursors to the scopes that made them."""
        parts = []
        for resource_type in sorted(self.grants):
            grant = self.grants[resource_type]
            for letter, filters in (("r", grant.read), ("s", grant.search)):
                parts += [f"{resource_type}.{letter}?{_describe(f)}" for f in filters]
        return " ".join(sorted(parts))


def _restriction(filters: tuple[Filter, ...]) -> tuple[Filter, ...] | None:
    return None if filters == EVERYTHING else filters


def _describe(criteria: Filter) -> str:
    return "&".join(
        f"{c.code}{':' + c.modifier if c.modifier else ''}={','.join(c.values)}" for c in criteria
    )


@dataclass(frozen=True, slots=True)
class Reader:
    """The caller as every read path sees it (`Principal.reader`): a patient's id, for CONTRACT §6's
    filters, and the token's read scopes (None: no `scope` claim, so its roles decide, as before scopes)."""

    patient_id: str | None = None
    scopes: ReadScopes | None = None

    def reading(self, resource_type: str) -> tuple[Filter, ...] | None:
        """What a read of the type (by id, vread, history, include) must pass; None: everything."""
        return None if self.scopes is None else self.scopes.reading(resource_type)

    def searching(self, resource_type: str) -> tuple[Filter, ...] | None:
        """What a search's matches of the type must pass; None: everything."""
        return None if self.scopes is None else self.scopes.searching(resource_type)

    def may_read(self, resource_type: str) -> bool:
        return self.scopes is None or self.scopes.may_read(resource_type)

    def may_search(self, resource_type: str) -> bool:
        return self.scopes is None or self.scopes.may_search(resource_type)

    @property
    def fingerprint(self) -> str:
        """What a paging cursor is bound to, beside the caller: a page is never read under other scopes."""
        return "roles" if self.scopes is None else self.scopes.fingerprint


EVERYONE = Reader()  # staff without scopes: what tools and benchmarks read as


def read_scopes(claim: Iterable[str] | None) -> ReadScopes | None:
    """A `scope` claim's read grants; None without the claim (the token then reads by its roles, as
    before scopes)."""
    if claim is None:
        return None
    scopes = [s for s in map(parse_scope, claim) if s is not None]
    grants: dict[str, TypeGrant] = {}
    for resource_type in SCOPED_TYPES:
        applying = [s for s in scopes if s.resource_type in (resource_type, "*")]
        reads = [s.narrowed_by for s in applying if "r" in s.letters]
        searches = [s.narrowed_by for s in applying if "s" in s.letters]
        if reads or searches:
            grants[resource_type] = TypeGrant(_any_of(reads), _any_of(searches))
    return ReadScopes(grants, patient_context=any(s.context == "patient" for s in scopes))


# --- one stored version against a filter (what SQL does for current rows, storage.search_sql) ---


def matches(resource: Mapping[str, Any], filters: tuple[Filter, ...] | None) -> bool:
    """Whether one version passes any of the filters (None: no restriction)."""
    if filters is None:
        return True
    values = extract(dict(resource))
    return any(all(_criterion(resource, values, c) for c in f) for f in filters)


def _criterion(resource: Mapping[str, Any], values: IndexValues, criterion: Criterion) -> bool:
    code, modifier = criterion.code, criterion.modifier
    if code == "_id":
        found = [str(resource.get("id"))]
    elif code == "_lastUpdated":
        updated = (resource.get("meta") or {}).get("lastUpdated")
        moment = datetime.fromisoformat(updated) if isinstance(updated, str) else None
        return _dates([DateRange(moment, moment)] if moment else [], criterion)
    elif criterion.type == DATE:
        return _dates([d for name, d in values.dates if name == code], criterion)
    elif criterion.type == TOKEN:
        tokens = [t for name, t in values.tokens if name == code]
        if modifier == "missing":
            return (not tokens) == (criterion.values[0] == "true")
        hit = any(
            _token(t.system, t.code, t.text, v, text=modifier == "text")
            for t in tokens
            for v in criterion.values
        )
        return not hit if modifier == "not" else hit
    elif criterion.type == REFERENCE:
        refs = [r for name, r in values.references if name == code]
        if modifier == "missing":
            return (not refs) == (criterion.values[0] == "true")
        return any(_reference(r.ref_type, r.ref_id, v, modifier) for r in refs for v in criterion.values)
    else:
        found = [s for name, s in values.strings if name == code]
    if modifier == "missing":
        return (not found) == (criterion.values[0] == "true")
    if code == "_id":
        hit = any(v in found for v in criterion.values)
        return not hit if modifier == "not" else hit
    return any(_string(s, v, criterion.type, modifier) for s in found for v in criterion.values)


def _token(system: str | None, code: str | None, display: str | None, value: str, *, text: bool) -> bool:
    if text:
        words = (display or "").lower()
        wanted = value.lower()
        return words.startswith(wanted) or f" {wanted}" in words
    if "|" not in value:
        return code == value
    wanted_system, _, wanted_code = value.partition("|")
    if not wanted_system:
        return system is None and code == wanted_code
    if not wanted_code:
        return system == wanted_system
    return system == wanted_system and code == wanted_code


def _reference(ref_type: str | None, ref_id: str | None, value: str, target: str | None) -> bool:
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    wanted_type = parts[-2] if len(parts) >= 2 else target
    if target is not None and wanted_type != target:
        return False
    return ref_id == parts[-1] and (wanted_type is None or ref_type == wanted_type)


def _string(stored: str, value: str, type_: str, modifier: str | None) -> bool:
    if type_ == URI:
        if modifier == "below":
            return stored.startswith(value)
        if modifier == "above":
            return value.startswith(stored)
        return stored == value
    if type_ != STRING:
        return stored == value
    if modifier == "exact":
        return stored == value
    if modifier == "contains":
        return value.lower() in stored.lower()
    return stored.lower().startswith(value.lower())


def _dates(spans: list[DateRange], criterion: Criterion) -> bool:
    if criterion.modifier == "missing":
        return (not spans) == (criterion.values[0] == "true")
    return any(_date(span, value) for span in spans for value in criterion.dates)


# The index keeps an open end as -infinity / infinity (storage.search_index): so does this.
_FAR_PAST, _FAR_FUTURE = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _date(stored: DateRange, value: DateValue) -> bool:
    """storage.search_sql's `_date_clause` on one stored range."""
    low, high = stored.low or _FAR_PAST, stored.high or _FAR_FUTURE
    vl, vh = value.span.low or _FAR_PAST, value.span.high or _FAR_FUTURE
    match value.prefix:
        case "eq":
            return low >= vl and high <= vh
        case "ne":
            return not (low >= vl and high <= vh)
        case "gt":
            return high > vh
        case "lt":
            return low < vl
        case "ge":
            return high >= vl
        case "le":
            return low <= vh
        case "sa":
            return low > vh
        case "eb":
            return high < vl
    return low <= vh and high >= vl  # `ap`, taken as the overlap
