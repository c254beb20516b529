"""Wire shapes shared by several commands: coded concepts, periods, notes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict

# Ids are opaque to us but must be safe as FHIR ids: [A-Za-z0-9-.]{1,64}.
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
# FHIR's `string` pattern, [ \r\n\t\S]+, searched as FHIR's own models do: text made only of other
# whitespace (U+00A0, U+2028, form feed …) is no FHIR string, and would fail rendering as INTERNAL.
_FHIR_STRING = r"[ \r\n\t\S]"
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=_FHIR_STRING)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=20_000, pattern=_FHIR_STRING)]
Uri = Annotated[str, StringConstraints(pattern=r"^\S{1,512}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[^\s]+( [^\s]+)*$", max_length=256)]


def parse_fhir_date_time(value: object) -> date | datetime:
    """FHIR `dateTime` as we accept it: a date (YYYY-MM-DD) or a date-time with a time zone, which
    FHIR requires whenever a time is given."""
    if isinstance(value, datetime):
        parsed: date | datetime = value
    elif isinstance(value, date):
        return value
    elif isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("not a date (YYYY-MM-DD)") from exc
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError("not a date (YYYY-MM-DD) or date-time (RFC 3339)") from exc
    else:
        raise ValueError("must be a date or date-time string")
    if isinstance(parsed, datetime) and parsed.tzinfo is None:
        raise ValueError("a date-time needs a time zone (e.g. Z or +01:00)")
    return in_utc_range(parsed) if isinstance(parsed, datetime) else parsed


def in_utc_range(value: datetime) -> datetime:
    """We store and render instants in UTC: 0001-01-01T00:00+14:00 is valid ISO 8601, but not a
    datetime once in UTC."""
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range once converted to UTC") from exc
    return value


DateOrDateTime = Annotated[
    date | datetime,
    PlainValidator(parse_fhir_date_time),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]}),
]
# An instant (a note's time): a date-time with its zone, as the contract says of every date-time.
Instant = Annotated[AwareDatetime, AfterValidator(in_utc_range)]


class WireModel(BaseModel):
    """Strict by default: unknown fields are errors, so a caller's typo is never silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


def not_null_schema(field: str) -> JsonDict:
    """JSON Schema: `field` is present and not null (for rules a model validator enforces)."""
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


class CodingIn(WireModel):
    # The rules of the validators below, also in the JSON Schema that OpenAPI and AsyncAPI publish.
    model_config = ConfigDict(
        json_schema_extra={"if": not_null_schema("code"), "then": not_null_schema("system")}
    )

    system: Uri | None = None
    code: Code | None = None
    display: ShortText | None = None

    @model_validator(mode="after")
    def _code_needs_system(self) -> CodingIn:
        if self.code is not None and self.system is None:
            raise ValueError("a coding with a code needs its system")
        return self


class CodeableConceptIn(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["coding"], "properties": {"coding": {"minItems": 1}}},
                not_null_schema("text"),
            ]
        }
    )

    coding: list[CodingIn] = Field(default_factory=list, max_length=20)
    text: ShortText | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> CodeableConceptIn:
        if not self.coding and self.text is None:
            raise ValueError("give at least one coding or a text")
        return self


class PeriodIn(WireModel):
    start: DateOrDateTime | None = None
    end: DateOrDateTime | None = None


class NoteIn(WireModel):
    text: LongText
    author_id: FhirId | None = None
    time: Instant | None = None


class QuantityIn(WireModel):
    value: float = Field(allow_inf_nan=False)
    unit: ShortText | None = None
    system: Uri | None = None
    code: Code | None = None


class RangeIn(WireModel):
    low: QuantityIn | None = None
    high: QuantityIn | None = None


class RatioIn(WireModel):
    numerator: QuantityIn | None = None
    denominator: QuantityIn | None = None
