"""The rollout worker's loop inside `careplan serve` (CONTRACT §10): it finds the running rollouts of every
tenant, works each it can hold (one process per rollout at a time, by a Postgres session lock that dies with
the process), migrates its pending plans a few transactions at a time, and finishes it.

Plans of all the rollouts a process works share `concurrency` transactions, taken in turn, so one tenant's
large rollout does not starve another's, and commands keep the rest of the pool. A crash leaves the
unmigrated plans pending; whoever holds the rollout next goes on from there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.trace import Span

from domain.programs import Program, program_version_of
from handlers.log_context import log_scope
from handlers.ports import AlreadyRecorded
from handlers.rollouts import RolloutRun, completed_event, migrate_next_plan
from handlers.tracing import TRACER, links_to
from service.scheduler import utc_now
from storage.errors import describe, is_transient
from storage.rollout_store import RunningRollout, SqlRolloutStore

log = logging.getLogger(__name__)


class RolloutObserver(Protocol):
    """What the worker reports (`service.telemetry.RolloutTelemetry` counts it)."""

    def plan_settled(self, state: str, kept: int) -> None: ...


class _Unobserved:
    def plan_settled(self, state: str, kept: int) -> None:
        pass


class RolloutWorker:
    def __init__(
        self,
        store: SqlRolloutStore,
        *,
        concurrency: int,
        poll_interval_s: float,
        observer: RolloutObserver | None = None,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._poll_interval_s = poll_interval_s
        self._observer: RolloutObserver = observer or _Unobserved()
        self._clock = clock
        self._new_id = new_id
        self._working: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: every poll, start work on running rollouts not worked here yet; on stop,
        the plans in flight finish (each is one short transaction) and the rest stay pending."""
        try:
            while not stop.is_set():
                try:
                    for running in await self._store.running():
                        if running.rollout_id not in self._working:
                            self._start(running, stop)
                except Exception as exc:
                    _log_failure("finding running rollouts", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_interval_s)
        finally:
            if self._working:
                await asyncio.gather(*self._working.values(), return_exceptions=True)

    def _start(self, running: RunningRollout, stop: asyncio.Event) -> None:
        key = running.rollout_id
        task = asyncio.create_task(self._hold_and_work(running, stop), name=f"rollout-{key}")
        self._working[key] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._working.pop(key, None)

        task.add_done_callback(forget)

    async def _hold_and_work(self, running: RunningRollout, stop: asyncio.Event) -> None:
        with log_scope(tenant_id=running.tenant_id):
            await self._hold_and_work_in_scope(running, stop)

    async def _hold_and_work_in_scope(self, running: RunningRollout, stop: asyncio.Event) -> None:
        try:
            async with self._store.hold(running) as held:
                if held:
                    await self.work(running, stop)
        except Exception as exc:
            _log_failure(f"rollout {running.rollout_id}", exc)

    async def work(self, running: RunningRollout, stop: asyncio.Event) -> None:
        """Migrate every pending plan of `running`, then finish it (its totals and completion event)."""
        run = await self._run(running)
        if run is None:
            return
        await asyncio.gather(*(self._migrate_plans(run, stop) for _ in range(self._concurrency)))
        if stop.is_set():
            return
        with _worker_span("complete rollout", run):
            finished = await self._store.finish(
                running.tenant_id,
                running.rollout_id,
                self._clock(),
                lambda record: completed_event(record, running.tenant_id, self._clock(), self._new_id()),
            )
        if finished is not None:
            log.info(
                "rollout %s to %s completed: %s",
                running.rollout_id,
                finished.target,
                {**finished.counts, **finished.totals},
                extra={"tenant_id": running.tenant_id},
            )

    async def _migrate_plans(self, run: RolloutRun, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self._slots:
                try:
                    with _worker_span("migrate CarePlan", run) as span:
                        async with self._store.transaction(run.tenant_id) as transaction:
                            outcome = await migrate_next_plan(
                                run, transaction, clock=self._clock, new_id=self._new_id
                            )
                        if outcome is not None:
                            span.set_attribute("careplan.care_plan.id", outcome.plan_id)
                except AlreadyRecorded as exc:
                    # The log holds this plan's migration while its row is still pending: both are written
                    # by one statement, so only a hand-edited database gets here. Claiming it again would
                    # spin; the run stays running (its lag shows) for an operator to look at.
                    log.error(
                        "rollout %s: a plan's migration %s is recorded but its row is pending; stopping",
                        run.rollout_id,
                        exc,
                        extra={"tenant_id": run.tenant_id},
                    )
                    return
            if outcome is None:
                return
            self._observer.plan_settled(outcome.state, len(outcome.changes.get("kept", ())))

    async def _run(self, running: RunningRollout) -> RolloutRun | None:
        """The run with the versions it moves between, read once (published versions never change)."""
        record = await self._store.read(running.tenant_id, running.rollout_id)
        if record is None or record.status != "running":
            return None
        versions: dict[str, Program] = {}
        async with self._store.transaction(running.tenant_id) as transaction:
            target = await transaction.load_program(record.program_id)
            if target is None:
                raise RuntimeError(
                    f"rollout {record.rollout_id} names PlanDefinition/{record.program_id}, gone"
                )
            for version in range(1, (program_version_of(target.program.canonical) or 0) + 1):
                found = await transaction.find_program(target.program.name, str(version))
                if found is not None:
                    versions[found.program.canonical] = found.program
        return RolloutRun(
            rollout_id=record.rollout_id,
            tenant_id=running.tenant_id,
            target=target.program,
            versions=versions,
            started_by=record.started_by,
            correlation_id=record.correlation_id,
            traceparent=record.traceparent,
        )


def _worker_span(name: str, run: RolloutRun) -> AbstractContextManager[Span]:
    """Each plan's migration (and the run's completion) is a trace of its own, linked to the command that
    started the run: a run of 50,000 plans over minutes is no one trace a backend can show, and the
    events of each migration carry its trace (CONTRACT §12)."""
    return TRACER.start_as_current_span(
        name,
        context=Context(),
        links=links_to(run.traceparent),
        attributes={"careplan.rollout.id": str(run.rollout_id)},
    )


def _log_failure(what: str, exc: Exception) -> None:
    if is_transient(exc):
        log.warning("rollouts: %s: database away, trying again at the next poll: %s", what, describe(exc))
    else:
        log.exception("rollouts: %s failed; trying again at the next poll", what)
