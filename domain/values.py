"""Value objects shared by the aggregates: codes, periods, notes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from domain.errors import InvalidValue


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None = None
    code: str | None = None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class CodeableConcept:
    """A coded concept; free text alone is allowed (the contract says so)."""

    codings: tuple[Coding, ...] = ()
    text: str | None = None

    def label(self) -> str:
        """What a person reads: the text, else the first display or code."""
        if self.text:
            return self.text
        for coding in self.codings:
            if coding.display or coding.code:
                return coding.display or coding.code or ""
        return ""


@dataclass(frozen=True, slots=True)
class Period:
    start: date | datetime | None = None
    end: date | datetime | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and _as_date(self.end) < _as_date(self.start):
            raise InvalidValue("period.end", "ends before period.start")


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    author_id: str | None = None
    time: datetime | None = None


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value
