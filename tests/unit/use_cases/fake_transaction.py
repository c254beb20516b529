"""An in-memory fake of the unit of work's port (`handlers.ports.Transaction`): plans kept as the domain's
records, the command log, and every commit, so use cases run in microseconds and tests read what they
wrote. A fake of a port we own; Postgres itself is only ever the real one (tests/integration)."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any, Self

from domain.care_plan import CarePlanAggregate
from domain.entities import Activity, CarePlan, CareTeam, Goal
from domain.programs import Program, ProgramAggregate
from domain.statuses import CAREPLAN_CLOSED
from handlers.ports import (
    AlreadyRecorded,
    CommitRecord,
    KeyedItem,
    PlansAlike,
    RolloutCandidate,
    StoredOutcome,
)


@dataclass
class InMemoryDatabase:
    """What fake transactions share. `commits` is every record written, oldest first."""

    plans: dict[tuple[str, str], CarePlanAggregate] = field(default_factory=dict)
    programs: dict[tuple[str, str], Program] = field(default_factory=dict)
    outcomes: dict[tuple[str, uuid.UUID], StoredOutcome] = field(default_factory=dict)
    commits: list[CommitRecord] = field(default_factory=list)
    # Rollout runs' plans: (tenant, rollout id) → plan id → state (pending, migrated, skipped).
    rollout_plans: dict[tuple[str, uuid.UUID], dict[str, str]] = field(default_factory=dict)

    def transaction(self, tenant_id: str) -> InMemoryTransaction:
        return InMemoryTransaction(self, tenant_id)

    def plan(self, tenant_id: str, plan_id: str) -> CarePlanAggregate:
        return self.plans[(tenant_id, plan_id)]


class InMemoryTransaction:
    """Loads hand out copies, as a database would: a use case's changes reach the store only by commit."""

    def __init__(self, database: InMemoryDatabase, tenant_id: str) -> None:
        self._database = database
        self.tenant_id = tenant_id
        self.committed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None:
        return self._database.outcomes.get((self.tenant_id, command_id))

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        stored = self._database.plans.get((self.tenant_id, plan_id))
        if stored is None:
            return None
        return CarePlanAggregate(
            copy.deepcopy(stored.plan),
            goals=copy.deepcopy(stored.goals),
            activities=copy.deepcopy(stored.activities),
            care_team=copy.deepcopy(stored.care_team),
        )

    async def load_plan_of(self, resource_type: str, resource_id: str) -> CarePlanAggregate | None:
        plan_id = await self.plan_id_of(resource_type, resource_id)
        return None if plan_id is None else await self.load_plan(plan_id)

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None:
        for (tenant_id, plan_id), aggregate in self._database.plans.items():
            parts = aggregate.goals if resource_type == "Goal" else aggregate.activities
            if tenant_id == self.tenant_id and resource_id in parts:
                return plan_id
        return None

    async def load_program(self, program_id: str) -> ProgramAggregate | None:
        stored = self._database.programs.get((self.tenant_id, program_id))
        return None if stored is None else ProgramAggregate(copy.deepcopy(stored))

    async def find_program(self, name: str, program_version: str | None) -> ProgramAggregate | None:
        versions = [
            p
            for (tenant_id, _), p in self._database.programs.items()
            if tenant_id == self.tenant_id
            and p.name == name
            and (p.program_version == program_version if program_version else p.status.value == "active")
        ]
        if not versions:
            return None
        return ProgramAggregate(copy.deepcopy(max(versions, key=lambda p: int(p.program_version))))

    async def latest_program_version(self, name: str) -> int:
        versions = [
            int(p.program_version)
            for (tenant_id, _), p in self._database.programs.items()
            if tenant_id == self.tenant_id and p.name == name
        ]
        return max(versions, default=0)

    async def plan_patient(self, plan_id: str) -> str | None:
        stored = self._database.plans.get((self.tenant_id, plan_id))
        return None if stored is None else stored.plan.patient_id

    async def plans_following(self, url: str, plan_ids: list[str] | None) -> list[RolloutCandidate]:
        plans = [a.plan for (t, _), a in sorted(self._database.plans.items()) if t == self.tenant_id]
        if plan_ids is not None:
            plans = [p for p in plans if p.id in plan_ids]
        else:
            plans = [
                p
                for p in plans
                if p.status not in CAREPLAN_CLOSED and any(c.partition("|")[0] == url for c in p.instantiates)
            ]
        return [RolloutCandidate(p.id, p.status.value, p.instantiates) for p in plans]

    async def keyed_items(self, plan_ids: list[str]) -> list[PlansAlike]:
        alike: dict[tuple[KeyedItem, ...], list[str]] = {}
        for plan_id in plan_ids:
            aggregate = self._database.plans[(self.tenant_id, plan_id)]
            items = [
                KeyedItem(
                    g.program_key,
                    "Goal",
                    g.lifecycle_status.value,
                    g.achievement_status.value if g.achievement_status else None,
                )
                for g in aggregate.goals.values()
                if g.program_key
            ]
            items += [
                KeyedItem(t.program_key, "Task", t.status.value)
                for t in aggregate.activities.values()
                if t.program_key
            ]
            if items:
                alike.setdefault(tuple(sorted(items, key=lambda i: (i.resource_type, i.key))), []).append(
                    plan_id
                )
        return [PlansAlike(tuple(ids), items) for items, ids in alike.items()]

    async def claim_rollout_plan(self, rollout_id: uuid.UUID) -> str | None:
        states = self._database.rollout_plans.get((self.tenant_id, rollout_id), {})
        return next((p for p, state in sorted(states.items()) if state == "pending"), None)

    async def commit(self, record: CommitRecord) -> str | None:
        if self.committed:
            raise RuntimeError("committed twice")
        outcome = record.outcome
        if (self.tenant_id, outcome.command_id) in self._database.outcomes:
            raise AlreadyRecorded(str(outcome.command_id))  # as the command log's key refuses it
        for version in record.versions:
            self._store(copy.deepcopy(version.entity))
        if record.rollout is not None:
            key = (self.tenant_id, record.rollout.rollout_id)
            self._database.rollout_plans[key] = dict.fromkeys(record.rollout.plan_ids, "pending")
        if record.settled is not None:
            states = self._database.rollout_plans[(self.tenant_id, record.settled.rollout_id)]
            if states[record.settled.plan_id] != "pending":
                raise RuntimeError(f"{record.settled.plan_id} settled twice")
            states[record.settled.plan_id] = record.settled.state
        self._database.outcomes[(self.tenant_id, outcome.command_id)] = StoredOutcome(
            outcome.command_type, outcome.request_hash, outcome.status, outcome.reply
        )
        self._database.commits.append(record)
        self.committed = True
        return f"0/{len(self._database.commits)}"

    def _store(self, entity: object) -> None:
        """One new version into the store, refusing a lost update as the real upsert does."""
        plans = self._database.plans
        match entity:
            case CarePlan():
                key = (self.tenant_id, entity.id)
                stored = plans.get(key)
                _check_version(stored.plan.version if stored else 0, entity.version)
                if stored is None:
                    plans[key] = CarePlanAggregate(entity)
                else:
                    stored.plan = entity
            case Goal():
                aggregate = plans[(self.tenant_id, entity.plan_id)]
                old = aggregate.goals.get(entity.id)
                _check_version(old.version if old else 0, entity.version)
                aggregate.goals[entity.id] = entity
            case Activity():
                aggregate = plans[(self.tenant_id, entity.plan_id)]
                old_activity = aggregate.activities.get(entity.id)
                _check_version(old_activity.version if old_activity else 0, entity.version)
                aggregate.activities[entity.id] = entity
            case CareTeam():
                aggregate = plans[(self.tenant_id, entity.plan_id)]
                _check_version(aggregate.care_team.version if aggregate.care_team else 0, entity.version)
                aggregate.care_team = entity
            case Program():
                old_program = self._database.programs.get((self.tenant_id, entity.id))
                _check_version(old_program.version if old_program else 0, entity.version)
                self._database.programs[(self.tenant_id, entity.id)] = entity
            case _:
                raise TypeError(type(entity).__name__)


def _check_version(stored: int, new: int) -> None:
    if new != stored + 1:
        raise RuntimeError(f"version {new} does not follow {stored}")
