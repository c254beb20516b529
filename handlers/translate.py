"""Wire → domain: the only place pydantic command shapes become domain value objects."""

from __future__ import annotations

from domain.values import CodeableConcept, Coding, Note, Period, ReviewSchedule
from schemas.commands import ReviewIn
from schemas.common import CodeableConceptIn, NoteIn, PeriodIn


def concept(value: CodeableConceptIn) -> CodeableConcept:
    return CodeableConcept(
        codings=tuple(Coding(c.system, c.code, c.display) for c in value.coding),
        text=value.text,
    )


def concepts(values: list[CodeableConceptIn]) -> tuple[CodeableConcept, ...]:
    return tuple(concept(v) for v in values)


def period(value: PeriodIn | None) -> Period | None:
    return None if value is None else Period(start=value.start, end=value.end)


def notes(values: list[NoteIn]) -> tuple[Note, ...]:
    return tuple(Note(text=n.text, author_id=n.author_id, time=n.time) for n in values)


def review(value: ReviewIn | None) -> ReviewSchedule | None:
    return (
        None if value is None else ReviewSchedule(interval_days=value.interval_days, next_due=value.next_due)
    )
