"""Wire → domain: the only place pydantic command shapes become domain value objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from domain.entities import GoalTarget, Quantity, ReviewState, TargetDetail
from domain.values import CodeableConcept, Coding, Note, Period
from schemas.commands import GoalTargetIn, ReviewIn
from schemas.common import CodeableConceptIn, NoteIn, PeriodIn, QuantityIn


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


def review(value: ReviewIn | None, current: ReviewState | None = None) -> ReviewState | None:
    """The schedule the caller gave, keeping what only reviews write (last review and its outcome)."""
    if value is None:
        return None
    base = current or ReviewState()
    return ReviewState(
        interval_days=value.interval_days,
        next_due=value.next_due,
        last_reviewed=base.last_reviewed,
        last_outcome=base.last_outcome,
    )


def optional_concept(value: CodeableConceptIn | None) -> CodeableConcept | None:
    return None if value is None else concept(value)


def quantity(value: QuantityIn | None) -> Quantity | None:
    return (
        None
        if value is None
        else Quantity(value=value.value, unit=value.unit, system=value.system, code=value.code)
    )


def target(value: GoalTargetIn) -> GoalTarget:
    detail: TargetDetail | None = None
    d = value.detail
    if d is not None:
        kind = next(iter(d.model_fields_set))
        detail = TargetDetail(
            kind="coded" if kind == "coded" else kind,
            quantity=quantity(d.quantity),
            low=quantity(d.range.low) if d.range else None,
            high=quantity(d.range.high) if d.range else None,
            numerator=quantity(d.ratio.numerator) if d.ratio else None,
            denominator=quantity(d.ratio.denominator) if d.ratio else None,
            coded=optional_concept(d.coded),
            string=d.string,
            boolean=d.boolean,
            integer=d.integer,
        )
    return GoalTarget(measure=optional_concept(value.measure), detail=detail, due_date=value.due_date)


def merge_patch(changes: BaseModel, convert: Mapping[str, Callable[[Any], object]]) -> dict[str, object]:
    """The fields the caller actually sent (`null` included, to clear), as domain values."""
    out: dict[str, object] = {}
    for name in changes.model_fields_set:
        value = getattr(changes, name)
        out[name] = None if value is None else convert.get(name, _same)(value)
    return out


def _same(value: Any) -> object:
    return value
