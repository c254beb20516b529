"""Which database failures are worth retrying."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
    # A role that cannot log in right now (password rotation, NOLOGIN during maintenance): retry, and
    # dead-letter if it lasts, rather than reject commands for good.
    "28000",
    "28P01",
}


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later retry can get past: the server is away, busy or chose a victim."""
    if isinstance(exc, (PoolTimeout, ConnectionError, OSError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
            return True
        return is_transient(exc.orig) if exc.orig is not None else False
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return True  # no host takes writes (target_session_attrs=read-write): a failover is under way
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_transient(cause)


def describe(exc: BaseException) -> str:
    """One line for logs and dead-letter headers: the driver's own message, never SQLAlchemy's statement
    and parameters (those carry patient data, and span many lines)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]
