"""Domain events: facts the aggregates record; handlers turn them into outbox rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """Something that happened to one resource, at one new version of it."""

    resource_type: str
    resource_id: str
    version: int

    @property
    def name(self) -> str:
        """The event's name in CONTRACT §5, e.g. `careplan.created`."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class CarePlanCreated(DomainEvent):
    @property
    def name(self) -> str:
        return "careplan.created"
