"""Where a FHIR read runs (CONTRACT §11): on the streaming replica, unless the caller asks for a position the
replica has not replayed within the wait; then on the primary. Without a replica, on the primary.

A read asking for a position is first tried on the replica at once (a standby streaming on the same network
has usually replayed a commit before its caller can read). The check rides on the statement that binds the
tenant, on the read's own connection, so it holds even when the read URL spreads connections over several
replicas. Behind: the read waits on `ReplicaProgress`, which polls for every waiting read at once, and
tries again; once the wait is spent it reads the primary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from domain.errors import Unavailable
from storage.reads import replayed_position
from storage.wal_position import CURRENT_POSITION, REPLAYED_POSITION, ReplicaBehind, WalPosition, reflecting

log = logging.getLogger(__name__)
T = TypeVar("T")

# After the replica failed a read (down, restarting, or cancelling reads that conflict with replay), reads go
# to the primary for this long before one tries the replica again.
REPLICA_RETRY_AFTER_S = 5.0
# The first poll after a read found the replica behind; each next one waits twice as long, up to the longest:
# at most 40 polls a second, however many reads wait.
FIRST_POLL_S = 0.001
LONGEST_POLL_S = 0.025


class ReadObserver(Protocol):
    def read_served(self, target: str) -> None:
        """A read ran on `primary` or `replica`."""

    def replica_waited(self, seconds: float, caught_up: bool) -> None:
        """A read waited for the replica to replay its position: until it had, or until the wait was spent."""

    def fell_back(self, reason: str) -> None:
        """A read meant for the replica ran on the primary: `behind` (the wait was spent) or `unavailable`."""


class NoReadObserver:
    def read_served(self, target: str) -> None:
        pass

    def replica_waited(self, seconds: float, caught_up: bool) -> None:
        pass

    def fell_back(self, reason: str) -> None:
        pass


class ReplicaProgress:
    """How far the replica has replayed, polled only while reads wait for it: one poll at a time for all of
    them, each on a connection taken and handed back at once, so nothing holds a pooled connection asleep."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: list[tuple[WalPosition, asyncio.Future[None]]] = []
        self._poller: asyncio.Task[None] | None = None

    async def reached(self, position: WalPosition, timeout_s: float) -> bool:
        """True once a poll finds `position` replayed; False when `timeout_s` passes first."""
        if timeout_s <= 0:
            return False
        waiter = (position, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="replica-progress")
        try:
            await asyncio.wait_for(waiter[1], timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    async def _poll(self) -> None:
        interval = FIRST_POLL_S
        while self._waiting:
            await asyncio.sleep(interval)
            interval = min(interval * 2, LONGEST_POLL_S)
            try:
                replayed = await replayed_position(self._engine)
            except Exception as exc:  # the waiting reads give up at their deadline and read the primary
                log.debug("replica progress: %s: %s", type(exc).__name__, exc)
                continue
            for position, future in list(self._waiting):
                if position <= replayed and not future.done():
                    future.set_result(None)


class _WaitSpent(Exception):
    """The replica did not replay the position within the read's wait."""


class ReadRouter:
    """Runs each read on the replica or the primary (module docstring). `read_wait_s` bounds how long a read
    asking for a position waits for the replica."""

    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine | None = None,
        *,
        read_wait_s: float = 0.5,
        observer: ReadObserver | None = None,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._wait_s = read_wait_s
        self._observer = observer or NoReadObserver()
        self._progress = ReplicaProgress(replica) if replica is not None else None
        self._replica_failed_at = float("-inf")

    async def read(self, position: WalPosition | None, run: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """`run(engine)` on the replica, reflecting `position` when given; else on the primary. `run` may
        start several reads (a search and its includes): each checks the position on its own connection,
        and the whole of `run` is tried again when one of them finds its server behind."""
        replica = self.replica
        if replica is None:
            return await self._on_primary(run)
        if time.monotonic() - self._replica_failed_at < REPLICA_RETRY_AFTER_S:
            self._observer.fell_back("unavailable")
            return await self._on_primary(run)
        try:
            if position is None:
                result = await run(replica)
            else:
                result = await self._reflecting(replica, position, run)
        except _WaitSpent:
            self._observer.fell_back("behind")
            return await self._on_primary(run)
        except Unavailable as exc:
            self._replica_failed_at = time.monotonic()
            log.warning("replica read failed, reading the primary for %gs: %s", REPLICA_RETRY_AFTER_S, exc)
            self._observer.fell_back("unavailable")
            return await self._on_primary(run)
        self._observer.read_served("replica")
        return result

    async def _reflecting(
        self, replica: AsyncEngine, position: WalPosition, run: Callable[[AsyncEngine], Awaitable[T]]
    ) -> T:
        assert self._progress is not None
        started = time.monotonic()
        deadline = started + self._wait_s
        tries = 0
        while True:
            try:
                with reflecting(position):
                    result = await run(replica)
            except ReplicaBehind:
                tries += 1
                if tries > 1:
                    # A poll found the position replayed, yet this read's server had not: another replica
                    # behind the same URL. Space the tries out; the poller has no reason to.
                    await asyncio.sleep(
                        max(0.0, min(FIRST_POLL_S * 2**tries, LONGEST_POLL_S, deadline - time.monotonic()))
                    )
                if not await self._progress.reached(position, deadline - time.monotonic()):
                    self._observer.replica_waited(time.monotonic() - started, caught_up=False)
                    raise _WaitSpent from None
                continue
            if tries:
                self._observer.replica_waited(time.monotonic() - started, caught_up=True)
            return result

    async def _on_primary(self, run: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        result = await run(self.primary)
        self._observer.read_served("primary")
        return result


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    seconds: float  # since the replica last replayed a commit, while it has WAL left to replay (else 0)
    bytes: int  # WAL the primary has flushed that the replica has not replayed


async def replica_lag(primary: AsyncEngine, replica: AsyncEngine) -> ReplicaLag:
    """Read at scrape time: the replica first, so the figure errs on the side of more lag."""
    replayed_text, seconds = await _first_row(
        replica,
        f"SELECT ({REPLAYED_POSITION})::text, CASE WHEN NOT pg_is_in_recovery() "
        "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
        "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8",
    )
    (flushed_text,) = await _first_row(primary, f"SELECT {CURRENT_POSITION}")
    replayed = WalPosition.parse(replayed_text) if replayed_text else WalPosition(0)
    behind = WalPosition.parse(flushed_text).lsn - replayed.lsn
    return ReplicaLag(seconds=max(0.0, float(seconds)), bytes=max(0, behind))


async def _first_row(engine: AsyncEngine, sql: str) -> tuple[Any, ...]:
    """One statement outside any transaction, on the driver itself: no BEGIN and ROLLBACK around it."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        return tuple(await driver.fetchrow(sql))
