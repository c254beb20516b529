"""A raw asyncpg connection borrowed from SQLAlchemy's pool, for the command path's fixed statements
(`storage.transaction`, `storage.group_commit`). SQLAlchemy does not see those statements, so it cannot
notice a dead connection itself: borrowing skips connections asyncpg knows to be closed, and giving back
closes one in doubt instead of pooling it."""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.access import TENANT_ID
from domain.errors import Unavailable

# A pool holds at most this many connections; after a database restart every one of them may be dead.
_MAX_DEAD_CHECKOUTS = 256


class BorrowedConnection:
    def __init__(self, pooled: AsyncConnection, db: asyncpg.Connection) -> None:
        self._pooled = pooled
        self.db = db

    @classmethod
    async def borrow(cls, engine: AsyncEngine) -> BorrowedConnection:
        """A pooled connection that asyncpg does not already know to be closed. The server closes idle
        connections on a restart or when it locks a role out, and SQLAlchemy would hand them out one by
        one: each would fail a command. They are dropped here."""
        for _ in range(_MAX_DEAD_CHECKOUTS):
            pooled = await engine.connect()
            raw = await pooled.get_raw_connection()
            db: asyncpg.Connection = raw.driver_connection
            if not db.is_closed():
                return cls(pooled, db)
            await pooled.invalidate()
            await pooled.close()
        raise Unavailable("database", "every pooled connection was closed")

    async def give_back(self, failure: BaseException | None = None) -> None:
        """Back to the pool with no transaction open. A connection in doubt — closed, broken by the
        failure, or unable to roll back — is closed instead; the next borrower takes a fresh one."""
        pooled, db = self._pooled, self.db
        try:
            if db.is_closed() or breaks_connection(failure):
                await pooled.invalidate()
            elif db.is_in_transaction():
                await db.execute("ROLLBACK")
        except Exception:
            await pooled.invalidate()  # the failure that brought us here is the one to report
        except BaseException:
            await pooled.invalidate()
            raise
        finally:
            await pooled.close()


def breaks_connection(failure: BaseException | None) -> bool:
    """Whether `failure` leaves the connection unusable (or its state unknown: cancelled mid-statement)."""
    if isinstance(failure, Unavailable) and failure.__cause__ is not None:
        failure = failure.__cause__
    return isinstance(
        failure, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError)
    ) or (failure is not None and not isinstance(failure, Exception))


def set_tenant(tenant_id: str) -> str:
    """The statement that binds a transaction to a tenant for RLS, transaction-local (set_config's
    `true`). The id is inlined, so that it can share a simple query (no parameters) with BEGIN or a
    savepoint: it is held to its pattern here."""
    if not TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    return f"SELECT set_config('app.tenant_id', '{tenant_id}', true)"
