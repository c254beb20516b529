"""Domain events: facts the aggregate records, one per new resource version; handlers turn them into
outbox rows (CloudEvents of CONTRACT §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """`name` is the event of CONTRACT §5 (`goal.achieved`); `data` adds what the resource cannot say
    (`from`/`to` of a status change, the outcome of a review)."""

    name: str
    resource_type: str
    resource_id: str
    version: int
    data: dict[str, Any] = field(default_factory=dict)
