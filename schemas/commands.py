"""Command envelopes and each command's `data` (CONTRACT §2 and §4)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, field_validator

from schemas.common import CodeableConceptIn, FhirId, LongText, NoteIn, PeriodIn, ShortText, WireModel

MAX_BODY_BYTES = 256 * 1024
COMMAND_SUBJECT_PREFIX = "careplan.cmd."


class CommandEnvelope(WireModel):
    """The body of every command message. `data` is validated per command, once the command is known."""

    command_id: UUID
    expected_version: int | None = Field(default=None, ge=1)
    data: dict[str, Any]


class ReviewIn(WireModel):
    interval_days: int | None = Field(default=None, ge=1, le=3660)
    next_due: date | None = None


class CarePlanCreate(WireModel):
    """`careplan.create`."""

    id: FhirId | None = None
    patient_id: FhirId
    title: ShortText
    description: LongText | None = None
    encounter_id: FhirId | None = None
    status: Literal["draft", "active"] = "draft"
    intent: Literal["proposal", "plan", "order", "option"] = "plan"
    categories: list[CodeableConceptIn] = Field(default_factory=list, max_length=20)
    period: PeriodIn | None = None
    addresses: list[CodeableConceptIn] = Field(default_factory=list, max_length=50)
    author_id: FhirId | None = None
    review: ReviewIn | None = None
    notes: list[NoteIn] = Field(default_factory=list, max_length=100)

    @field_validator("notes", mode="before")
    @classmethod
    def _plain_text_notes(cls, notes: object) -> object:
        """A note may be given as plain text; it is then a note with no author or time."""
        if isinstance(notes, list):
            return [{"text": n} if isinstance(n, str) else n for n in notes]
        return notes
