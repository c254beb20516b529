"""The FHIR R4 search parameters we support, in one registry: the index extracts values with it when a
resource is written, the search code parses and queries with it, and /metadata lists it. So the three
cannot disagree (DOMAIN.md §10 lists the parameters; US Core adds CareTeam `role`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

JSON = dict[str, Any]

TOKEN, REFERENCE, DATE, STRING, URI = "token", "reference", "date", "string", "uri"
SEARCHABLE_TYPES = ("CarePlan", "Goal", "Task", "CareTeam", "PlanDefinition")
R4 = "http://hl7.org/fhir/SearchParameter/"
US_CORE = "http://hl7.org/fhir/us/core/SearchParameter/"

# Code systems of the `code`-typed elements we index as tokens (so `system|code` works on them too).
CODE_SYSTEMS = {
    ("CarePlan", "status"): "http://hl7.org/fhir/request-status",
    ("CarePlan", "intent"): "http://hl7.org/fhir/request-intent",
    ("Goal", "lifecycleStatus"): "http://hl7.org/fhir/goal-status",
    ("Task", "status"): "http://hl7.org/fhir/task-status",
    ("Task", "intent"): "http://hl7.org/fhir/task-intent",
    ("Task", "priority"): "http://hl7.org/fhir/request-priority",
    ("CareTeam", "status"): "http://hl7.org/fhir/care-team-status",
    ("PlanDefinition", "status"): "http://hl7.org/fhir/publication-status",
}


@dataclass(frozen=True, slots=True)
class SearchParameter:
    resource_type: str
    code: str
    type: str
    path: str  # dotted FHIR path from the resource root; lists are walked
    targets: tuple[str, ...] = ()
    definition: str = ""
    documentation: str = ""

    @property
    def modifiers(self) -> tuple[str, ...]:
        return {
            TOKEN: ("missing", "not", "text"),
            REFERENCE: ("missing", *self.targets),
            DATE: ("missing",),
            STRING: ("missing", "exact", "contains"),
            URI: ("missing", "below", "above"),
        }[self.type]


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None
    code: str | None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    ref_type: str | None
    ref_id: str | None


@dataclass(frozen=True, slots=True)
class DateRange:
    """A closed interval [low, high]; None is unbounded on that side."""

    low: datetime | None
    high: datetime | None


@dataclass(frozen=True, slots=True)
class IndexValues:
    tokens: list[tuple[str, TokenValue]] = field(default_factory=list)
    references: list[tuple[str, ReferenceValue]] = field(default_factory=list)
    dates: list[tuple[str, DateRange]] = field(default_factory=list)
    strings: list[tuple[str, str]] = field(default_factory=list)


def _p(
    resource_type: str, code: str, type_: str, path: str, *targets: str, us_core: bool = False
) -> SearchParameter:
    base = US_CORE + f"us-core-{resource_type.lower()}-{code}" if us_core else R4 + f"{resource_type}-{code}"
    return SearchParameter(resource_type, code, type_, path, targets, base)


PARAMETERS: tuple[SearchParameter, ...] = (
    # CarePlan (R4: 20)
    _p("CarePlan", "activity-code", TOKEN, "activity.detail.code"),
    _p("CarePlan", "activity-date", DATE, "activity.detail.scheduledPeriod"),
    _p("CarePlan", "activity-reference", REFERENCE, "activity.reference", "Task"),
    _p("CarePlan", "based-on", REFERENCE, "basedOn", "CarePlan"),
    _p("CarePlan", "care-team", REFERENCE, "careTeam", "CareTeam"),
    _p("CarePlan", "category", TOKEN, "category"),
    _p("CarePlan", "condition", REFERENCE, "addresses", "Condition"),
    _p("CarePlan", "date", DATE, "period"),
    _p("CarePlan", "encounter", REFERENCE, "encounter", "Encounter"),
    _p("CarePlan", "goal", REFERENCE, "goal", "Goal"),
    _p("CarePlan", "identifier", TOKEN, "identifier"),
    # R4 types it `reference` (to a canonical); its values are `<url>|<version>` strings, searched as uris
    _p("CarePlan", "instantiates-canonical", URI, "instantiatesCanonical"),
    _p("CarePlan", "instantiates-uri", URI, "instantiatesUri"),
    _p("CarePlan", "intent", TOKEN, "intent"),
    _p("CarePlan", "part-of", REFERENCE, "partOf", "CarePlan"),
    _p("CarePlan", "patient", REFERENCE, "subject", "Patient"),
    _p("CarePlan", "performer", REFERENCE, "activity.detail.performer", "Practitioner", "CareTeam"),
    _p("CarePlan", "replaces", REFERENCE, "replaces", "CarePlan"),
    _p("CarePlan", "status", TOKEN, "status"),
    _p("CarePlan", "subject", REFERENCE, "subject", "Patient", "Group"),
    # Goal (R4: 8)
    _p("Goal", "achievement-status", TOKEN, "achievementStatus"),
    _p("Goal", "category", TOKEN, "category"),
    _p("Goal", "identifier", TOKEN, "identifier"),
    _p("Goal", "lifecycle-status", TOKEN, "lifecycleStatus"),
    _p("Goal", "patient", REFERENCE, "subject", "Patient"),
    _p("Goal", "start-date", DATE, "startDate"),
    _p("Goal", "subject", REFERENCE, "subject", "Patient", "Group", "Organization"),
    _p("Goal", "target-date", DATE, "target.dueDate"),
    # Task (R4: 19)
    _p("Task", "authored-on", DATE, "authoredOn"),
    _p("Task", "based-on", REFERENCE, "basedOn", "CarePlan"),
    _p("Task", "business-status", TOKEN, "businessStatus"),
    _p("Task", "code", TOKEN, "code"),
    _p("Task", "encounter", REFERENCE, "encounter", "Encounter"),
    _p("Task", "focus", REFERENCE, "focus", "CarePlan"),
    _p("Task", "group-identifier", TOKEN, "groupIdentifier"),
    _p("Task", "identifier", TOKEN, "identifier"),
    _p("Task", "intent", TOKEN, "intent"),
    _p("Task", "modified", DATE, "lastModified"),
    _p("Task", "owner", REFERENCE, "owner", "Practitioner", "CareTeam", "Organization"),
    _p("Task", "part-of", REFERENCE, "partOf", "Task"),
    _p("Task", "patient", REFERENCE, "for", "Patient"),
    _p("Task", "performer", TOKEN, "performerType"),
    _p("Task", "period", DATE, "executionPeriod"),
    _p("Task", "priority", TOKEN, "priority"),
    _p("Task", "requester", REFERENCE, "requester", "Practitioner", "Organization"),
    _p("Task", "status", TOKEN, "status"),
    _p("Task", "subject", REFERENCE, "for", "Patient"),
    # CareTeam (R4: 8, and US Core's `role`)
    _p("CareTeam", "category", TOKEN, "category"),
    _p("CareTeam", "date", DATE, "period"),
    _p("CareTeam", "encounter", REFERENCE, "encounter", "Encounter"),
    _p("CareTeam", "identifier", TOKEN, "identifier"),
    _p("CareTeam", "participant", REFERENCE, "participant.member", "Practitioner", "Patient", "Organization"),
    _p("CareTeam", "patient", REFERENCE, "subject", "Patient"),
    _p("CareTeam", "status", TOKEN, "status"),
    _p("CareTeam", "subject", REFERENCE, "subject", "Patient", "Group"),
    _p("CareTeam", "role", TOKEN, "participant.role", us_core=True),
    # PlanDefinition: care programs (CONTRACT §10)
    _p("PlanDefinition", "name", STRING, "name"),
    _p("PlanDefinition", "status", TOKEN, "status"),
    _p("PlanDefinition", "title", STRING, "title"),
    _p("PlanDefinition", "url", URI, "url"),
    _p("PlanDefinition", "version", TOKEN, "version"),
)
BY_TYPE: dict[str, dict[str, SearchParameter]] = {
    resource_type: {p.code: p for p in PARAMETERS if p.resource_type == resource_type}
    for resource_type in SEARCHABLE_TYPES
}
# The `patient` parameter of each type: what patient tokens are confined to.
SUBJECT_PATH = {"CarePlan": "subject", "Goal": "subject", "Task": "for", "CareTeam": "subject"}


def extract(resource: JSON) -> IndexValues:
    """Every index value of a resource, per parameter of its type."""
    values = IndexValues()
    resource_type = resource["resourceType"]
    for parameter in BY_TYPE.get(resource_type, {}).values():
        for element in walk(resource, parameter.path):
            if parameter.type == TOKEN:
                system = CODE_SYSTEMS.get((resource_type, parameter.path))
                values.tokens.extend((parameter.code, t) for t in _tokens(element, system))
            elif parameter.type == REFERENCE:
                ref = _reference(element)
                if ref is not None:
                    values.references.append((parameter.code, ref))
            elif parameter.type == DATE:
                span = date_range(element)
                if span is not None:
                    values.dates.append((parameter.code, span))
            elif isinstance(element, str):
                values.strings.append((parameter.code, element))
                if parameter.type == URI and "|" in element:
                    # A canonical `<url>|<version>` is found by its url alone too (any version).
                    values.strings.append((parameter.code, element.split("|", 1)[0]))
    return values


def walk(node: Any, path: str) -> Iterator[Any]:
    """Values at a dotted path; lists at any step are flattened (FHIRPath's implicit `select`)."""
    current = [node]
    for step in path.split("."):
        following: list[Any] = []
        for item in current:
            value = item.get(step) if isinstance(item, dict) else None
            if isinstance(value, list):
                following.extend(value)
            elif value is not None:
                following.append(value)
        current = following
    yield from current


def _tokens(element: Any, system: str | None) -> Iterator[TokenValue]:
    if isinstance(element, str):  # a `code`
        yield TokenValue(system, element)
    elif isinstance(element, bool):
        yield TokenValue(None, "true" if element else "false")
    elif isinstance(element, dict):
        if "coding" in element or "text" in element:  # CodeableConcept
            text = element.get("text")
            for coding in element.get("coding", []):
                yield TokenValue(coding.get("system"), coding.get("code"), coding.get("display") or text)
            if not element.get("coding") and text:
                yield TokenValue(None, None, text)
        elif "value" in element:  # Identifier
            yield TokenValue(element.get("system"), element.get("value"))
        elif "code" in element:  # Coding
            yield TokenValue(element.get("system"), element.get("code"), element.get("display"))


def _reference(element: Any) -> ReferenceValue | None:
    if isinstance(element, dict) and isinstance(element.get("reference"), str):
        ref_type, _, ref_id = element["reference"].rpartition("/")
        return ReferenceValue(ref_type.rsplit("/", 1)[-1] or None, ref_id)
    if isinstance(element, dict) and element.get("type"):  # a logical reference (by identifier)
        return ReferenceValue(element["type"], None)
    return None


def date_range(element: Any) -> DateRange | None:
    """A date, dateTime, instant or Period as the closed interval it covers (FHIR's implicit precision)."""
    if isinstance(element, dict):  # Period
        start = precision_range(element["start"]) if "start" in element else None
        end = precision_range(element["end"]) if "end" in element else None
        if start is None and end is None:
            return None
        return DateRange(start.low if start else None, end.high if end else None)
    if isinstance(element, str):
        return precision_range(element)
    return None


def precision_range(value: str) -> DateRange:
    """`2026` → the whole year, `2026-11` → the month, `2026-11-25` → the day (UTC), a date-time → the
    minute, second or fraction it names; as a closed interval. Raises ValueError on anything else."""
    low, high = half_open_range(value)
    return DateRange(low, high - _TICK)


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def half_open_range(value: str) -> tuple[datetime, datetime]:
    """The range [low, high) a FHIR date, dateTime or instant stands for at its precision, in UTC (a time
    without a zone is UTC). A `+` decoded to a space (an unencoded zone offset in a URL) is taken back.
    Raises ValueError for anything else, including dates that overflow once moved to UTC."""
    match = _DATE.fullmatch(value.strip().replace(" ", "+"))
    if match is None:
        raise ValueError(f"not a FHIR date or instant: {value!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    digits = (fraction or "")[:6]
    try:
        tz = UTC
        if zone not in (None, "Z"):
            sign = -1 if zone[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        low = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(digits.ljust(6, "0")) if digits else 0,
            tzinfo=tz,
        ).astimezone(UTC)  # in UTC here, or it overflows later in the database driver
    except OverflowError as exc:
        raise ValueError(f"out of range: {value!r}") from exc
    try:
        if month is None:
            high = low.replace(year=low.year + 1)
        elif day is None:
            high = low.replace(year=low.year + (low.month == 12), month=low.month % 12 + 1)
        elif hour is None:
            high = low + timedelta(days=1)
        elif second is None:
            high = low + timedelta(minutes=1)
        else:
            high = low + timedelta(microseconds=10 ** (6 - len(digits)))
    except (ValueError, OverflowError):  # the end of year 9999
        high = datetime.max.replace(tzinfo=UTC)
    return low, high


_TICK = timedelta(microseconds=1)
