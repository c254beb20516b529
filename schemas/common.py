"""Wire shapes shared by several commands: coded concepts, periods, notes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Ids are opaque to us but must be safe as FHIR ids: [A-Za-z0-9-.]{1,64}.
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
Uri = Annotated[str, StringConstraints(pattern=r"^\S{1,512}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[^\s]+( [^\s]+)*$", max_length=256)]


class WireModel(BaseModel):
    """Strict by default: unknown fields are errors, so a caller's typo is never silently dropped."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class CodingIn(WireModel):
    system: Uri | None = None
    code: Code | None = None
    display: ShortText | None = None

    @model_validator(mode="after")
    def _code_needs_system(self) -> CodingIn:
        if self.code is not None and self.system is None:
            raise ValueError("a coding with a code needs its system")
        return self


class CodeableConceptIn(WireModel):
    coding: list[CodingIn] = Field(default_factory=list, max_length=20)
    text: ShortText | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> CodeableConceptIn:
        if not self.coding and self.text is None:
            raise ValueError("give at least one coding or a text")
        return self


class PeriodIn(WireModel):
    start: datetime | date | None = None
    end: datetime | date | None = None


class NoteIn(WireModel):
    text: LongText
    author_id: FhirId | None = None
    time: datetime | None = None
