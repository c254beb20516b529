"""The scheduler's loop: a due-signal sweep every `scheduler_interval_s`, and each tenant's goal-achievement
summary once per `metrics_interval_s` period. Inside `careplan serve`, or alone as `careplan scheduler`.

Safe with any number of replicas (markers and plan row locks; see handlers/scheduler.py). Time comes from
`clock`, so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from domain.schedule import summary_period
from handlers.ports import ScheduleStore
from handlers.scheduler import Sweep, SweepResult, send_goal_achievement_summaries, sweep_due_signals
from storage.errors import describe, is_transient

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        store: ScheduleStore,
        *,
        interval_s: float,
        metrics_interval_s: float,
        timezone: ZoneInfo,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._metrics_interval_s = metrics_interval_s
        self._timezone = timezone
        self._clock = clock
        self._new_id = new_id
        self._summarised_up_to: datetime | None = None

    def _sweep(self) -> Sweep:
        now = self._clock()
        return Sweep(now=now, today=now.astimezone(self._timezone).date(), sweep_id=self._new_id())

    async def sweep(self) -> SweepResult:
        """Overdue goals and reviews due, as of the clock's today in the configured time zone."""
        result = await sweep_due_signals(self._store, self._sweep(), self._new_id)
        if result.goals_overdue or result.reviews_due:
            log.info("scheduler: %d goals overdue, %d reviews due", result.goals_overdue, result.reviews_due)
        return result

    async def summarise(self) -> int:
        """Each tenant's summary of the last whole period, unless this process already sent that period's."""
        sweep = self._sweep()
        period_end = summary_period(sweep.now, self._metrics_interval_s).end
        if self._summarised_up_to == period_end:
            return 0
        sent = await send_goal_achievement_summaries(
            self._store, sweep, self._metrics_interval_s, self._new_id
        )
        self._summarised_up_to = period_end
        if sent:
            log.info("scheduler: goal-achievement summaries sent for %d tenants", sent)
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a failed pass is logged and the next one comes at the usual time."""
        while not stop.is_set():
            try:
                await self.sweep()
                await self.summarise()
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "scheduler: database away, next pass in %.0fs: %s", self._interval_s, describe(exc)
                    )
                else:
                    log.exception("scheduler pass failed; next pass in %.0fs", self._interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
