"""WAL positions: what a commit hands its caller (CONTRACT §11, `result.position`) and what a read on a
streaming replica checks before it answers, so that a caller who sends the position back reads its own
write (or a later state).

A position is Postgres's own `pg_lsn` text (`16/B374D848`); callers treat it as opaque."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")

# Run on the connection right after COMMIT (or inside a transaction that found a stored outcome): a position
# at or after the commit record's end. With synchronous_commit on (the default, and what durability needs)
# COMMIT returned once its record was flushed, so the flush position covers it, and it is exactly what a
# standby can be sent. With it off the record may not be flushed yet: then the insert position, which
# covers it too, at the price of a longer wait (a standby is sent WAL only once it is flushed).
CURRENT_POSITION = (
    "(CASE WHEN current_setting('synchronous_commit') = 'off' THEN pg_current_wal_insert_lsn() "
    "ELSE pg_current_wal_flush_lsn() END)::text"
)
# How far the server a connection is on has replayed: a standby's replay position; on a primary (a read URL
# naming one, or a standby promoted since) everything it has written.
REPLAYED_POSITION = (
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END"
)


@dataclass(frozen=True, order=True, slots=True)
class WalPosition:
    lsn: int

    @classmethod
    def parse(cls, given: str) -> WalPosition:
        """`ValueError` unless `given` is a position as the service hands them out."""
        match = _LSN.fullmatch(given.strip())
        if match is None:
            raise ValueError("not a position as a command's reply gives it (result.position)")
        return cls(int(match[1], 16) << 32 | int(match[2], 16))

    def __str__(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"


class ReplicaBehind(Exception):
    """The server a read was about to run on has not replayed the position the read must reflect."""


# The position reads begun in the current task must reflect (None: any state will do). Set by
# `reflecting`; read by storage.reads where each read binds its tenant, so the check rides on a statement
# every read runs anyway, on the very connection (and so the very server) the read then uses.
_REQUIRED: ContextVar[WalPosition | None] = ContextVar("careplan_required_position", default=None)


@contextmanager
def reflecting(position: WalPosition | None) -> Iterator[None]:
    """Within this block every read checks, on its own connection, that its server has replayed
    `position`, and raises `ReplicaBehind` before reading anything when it has not."""
    token = _REQUIRED.set(position)
    try:
        yield
    finally:
        _REQUIRED.reset(token)


def required_position() -> WalPosition | None:
    return _REQUIRED.get()
