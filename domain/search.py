"""A parsed FHIR search, as plain records: what fhir_read parses from a URL and storage turns into SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.search_parameters import DateRange

DEFAULT_COUNT = 20


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    span: DateRange


@dataclass(frozen=True, slots=True)
class Criterion:
    """One parameter occurrence: its values are ORed; several criteria are ANDed."""

    code: str
    type: str
    modifier: str | None
    values: tuple[str, ...]
    dates: tuple[DateValue, ...] = ()


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    type: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    code: str
    target_type: str | None
    iterate: bool = False

    @property
    def text(self) -> str:
        return f"{self.source_type}:{self.code}" + (f":{self.target_type}" if self.target_type else "")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[Criterion, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    total: str = "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def canonical(self) -> list[tuple[str, str]]:
        """The query as parameter pairs, for cursors and `self` links (stable order)."""
        pairs: list[tuple[str, str]] = []
        for c in self.criteria:
            name = c.code + (f":{c.modifier}" if c.modifier else "")
            pairs.append((name, ",".join(c.values)))
        if self.sort:
            pairs.append(("_sort", ",".join(("-" if s.descending else "") + s.code for s in self.sort)))
        pairs.append(("_count", str(self.count)))
        if self.total != "none":
            pairs.append(("_total", self.total))
        if self.summary:
            pairs.append(("_summary", self.summary))
        if self.elements:
            pairs.append(("_elements", ",".join(self.elements)))
        for inc in self.includes:
            pairs.append(("_include:iterate" if inc.iterate else "_include", inc.text))
        for inc in self.revincludes:
            pairs.append(("_revinclude", inc.text))
        return pairs
