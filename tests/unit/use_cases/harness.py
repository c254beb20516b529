"""Run one command's use case the way the pipeline does — data validated by its model, a context, a unit
of work over the in-memory fake — and read back what it committed."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from domain.access import Principal
from handlers.context import CommandContext
from handlers.ports import CommitRecord
from handlers.registry import Commands, standard_commands
from handlers.rollouts import PlanOutcome, RolloutRun, migrate_next_plan
from handlers.unit_of_work import UnitOfWork
from schemas.replies import Reply
from tests.unit.use_cases.fake_transaction import InMemoryDatabase

TENANT = "t1"
CLINICIAN = Principal(tenant_id=TENANT, subject="dr-who", roles=frozenset({"clinician"}))
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class Clinic:
    """A tenant's store and a clock that moves one minute per command."""

    database: InMemoryDatabase = field(default_factory=InMemoryDatabase)
    commands: Commands = field(default_factory=standard_commands)
    now: datetime = START
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=next(self._ids) + 1)

    async def run(
        self, command: str, data: dict[str, Any], *, expected_version: int | None = None, writes: bool = True
    ) -> Outcome:
        """`command` with `data`: its reply, and the record it committed (for a command that only looks,
        `writes=False`: the reply, and the last record committed before it)."""
        spec = self.commands[command]
        self.now += timedelta(minutes=1)
        ctx = CommandContext(
            principal=CLINICIAN,
            command_id=self.new_id(),
            command_type=command,
            request_hash=hashlib.sha256(orjson.dumps(data)).hexdigest(),
            correlation_id="corr-1",
            expected_version=expected_version,
            now=self.now,
            new_id=self.new_id,
        )
        commits_before = len(self.database.commits)
        async with self.database.transaction(TENANT) as transaction:
            uow = UnitOfWork(transaction, ctx)
            await spec.execute(spec.data_model.model_validate(data), ctx, uow)
        assert uow.answer is not None, f"{command} did not answer"
        assert len(self.database.commits) == commits_before + (1 if writes else 0)
        return Outcome(uow.answer, self.database.commits[-1])

    def rollout_run(self, rollout_id: str) -> RolloutRun:
        """A run the rollout command started, as the worker reads it."""
        record = next(
            c.rollout for c in self.database.commits if c.rollout and str(c.rollout.rollout_id) == rollout_id
        )
        programs = [p for (t, _), p in self.database.programs.items() if t == TENANT]
        target = next(p for p in programs if p.id == record.program_id)
        return RolloutRun(
            rollout_id=record.rollout_id,
            tenant_id=TENANT,
            target=target,
            versions={p.canonical: p for p in programs if p.name == target.name},
            started_by=record.started_by,
            correlation_id="corr-1",
        )

    async def migrate(self, run: RolloutRun) -> list[tuple[PlanOutcome, Outcome]]:
        """The worker's work on `run`: every pending plan, one transaction each, until none is left."""
        done: list[tuple[PlanOutcome, Outcome]] = []
        while True:
            self.now += timedelta(minutes=1)
            async with self.database.transaction(TENANT) as transaction:
                outcome = await migrate_next_plan(
                    run, transaction, clock=lambda: self.now, new_id=self.new_id
                )
            if outcome is None:
                return done
            record = self.database.commits[-1]
            reply = Reply.model_validate(record.outcome.reply)
            done.append((outcome, Outcome(reply, record)))

    async def plan(self, **fields: Any) -> str:
        """Given: an active plan of patient p1 (or as `fields` say); its id."""
        outcome = await self.run(
            "careplan.create", {"patient_id": "p1", "title": "Diabetes", "status": "active", **fields}
        )
        assert outcome.reply.result is not None
        return outcome.reply.result.id


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    record: CommitRecord

    @property
    def events(self) -> list[tuple[str, str, int]]:
        """(event name, subject, resourceversion) of each domain event in outbox order; the name is the
        CloudEvent type without its `careplan.` namespace, as the registry lists it."""
        found = []
        for message in self.record.outbox:
            event = orjson.loads(message.payload)
            if event["type"] != "careplan.audit.provenance":
                name = event["type"].removeprefix("careplan.")
                found.append((name, event["subject"], event["resourceversion"]))
        return found

    def event_data(self, name: str) -> dict[str, Any]:
        """The `data` of the one domain event called `name`."""
        (data,) = [
            event["data"]
            for event in map(orjson.loads, (m.payload for m in self.record.outbox))
            if event["type"] == f"careplan.{name}"
        ]
        return dict(data)

    @property
    def versions(self) -> list[tuple[str, str, int]]:
        return [(v.resource_type, v.entity.id, v.entity.version) for v in self.record.versions]

    @property
    def operation(self) -> str:
        assert self.record.provenance is not None
        coding = self.record.provenance.resource["activity"]["coding"]
        return str(coding[0]["code"])

    def resource(self, resource_type: str) -> dict[str, Any]:
        return next(v.resource for v in self.record.versions if v.resource_type == resource_type)
