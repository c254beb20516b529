"""What every use case gets besides its data: who asks, which command, when, and fresh ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.access import Principal
from domain.entities import Versioned
from handlers.ports import IdFactory
from handlers.upstream_checks import CheckedEncounter


@dataclass(frozen=True, slots=True)
class CommandContext:
    principal: Principal
    command_id: uuid.UUID
    command_type: str
    request_hash: str  # the command's name and canonical body: a reused id with another body is refused
    correlation_id: str | None
    expected_version: int | None
    now: datetime
    new_id: IdFactory
    # Set when upstream services were asked before the transaction (CAREPLAN_UPSTREAM_MODE=nats).
    upstream_checked: bool = False
    checked_encounter: CheckedEncounter | None = None

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a successful command made: the resource the caller asked about, at its new version."""

    status: int
    resource_type: str
    resource_id: str
    version: int
    rollout_id: str | None = None  # program.rollout's run
    dry_run: dict[str, Any] | None = None  # program.rollout's dry run: what a run would do

    @property
    def resource_key(self) -> tuple[str, str]:
        return self.resource_type, self.resource_id


def result(resource_type: str, entity: Versioned, *, created: bool = False) -> CommandResult:
    """What the caller is told: `entity` at its new version, 201 when the command made it."""
    return CommandResult(201 if created else 200, resource_type, entity.id, entity.version)
